"""`fedbridge deploy`: the study of `fedbridge run`, with the strategy's rounds run through Flower.

The local and pooled baselines train on the simulation engine (they have no federation to deploy);
the strategy is submitted with `flwr run` to the SuperLink of a running cluster, once per seed, and
the rounds its ServerApp writes are fed to the study as they come, so the run directory and table
are the same as `fedbridge run`'s.
"""

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tomli_w
from rich.console import Console

from fedbridge.engines import simulation
from fedbridge.engines.flower import certificates, channel
from fedbridge.engines.flower.processes import CONNECTION, Cluster, Security, cluster, flwr
from fedbridge.engines.flower.server_app import flower_strategy, limits_problem
from fedbridge.errors import ConfigError, FedbridgeError
from fedbridge.experiment import Experiment
from fedbridge.federation import Federation
from fedbridge.optim import Params
from fedbridge.results import write_summary
from fedbridge.study import resolved_config, run_study

APP = Path(__file__).parent / "app"
CHECK_SECONDS = 15.0  # how often to ask Flower whether the run is still going


@dataclass(frozen=True)
class Faults:
    """How long to wait for nodes, and how few answers still make a round."""

    round_timeout: float = 300.0
    min_nodes: int = 1
    connect_timeout: float = 300.0

    def __post_init__(self) -> None:
        # the CLI makes Faults before the run directory exists, so a bad flag leaves nothing behind
        if problem := limits_problem(self.round_timeout, self.min_nodes, self.connect_timeout):
            raise ConfigError(f"--{problem}")


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


def status(cluster: Cluster, run_id: int) -> str:
    """Flower's status of a run, e.g. "running" or "finished:failed"."""
    proc = flwr(cluster.env, "ls", CONNECTION, "--run-id", str(run_id), "--format", "json", timeout=60)
    try:
        run = json.loads(proc.stdout)["runs"][0]
        return f"{run['status']} ({run['status-details']})"
    except (ValueError, KeyError, IndexError):
        return "unknown"


def follow(cluster: Cluster, run_id: int, out: Path, on_round: simulation.OnRound,
           patience: float) -> tuple[Params, list[dict]]:
    """Hand each round the ServerApp writes to `on_round` until it ends; its final global weights and
    the clients it left out of rounds (channel.write_end)."""
    done, params, last, checked = 0, None, time.monotonic(), time.monotonic()
    ended = None  # when Flower said the run finished, in case the ServerApp died before writing its end
    while True:
        cluster.alive()
        end = channel.read_end(out)  # read before the rounds, which are all written by then
        for r in channel.read_rounds(out, done):
            on_round(r.number, r.records, r.state)
            done, params, last = r.number, r.state.params, time.monotonic()
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


def flower_train(cluster: Cluster, faults: Faults, left_out: list[dict] | None = None):
    """A `train` for study.run_study: the strategy through the cluster, the baselines in process.
    Each client a run left out of a round is added to `left_out`, with the run's seed and method."""

    def train(method: str, federation: Federation, exp: Experiment, seed: int,
              on_round: simulation.OnRound = lambda r, records, state: None, resume=None) -> Params:
        if method != exp.strategy.name:
            return simulation.train(method, federation, exp, seed, on_round, **({"resume": resume} if resume else {}))
        if resume is not None:
            raise FedbridgeError("a deployed run cannot be resumed; start it again with `fedbridge deploy`")
        out = cluster.workdir / f"seed{seed}-{method}"
        out.mkdir(parents=True)
        (out / "config.toml").write_text(tomli_w.dumps(resolved_config(exp)))
        run_config = out / "run-config.toml"
        run_config.write_text(tomli_w.dumps({
            "config": str(out / "config.toml"), "seed": seed, "out-dir": str(out),
            "round-timeout": faults.round_timeout, "min-nodes": faults.min_nodes,
            "connect-timeout": faults.connect_timeout,
        }))
        run_id = submit(cluster, run_config)
        # a round may take a connect, a train and an evaluate step at their timeouts, plus start-up
        patience = faults.connect_timeout + 2 * faults.round_timeout + 120
        params, missing = follow(cluster, run_id, out, on_round, patience)
        if left_out is not None:
            left_out.extend({"seed": seed, "method": method, **entry} for entry in missing)
        return params

    return train


def deploy_study(exp: Experiment, out: Path, data_dir: Path | None, console: Console, nodes: int,
                 tls: bool = False, faults: Faults = Faults()) -> dict:
    """Start a SuperLink and one SuperNode per client on loopback, run the study through them, stop them.

    The summary is `fedbridge run`'s plus `left_out`: every client missing from a round's step, with
    why; they are printed too, as a run that went on without a client still exits 0."""
    flower_strategy(exp)
    if nodes != exp.n_clients:
        raise ConfigError(f"--nodes {nodes}: the experiment has {exp.n_clients} clients and each runs on its own "
                          f"SuperNode; use --nodes {exp.n_clients}")
    if faults.min_nodes > nodes:
        raise ConfigError(f"--min-nodes {faults.min_nodes} is more than the {nodes} nodes; "
                          f"use at most --min-nodes {nodes}")
    workdir = Path(tempfile.mkdtemp(prefix="fedbridge-deploy-"))
    security = certificates.make(workdir / "certificates", nodes) if tls else Security()
    failed = False
    left_out: list[dict] = []
    try:
        with cluster(nodes, workdir, security, data_dir) as running:
            summary = run_study(exp, out, data_dir, console, train=flower_train(running, faults, left_out))
        for line in left_out_lines(left_out):
            console.print(f"[yellow]warning:[/yellow] {line}")
        summary["left_out"] = left_out
        write_summary(out, summary)
        return summary
    except Exception:
        failed = True
        console.print(f"the SuperLink's and SuperNodes' logs are kept in {workdir}")
        raise
    finally:
        if not failed:  # finished, or stopped by the user: nothing to look into
            shutil.rmtree(workdir, ignore_errors=True)


def left_out_lines(left_out: list[dict]) -> list[str]:
    """One line per client and run, e.g. "client 2 was left out of seed 0 fedavg round 2 (train: no answer
    within 30 s)": its results for those rounds are missing from metrics.jsonl and the table."""
    by_client: dict[tuple, list[dict]] = {}
    for entry in left_out:
        by_client.setdefault((entry["seed"], entry["method"], entry["client"]), []).append(entry)
    return [
        f"client {client} was left out of seed {seed} {method} "
        + ", ".join(f"round {e['round']} ({e['step']}: {e['reason']})" for e in entries)
        + "; its results for those rounds are missing"
        for (seed, method, client), entries in sorted(by_client.items())
    ]
