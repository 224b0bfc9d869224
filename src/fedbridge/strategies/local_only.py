"""Local-only ("before FL"): each client keeps its own model; aggregation is the identity.

Running it through the same engine as FedAvg keeps the before/after numbers comparable.
"""

import torch

from fedbridge.local import LocalResult
from fedbridge.optim import Params
from fedbridge.strategies.api import ServerState, Strategy


def init(initial: Params, n_clients: int) -> ServerState:
    # every client starts from the same initial model as the federation does
    return ServerState(params={n: p.expand(n_clients, *p.shape[1:]).clone() for n, p in initial.items()})


def client_start(state: ServerState, ids: torch.Tensor) -> Params:
    return {n: p[ids] for n, p in state.params.items()}


def aggregate(state: ServerState, ids: torch.Tensor, result: LocalResult, weights: torch.Tensor) -> ServerState:
    params = {n: p.clone() for n, p in state.params.items()}
    for n, p in params.items():
        p[ids] = result.params[n]
    return ServerState(params=params, extra=state.extra)


LOCAL_ONLY = Strategy("local", init, client_start, aggregate)
