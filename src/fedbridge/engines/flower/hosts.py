"""Real machines: a SuperLink on one, a SuperNode with its own data on each of the others, and the
study submitted from wherever the user is (`fedbridge deploy --serve-superlink`, `--serve-supernode`,
`--superlink`).

A certificates folder is what `python -m fedbridge.engines.flower.certificates` makes (or the same
names from your own CA): `ca.crt` on every machine; `server.crt` and `server.key` on the
SuperLink's, which registers every `node-*.pub` in it; `node-I` (the private key) on node I's.
Without a folder everything runs insecure, for a network you trust. Every address is checked
before anything starts, so an unreachable SuperLink or a certificate that does not fit is a
message naming it, not a node retrying forever.
"""

import socket
import ssl
import tempfile
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from fedbridge.engines.flower.processes import (
    HOST, Cluster, Security, flower_env, register, start, start_node, stop, superlink_command, wait_for_port,
    write_connection,
)
from fedbridge.errors import ConfigError, FedbridgeError

MAKE = "make them with: python -m fedbridge.engines.flower.certificates FOLDER --nodes N --host SUPERLINK_HOST"
REACH_SECONDS = 10.0


def address_parts(address: str, flag: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{flag} {address!r} is not HOST:PORT (e.g. 10.0.0.5:9093)")
    return host.strip("[]"), int(port)


def needed(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise ConfigError(f"--certificates {folder} has no {name}; {MAKE}")
    return path.resolve()


def reach(address: str, ca: Path | None, flag: str = "--superlink") -> None:
    """Connect to the SuperLink once (and shake hands with TLS against `ca`), or say why not."""
    host, port = address_parts(address, flag)
    try:
        with socket.create_connection((host, port), timeout=REACH_SECONDS) as raw:
            if ca is not None:
                context = ssl.create_default_context(cafile=str(ca))
                context.set_alpn_protocols(["h2"])  # the SuperLink speaks gRPC
                with context.wrap_socket(raw, server_hostname=host):
                    pass
    except ssl.SSLError as e:
        raise ConfigError(f"the SuperLink at {address} has a certificate that {ca} does not vouch for ({e.reason}); "
                          f"give the ca.crt its certificate was made with, and a certificate made for --host {host}") from None
    except OSError as e:
        raise ConfigError(f"cannot reach the SuperLink at {address} ({e.strerror or e}); is it running "
                          "(fedbridge deploy --serve-superlink HOST:PORT) and is the port open to this machine?") from None


def serve_superlink(address: str, folder: Path | None, console: Console) -> None:
    """A SuperLink on this machine until Ctrl-C, registering the folder's SuperNode keys."""
    host, port = address_parts(address, "--serve-superlink")
    if folder is None:
        security = Security()
    else:
        keys = sorted(p.with_suffix("") for p in folder.glob("node-*.pub"))
        if not keys:
            raise ConfigError(f"--certificates {folder} has no node-*.pub to register; {MAKE}")
        security = Security(needed(folder, "ca.crt"), needed(folder, "server.crt"), needed(folder, "server.key"),
                            [k.resolve() for k in keys])
    workdir = Path(tempfile.mkdtemp(prefix="fedbridge-superlink-"))
    env = flower_env(workdir / "flwr-home")
    log = workdir / "superlink.log"
    superlink = start(superlink_command(port, security, host=host), log, env)
    try:
        local = HOST if host in ("0.0.0.0", "::") else host
        wait_for_port(port, superlink, log, host=local)
        write_connection(env, f"{local}:{port}", security)
        for key in security.node_keys:
            register(env, key)
        console.print(f"SuperLink on {host}:{port} ({'TLS, ' + str(len(security.node_keys)) + ' SuperNode keys registered' if folder else 'insecure'}); "
                      f"its log: {log}; Ctrl-C stops it")
        superlink.wait()
        raise FedbridgeError(f"the SuperLink exited (code {superlink.returncode}); its log: {log}")
    finally:
        stop([superlink])


def serve_supernode(superlink: str, partition: int, folder: Path | None, data_folder: Path | None,
                    data_dir: Path | None, console: Console) -> None:
    """A SuperNode of client `partition + 1` and its ClientApp process on this machine until Ctrl-C."""
    ca = needed(folder, "ca.crt") if folder else None
    key = needed(folder, f"node-{partition}") if folder else None
    if data_folder is not None and not data_folder.exists():
        raise ConfigError(f"--data-folder {data_folder} does not exist; give this node's own data: the folder of its "
                          "IDX files, or the file or folder in the format the experiment's [data] names")
    reach(superlink, ca)
    workdir = Path(tempfile.mkdtemp(prefix="fedbridge-supernode-"))
    env = flower_env(workdir / "flwr-home")
    processes = start_node(superlink, partition, Security(ca_cert=ca), data_dir, data_folder and data_folder.resolve(),
                           workdir, env, 0, key=key)
    log = workdir / f"supernode-{partition}.log"
    try:
        console.print(f"SuperNode of client {partition + 1} (partition-id={partition}) connecting to {superlink}; "
                      f"its log: {log}; Ctrl-C stops it")
        processes[0].wait()
        said = log.read_text(errors="replace")
        why = (f"the SuperLink refused its key {key}: register {key}.pub there (put it in the SuperLink's "
               "--certificates folder and start it again)") if "Failed to activate SuperNode" in said else f"see {log}"
        raise FedbridgeError(f"the SuperNode exited (code {processes[0].returncode}); {why}")
    finally:
        stop(processes)


def check(address: str, folder: Path | None) -> Path | None:
    """The CA to trust the SuperLink at `address` with (None: insecure), once it answered through it."""
    ca = needed(folder, "ca.crt") if folder else None
    reach(address, ca)
    return ca


@contextmanager
def remote(address: str, folder: Path | None, workdir: Path):
    """A Cluster for the SuperLink at `address` on another machine: submit and follow runs there."""
    ca = check(address, folder)
    env = flower_env(workdir / "flwr-home")
    write_connection(env, address, Security(ca_cert=ca))
    yield Cluster(address, workdir, env, None, [])
