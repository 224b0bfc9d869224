"""One study: for each seed, build the federation and train every method; write the run directory."""

import platform
import time
from pathlib import Path

import torch
from rich.console import Console

import fedbridge
from fedbridge import results
from fedbridge.data.idx import Dataset, load_dataset
from fedbridge.engines import simulation
from fedbridge.errors import DataError
from fedbridge.experiment import Experiment, Sizes
from fedbridge.federation import build_federation


def resolve_dataset(exp: Experiment, data_dir: Path | None) -> tuple[Dataset, Experiment, str | None]:
    """The dataset to run on, the experiment adjusted to it, and a note when we fell back."""
    try:
        return load_dataset(exp.data.name, data_dir or exp.data.dir), exp, None
    except DataError as e:
        if exp.data.fallback is None or exp.data.name == exp.data.fallback:
            raise
        reason = str(e)
    dataset = load_dataset(exp.data.fallback)
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


def resolved_config(exp: Experiment) -> dict:
    return exp.model_dump(mode="json", exclude_none=True)


def summarize(
    exp: Experiment, dataset: Dataset, note: str | None, seeds: list[int], final: list[dict],
    seconds: dict[str, list[float]],
) -> dict:
    """summary.json: what ran, on what, and the long-format table of the final round's metrics."""
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
        "versions": {"fedbridge": fedbridge.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "table": results.table(final),
    }


def run_study(
    exp: Experiment, out: Path, data_dir: Path | None, console: Console, train=simulation.train
) -> dict:
    """Train every method for every seed with `train` (the simulation engine, or another engine
    with the same signature, e.g. Flower's) and write the run directory."""
    dataset, exp, note = resolve_dataset(exp, data_dir)
    if note:
        console.print(f"[yellow]note:[/yellow] {note}")
    run = results.create_run_dir(out)
    results.write_config(run, resolved_config(exp))
    seeds = [exp.seed + i for i in range(exp.seeds)]
    final: list[dict] = []
    seconds: dict[str, list[float]] = {m: [] for m in exp.methods}
    for seed in seeds:
        federation = build_federation(dataset, exp, seed)
        for method in exp.methods:
            start = time.perf_counter()

            def on_round(r: int, records: list[dict], state) -> None:
                results.append_metrics(run, records)
                if r == exp.train.rounds:
                    final.extend(records)

            params = train(method, federation, exp, seed, on_round)
            seconds[method].append(time.perf_counter() - start)
            results.save_weights(run, seed, method, params)
            clean = [r["accuracy"] for r in final if r["seed"] == seed and r["method"] == method and r["test_set"] == "clean"]
            console.print(
                f"seed {seed} · {method:<7} · {exp.train.rounds} rounds in {seconds[method][-1]:.1f} s"
                f" · clean test {100 * sum(clean) / len(clean):.1f}% (mean over clients)"
            )
    summary = summarize(exp, dataset, note, seeds, final, seconds)
    results.write_summary(run, summary)
    return summary
