"""fedbridge on Flower with real processes on loopback: a SuperLink, SuperNodes, `flwr run`.

Each test stops every process it started (the cluster context manager does, also on failure).
Rounds take many seconds because of Flower's polling, so every test uses the digits data, few
clients and few rounds.
"""

import json
import signal
import subprocess
import sys
import time

import pytest
import tomli_w
import torch
from click.testing import CliRunner

from conftest import CONFIGS

pytest.importorskip("flwr")  # the `flower` extra; `make test` installs it
psutil = pytest.importorskip("psutil")

from fedbridge.cli import main  # noqa: E402
from fedbridge.data.datasets import load_dataset  # noqa: E402
from fedbridge.engines import simulation  # noqa: E402
from fedbridge.engines.flower import certificates, channel  # noqa: E402
from fedbridge.deploy import Faults, flower_train  # noqa: E402
from fedbridge.engines.flower.submit import APP  # noqa: E402
from fedbridge.engines.flower.processes import CONNECTION, cluster, flwr, start, stop, supernode_command  # noqa: E402
from fedbridge.errors import FedbridgeError  # noqa: E402
from fedbridge.experiment import load_experiment  # noqa: E402
from fedbridge.federation import build_federation  # noqa: E402
from fedbridge.resume import resolved_config  # noqa: E402

pytestmark = pytest.mark.flower

TINY = ["data.name=digits", "partition.sizes=[300,300]", "train.rounds=2", "baselines=[]"]


def experiment(*overrides):
    exp, _ = load_experiment(CONFIGS / "seed.toml", [*TINY, *overrides])
    return exp, build_federation(load_dataset("digits"), exp, exp.seed)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[n] - b[n]).abs().max().item() for n in a)


def test_deploy_with_tls_gives_the_simulation_engines_weights_and_metrics(tmp_path):
    """`fedbridge deploy --tls` (TLS, authenticated SuperNodes) vs the simulation engine, FedAvg, 2 clients, 2 rounds."""
    out = tmp_path / "run"
    args = [a for o in TINY for a in ("--set", o)]
    result = CliRunner().invoke(main, ["deploy", str(CONFIGS / "seed.toml"), "--nodes", "2", "--tls", *args,
                                       "--round-timeout", "120", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "FedAvg, own test" in result.output

    exp, federation = experiment()
    expected_records = []
    expected = simulation.train(exp.method("fedavg"), federation, exp, 0,
                                lambda r, records, diagnostics, state: expected_records.extend(records))
    deployed = torch.load(out / "weights" / "seed0-fedavg.pt", weights_only=True)
    assert max_difference(deployed, expected) <= 1e-5
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    key = lambda r: (r["round"], r["client"], r["test_set"])  # noqa: E731
    assert sorted(map(key, records)) == sorted(map(key, expected_records))
    for got, want in zip(sorted(records, key=key), sorted(expected_records, key=key)):
        assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["table"] and summary["left_out"] == []  # every client answered in every round
    assert summary["engines"] == {"fedavg": "flower"}


def test_dead_supernodes_are_left_out_then_the_run_stops_below_the_minimum(tmp_path):
    """3 clients, at least 2 must answer: client 3's node is killed after round 1, so round 2 goes on
    with clients 1 and 2; client 2's node is killed after round 2, so round 3 stops with a message
    (at its evaluation: round 3's training came with round 2's evaluation, before the kill)."""
    exp, federation = experiment("partition.sizes=[200,200,200]", "clients.1.count=2", "train.rounds=3")
    seen: dict[int, set[int]] = {}
    with cluster(3, tmp_path) as running:

        def on_round(r, records, diagnostics, state):
            seen[r] = {x["client"] for x in records}
            if r in (1, 2):
                stop([running.nodes[3 - r]])  # after round 1 node 3 (client 3), after round 2 node 2

        # 40 s: a live node's first train reply took over 20 s on 2 cores busy with other jobs
        train = flower_train(running, Faults(round_timeout=40, min_nodes=2, connect_timeout=120))
        with pytest.raises(FedbridgeError, match=r"round 3, (train|evaluate): only 1 of 3 nodes answered") as stopped:
            train(exp.method("fedavg"), federation, exp, exp.seed, on_round)
    # a dead node is either silent or reported by the SuperLink as unavailable; both are named
    assert "client 2" in str(stopped.value) and "client 3" in str(stopped.value)
    assert "rounds 1-2 are kept" in str(stopped.value)
    assert seen == {1: {1, 2, 3}, 2: {1, 2}}


def test_an_unregistered_supernode_is_refused(tmp_path):
    security = certificates.make(tmp_path / "certificates", 1)
    stranger = certificates.node_key(tmp_path / "certificates" / "stranger")  # a key the SuperLink never saw
    with cluster(1, tmp_path, security) as running:
        node = start(supernode_command(running.address, 1, security, None, stranger), tmp_path / "stranger.log",
                     running.env)
        try:
            node.wait(timeout=60)
        finally:
            stop([node])
        listed = json.loads(flwr(running.env, "supernode", "ls", CONNECTION, "--format", "json").stdout)
    assert node.returncode != 0
    assert "Failed to activate SuperNode" in (tmp_path / "stranger.log").read_text()
    assert len(listed["nodes"]) == 1  # only the registered node joined


def test_ctrl_c_stops_every_process_it_started(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedbridge.cli", "deploy", str(CONFIGS / "seed.toml"), "--out", str(tmp_path / "run"),
         *[a for o in TINY for a in ("--set", o)]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        # the SuperLink and its SuperExec, two SuperNodes and their ClientApp processes, the ServerApp
        while len(family := parent.children(recursive=True)) < 7 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(family) >= 7, "the deployment did not start"
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            stop([proc])
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"


def test_flwr_run_on_flowers_simulation_runtime(tmp_path):
    """A user's own `flwr run` of the App on a simulation SuperLink gives the simulation engine's weights."""
    exp, federation = experiment()
    config = tmp_path / "experiment.toml"
    config.write_text(tomli_w.dumps(resolved_config(exp)))
    out = tmp_path / "out"
    run_config = f'config="{config}" out-dir="{out}" round-timeout=120.0'
    with cluster(0, tmp_path, simulation=True) as running:
        started = flwr(running.env, "run", str(APP), CONNECTION, "--run-config", run_config,
                       "--federation-config", "num-supernodes=2")
        assert started.returncode == 0, started.stdout + started.stderr
        deadline = time.monotonic() + 240
        while channel.read_end(out) is None and time.monotonic() < deadline:
            running.alive()
            time.sleep(0.5)
    assert channel.read_end(out) == {"ok": True, "message": "", "left_out": []}
    rounds = channel.read_rounds(out, 0)
    assert [r.number for r in rounds] == [1, 2]
    expected = simulation.train(exp.method("fedavg"), federation, exp, 0)
    assert max_difference(rounds[-1].state.params, expected) <= 1e-5


@pytest.mark.parametrize("args, message", [
    (["--nodes", "3"], "use --nodes 2"),
    (["--set", "strategy.name=fednoro"], "'fednoro' runs on the simulation engine only"),
    (["--set", "strategy={name=\"fedavg\", noise_screen=\"fedns\"}"], "do not report FedNS's score"),
    (["--round-timeout", "nan"], "--round-timeout nan must be a finite number of seconds >= 1"),
    (["--round-timeout", "inf"], "--round-timeout inf must be a finite number of seconds >= 1"),
    (["--min-nodes", "3"], "--min-nodes 3 is more than the 2 nodes; use at most --min-nodes 2"),
    (["--connect-timeout", "inf"], "--connect-timeout inf must be a finite number of seconds >= 1"),
])
def test_deploy_refuses_what_it_cannot_run_before_starting_anything(tmp_path, args, message):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["deploy", str(CONFIGS / "seed.toml"), *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def write_idx(path, array):
    """An IDX file of unsigned bytes (the format of MNIST's files)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype("uint8").tobytes())


def test_nodes_train_on_their_own_idx_folders(tmp_path):
    """Real use: each SuperNode holds its own files; the run goes through and each client is evaluated."""
    digits = load_dataset("digits")
    folders = []
    for i in range(2):
        folder = tmp_path / f"node-{i}"
        folder.mkdir()
        rows = slice(300 * i, 300 * (i + 1))
        write_idx(folder / "train-images-idx3-ubyte", digits.train_images[rows])
        write_idx(folder / "train-labels-idx1-ubyte", digits.train_labels[rows])
        write_idx(folder / "t10k-images-idx3-ubyte", digits.test_images[:100])
        write_idx(folder / "t10k-labels-idx1-ubyte", digits.test_labels[:100])
        folders.append(folder)
    exp, federation = experiment("train.rounds=1")
    records = []
    with cluster(2, tmp_path, data_folders=folders) as running:
        train = flower_train(running, Faults(round_timeout=120))
        train(exp.method("fedavg"), federation, exp, exp.seed, lambda r, got, diagnostics, state: records.extend(got))
    assert {(r["client"], r["test_set"]) for r in records} == {
        (1, "own"), (2, "own"), (1, "clean"), (2, "clean"), (1, "client:2"), (2, "client:1")}
    # own test: 20% of the node's 300 images; clean: the folder's 100 test images
    assert all(r["accuracy"] * 60 == pytest.approx(round(r["accuracy"] * 60)) for r in records if r["test_set"] == "own")
    assert all(r["accuracy"] * 100 == pytest.approx(round(r["accuracy"] * 100)) for r in records if r["test_set"] == "clean")
