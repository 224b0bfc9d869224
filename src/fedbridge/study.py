"""One study: for each seed, build the federation and train every method; write the run directory,
checkpointing as it goes so an interrupted study can be resumed."""

import hashlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

import fedbridge
from fedbridge import detection, results
from fedbridge.data.idx import Dataset, load_dataset
from fedbridge.engines import simulation
from fedbridge.errors import ConfigError, DataError, FedbridgeError
from fedbridge.experiment import Experiment, Sizes, load_experiment
from fedbridge.federation import build_federation, client_rows
from fedbridge.progress import progress_bar, say
from fedbridge.strategies.api import ServerState


def resolve_dataset(
    exp: Experiment, data_dir: Path | None, load: Callable[..., Dataset] = load_dataset
) -> tuple[Dataset, Experiment, str | None]:
    """The dataset to run on, the experiment adjusted to it, and a note when we fell back."""
    try:
        return load(exp.data.name, data_dir or exp.data.dir), exp, None
    except DataError as e:
        if exp.data.fallback is None or exp.data.name == exp.data.fallback:
            raise
        reason = str(e)
    dataset = load(exp.data.fallback)
    note = (
        f"{exp.data.name} could not be used, so this study ran on {dataset.source} instead "
        f"({len(dataset.train_labels)} train / {len(dataset.test_labels)} test images): its figures are "
        f"not MNIST figures. To run on {exp.data.name}, point FEDBRIDGE_DATA or --data-dir at a folder "
        f"holding {exp.data.name}/ (see README, 'Data'). Why: {reason}"
    )
    p = exp.partition
    if isinstance(p, Sizes) and sum(p.sizes) > len(dataset.train_labels):
        # keep the clients' proportions on the smaller dataset
        total = len(dataset.train_labels)
        scaled = [max(1, s * total // sum(p.sizes)) for s in p.sizes]
        note += f" Partition sizes scaled from {p.sizes} to {scaled}."
        exp = exp.model_copy(update={"partition": Sizes(name="sizes", sizes=scaled)})
    exp = exp.model_copy(update={"data": exp.data.model_copy(update={"name": exp.data.fallback})})
    return dataset, exp, note


# A final test loss above this (or NaN) means training blew up, usually from too large a learning rate:
# a uniform guess scores ln(10) = 2.3 nats, and models that learned anything score below 1.
DIVERGED_LOSS = 1e3


def resolved_config(exp: Experiment) -> dict:
    return exp.model_dump(mode="json", exclude_none=True)


def config_fingerprint(exp: Experiment) -> str:
    """What a checkpoint was made with, so a resume can tell that config.toml was edited since."""
    return hashlib.sha256(json.dumps(resolved_config(exp), sort_keys=True).encode()).hexdigest()


def summarize(
    exp: Experiment, dataset: Dataset, note: str | None, seeds: list[int], final: list[dict],
    seconds: dict[str, list[float]], curves: dict[str, dict[str, dict[str, list]]],
) -> dict:
    """summary.json: what ran, on what, the long-format table of the final round's metrics and, for
    each federated method, how well each noisy-client detection score found the noisy clients."""
    by_method: dict[str, dict[str, list]] = {}
    for per_method in curves.values():
        for method, scores in per_method.items():
            for score, curve in scores.items():
                by_method.setdefault(method, {}).setdefault(score, []).append(curve)
    return {
        "name": exp.name,
        "dataset": dataset.name,
        "data_source": dataset.source,
        "data_note": note,
        "seeds": seeds,
        "rounds": exp.train.rounds,
        "methods": exp.methods,
        "strategy": exp.strategy.name,
        "seconds_per_method": {m: results.mean_std(s)[0] for m, s in seconds.items() if s},
        # float32 sums inside the kernels run in another order on another thread count
        "threads": torch.get_num_threads(),
        "versions": {"fedbridge": fedbridge.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "table": results.table(final),
        "diverged": [{"seed": s, "method": m} for s, m in sorted(
            {(r["seed"], r["method"]) for r in final if not r["loss"] <= DIVERGED_LOSS})],
        "detection": {m: {score: detection.summary(c) for score, c in scores.items()} for m, scores in by_method.items()},
    }


@dataclass
class Position:
    """How far a run directory got: what to skip and where to pick up on resume."""

    finished: set[tuple[int, str]] = field(default_factory=set)  # (seed, method) with saved weights
    current: tuple[int, str, int, ServerState] | None = None  # (seed, method, round, state) to continue
    seconds: dict[str, list[float]] = field(default_factory=dict)  # training time of finished pairs
    # finished pairs' detection ROC-AUC per round: {seed: {method: {score: [auc per round]}}}
    detection: dict[str, dict[str, dict[str, list]]] = field(default_factory=dict)
    elapsed: float = 0.0  # time already spent on `current`
    note: str | None = None


def load_run_experiment(run: Path) -> Experiment:
    """The experiment a run directory was started with (its resolved config.toml)."""
    if not (Path(run) / results.CONFIG).is_file():
        raise FedbridgeError(
            f"{run} has no {results.CONFIG}, so it is not a run directory; "
            "give the folder `fedbridge run` printed (its --out)"
        )
    return load_experiment(Path(run) / results.CONFIG)[0]


def restore(run: Path, exp: Experiment, seeds: list[int]) -> Position:
    """Rebuild the position from the weights saved and the last checkpoint, and cut metrics.jsonl
    back to exactly what that position had written, so the resumed run appends the rest once."""
    checkpoint = results.load_checkpoint(run)
    pairs = [(s, m) for s in seeds for m in exp.methods]
    finished = {pair for pair in pairs if results.weights_path(run, *pair).exists()}
    position = Position(finished=finished, seconds={m: [] for m in exp.methods})
    limit: dict[tuple[int, str], int] = {pair: exp.train.rounds for pair in finished}
    # a checkpoint from before fingerprints were kept has none, and is taken on trust
    if checkpoint is not None and checkpoint.get("config") not in (None, config_fingerprint(exp)):
        raise ConfigError(
            f"{Path(run) / results.CONFIG} was changed after this run started, so its finished rounds do not "
            "belong to it; put the original back to resume, or start a new run with the changed config "
            "(fedbridge run CONFIG --out NEW_DIR)"
        )
    if checkpoint is not None:
        pair = (checkpoint["seed"], checkpoint["method"])
        position.note = checkpoint["note"]
        for method, spent in checkpoint["seconds"].items():
            position.seconds[method] = list(spent)
        position.detection = checkpoint.get("detection", {})
        if pair in finished:  # it ended after this checkpoint, before the next pair's first one
            position.seconds[pair[1]].append(checkpoint["elapsed"])
        else:
            state = ServerState(checkpoint["params"], checkpoint["extra"])
            position.current = (*pair, checkpoint["round"], state)
            position.elapsed = checkpoint["elapsed"]
            limit[pair] = checkpoint["round"]
    # rewritten even when nothing is dropped: a cut last line would otherwise prefix the next append
    kept = [r for r in results.read_metrics(run) if r["round"] <= limit.get((r["seed"], r["method"]), -1)]
    results.rewrite_metrics(run, kept)
    return position


def run_study(
    exp: Experiment, out: Path, data_dir: Path | None, console: Console, train=simulation.train,
    *, resume: bool = False, quiet: bool = False,
) -> dict:
    """Train every method for every seed with `train` (the simulation engine, or another engine
    with the same signature, e.g. Flower's) and write the run directory.

    After each evaluated round the server state is checkpointed; with `resume`, `out` is an
    interrupted run of this same `exp` and only what it had not finished is trained.
    """
    dataset, exp, note = resolve_dataset(exp, data_dir)
    seeds = [exp.seed + i for i in range(exp.seeds)]
    # a partition the data cannot give (too few samples, too large a test fraction) fails here,
    # before a run directory exists that would block re-running with the value fixed
    rows = {seed: client_rows(dataset.train_labels, exp, seed) for seed in seeds}
    if resume:
        position = restore(out, exp, seeds)
        note = position.note or note
    else:
        position = Position(seconds={m: [] for m in exp.methods})
        results.create_run_dir(out)
        results.write_config(out, resolved_config(exp))
    if note:
        console.print(f"[yellow]note:[/yellow] {note}")
    rounds = exp.train.rounds
    fingerprint = config_fingerprint(exp)
    final = [r for r in results.read_metrics(out) if r["round"] == rounds] if resume else []
    seconds, curves = position.seconds, position.detection
    done_rounds = len(position.finished) * rounds + (position.current[2] if position.current else 0)
    with progress_bar(console, "rounds", quiet) as progress:
        task = progress.add_task(exp.name, total=len(seeds) * len(exp.methods) * rounds, completed=done_rounds, status="")
        for seed in seeds:
            if all((seed, m) in position.finished for m in exp.methods):
                continue
            federation = build_federation(dataset, exp, seed, rows[seed])
            noisy = [c.profile != "clean" for c in federation.clients]
            for method in exp.methods:
                if (seed, method) in position.finished:
                    continue
                resume_at = None
                earlier = 0.0
                if position.current and position.current[:2] == (seed, method):
                    resume_at, earlier = position.current[2:], position.elapsed
                start = time.perf_counter() - earlier
                last = resume_at[0] if resume_at else 0

                def on_round(r: int, records: list[dict], state: ServerState) -> None:
                    nonlocal last
                    results.append_metrics(out, records)
                    if r == rounds:
                        final.extend(records)
                        if "detection" in state.extra and any(noisy) and not all(noisy):
                            curves.setdefault(str(seed), {})[method] = detection.auc_by_round(state.extra["detection"], noisy)
                    results.save_checkpoint(out, {
                        "seed": seed, "method": method, "round": r, "params": state.params, "extra": state.extra,
                        "seconds": seconds, "detection": curves, "elapsed": time.perf_counter() - start, "note": note,
                        "config": fingerprint,
                    })
                    own = [x["accuracy"] for x in records if x["test_set"] == "own"]
                    progress.update(task, advance=r - last, status=(
                        f"seed {seed} {method} round {r}: own test {100 * sum(own) / len(own):.1f}%"))
                    last = r

                # only when resuming, so an engine without resume support still runs fresh studies
                more = {"resume": resume_at} if resume_at else {}
                params = train(method, federation, exp, seed, on_round, **more)
                seconds[method].append(time.perf_counter() - start)
                results.save_weights(out, seed, method, params)
                clean = [r["accuracy"] for r in final if r["seed"] == seed and r["method"] == method and r["test_set"] == "clean"]
                say(progress, quiet,
                    f"seed {seed} · {method:<7} · {rounds} rounds in {seconds[method][-1]:.1f} s"
                    f" · clean test {100 * sum(clean) / len(clean):.1f}% (mean over clients)")
    summary = summarize(exp, dataset, note, seeds, final, seconds, curves)
    results.write_summary(out, summary)
    (out / results.CHECKPOINT).unlink(missing_ok=True)
    return summary
