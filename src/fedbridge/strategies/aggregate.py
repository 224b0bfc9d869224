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
