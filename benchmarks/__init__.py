"""Speed and accuracy benchmarks; not part of the test run (`python -m benchmarks.speed`, `python -m benchmarks.mcmahan`)."""

import os
import sys
from collections.abc import Callable
from pathlib import Path

from fedbridge.errors import FedbridgeError


def entry(main: Callable[[], None]) -> None:
    """Run a benchmark's main: fedbridge's own errors (data not found, say) as a message and exit code."""
    try:
        main()
    except FedbridgeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


def results_file(path: Path) -> Path:
    """`path` with its folder made and checked writable before a long run rather than after it;
    the file itself is left alone until the results are written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        problem = "it is a folder" if path.is_dir() else None if os.access(path if path.exists() else path.parent, os.W_OK) else "not writable"
    except OSError as e:
        problem = e.strerror
    if problem:
        raise FedbridgeError(f"cannot write the results file {path} ({problem}); pass a writable path with --json")
    return path
