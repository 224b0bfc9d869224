"""Noisy-client detection: how well each score a strategy reports per client and round
(fedbridge.strategies.diagnostics: training loss, update norm, disagreement; higher = more likely
noisy) finds the noisy clients, as ROC-AUC against the clients' true profiles.

Analysis only: it reads the diagnostics records a run keeps (diagnostics.jsonl). `summary` turns a
run's curves into what a person reads: ROC-AUC at round 1 and at the end, and the round from which
it stays reliable.
"""

import math
import statistics

import torch

from fedbridge.schema import Diagnostic


def roc_auc(scores: torch.Tensor, noisy: list[bool]) -> float | None:
    """ROC-AUC of one round's scores [n] (NaN = not sampled) against the true noisy flags;
    None when the sampled clients are all noisy or all clean.

    As the Mann-Whitney statistic: the chance that a noisy client scores above a clean one, a tie
    counting half, from the noisy clients' rank sum (tied scores share their mean rank). Written
    here, not taken from scikit-learn (the test holds it to `roc_auc_score`), because importing
    sklearn.metrics took 1.7 s of the seed study's 20-30 s end to end.
    """
    seen = ~torch.isnan(scores)
    truth = torch.tensor(noisy, dtype=torch.bool)[seen]
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if not n_pos or not n_neg:
        return None
    _, which, counts = torch.unique(scores[seen].double(), return_inverse=True, return_counts=True)
    mean_rank = counts.cumsum(0) - (counts - 1) / 2  # 1-based, of each distinct score
    rank_sum = mean_rank[which][truth].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def reliable_from(aucs: list[float | None], threshold: float = 0.9) -> int | None:
    """The first round (1-based) from which the ROC-AUC stays at or above `threshold`."""
    start = None
    for r, auc in enumerate(aucs, start=1):
        if auc is None or auc < threshold:
            start = None
        elif start is None:
            start = r
    return start


def auc_by_round(diagnostics: list[Diagnostic], noisy: list[bool], rounds: int) -> dict[str, list[float | None]]:
    """Each score's ROC-AUC per round 1..rounds, from one (seed, method)'s diagnostics records."""
    history: dict[str, torch.Tensor] = {}
    for d in diagnostics:
        for name, value in d["scores"].items():
            rows = history.setdefault(name, torch.full((rounds, len(noisy)), math.nan))
            rows[d["round"] - 1, d["client"] - 1] = value
    return {name: [roc_auc(row, noisy) for row in rows] for name, rows in history.items()}


def pair_curves(diagnostics: list[Diagnostic], seed: int, method: str, noisy: list[bool],
                rounds: int) -> dict[str, list[float | None]] | None:
    """One (seed, method)'s curves from a run's diagnostics, or None where there is nothing to
    measure: no diagnostics of it, or every client noisy, or none."""
    mine = [d for d in diagnostics if d["seed"] == seed and d["method"] == method]
    if not mine or not any(noisy) or all(noisy):
        return None
    return auc_by_round(mine, noisy, rounds)


def summary(curves: list[list[float | None]]) -> dict:
    """Several seeds' AUC curves of one score: their mean per round, its first and last value, and
    the round from which it stays reliable."""
    mean = [statistics.fmean(x for x in v if x is not None) if any(x is not None for x in v) else None
            for v in zip(*curves)]
    return {"auc_by_round": mean, "first": mean[0], "last": mean[-1], "reliable_from": reliable_from(mean)}
