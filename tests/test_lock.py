"""One writer per run or sweep directory: a second `run --resume`, `sweep` or `deploy` is refused at
once naming the holder's pid, and the lock dies with its process (kill -9 too), so it is never stale."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import CONFIGS, invoke as run
from fedbridge import lock, results
from fedbridge.errors import FedbridgeError

FAST = ["data.name=digits", "partition.sizes=[300,300]", "train.rounds=4", 'baselines=["local"]']
HOLD = """import sys, time
from pathlib import Path
from fedbridge import lock
with lock.hold(Path(sys.argv[1]), "try again"):
    time.sleep(120)
"""


def settings(*keys: str) -> list[str]:
    return [a for k in keys for a in ("--set", k)]


def wait_for_holder(directory, pids, seconds: float = 60) -> int:
    """The pid, one of `pids`, that the directory's lock file names once one of them holds it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        path = directory / lock.LOCK
        holder = path.read_text().strip() if path.exists() else ""
        if holder in {str(p) for p in pids}:
            return int(holder)
        time.sleep(0.005)
    raise AssertionError(f"none of {pids} took the lock of {directory} within {seconds} s")


def hold_elsewhere(directory) -> subprocess.Popen:
    """Another process holding `directory`'s lock (until the test kills it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)])
    wait_for_holder(directory, [proc.pid])
    return proc


def test_a_held_lock_is_refused_naming_its_pid_and_kill_9_releases_it(tmp_path):
    holder = hold_elsewhere(tmp_path)
    try:
        with pytest.raises(FedbridgeError) as refused:
            with lock.hold(tmp_path, "run it again"):
                pass
        assert f"fedbridge process {holder.pid} is writing to it" in str(refused.value)
        assert f"kill {holder.pid}" in str(refused.value) and str(refused.value).endswith("then run it again")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    assert (tmp_path / lock.LOCK).read_text().strip() == str(holder.pid)  # the file stays; the lock does not
    with lock.hold(tmp_path, "run it again"):
        assert (tmp_path / lock.LOCK).read_text().strip() == str(os.getpid())


def test_two_resumes_at_once_one_is_refused_and_metrics_are_written_once(tmp_path, monkeypatch):
    reference, out = tmp_path / "reference", tmp_path / "stopped"
    assert run("run", CONFIGS / "seed.toml", *settings(*FAST), "--out", reference, "--quiet").exit_code == 0
    save_checkpoint = results.save_checkpoint

    def ctrl_c_after_fedavg_round_2(run_dir, checkpoint):
        save_checkpoint(run_dir, checkpoint)
        if checkpoint["method"] == "fedavg" and checkpoint["round"] == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(results, "save_checkpoint", ctrl_c_after_fedavg_round_2)
        assert run("run", CONFIGS / "seed.toml", *settings(*FAST), "--out", out, "--quiet").exit_code == 130

    resume = [sys.executable, "-m", "fedbridge.cli", "run", "--resume", str(out), "--quiet"]
    procs = [subprocess.Popen(resume, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        holder = wait_for_holder(out, [p.pid for p in procs])
        first = next(p for p in procs if p.pid == holder)
        second = next(p for p in procs if p.pid != holder)
        os.kill(holder, signal.SIGSTOP)  # it holds the lock for as long as the other needs to reach it
        _, refusal = second.communicate(timeout=120)
        os.kill(holder, signal.SIGCONT)
        assert second.returncode == 1, refusal
        assert f"{out} is in use: fedbridge process {holder} is writing to it" in refusal
        assert f"fedbridge run --resume {out}" in refusal and "Traceback" not in refusal
        _, errors = first.communicate(timeout=120)
        assert first.returncode == 0, errors
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
                p.wait()
    metrics = (out / results.METRICS).read_text().splitlines()
    assert len(metrics) == len((reference / results.METRICS).read_text().splitlines())
    assert results.read_metrics(out) == results.read_metrics(reference)


def test_a_second_copy_of_a_sweep_is_refused_and_sigterm_stops_the_sweep_and_its_runs(tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", CONFIGS / "seed.toml", *settings(*FAST), "--grid", "train.lr=0.001",
            "--seeds", 2, "--out", out, "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "fedbridge.cli", *map(str, args), "--jobs", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_holder(out, [proc.pid])
        second = run(*args)
        assert second.exit_code == 1, second.output
        assert f"{out} is in use: fedbridge process {proc.pid}" in second.output
        assert "run the same sweep command again" in second.output

        deadline = time.monotonic() + 60  # a run under way: its own lock names its process
        while not any(p.read_text().strip() for p in out.glob("runs/*/*/.lock")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the sweep ended before the test could stop it"
        proc.send_signal(signal.SIGTERM)
        _, errors = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, errors
    assert "stopped by SIGTERM; finished runs are kept: run the same command again" in errors
    assert "Traceback" not in errors
    logs = "".join(p.read_text() for p in (out / "logs").iterdir())
    assert "stopped by SIGTERM; to continue from the last finished round" in logs  # its run stopped cleanly

    again = run(*args, "--jobs", 2)
    assert again.exit_code == 0, again.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["table"] and all(r["n_seeds"] == 2 for r in summary["table"])


@pytest.mark.parametrize("case", ["not empty", "locked"])
def test_deploy_refuses_a_used_run_directory_before_any_flower_process(tmp_path, monkeypatch, case):
    pytest.importorskip("flwr")
    from fedbridge import deploy

    def no_cluster(*args, **kwargs):
        raise AssertionError("deploy started Flower processes for a run directory it then refused")

    monkeypatch.setattr(deploy, "cluster", no_cluster)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    out = tmp_path / "run"
    out.mkdir()
    holder = None
    if case == "not empty":
        (out / "notes.txt").write_text("mine")
    else:
        holder = hold_elsewhere(out)
    try:
        result = run("deploy", CONFIGS / "seed.toml", *settings(*FAST), "--out", out)
    finally:
        if holder:
            holder.kill()
            holder.wait()
    assert result.exit_code == 1, result.output
    expected = "already exists and is not empty" if case == "not empty" else f"fedbridge process {holder.pid}"
    assert expected in result.output
    assert not list(temp.iterdir()), "deploy left a temp folder behind"
    assert {p.name for p in out.iterdir()} == ({"notes.txt"} if case == "not empty" else {lock.LOCK, results.WEIGHTS})
