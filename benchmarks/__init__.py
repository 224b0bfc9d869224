"""Speed and accuracy benchmarks; not part of the test run (`python -m benchmarks.speed`, `python -m benchmarks.mcmahan`)."""
