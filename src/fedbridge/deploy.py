"""`fedbridge deploy`: the study of `fedbridge run`, with the strategy's rounds run through Flower.

The local and pooled baselines train on the simulation engine (they have no federation to deploy);
the strategy is submitted with `flwr run` to the SuperLink of a running cluster, once per seed, and
the rounds its ServerApp writes are fed to the study as they come, so the run directory and table
are the same as `fedbridge run`'s.
"""

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
from rich.console import Console

from fedbridge import lock
from fedbridge.client_state import Models
from fedbridge.engines import simulation
from fedbridge.engines.flower import certificates as throwaway
from fedbridge.engines.flower import channel, hosts
from fedbridge.engines.flower.processes import Cluster, Security, cluster
from fedbridge.engines.flower.secagg import SecAgg
from fedbridge.engines.flower.secagg import check as secagg_check
from fedbridge.engines.flower.server_app import deployable, limits_problem
from fedbridge.engines.flower.submit import follow, stop_run, submit
from fedbridge.errors import ConfigError, FedbridgeError
from fedbridge.experiment import Experiment, Method, Role
from fedbridge.federation import Federation
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


@dataclass
class FlowerRuns:
    """A `train` for study.run_study (`flower_train`): the strategy through the cluster, the
    baselines in process. Each client a run left out of a round is added to `left_out`, with the
    run's seed and method; `train_ahead`: the App's run config of that name (benchmarks.deploy's
    "before" turns it off)."""

    cluster: Cluster
    faults: Faults
    left_out: list[dict] | None = None
    train_ahead: bool = True
    secagg: SecAgg | None = None  # train through SecAgg+ (engines/flower/secagg.py)
    # runs submitted before the study asked for them (start_all): (seed, method) -> (run id, out-dir)
    started: dict[tuple[int, str], tuple[int, Path]] = field(default_factory=dict)

    def start(self, method: Method, exp: Experiment, seed: int, resume=None) -> tuple[int, Path]:
        """Submit the strategy's run of `seed`; its run id and the folder its ServerApp writes."""
        out = self.cluster.workdir / f"seed{seed}-{method.name}{'-resumed' if resume else ''}"
        out.mkdir(parents=True)
        (out / "config.toml").write_text(tomli_w.dumps(resolved_config(exp)))
        run_config = out / "run-config.toml"
        settings = {
            "config": str(out / "config.toml"), "seed": seed, "out-dir": str(out),
            "round-timeout": self.faults.round_timeout, "min-nodes": self.faults.min_nodes,
            "connect-timeout": self.faults.connect_timeout, "train-ahead": self.train_ahead,
        }
        if self.secagg is not None:
            settings.update({"secagg": True, **self.secagg.run_config()})
        if resume is not None:  # the ServerApp continues after round r from the study's checkpoint
            channel.write_resume(out, *resume)
            settings["resume"] = str(out / channel.RESUME)
        run_config.write_text(tomli_w.dumps(settings))
        return submit(self.cluster, run_config), out

    def start_all(self, exp: Experiment) -> None:
        """Submit every seed's strategy run now: the nodes work on them while the baselines train
        in this process (a deployed round mostly waits on Flower's polling), and the study follows
        each run when it gets to it."""
        method = exp.method(exp.strategy.name)
        for i in range(exp.seeds):
            self.started[(exp.seed + i, method.name)] = self.start(method, exp, exp.seed + i)

    def __call__(self, method: Method, federation: Federation, exp: Experiment, seed: int,
                 on_round: OnRound = lambda r, records, diagnostics, state: None, resume=None) -> Models:
        if method.role is not Role.FEDERATED or method.name != exp.strategy.name:
            return simulation.train_models(method, federation, exp, seed, on_round, **({"resume": resume} if resume else {}))
        early = self.started.pop((seed, method.name), None)
        if early and (resume or (early[1] / "config.toml").read_text() != tomli_w.dumps(resolved_config(exp))):
            stop_run(self.cluster, early[0])  # the study runs another experiment (its data fell back)
            early = None
        run_id, out = early or self.start(method, exp, seed, resume)
        # a round may take a connect, a train and an evaluate step at their timeouts, plus start-up
        patience = self.faults.connect_timeout + 2 * self.faults.round_timeout + 120
        params, missing = follow(self.cluster, run_id, out, on_round, patience)
        if self.left_out is not None:
            self.left_out.extend({"seed": seed, "method": method.name, **entry} for entry in missing)
        return params


def flower_train(cluster: Cluster, faults: Faults, left_out: list[dict] | None = None,
                 train_ahead: bool = True, secagg: SecAgg | None = None) -> FlowerRuns:
    return FlowerRuns(cluster, faults, left_out, train_ahead, secagg)


def deploy_study(exp: Experiment, out: Path, data_dir: Path | None, console: Console, nodes: int,
                 tls: bool = False, faults: Faults = Faults(), resume: bool = False,
                 superlink: str | None = None, certificates: Path | None = None, secagg: SecAgg | None = None) -> dict:
    """Start a SuperLink and one SuperNode per client on loopback, run the study through them, stop them.

    The summary is `fedbridge run`'s plus `left_out`: every client missing from a round's step, with
    why; they are printed too, as a run that went on without a client still exits 0. With `resume`,
    `out` is an interrupted deployment: its finished rounds are kept and the rest run on a new cluster
    (the clients left out before the interruption are not listed again). With `superlink`, the
    strategy runs on that SuperLink's SuperNodes instead (other machines: hosts.py), trusting the
    ca.crt in `certificates`. With `secagg`, each round's training goes through SecAgg+."""
    deployable(exp)
    secagg_check(exp, secagg)
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
                train = flower_train(running, faults, left_out, secagg=secagg)
                if not resume:  # a resumed study knows only inside which rounds are left
                    train.start_all(exp)
                summary = run_study(exp, out, data_dir, console, train=train, engine="flower", resume=resume)
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
