"""Running the App on a SuperLink: submit it with `flwr run`, ask Flower how it is going, and hand
each round the ServerApp writes (channel.py) to the study as it comes."""

import json
import time
from pathlib import Path

from fedbridge.engines.flower import channel
from fedbridge.engines.flower.processes import CONNECTION, Cluster, flwr
from fedbridge.errors import FedbridgeError
from fedbridge.optim import Params
from fedbridge.rounds import OnRound

APP = Path(__file__).parent / "app"
# how often to ask Flower whether the run is still going: `flwr ls` is a process of its own that
# takes a core for about a second, which on a small machine the nodes' training would miss
CHECK_SECONDS = 30.0


def submit(cluster: Cluster, run_config: Path) -> int:
    """Start the App on the SuperLink; the run id."""
    proc = flwr(cluster.env, "run", str(APP), CONNECTION, "--run-config", str(run_config), "--format", "json")
    try:
        answer = json.loads(proc.stdout[proc.stdout.index("{"):])
    except ValueError:
        answer = {}
    if proc.returncode != 0 or not answer.get("success"):
        raise FedbridgeError(f"`flwr run` could not start the run: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return int(answer["run-id"])


def stop_run(cluster: Cluster, run_id: int) -> None:
    """Ask the SuperLink to stop a run no one will follow."""
    flwr(cluster.env, "stop", str(run_id), CONNECTION, timeout=60)


def status(cluster: Cluster, run_id: int) -> str:
    """Flower's status of a run, e.g. "running" or "finished:failed"."""
    proc = flwr(cluster.env, "ls", CONNECTION, "--run-id", str(run_id), "--format", "json", timeout=60)
    try:
        run = json.loads(proc.stdout)["runs"][0]
        return f"{run['status']} ({run['status-details']})"
    except (ValueError, KeyError, IndexError):
        return "unknown"


def follow(cluster: Cluster, run_id: int, out: Path, on_round: OnRound,
           patience: float) -> tuple[Params, list[dict]]:
    """Hand each round the ServerApp writes to `on_round` until it ends; its final global weights and
    the clients it left out of rounds (channel.write_end)."""
    done, params, last, checked = 0, None, time.monotonic(), time.monotonic()
    ended = None  # when Flower said the run finished, in case the ServerApp died before writing its end
    while True:
        end = channel.read_end(out)  # read before the rounds, which are all written by then
        for r in channel.read_rounds(out, done):
            on_round(r.number, r.records, r.diagnostics, r.state)
            done, params, last = r.number, r.state.params, time.monotonic()
        cluster.alive()  # after the rounds: those written before the SuperLink died are kept
        if end is not None:
            if not end["ok"]:
                kept = f"; rounds 1-{done} are kept in the run directory's metrics.jsonl" if done else ""
                raise FedbridgeError(f"the Flower run stopped: {end['message']}{kept}")
            return params, end["left_out"]
        if not channel.connected(out):  # the ServerApp waits for every client's node: a dead one never comes
            cluster.nodes_alive()
        now = time.monotonic()
        if now - checked > CHECK_SECONDS:
            checked, said = now, status(cluster, run_id)
            ended = ended or (now if said.startswith("finished") else None)
        if ended and now - ended > CHECK_SECONDS or now - last > patience:
            raise FedbridgeError(
                f"the Flower run ended without finishing its rounds (Flower says: {status(cluster, run_id)}); "
                f"its log: FLWR_HOME={cluster.env['FLWR_HOME']} flwr log {run_id} {CONNECTION}; "
                f"SuperLink and SuperNode logs in {cluster.workdir}"
            )
        time.sleep(0.2)
