"""A run made by `fedbridge deploy` is not quietly finished on the simulation engine by `run --resume`."""

import pytest
from rich.console import Console

from conftest import CONFIGS, invoke as run, stopping_after
from fedbridge import results
from fedbridge.experiment import load_experiment
from fedbridge.study import run_study

SMALL = ["data.name=digits", "partition.sizes=[300,300]", "train.rounds=4", "train.batch_size=16",
         'baselines=["local"]']


def test_a_stopped_deployed_run_resumes_on_the_simulation_engine_only_when_asked_and_says_so(tmp_path):
    exp, _ = load_experiment(CONFIGS / "seed.toml", SMALL)
    out = tmp_path / "deployed"

    # the deployment's bookkeeping, with the simulation engine standing in for Flower's rounds
    with pytest.raises(KeyboardInterrupt):
        run_study(exp, out, None, Console(quiet=True), stopping_after("fedavg", 2), quiet=True, engine="flower")
    before = (out / results.METRICS).read_bytes()

    refused = run("run", "--resume", out)
    assert refused.exit_code == 2 and "--engine simulation" in refused.output
    assert (out / results.METRICS).read_bytes() == before and not (out / results.SUMMARY).exists()

    resumed = run("run", "--resume", out, "--engine", "simulation", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert results.read_summary(out)["engines"] == {"local": "simulation", "fedavg": "flower, resumed on simulation"}
    assert run("run", CONFIGS / "seed.toml", "--engine", "simulation").exit_code == 2


def test_a_simulated_run_records_its_engine(tmp_path):
    assert run("run", CONFIGS / "seed.toml", *[a for s in SMALL for a in ("--set", s)], "--out", tmp_path / "r",
               "--quiet").exit_code == 0
    assert results.read_summary(tmp_path / "r")["engines"] == {"local": "simulation", "fedavg": "simulation"}
