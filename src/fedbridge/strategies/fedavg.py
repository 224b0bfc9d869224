"""FedAvg (McMahan et al. 2017): the global model moves by the sample-weighted mean client update."""

import torch

from fedbridge.local import LocalResult
from fedbridge.optim import Params
from fedbridge.strategies.aggregate import difference, weighted_mean
from fedbridge.strategies.api import ServerState, Strategy


def init(initial: Params, n_clients: int) -> ServerState:
    return ServerState(params=initial)


def client_start(state: ServerState, ids: torch.Tensor) -> Params:
    return {n: p.expand(len(ids), *p.shape[1:]).clone() for n, p in state.params.items()}


def aggregate(state: ServerState, ids: torch.Tensor, result: LocalResult, weights: torch.Tensor) -> ServerState:
    update = weighted_mean(difference(result.params, state.params), weights)
    return ServerState(params={n: p + update[n] for n, p in state.params.items()}, extra=state.extra)


FEDAVG = Strategy("fedavg", init, client_start, aggregate)
