"""`fedbridge sweep --ray ADDRESS`: the runs as tasks on a Ray cluster, here a head and a worker this
test starts on this machine (one CPU each, a temp folder of their own), stopped by their process ids
at the end. The same resume rules as --jobs: a finished run is never redone."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import CONFIGS, invoke as run

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.flower  # Ray comes with the flower extra

BASE = ["--set", "data.name=digits", "--set", "partition.sizes=[300,300]", "--set", "train.rounds=2",
        "--set", 'baselines=["local"]']
GRID = ["--grid", "clients.1.profile.sigma=0,0.5"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")


@pytest.fixture
def ray_cluster():
    """HOST:PORT of a head and one worker node; every process they started is killed at the end."""
    temp = tempfile.mkdtemp(prefix=f"fbray{os.getpid()}-", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    common = ["--num-cpus", "1", "--temp-dir", temp, "--disable-usage-stats"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        subprocess.run([ray_cli(), "start", "--head", "--port", str(port), "--include-dashboard=false", *common],
                       check=True, capture_output=True, timeout=180, env=env)
        subprocess.run([ray_cli(), "start", "--address", f"127.0.0.1:{port}", *common],
                       check=True, capture_output=True, timeout=180, env=env)
        yield f"127.0.0.1:{port}"
    finally:
        # Ray's daemons leave their parent; they are ours by the temp folder they were given
        ours = [p for p in psutil.process_iter(["cmdline"]) if any(temp in part for part in p.info["cmdline"] or [])]
        for p in ours:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(ours, timeout=30)


def test_a_sweep_runs_on_a_ray_cluster_and_is_not_redone(tmp_path, ray_cluster):
    out = tmp_path / "sweep"
    args = ["sweep", CONFIGS / "seed.toml", *BASE, *GRID, "--seeds", 1, "--out", out, "--ray", ray_cluster]
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert len(list(out.glob("runs/*/*/summary.json"))) == 2
    gains = [r for r in json.loads((out / "summary.json").read_text())["table"] if r["quantity"] == "gain"]
    assert {r["cell"]["clients.1.profile.sigma"] for r in gains} == {"0", "0.5"}
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/summary.json")}
    again = run(*args)
    assert again.exit_code == 0 and "2 of 2 runs finished already" in again.output
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/summary.json")} == before


def test_a_ray_address_that_does_not_answer_is_named_before_anything_is_made(tmp_path):
    out = tmp_path / "sweep"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    began = time.monotonic()
    result = run("sweep", CONFIGS / "seed.toml", *BASE, *GRID, "--out", out, "--ray", f"127.0.0.1:{port}")
    assert result.exit_code == 2, result.output
    assert f"--ray 127.0.0.1:{port}: nothing answers there" in result.output and "ray start --head" in result.output
    assert not out.exists() and time.monotonic() - began < 60
