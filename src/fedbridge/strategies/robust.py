"""Robust aggregation rules: pure functions of the stacked client updates [K, ...] and weights [K]
that return one update [1, ...]. Each bounds what a few bad updates can do to the global model.

- coordinate-wise median and trimmed mean: Yin et al. 2018, "Byzantine-robust distributed learning";
- Krum / Multi-Krum: Blanchard et al. 2017; El Mhamdi et al. 2018;
- norm clipping: Sun et al. 2019, "Can you really backdoor federated learning?".
Median, trimmed mean and Krum ignore the sample weights, as published: a client cannot buy
influence by claiming more samples.
"""

import math

import torch

from fedbridge.optim import Params
from fedbridge.strategies.aggregate import flat, norms, weighted_mean


def median(updates: Params, weights: torch.Tensor) -> Params:
    """Per coordinate, the median over clients (the mean of the two middle values when K is even)."""
    out = {}
    for n, x in updates.items():
        s = x.sort(dim=0).values
        k = x.shape[0]
        out[n] = ((s[(k - 1) // 2] + s[k // 2]) / 2).unsqueeze(0)
    return out


def trimmed_count(k: int, beta: float) -> int:
    """How many values trimmed mean drops at each end, of k."""
    return math.floor(beta * k)


def trimmed_mean(updates: Params, weights: torch.Tensor, beta: float) -> Params:
    """Per coordinate, drop the floor(beta K) largest and smallest values and average the rest."""
    out = {}
    for n, x in updates.items():
        t = trimmed_count(x.shape[0], beta)
        s = x.sort(dim=0).values
        out[n] = s[t : x.shape[0] - t].mean(dim=0, keepdim=True)
    return out


def krum_scores(updates: Params, byzantine: int) -> torch.Tensor:
    """Each update's summed squared distance to its K - f - 2 nearest other updates [K]."""
    x = flat(updates)
    d2 = torch.cdist(x, x).square()
    k = x.shape[0]
    nearest = max(k - byzantine - 2, 1)
    # column 0 of the sorted row is the update's zero distance to itself
    return d2.sort(dim=1).values[:, 1 : nearest + 1].sum(dim=1)


def krum(updates: Params, weights: torch.Tensor, byzantine: int, select: int = 1) -> Params:
    """Krum (select=1): the update with the lowest score; Multi-Krum: the mean of the `select` lowest."""
    chosen = krum_scores(updates, byzantine).argsort()[:select]
    return weighted_mean({n: x[chosen] for n, x in updates.items()}, torch.ones(len(chosen)))


def clipped_mean(updates: Params, weights: torch.Tensor, max_norm: float | None = None) -> Params:
    """Scale every update to norm at most `max_norm` (default: the round's median update norm),
    then take the weighted mean."""
    size = norms(updates)
    bound = size.quantile(0.5) if max_norm is None else torch.tensor(max_norm)
    scale = (bound / size.clamp_min(1e-12)).clamp(max=1.0)
    return weighted_mean({n: x * scale.view(-1, *[1] * (x.dim() - 1)) for n, x in updates.items()}, weights)
