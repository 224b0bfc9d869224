"""Local-only ("before FL"): each client keeps its own model; aggregation is the identity.

Running it through the same engine as FedAvg keeps the before/after numbers comparable. The
clients' models live in a client_state store (`extra["own"]`); the state's params stay the
initial model [1, ...], which every client starts from.
"""

import torch

from fedbridge import client_state
from fedbridge.client_state import ClientState
from fedbridge.optim import Params
from fedbridge.strategies.api import ClientUpdates, Diagnostics, ServerState, Strategy, plain_local

OWN = "own"  # the key of the clients' own models (or heads) in the state's extra


def init(initial: Params, n_clients: int) -> ServerState:
    # every client starts from the same initial model as the federation does
    return ServerState(params=initial, extra={OWN: client_state.create(OWN, initial, n_clients)})


def own(state: ServerState) -> ClientState:
    return client_state.in_memory(state.extra[OWN])


def own_models(state: ServerState, ids: torch.Tensor) -> Params:
    return own(state).take(ids)


def with_own(state: ServerState, ids: torch.Tensor, rows: Params) -> dict:
    """The state's extra with the own rows of clients `ids` replaced by `rows`."""
    return {**state.extra, OWN: own(state).put(ids, rows)}


def aggregate(state: ServerState, trained: ClientUpdates) -> tuple[ServerState, Diagnostics]:
    return (ServerState(params=state.params, extra=with_own(state, trained.ids, trained.params)),
            Diagnostics(trained.ids, {"loss": trained.loss}))


LOCAL_ONLY = Strategy(init, aggregate, local=plain_local(start=own_models),
                      evaluate_with=lambda state, ids, train: own(state))
