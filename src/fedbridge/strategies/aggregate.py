"""Aggregation rules as pure functions of stacked client tensors [K, ...] and client weights [K]."""

import torch

from fedbridge.optim import Params


def weighted_mean(stacked: Params, weights: torch.Tensor) -> Params:
    """sum_k w_k x_k / sum_k w_k for every tensor; the result keeps a leading axis of 1."""
    w = weights / weights.sum()
    return {n: torch.tensordot(w, x, dims=1).unsqueeze(0) for n, x in stacked.items()}


def difference(a: Params, b: Params) -> Params:
    """a - b, broadcasting a leading axis of 1 against K."""
    return {n: a[n] - b[n] for n in a}


def flat(stacked: Params) -> torch.Tensor:
    """All tensors of each client as one row: [K, total parameters]."""
    # reshape, not flatten(1): a scalar per client (BatchNorm's step counter) is [K]
    return torch.cat([x.reshape(len(x), -1) for x in stacked.values()], dim=1)


def norms(stacked: Params) -> torch.Tensor:
    """The L2 norm [K] of each client's whole update, over all its tensors."""
    return flat(stacked).norm(dim=1)


def moved(params: Params, update: Params, scale: float = 1.0) -> Params:
    """params + scale * update (the server step of FedAvg and every rule that only changes `update`)."""
    return {n: p + scale * update[n] for n, p in params.items()}


def median(updates: Params, weights: torch.Tensor) -> Params:
    """Per coordinate, the median over clients (the mean of the two middle values when K is even)."""
    out = {}
    for n, x in updates.items():
        s = x.sort(dim=0).values
        k = x.shape[0]
        out[n] = ((s[(k - 1) // 2] + s[k // 2]) / 2).unsqueeze(0)
    return out
