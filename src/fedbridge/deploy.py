"""`fedbridge deploy`: the study of `fedbridge run`, with the strategy's rounds run through Flower.

The local and pooled baselines train on the simulation engine (they have no federation to deploy);
the strategy is submitted with `flwr run` to the SuperLink of a running cluster, once per seed, and
the rounds its ServerApp writes are fed to the study as they come, so the run directory and table
are the same as `fedbridge run`'s.
"""

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tomli_w
from rich.console import Console

from fedbridge import lock
from fedbridge.engines import simulation
from fedbridge.engines.flower import certificates as throwaway
from fedbridge.engines.flower import channel, hosts
from fedbridge.engines.flower.processes import Cluster, Security, cluster
from fedbridge.engines.flower.server_app import deployable, limits_problem
from fedbridge.engines.flower.submit import follow, submit
from fedbridge.errors import ConfigError, FedbridgeError
from fedbridge.experiment import Experiment, Method, Role
from fedbridge.federation import Federation
from fedbridge.optim import Params
from fedbridge.results import CHECKPOINT, create_run_dir, write_summary
from fedbridge.resume import resolved_config
from fedbridge.rounds import OnRound
from fedbridge.study import run_study


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


def flower_train(cluster: Cluster, faults: Faults, left_out: list[dict] | None = None, train_ahead: bool = True):
    """A `train` for study.run_study: the strategy through the cluster, the baselines in process.
    Each client a run left out of a round is added to `left_out`, with the run's seed and method;
    `train_ahead`: the App's run config of that name (benchmarks.deploy's "before" turns it off)."""

    def train(method: Method, federation: Federation, exp: Experiment, seed: int,
              on_round: OnRound = lambda r, records, diagnostics, state: None, resume=None) -> Params:
        if method.role is not Role.FEDERATED or method.name != exp.strategy.name:
            return simulation.train(method, federation, exp, seed, on_round, **({"resume": resume} if resume else {}))
        out = cluster.workdir / f"seed{seed}-{method.name}"
        out.mkdir(parents=True)
        (out / "config.toml").write_text(tomli_w.dumps(resolved_config(exp)))
        run_config = out / "run-config.toml"
        settings = {
            "config": str(out / "config.toml"), "seed": seed, "out-dir": str(out),
            "round-timeout": faults.round_timeout, "min-nodes": faults.min_nodes,
            "connect-timeout": faults.connect_timeout, "train-ahead": train_ahead,
        }
        if resume is not None:  # the ServerApp continues after round r from the study's checkpoint
            channel.write_resume(out, *resume)
            settings["resume"] = str(out / channel.RESUME)
        run_config.write_text(tomli_w.dumps(settings))
        run_id = submit(cluster, run_config)
        # a round may take a connect, a train and an evaluate step at their timeouts, plus start-up
        patience = faults.connect_timeout + 2 * faults.round_timeout + 120
        params, missing = follow(cluster, run_id, out, on_round, patience)
        if left_out is not None:
            left_out.extend({"seed": seed, "method": method.name, **entry} for entry in missing)
        return params

    return train


def deploy_study(exp: Experiment, out: Path, data_dir: Path | None, console: Console, nodes: int,
                 tls: bool = False, faults: Faults = Faults(), resume: bool = False,
                 superlink: str | None = None, certificates: Path | None = None) -> dict:
    """Start a SuperLink and one SuperNode per client on loopback, run the study through them, stop them.

    The summary is `fedbridge run`'s plus `left_out`: every client missing from a round's step, with
    why; they are printed too, as a run that went on without a client still exits 0. With `resume`,
    `out` is an interrupted deployment: its finished rounds are kept and the rest run on a new cluster
    (the clients left out before the interruption are not listed again). With `superlink`, the
    strategy runs on that SuperLink's SuperNodes instead (other machines: hosts.py), trusting the
    ca.crt in `certificates`."""
    deployable(exp)
    if superlink is None and nodes != exp.n_clients:
        raise ConfigError(f"--nodes {nodes}: the experiment has {exp.n_clients} clients and each runs on its own "
                          f"SuperNode; use --nodes {exp.n_clients}")
    if faults.min_nodes > nodes:
        raise ConfigError(f"--min-nodes {faults.min_nodes} is more than the {nodes} nodes; "
                          f"use at most --min-nodes {nodes}")
    if superlink is not None:  # unreachable, or a certificate that does not fit: before the run directory
        hosts.check(superlink, certificates)
    # an existing run is refused, and a second writer, before any Flower process or temp folder exists;
    # the study takes the lock again inside, at no cost
    if not resume:
        create_run_dir(out)
    with lock.hold(out, f"continue it with: fedbridge deploy --resume {out}"):
        workdir = Path(tempfile.mkdtemp(prefix="fedbridge-deploy-"))
        failed = False
        left_out: list[dict] = []
        try:
            if superlink is None:
                security = throwaway.make(workdir / "certificates", nodes) if tls else Security()
                running_cluster = cluster(nodes, workdir, security, data_dir)
            else:
                running_cluster = hosts.remote(superlink, certificates, workdir)
            with running_cluster as running:
                summary = run_study(exp, out, data_dir, console, train=flower_train(running, faults, left_out),
                                    engine="flower", resume=resume)
            for line in left_out_lines(left_out):
                console.print(f"[yellow]warning:[/yellow] {line}")
            summary["left_out"] = left_out
            write_summary(out, summary)
            return summary
        except FedbridgeError as e:
            failed = True
            console.print(f"the SuperLink's and SuperNodes' logs are kept in {workdir}")
            if (out / CHECKPOINT).exists():  # some round finished: the rest can follow on a new cluster
                resumable = FedbridgeError(f"{e}\nthe finished rounds are kept; to continue from the last one: "
                                           f"fedbridge deploy --resume {out}")
                resumable.exit_code = e.exit_code
                raise resumable from None
            raise
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
