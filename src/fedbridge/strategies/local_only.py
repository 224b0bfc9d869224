"""Local-only ("before FL"): each client keeps its own model; aggregation is the identity.

Running it through the same engine as FedAvg keeps the before/after numbers comparable.
"""

import torch

from fedbridge.optim import Params
from fedbridge.strategies.api import ClientUpdates, Diagnostics, ServerState, Strategy, plain_local


def init(initial: Params, n_clients: int) -> ServerState:
    # every client starts from the same initial model as the federation does
    return ServerState(params={n: p.expand(n_clients, *p.shape[1:]).clone() for n, p in initial.items()})


def own_models(state: ServerState, ids: torch.Tensor) -> Params:
    return {n: p[ids] for n, p in state.params.items()}


def with_own(params: Params, ids: torch.Tensor, trained: Params) -> Params:
    """`params` [n, ...] with the rows of clients `ids` replaced by their trained models."""
    out = {n: p.clone() for n, p in params.items()}
    for n, p in out.items():
        p[ids] = trained[n]
    return out


def aggregate(state: ServerState, trained: ClientUpdates) -> tuple[ServerState, Diagnostics]:
    return (ServerState(params=with_own(state.params, trained.ids, trained.params), extra=state.extra),
            Diagnostics(trained.ids, {"loss": trained.loss}))


LOCAL_ONLY = Strategy(init, aggregate, local=plain_local(start=own_models))
