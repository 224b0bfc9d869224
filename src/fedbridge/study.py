"""One study: for each seed, build the federation and train every method; write the run directory,
checkpointing as it goes so an interrupted study can be resumed (fedbridge.resume)."""

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, TaskID

from fedbridge import client_state, detection, events, lock, results
from fedbridge.bounds import check_fits
from fedbridge.engines import simulation
from fedbridge.errors import ConfigError
from fedbridge.experiment import Experiment, Method, Role
from fedbridge.federation import Federation, build_federation, client_rows, resolve_dataset
from fedbridge.progress import progress_bar, say
from fedbridge.resume import Position, config_fingerprint, fresh, resolved_config, restore
from fedbridge.schema import Diagnostic, Record
from fedbridge.strategies.api import ServerState
from fedbridge.summary import summarize

# train(method, federation, exp, seed, on_round, resume=None) -> the models last evaluated: the
# simulation engine's (stacked, or a store of the clients' own), or another transport's with the same
# signature (fedbridge.deploy's)
Train = Callable[..., client_state.Models]


@dataclass
class _Writer:
    """What the study keeps while it trains one pair after another, and writes as it goes."""

    out: Path
    exp: Experiment
    position: Position
    progress: Progress
    task: TaskID
    quiet: bool
    note: str | None
    fingerprint: str
    final: list[Record] = field(default_factory=list)  # the last round's records of every pair
    _last: int = 0

    def pair(self, train: Train, federation: Federation, seed: int, method: Method) -> None:
        """Train one (seed, method), or continue it from the checkpoint, and save its weights."""
        current = self.position.current
        resume = current if current and (current.seed, current.method) == (seed, method.name) else None
        start = time.perf_counter() - (resume.elapsed if resume else 0.0)
        self._last = resume.round if resume else 0  # the round the progress bar shows
        rounds, seconds, curves = self.exp.train.rounds, self.position.seconds, self.position.detection

        def on_round(r: int, records: list[Record], diagnostics: list[Diagnostic], state: ServerState) -> None:
            results.append_lines(self.out, results.METRICS, records)
            if method.role is not Role.POOLED:  # pooled training's one participant is nobody's client
                results.append_lines(self.out, results.DIAGNOSTICS, diagnostics)
            if r == rounds:
                self.final.extend(records)
                self._detection(federation, seed, method)
            elapsed = time.perf_counter() - start
            client_state.checkpointed(state.extra, r, self.out, lambda extra: results.save_checkpoint(self.out, {
                "seed": seed, "method": method.name, "round": r, "params": state.params, "extra": extra,
                "seconds": seconds, "detection": curves, "elapsed": elapsed, "note": self.note,
                "config": self.fingerprint,
            }))
            own = [x["accuracy"] for x in records if x["test_set"] == "own"]
            self.progress.update(self.task, advance=r - self._last, status=(
                f"seed {seed} {method.name} round {r}: own test {100 * sum(own) / len(own):.1f}%"))
            self._last = r

        # only when resuming, so a transport without resume support still runs fresh studies
        more = {"resume": (resume.round, resume.state)} if resume else {}
        # a strategy's per-client state too large for memory keeps its files here (client_state)
        state_files = self.out / client_state.FOLDER / f"seed{seed}-{method.name}"
        with client_state.files_in(state_files):
            params = train(method, federation, self.exp, seed, on_round, **more)
        seconds[method.name].append(time.perf_counter() - start)
        results.save_weights(self.out, seed, method.name, params)
        # a resume keeps a pair whose weights are saved, so its state is needed no more
        shutil.rmtree(state_files, ignore_errors=True)
        if self.exp.log.tensorboard:
            events.write(self.out, seed, method.name, results.read_metrics(self.out))
        clean = [r["accuracy"] for r in self.final
                 if r["seed"] == seed and r["method"] == method.name and r["test_set"] == "clean"]
        say(self.progress, self.quiet,
            f"seed {seed} · {method.name:<7} · {rounds} rounds in {seconds[method.name][-1]:.1f} s"
            f" · clean test {100 * sum(clean) / len(clean):.1f}% (mean over clients)")

    def _detection(self, federation: Federation, seed: int, method: Method) -> None:
        """How well the pair's diagnostics found the noisy clients, once it has all its rounds."""
        noisy = [c.profile != "clean" for c in federation.clients]
        if method.role is Role.FEDERATED and (curves := detection.pair_curves(
                results.read_diagnostics(self.out), seed, method.name, noisy, self.exp.train.rounds)):
            self.position.detection.setdefault(str(seed), {})[method.name] = curves


def _engines(out: Path, exp: Experiment, engine: str, switch: bool) -> dict[str, str]:
    """What trains each method: the baselines always run in process, the strategy on the run's engine;
    a run resumed on another engine says so."""
    recorded = results.read_engine(out) if (out / results.CONFIG).exists() else engine
    if recorded != engine and not switch:
        raise ConfigError(
            f"{out} trains its strategy on {recorded}, and a {recorded} run cannot be continued there yet; to finish "
            f"it on the {engine} engine instead (summary.json says so): fedbridge run --resume {out} --engine {engine}"
        )
    label = recorded if recorded == engine else f"{recorded}, resumed on {engine}"
    return {m.name: label if m.role is Role.FEDERATED and m.name == exp.strategy.name else "simulation"
            for m in exp.methods}


def run_study(
    exp: Experiment, out: Path, data_dir: Path | None, console: Console, train: Train = simulation.train_models,
    *, resume: bool = False, quiet: bool = False, engine: str = "simulation", switch_engine: bool = False,
) -> dict:
    """Train every method for every seed with `train` and write the run directory.

    After each evaluated round the server state is checkpointed; with `resume`, `out` is an
    interrupted run of this same `exp` and only what it had not finished is trained. `engine` names
    what `train` runs the strategy on ("simulation", or "flower" for `fedbridge deploy`); a resume on
    another engine than the run's is refused unless `switch_engine`, and is then marked in summary.json.
    """
    dataset, exp, note = resolve_dataset(exp, data_dir)
    check_fits(exp, dataset)  # before every seed's partition is drawn and held, and before the run directory
    events.check(exp.log.tensorboard)
    seeds = [exp.seed + i for i in range(exp.seeds)]
    # a partition the data cannot give (too few samples, too large a test fraction) fails here,
    # before a run directory exists that would block re-running with the value fixed
    rows = {seed: client_rows(dataset.train_labels, exp, seed, dataset) for seed in seeds}
    if not resume:
        results.create_run_dir(out)
    # one writer at a time: a second run or resume of this directory is refused before restore()
    # cuts its metrics back or anything else is written (the lock file lives in the directory)
    with lock.hold(out, f"continue it with: fedbridge run --resume {out}"):
        engines = _engines(out, exp, engine, switch_engine)
        if resume:
            position = restore(out, exp, seeds, dataset)
            note = position.note or note
        else:
            position = fresh(exp)
            results.write_config(out, resolved_config(exp))
            results.write_engine(out, engine)
        if note:
            console.print(f"[yellow]note:[/yellow] {note}")
        for why in position.retrained:
            console.print(f"[yellow]warning:[/yellow] {why}")
        rounds = exp.train.rounds
        with progress_bar(console, "rounds", quiet) as progress:
            task = progress.add_task(exp.name, total=len(seeds) * len(exp.methods) * rounds,
                                     completed=position.rounds_done(rounds), status="")
            writer = _Writer(out, exp, position, progress, task, quiet, note, config_fingerprint(exp))
            if resume:
                writer.final = [r for r in results.read_metrics(out) if r["round"] == rounds]
            for seed in seeds:
                todo = [m for m in exp.methods if (seed, m.name) not in position.finished]
                if todo:
                    federation = build_federation(dataset, exp, seed, rows[seed])
                    # a deployed strategy's run was submitted at the start and trains on its nodes
                    # meanwhile: the in-process methods go first, so they overlap it (stable: on
                    # the simulation engine the order stays exp.methods')
                    for method in sorted(todo, key=lambda m: engines[m.name] != "simulation"):
                        writer.pair(train, federation, seed, method)
        summary = summarize(exp, dataset, note, seeds, writer.final, position.seconds, position.detection, engines)
        results.write_summary(out, summary)
        (out / results.CHECKPOINT).unlink(missing_ok=True)
        client_state.remove(out)
    return summary
