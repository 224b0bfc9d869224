"""`fedbridge sweep`: every grid cell × seed, killed with SIGKILL and started again runs only what
is missing and never touches a finished run; per-cell mean, std and a Student-t 95% CI."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import CONFIGS, invoke as run
from fedbridge import results

BASE = ["--set", "data.name=digits", "--set", "partition.sizes=[300,300]", "--set", "train.rounds=2",
        "--set", 'baselines=["local"]']
GRID = ["--grid", "clients.1.profile.sigma=0,0.5"]


def finished(out) -> dict:
    """Every file of every finished run, with its bytes and modification time."""
    return {
        p: (p.read_bytes(), p.stat().st_mtime_ns)
        for summary in (out / "runs").glob("*/*/summary.json") for p in summary.parent.rglob("*") if p.is_file()
    }


def test_killed_sweep_started_again_runs_only_what_is_missing(tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", CONFIGS / "seed.toml", *BASE, *GRID, "--seeds", 2, "--out", out]
    proc = subprocess.Popen([sys.executable, "-m", "fedbridge.cli", *map(str, args), "--jobs", "1", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not list(out.glob("runs/*/*/summary.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before the test could kill it"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # its running child gets SIGKILL from the kernel as its parent dies
    before = finished(out)
    assert 0 < len({p.parent for p in before if p.name == "summary.json"}) < 4

    again = run(*args, "--jobs", 2)
    assert again.exit_code == 0, again.output
    assert f"{len({p.parent for p in before if p.name == 'summary.json'})} of 4 runs finished already" in again.output
    after = finished(out)
    assert all(after[p] == before[p] for p in before), "a finished run was rewritten"
    assert len(list(out.glob("runs/*/*/summary.json"))) == 4

    summary = json.loads((out / "summary.json").read_text())
    gains = [r for r in summary["table"] if r["quantity"] == "gain"]
    assert {(r["cell"]["clients.1.profile.sigma"], r["client"]) for r in gains} == {
        ("0", 1), ("0", 2), ("0.5", 1), ("0.5", 2)}
    assert all(r["n_seeds"] == 2 and r["ci_low"] <= r["mean"] <= r["ci_high"] for r in gains)
    noisy = next(r for r in gains if r["cell"]["clients.1.profile.sigma"] == "0.5" and r["client"] == 2)
    assert noisy["profile"] == "gaussian(sigma=0.5)"
    assert "gain" in again.output and "95% CI" in again.output
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "clients.1.profile.sigma" in page

    third = run(*args)  # nothing left to do: nothing is run or rewritten
    assert third.exit_code == 0 and "4 of 4 runs finished already" in third.output
    assert finished(out) == after


def test_confidence_interval_is_student_t():
    low, high = results.confidence_interval([1.0, 2.0, 3.0])
    # t(0.975, 2 dof) = 4.3027; std = 1; half width = 4.3027 / sqrt(3)
    assert low == pytest.approx(2 - 2.48417, abs=1e-4) and high == pytest.approx(2 + 2.48417, abs=1e-4)
    assert results.confidence_interval([0.5]) is None


@pytest.mark.parametrize("args, message", [
    (["--grid", "clients.1.profile.sigma"], "KEY=V1,V2"),
    (["--grid", "clients.1.profile.sigma=0,-1"], "sigma"),
    (["--grid", "train.rounds=1,1"], "listed twice"),
    ([], "at least one --grid"),
    (["--grid", "seed=0,5"], "--set seed=N"),  # the sweep sets each run's seed itself
    (["--grid", "seeds=1,2"], "--seeds N"),
    (["--grid", "train.rounds=1,2", "--set", "seeds=3"], "use --seeds"),
    # only the data tells that the second cell's clients need more samples than digits has
    (["--grid", "partition.sizes=[100,100],[900,900]"], "grid cell partition.sizes=[900,900]: sizes=[900, 900] sum"),
])
def test_bad_grid_exits_2_before_anything_runs(tmp_path, args, message):
    result = run("sweep", CONFIGS / "seed.toml", *BASE, *args, "--out", tmp_path / "s")
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "s").exists()


def test_a_different_sweep_never_writes_into_an_existing_one(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "sweep.json").write_text('{"config": "other"}')
    result = run("sweep", CONFIGS / "seed.toml", *BASE, *GRID, "--out", out)
    assert result.exit_code == 1 and "holds another command's sweep" in result.output
    assert (out / "sweep.json").read_text() == '{"config": "other"}'


@pytest.mark.parametrize("damaged", [b"not json", b"\xff\xfe\x00binary"])
def test_a_damaged_sweep_json_is_refused_and_kept(tmp_path, damaged):
    out = tmp_path / "s"
    out.mkdir()
    (out / "sweep.json").write_bytes(damaged)
    result = run("sweep", CONFIGS / "seed.toml", *BASE, *GRID, "--out", out)
    assert result.exit_code == 1 and "is not readable JSON" in result.output and "another --out" in result.output
    assert (out / "sweep.json").read_bytes() == damaged
