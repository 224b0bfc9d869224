"""A sweep's runs as tasks on an existing Ray cluster (`fedbridge sweep --ray ADDRESS`).

Each run is the same `fedbridge run` command `--jobs` starts, executed by a Ray task of one CPU on
whichever machine of the cluster has one free, so every machine needs fedbridge installed at the
same path and the sweep directory (and the data) on a filesystem they share. The command resumes a
run that has a config and skips none: the sweep decides what is left, as with `--jobs`. Ray comes
with the `flower` extra (Flower's simulation runs on it).
"""

import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from fedbridge.errors import ConfigError

REACH_SECONDS = 5.0
START = "start one with `ray start --head --port 6379` (and `ray start --address HEAD:6379` on the others)"


def _run(args: list[str], log: str, env: dict[str, str], preexec: Callable[[], None] | None) -> int:
    """On a Ray worker: the run's command, its output appended to the sweep's log of that run."""
    with open(log, "a") as out:
        return subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
                              stdin=subprocess.DEVNULL, preexec_fn=preexec).returncode


def connect(address: str) -> int:
    """Join the Ray cluster at HOST:PORT (its GCS address); the CPUs it has, i.e. runs at once."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray {address!r} is not HOST:PORT, the address of the cluster's head (e.g. 10.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=REACH_SECONDS).close()
    except OSError as e:
        raise ConfigError(f"--ray {address}: nothing answers there ({e.strerror or e}); give the address of a "
                          f"running Ray cluster's head, or {START}") from None
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray; install it with: pip install -e '.[flower]'") from None
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=False)
    except Exception as e:  # noqa: BLE001 - Ray's own errors vary by version; the message names the fix
        raise ConfigError(f"--ray {address} answers but is not a Ray cluster this Ray can join ({e}); {START}") from None
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


class Runs:
    """The runs under way on the cluster, so that Ctrl-C or a signal cancels them (each run's
    process dies with its Ray worker, keeping its finished rounds) and no queued one starts."""

    def __init__(self) -> None:
        import ray

        self._ray = ray
        self._task = ray.remote(num_cpus=1, max_retries=0)(_run)
        self._running: set = set()
        self._stopped = False

    def call(self, args: list[str], log: Path, env: dict[str, str], preexec: Callable[[], None] | None) -> int:
        if self._stopped:
            return -signal.SIGTERM
        ref = self._task.remote(args, str(log), env, preexec)
        self._running.add(ref)
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.TaskCancelledError:
            return -signal.SIGTERM
        finally:
            self._running.discard(ref)

    def stop(self) -> None:
        self._stopped = True
        for ref in list(self._running):
            self._ray.cancel(ref, force=True)

    def close(self) -> None:
        self._ray.shutdown()
