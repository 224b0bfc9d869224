"""A run killed with SIGKILL mid-training and resumed ends exactly as one never interrupted;
progress output stays plain off a terminal and silent with --quiet."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import CONFIGS, invoke as run, stopping_after
from fedbridge import results
from fedbridge.errors import FedbridgeError

# slow enough (tens of ms a round) that the test can kill it between rounds, fast enough for CI
SMALL = ["--set", "data.name=digits", "--set", "partition.sizes=[500,500]", "--set", "train.rounds=10",
         "--set", "train.batch_size=16", "--set", 'baselines=["local"]']


def fedavg_round(out) -> int:
    rounds = [r["round"] for r in results.read_metrics(out) if r["method"] == "fedavg"]
    return max(rounds, default=0)


def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    assert run("run", CONFIGS / "seed.toml", *SMALL, "--out", reference, "--quiet").exit_code == 0

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedbridge.cli", "run", CONFIGS / "seed.toml", *SMALL, "--out", out, "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    # kill it in the middle of the second method, the first one finished
    while fedavg_round(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before the test could kill it"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists() and (out / "checkpoint.pt").exists()
    assert 2 <= fedavg_round(out) < 10
    with open(out / "metrics.jsonl", "a") as f:  # as if the kill had cut a line in half
        f.write('{"seed": 0, "method": "fedavg", "rou')

    edited = shutil.copytree(out, tmp_path / "edited")
    config = (edited / "config.toml").read_text()
    assert "rounds = 10" in config
    (edited / "config.toml").write_text(config.replace("rounds = 10", "rounds = 1"))
    before = (edited / "metrics.jsonl").read_bytes()
    refused = run("run", "--resume", edited)
    assert refused.exit_code == 2 and "config.toml was changed after this run started" in refused.output
    assert (edited / "metrics.jsonl").read_bytes() == before

    resumed = run("run", "--resume", out)
    assert resumed.exit_code == 0, resumed.output
    assert "fedavg" in resumed.output and "local " not in resumed.output  # a finished method is not redone

    assert results.read_metrics(out) == results.read_metrics(reference)
    for path in sorted((reference / "weights").iterdir()):
        seed, method = path.stem.removeprefix("seed").split("-", 1)
        mine, theirs = (results.load_weights(run, int(seed), method) for run in (out, reference))
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in theirs), path.name
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    assert summary["table"] == expected["table"]
    # the noisy-client detection curves come back from the checkpointed server state
    assert summary["detection"] == expected["detection"] and len(summary["detection"]["fedavg"]["loss"]["auc_by_round"]) == 10
    assert not (out / "checkpoint.pt").exists()
    again = run("run", "--resume", out)
    assert again.exit_code == 0 and "finished already" in again.output


def record(round_: int) -> str:
    return json.dumps({"seed": 0, "method": "fedavg", "round": round_, "client": 1, "profile": "clean",
                       "test_set": "own", "accuracy": 0.9, "loss": 0.3})


def test_a_line_cut_by_a_crash_is_dropped_and_a_damaged_one_named(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(f'{record(1)}\n{record(2)}\n{{"rou')
    assert [r["round"] for r in results.read_metrics(tmp_path)] == [1, 2]
    (tmp_path / "metrics.jsonl").write_text(f'{record(1)}\n{{"rou\n{record(3)}\n')
    with pytest.raises(FedbridgeError, match="line 2"):
        results.read_metrics(tmp_path)
    # valid JSON that is not a record: named the same way, not a KeyError later
    for line in ("{}", "[1]", record(3).replace('"round": 3', '"round": "3"')):
        (tmp_path / "metrics.jsonl").write_text(f"{record(1)}\n{line}\n")
        with pytest.raises(FedbridgeError, match="line 2, is not a metrics record"):
            results.read_metrics(tmp_path)


def test_resume_refuses_what_it_cannot_continue(tmp_path):
    result = run("run", CONFIGS / "seed.toml", "--resume", tmp_path)
    assert result.exit_code == 2 and "drop CONFIG" in result.output
    result = run("run", "--resume", tmp_path)
    assert result.exit_code == 1 and "not a run directory" in result.output
    result = run("run")
    assert result.exit_code == 2 and "--resume RUN_DIR" in result.output


def test_progress_is_plain_off_a_terminal_and_silent_when_quiet(tmp_path):
    tiny = ["--set", "data.name=digits", "--set", "partition.sizes=[300,300]", "--set", "train.rounds=2"]
    loud = run("run", CONFIGS / "seed.toml", *tiny, "--out", tmp_path / "a")
    assert loud.exit_code == 0 and "\x1b[" not in loud.output
    assert "seed 0 · fedavg" in loud.output
    quiet = run("run", CONFIGS / "seed.toml", *tiny, "--out", tmp_path / "b", "--quiet")
    assert quiet.exit_code == 0 and quiet.output.strip() == f"run directory: {tmp_path / 'b'}"


def test_a_run_interrupted_before_diagnostics_jsonl_existed_resumes_to_the_same_result(tmp_path):
    # older fedbridge kept the detection scores in the checkpointed state ({score: [rounds, clients]},
    # NaN where unsampled) and saved weights stacked [m, ...]; such a run resumes as if made today
    from rich.console import Console

    from fedbridge.experiment import load_experiment
    from fedbridge.study import run_study

    settings = [s for s in SMALL if s != "--set"] + ["clients.1.profile.sigma=0.5", "train.rounds=6"]
    exp, _ = load_experiment(CONFIGS / "seed.toml", settings)
    reference, old = tmp_path / "reference", tmp_path / "old"
    run_study(exp, reference, None, Console(quiet=True), quiet=True)

    with pytest.raises(KeyboardInterrupt):
        run_study(exp, old, None, Console(quiet=True), stopping_after("fedavg", 4), quiet=True)
    checkpoint = results.load_checkpoint(old)
    history = torch.full((4, 2), float("nan"))
    scores = {}
    for d in results.read_diagnostics(old):
        if d["method"] == "fedavg":
            for name, value in d["scores"].items():
                scores.setdefault(name, history.clone())[d["round"] - 1, d["client"] - 1] = value
    checkpoint["extra"] = {**checkpoint["extra"], "detection_clients": 2, "detection": scores}
    results.save_checkpoint(old, checkpoint)
    (old / results.DIAGNOSTICS).unlink()
    local = results.load_weights(old, 0, "local")
    torch.save(local, results.weights_path(old, 0, "local"))  # the old stacked layout
    (old / results.HASHES).unlink()  # and no hashes of the weights

    assert run("run", "--resume", old, "--quiet").exit_code == 0
    assert (old / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    assert results.read_summary(old)["detection"] == results.read_summary(reference)["detection"]
    assert sorted(map(json.dumps, results.read_diagnostics(old))) == sorted(
        json.dumps(d) for d in results.read_diagnostics(reference) if d["method"] == "fedavg")
