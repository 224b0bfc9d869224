"""Faults of a real deployment on loopback: a SuperNode that comes back, and a SuperLink that dies.

Digits data, small clients, few rounds; every process a test starts is stopped (the cluster context
manager and `stop` do it, also on failure), and every wait is bounded.
"""

import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import CONFIGS, invoke

pytest.importorskip("flwr")
psutil = pytest.importorskip("psutil")

from fedbridge.data.datasets import load_dataset  # noqa: E402
from fedbridge.deploy import Faults, flower_train  # noqa: E402
from fedbridge.engines import simulation  # noqa: E402
from fedbridge.engines.flower.processes import cluster, stop  # noqa: E402
from fedbridge.experiment import load_experiment  # noqa: E402
from fedbridge.federation import build_federation  # noqa: E402

pytestmark = pytest.mark.flower

TINY = ["data.name=digits", "partition.sizes=[300,300]", "baselines=[]"]


def test_a_restarted_supernode_rejoins_at_the_next_round(tmp_path):
    """Client 2's node is killed after round 1 (the SuperLink soon reports it unavailable, so round 2
    goes on without it) and started again after round 2: it connects with a new node id within a few
    rounds, says which client it is, and is back in the last round."""
    exp, _ = load_experiment(CONFIGS / "seed.toml", [*TINY, "train.rounds=7"])
    federation = build_federation(load_dataset("digits"), exp, exp.seed)
    seen: dict[int, set[int]] = {}
    left_out: list[dict] = []
    with cluster(2, tmp_path) as running:

        def on_round(r, records, diagnostics, state):
            seen[r] = {x["client"] for x in records}
            if r == 1:
                stop([running.nodes[1], running.workers[1]])
            elif r == 2:
                running.restart(1)

        train = flower_train(running, Faults(round_timeout=30, min_nodes=1, connect_timeout=120), left_out)
        train(exp.method("fedavg"), federation, exp, exp.seed, on_round)
    assert seen[1] == {1, 2} and seen[2] == {1} and seen[7] == {1, 2}
    assert {e["client"] for e in left_out} == {2} and 2 <= min(e["round"] for e in left_out)
    assert max(e["round"] for e in left_out) < 7


def superlink_of(process: subprocess.Popen, deadline: float):
    """The SuperLink among `process`'s descendants, once it runs."""
    while time.monotonic() < deadline:
        for child in psutil.Process(process.pid).children(recursive=True):
            try:
                if any("flower-superlink" in part for part in child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.5)
    raise AssertionError("no SuperLink started")


def test_a_dead_superlink_stops_the_deployment_and_resume_finishes_it(tmp_path):
    """The SuperLink is killed once round 2 is in metrics.jsonl (8 rounds, so that the run is still
    going however late the study sees its rounds): `fedbridge deploy` stops with a message and the
    resume command; `fedbridge deploy --resume` ends with the simulation's weights."""
    out = tmp_path / "run"
    settings = [a for o in [*TINY, "train.rounds=8"] for a in ("--set", o)]
    proc = subprocess.Popen([sys.executable, "-m", "fedbridge.cli", "deploy", str(CONFIGS / "seed.toml"), *settings,
                             "--round-timeout", "60", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        superlink = superlink_of(proc, deadline)
        metrics = out / "metrics.jsonl"
        while time.monotonic() < deadline and not (metrics.exists() and '"round": 2' in metrics.read_text()):
            time.sleep(0.2)
        superlink.send_signal(signal.SIGKILL)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            stop([proc])
    assert proc.returncode == 1, output
    assert "Traceback" not in output and "the SuperLink exited" in output
    assert f"fedbridge deploy --resume {out}" in output

    resumed = invoke("deploy", "--resume", out, "--round-timeout", "60")
    assert resumed.exit_code == 0, resumed.output
    exp, _ = load_experiment(CONFIGS / "seed.toml", [*TINY, "train.rounds=8"])
    expected = simulation.train(exp.method("fedavg"), build_federation(load_dataset("digits"), exp, exp.seed), exp, 0)
    deployed = torch.load(out / "weights" / "seed0-fedavg.pt", weights_only=True)
    assert max((deployed[n] - expected[n]).abs().max().item() for n in expected) <= 1e-5
