"""A SuperLink and N SuperNodes as real processes on loopback, and stopping every one of them.

Flower starts helpers of its own (SuperExec, one ServerApp / ClientApp process per run), some in
new sessions, so stopping walks each started process's descendants instead of trusting process groups.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import tomli_w

from fedbridge.errors import FedbridgeError, Stopped

HOST = "127.0.0.1"
CONNECTION = "fedbridge"  # the SuperLink connection's name in FLWR_HOME/config.toml, for the `flwr` CLI


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Flower's executables find each other on PATH (the SuperLink runs `flower-superexec`), and keep
    their state in FLWR_HOME instead of the user's ~/.flwr. A SuperExec looks for new work every
    second by default; on loopback asking more often costs nothing and shortens every round."""
    bin_dir = str(Path(sys.executable).parent)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "FLWR_HOME": str(flwr_home), "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}


@dataclass
class Security:
    """TLS files (None: insecure) and SuperNode authentication keys (empty: no authentication)."""

    ca_cert: Path | None = None
    server_cert: Path | None = None
    server_key: Path | None = None
    node_keys: list[Path] = field(default_factory=list)  # private key of node i


@dataclass
class Cluster:
    address: str  # the SuperLink's host:port (Fleet, Control and Runtime APIs share it)
    workdir: Path
    env: dict[str, str]
    superlink: subprocess.Popen | None  # None: one on another machine (hosts.py), not ours to watch
    nodes: list[subprocess.Popen]
    workers: list[subprocess.Popen] = field(default_factory=list)  # node i's ClientApp process (warm.py)
    # start node i again (its processes), as `cluster` started it
    start_again: Callable[[int], list[subprocess.Popen]] | None = None

    def restart(self, partition: int) -> None:
        """Start the SuperNode of client `partition + 1` again, after it died or was stopped: it gets a
        new node id from the SuperLink, and the ServerApp gives it its client at the next step."""
        stop([self.nodes[partition], *self.workers[partition : partition + 1]])
        node, *worker = self.start_again(partition)
        self.nodes[partition] = node
        if worker:
            self.workers[partition] = worker[0]

    def alive(self) -> None:
        """Raise if the SuperLink has exited: nothing can finish without it."""
        if self.superlink is not None and self.superlink.poll() is not None:
            raise FedbridgeError(
                f"the SuperLink exited (code {self.superlink.returncode}); its log: {self.workdir / 'superlink.log'}"
            )

    def nodes_alive(self) -> None:
        """Raise if a SuperNode has exited, naming its client: a run cannot start without every client."""
        for partition, node in enumerate(self.nodes):
            if node.poll() is not None:
                raise FedbridgeError(
                    f"the SuperNode of client {partition + 1} (partition-id={partition}) exited "
                    f"(code {node.returncode}); its log: {self.workdir / f'supernode-{partition}.log'}"
                )


def start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)


def superlink_command(port: int, security: Security, simulation: bool = False, host: str = HOST) -> list[str]:
    command = ["flower-superlink", "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if simulation:
        command.append("--simulation")
    if security.ca_cert is None:
        command.append("--insecure")
    else:
        command += ["--ssl-ca-certfile", str(security.ca_cert), "--ssl-certfile", str(security.server_cert),
                    "--ssl-keyfile", str(security.server_key)]
    if security.node_keys:
        command.append("--enable-supernode-auth")
    return command


def supernode_command(address: str, partition: int, security: Security, data_dir: Path | None,
                      private_key: Path | None, data_folder: Path | None = None, port: int | None = None,
                      warm: bool = True) -> list[str]:
    """A SuperNode whose ClientApps run in a process of their own (`--isolation process`): warm.py's,
    started next to it on the Runtime API `port`, instead of a new process per message (Flower's
    own SuperExec, without `warm`)."""
    # string values in --node-config need TOML's double quotes
    config = f"partition-id={partition}" + (f' data-dir="{data_dir}"' if data_dir else "")
    config += f' data-folder="{data_folder}"' if data_folder else ""
    command = ["flower-supernode", "--superlink", address, "--port", str(port or free_port()), "--node-config", config]
    command += ["--isolation", "process"] if warm else []
    command += ["--insecure"] if security.ca_cert is None else ["--root-certificates", str(security.ca_cert)]
    if private_key is not None:
        command += ["--auth-supernode-private-key", str(private_key)]
    return command


def warm_command(port: int, node: subprocess.Popen) -> list[str]:
    """The long-lived ClientApp process of the SuperNode `node` serving its Runtime API on `port`."""
    return [sys.executable, "-m", "fedbridge.engines.flower.warm", "--runtime-api-address", f"{HOST}:{port}",
            "--parent-pid", str(node.pid)]


def start_node(address: str, partition: int, security: Security, data_dir: Path | None, data_folder: Path | None,
               workdir: Path, env: dict[str, str], threads: int, warm: bool = True,
               key: Path | None = None) -> list[subprocess.Popen]:
    """SuperNode `partition` and its ClientApp process (with `warm`), logging to supernode-I.log. The nodes of
    one machine share its cores: `threads` each, as OpenMP threads of processes that outnumber the
    cores stall on each other's barriers (a node's epoch measured 20x slower at 2 threads each)."""
    key = key or (security.node_keys[partition] if security.node_keys else None)
    port = free_port()
    log = workdir / f"supernode-{partition}.log"
    env = {**env, "OMP_NUM_THREADS": str(threads)} if threads else env  # 0: a machine of its own
    node = start(supernode_command(address, partition, security, data_dir, key, data_folder, port, warm), log, env)
    return [node, start(warm_command(port, node), log, env)] if warm else [node]


def write_connection(env: dict[str, str], address: str, security: Security) -> None:
    """The `flwr` CLI reads the SuperLink's address (and how to trust it) from FLWR_HOME/config.toml."""
    trust = {"root-certificates": str(security.ca_cert)} if security.ca_cert else {"insecure": True}
    home = Path(env["FLWR_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    link = {"address": address, **trust}
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: link}}))


def flwr(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The `flwr` CLI against the cluster's SuperLink."""
    return subprocess.run(["flwr", *args], capture_output=True, text=True, env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def register(env: dict[str, str], private_key: Path) -> None:
    """Allow the SuperNode holding `private_key` to join (its public key is next to it, as .pub)."""
    proc = flwr(env, "supernode", "register", str(private_key.with_suffix(".pub")), CONNECTION)
    if proc.returncode != 0:
        raise FedbridgeError(f"could not register SuperNode key {private_key}.pub: {(proc.stderr or proc.stdout).strip()}")


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 60.0, host: str = HOST) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FedbridgeError(f"the SuperLink exited at start (code {process.returncode}); its log: {log}")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise FedbridgeError(f"the SuperLink did not open port {port} within {timeout:.0f} s; its log: {log}")


def stop(processes: list[subprocess.Popen], grace: float = 5.0) -> None:
    """SIGTERM each process and everything it started, then SIGKILL what is left after `grace` s."""
    family = []
    for p in processes:
        try:
            parent = psutil.Process(p.pid)
            family += [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for p in family:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, left = psutil.wait_procs(family, timeout=grace)
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=grace)
    for p in processes:
        p.poll()  # reap, so no zombie outlives the deployment


@contextmanager
def cluster(nodes: int, workdir: Path, security: Security = Security(), data_dir: Path | None = None,
            simulation: bool = False, data_folders: list[Path] | None = None, warm: bool = True):
    """A running SuperLink with `nodes` SuperNodes (partition-id 0..nodes-1); all stopped on exit,
    also on Ctrl-C, SIGTERM or an error. With `simulation` (and no nodes), the SuperLink runs
    Flower's simulation runtime instead: `flwr run --federation-config num-supernodes=N`.
    `data_folders[i]`: node i's own data (see client_app.FOLDER_FILES) instead of its share of the dataset.
    Without `warm`, Flower's own SuperExec starts a ClientApp process per message (benchmarks.deploy's "before")."""
    # SIGTERM ends the deployment as Ctrl-C does, through the cleanup below
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    if main_thread:
        signal.signal(signal.SIGTERM, _interrupt)
    started: list[subprocess.Popen] = []
    workdir = workdir.resolve()  # Flower wants absolute paths in its config
    try:
        env = flower_env(workdir / "flwr-home")
        port = free_port()
        log = workdir / "superlink.log"
        superlink = start(superlink_command(port, security, simulation), log, env)
        started.append(superlink)
        wait_for_port(port, superlink, log)
        address = f"{HOST}:{port}"
        write_connection(env, address, security)
        for key in security.node_keys:
            register(env, key)
        def start_again(i: int) -> list[subprocess.Popen]:
            processes = start_node(address, i, security, data_dir, data_folders[i] if data_folders else None,
                                   workdir, env, max(1, (os.cpu_count() or 1) // nodes), warm)
            started.extend(processes)  # stopped at the end too
            return processes

        children, workers = [], []
        for i in range(nodes):
            node, *worker = start_again(i)
            children.append(node)
            workers += worker
        yield Cluster(address, workdir, env, superlink, children, workers, start_again)
    finally:
        for sig in previous:  # a second Ctrl-C must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        stop(started)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame):
    raise Stopped(signum)  # exits 128 + signum through the CLI, as a shell reports it

