"""summary.json: what ran, on what, the long-format table of the final round's metrics and, for
each federated method, how well each noisy-client detection score found the noisy clients."""

import platform
import statistics
from collections import defaultdict

import torch

import fedbridge
from fedbridge import detection, results
from fedbridge.data.datasets import Dataset
from fedbridge.experiment import Experiment
from fedbridge.federation import client_names
from fedbridge.privacy import budget
from fedbridge.schema import LOCAL

# A final test loss above this (or NaN) means training blew up, usually from too large a learning rate:
# a uniform guess scores ln(10) = 2.3 nats, and models that learned anything score below 1.
DIVERGED_LOSS = 1e3
# A method whose mean accuracy on the clean test set ends at or below this many times chance (1 in
# num_classes) learned nothing usable: a guess scores 1/K give or take a few points on test sets of a
# few hundred images, and a model that learned anything scores far above (on two clients of 300
# digits, an untrained MLP scores 11%, one round of Adam 38-44%). The clean test set, not a client's
# own: a client whose labels are noise scores near chance on its own test labels even with a good
# model. Accuracy, not the loss: a model that always answers one class is at chance whatever its loss.
CHANCE_FACTOR = 1.5


def _pairs(pairs: set[tuple[int, str]]) -> list[dict]:
    return [{"seed": s, "method": m} for s, m in sorted(pairs)]


def _at_chance(final: list[dict], num_classes: int) -> set[tuple[int, str]]:
    clean: dict[tuple[int, str], list[float]] = defaultdict(list)
    for r in final:
        if r["test_set"] == "clean":
            clean[(r["seed"], r["method"])].append(r["accuracy"])
    return {pair for pair, accs in clean.items() if statistics.fmean(accs) <= CHANCE_FACTOR / num_classes}


def summarize(
    exp: Experiment, dataset: Dataset, note: str | None, seeds: list[int], final: list[dict],
    seconds: dict[str, list[float | None]], curves: dict[str, dict[str, dict[str, list]]], engines: dict[str, str],
) -> dict:
    """`final`: the last round's metrics records; `seconds`: each method's training time per finished
    pair, None where it is not known; `curves`: detection ROC-AUC per round, {seed: {method: {score:
    [auc per round]}}}."""
    diverged = {(r["seed"], r["method"]) for r in final if not r["loss"] <= DIVERGED_LOSS}
    by_method: dict[str, dict[str, list]] = {}
    for per_method in curves.values():
        for method, scores in per_method.items():
            for score, curve in scores.items():
                by_method.setdefault(method, {}).setdefault(score, []).append(curve)
    table = results.table(final)
    if names := client_names(exp, dataset):
        for row in table:
            row["client_name"] = names[row["client"] - 1]
    return {
        "name": exp.name,
        "dataset": dataset.name,
        "data_source": dataset.source,
        "data_note": note,
        "seeds": seeds,
        "rounds": exp.train.rounds,
        "methods": [m.name for m in exp.methods],
        "strategy": exp.strategy.name,
        # None (null) where a pair's time was lost: summary.json rebuilt by --resume without the checkpoint
        "seconds_per_method": {m: None if None in s else results.mean_std(s)[0] for m, s in seconds.items() if s},
        # float32 sums inside the kernels run in another order on another thread count
        "threads": torch.get_num_threads(),
        "engines": engines,  # what trained each method: "simulation", "flower", or "flower, resumed on simulation"
        "versions": {"fedbridge": fedbridge.__version__, "torch": torch.__version__, "python": platform.python_version()},
        # what Study.model builds the saved weights into
        "input_shape": list(dataset.input_shape),
        "num_classes": dataset.num_classes,
        **({"class_names": list(dataset.class_names)} if dataset.class_names else {}),
        "common_test": dataset.common_test,
        "table": table,
        "diverged": _pairs(diverged),
        "chance": _pairs(_at_chance(final, dataset.num_classes) - diverged),  # a diverged one is warned of already
        "detection": {m: {score: detection.summary(c) for score, c in scores.items()} for m, scores in by_method.items()},
        **_privacy(exp, final),
    }


def _privacy(exp: Experiment, final: list[dict]) -> dict:
    """{"privacy": ...} for a run with a [privacy] table: the ε its records carry, largest over seeds."""
    if exp.privacy is None:
        return {}
    spent: dict[str, dict[int, float]] = {m.name: {} for m in exp.methods if exp.private(m)}
    for r in final:
        if "epsilon" in r and r["method"] in spent:
            per = spent[r["method"]]
            per[r["client"]] = max(per.get(r["client"], 0.0), r["epsilon"])
    t = exp.train
    return {"privacy": budget.summary(exp.privacy, exp.strategy.name, exp.n_clients, exp.setup.clients_per_round,
                                      t.rounds, t.batch_size, spent, LOCAL in [m.name for m in exp.methods])}
