"""Real hosts, emulated: the SuperLink and each SuperNode in a Linux network namespace of its own,
joined by veth pairs with the test's own addresses (10.213.x.y), TLS and node authentication on, each
started by the same command a person runs on that machine (`fedbridge deploy --serve-superlink`,
`--serve-supernode`), and the study submitted from this namespace with `fedbridge deploy --superlink`.

    this namespace 10.213.9.1 --- 10.213.9.2 [link] 10.213.0.1 --- 10.213.0.2 [node 0]
                                                    10.213.1.1 --- 10.213.1.2 [node 1]

The namespaces, and with them the veth pairs, are removed at the end; skipped where `ip netns` is not
permitted (it needs root or CAP_NET_ADMIN).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import CONFIGS, invoke

pytest.importorskip("flwr")
pytest.importorskip("psutil")

from fedbridge.data.datasets import load_dataset  # noqa: E402
from fedbridge.engines import simulation  # noqa: E402
from fedbridge.engines.flower import certificates  # noqa: E402
from fedbridge.engines.flower.processes import stop  # noqa: E402
from fedbridge.experiment import load_experiment  # noqa: E402
from fedbridge.federation import build_federation  # noqa: E402

pytestmark = pytest.mark.flower

TINY = ["data.name=digits", "partition.sizes=[300,300]", "train.rounds=2", "baselines=[]"]
PORT = 9093
TAG = f"fb{os.getpid() % 10000}"  # names of this test's namespaces and links, unique per run
LINK, NODES = f"{TAG}l", [f"{TAG}n0", f"{TAG}n1"]


def ip(*args: str, ns: str | None = None) -> None:
    command = (["ip", "netns", "exec", ns, "ip"] if ns else ["ip"]) + list(args)
    subprocess.run(command, check=True, capture_output=True, timeout=30)


def veth(near: str, near_ns: str | None, far: str, far_ns: str, near_ip: str, far_ip: str) -> None:
    ip("link", "add", near, "type", "veth", "peer", "name", far)
    ip("link", "set", far, "netns", far_ns)
    if near_ns:
        ip("link", "set", near, "netns", near_ns)
    ip("addr", "add", f"{near_ip}/24", "dev", near, ns=near_ns)
    ip("addr", "add", f"{far_ip}/24", "dev", far, ns=far_ns)
    ip("link", "set", near, "up", ns=near_ns)
    ip("link", "set", far, "up", ns=far_ns)


@pytest.fixture
def namespaces():
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2)")
    probe = subprocess.run(["ip", "netns", "add", f"{TAG}probe"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"`ip netns` is not permitted here ({probe.stderr.strip()}); it needs root or CAP_NET_ADMIN")
    subprocess.run(["ip", "netns", "del", f"{TAG}probe"], capture_output=True)
    made = []
    try:
        for ns in (LINK, *NODES):
            ip("netns", "add", ns)
            made.append(ns)
            ip("link", "set", "lo", "up", ns=ns)
        veth(f"{TAG}h", None, f"{TAG}hl", LINK, "10.213.9.1", "10.213.9.2")
        for i, ns in enumerate(NODES):
            veth(f"{TAG}l{i}", LINK, f"{TAG}n{i}", ns, f"10.213.{i}.1", f"10.213.{i}.2")
        yield
    finally:
        for ns in made:  # a namespace takes its veth ends with it, and so their peers
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def in_ns(ns: str, *args: str, log) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "fedbridge.cli", "deploy", *args],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_for(host: str, port: int, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"nothing listens on {host}:{port}")


def test_a_study_across_namespaces_with_tls_and_node_keys(tmp_path, namespaces):
    certs = tmp_path / "certs"
    certificates.make(certs, 2, ["10.213.9.2", "10.213.0.1", "10.213.1.1", "127.0.0.1", "localhost"])
    started = []
    try:
        with open(tmp_path / "superlink.txt", "wb") as log:
            started.append(in_ns(LINK, "--serve-superlink", f"0.0.0.0:{PORT}", "--certificates", str(certs), log=log))
        wait_for("10.213.9.2", PORT, started[0], 60)
        time.sleep(3)  # the keys are registered just after the port opens
        for i, ns in enumerate(NODES):
            with open(tmp_path / f"supernode-{i}.txt", "wb") as log:
                started.append(in_ns(ns, "--serve-supernode", f"10.213.{i}.1:{PORT}", "--partition-id", str(i),
                                     "--certificates", str(certs), log=log))
        out = tmp_path / "run"
        result = invoke("deploy", CONFIGS / "seed.toml", *[a for o in TINY for a in ("--set", o)],
                        "--superlink", f"10.213.9.2:{PORT}", "--certificates", certs, "--round-timeout", "120",
                        "--connect-timeout", "120", "--out", out)
    finally:
        stop(started)
    logs = "".join((tmp_path / f).read_text(errors="replace") for f in ("superlink.txt", "supernode-0.txt", "supernode-1.txt"))
    assert result.exit_code == 0, result.output + logs
    exp, _ = load_experiment(CONFIGS / "seed.toml", TINY)
    expected = simulation.train(exp.method("fedavg"), build_federation(load_dataset("digits"), exp, exp.seed), exp, 0)
    deployed = torch.load(out / "weights" / "seed0-fedavg.pt", weights_only=True)
    assert max((deployed[n] - expected[n]).abs().max().item() for n in expected) <= 1e-5
    assert json.loads((out / "summary.json").read_text())["left_out"] == []
