"""summary.json: what ran, on what, the long-format table of the final round's metrics and, for
each federated method, how well each noisy-client detection score found the noisy clients."""

import platform

import torch

import fedbridge
from fedbridge import detection, results
from fedbridge.data.datasets import Dataset
from fedbridge.experiment import Experiment

# A final test loss above this (or NaN) means training blew up, usually from too large a learning rate:
# a uniform guess scores ln(10) = 2.3 nats, and models that learned anything score below 1.
DIVERGED_LOSS = 1e3


def summarize(
    exp: Experiment, dataset: Dataset, note: str | None, seeds: list[int], final: list[dict],
    seconds: dict[str, list[float]], curves: dict[str, dict[str, dict[str, list]]],
) -> dict:
    """`final`: the last round's metrics records; `curves`: detection ROC-AUC per round,
    {seed: {method: {score: [auc per round]}}}."""
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
        "methods": [m.name for m in exp.methods],
        "strategy": exp.strategy.name,
        "seconds_per_method": {m: results.mean_std(s)[0] for m, s in seconds.items() if s},
        # float32 sums inside the kernels run in another order on another thread count
        "threads": torch.get_num_threads(),
        "versions": {"fedbridge": fedbridge.__version__, "torch": torch.__version__, "python": platform.python_version()},
        # what Study.model builds the saved weights into
        "input_shape": [1, *dataset.train_images.shape[1:]],
        "num_classes": dataset.num_classes,
        "table": results.table(final),
        "diverged": [{"seed": s, "method": m} for s, m in sorted(
            {(r["seed"], r["method"]) for r in final if not r["loss"] <= DIVERGED_LOSS})],
        "detection": {m: {score: detection.summary(c) for score, c in scores.items()} for m, scores in by_method.items()},
    }
