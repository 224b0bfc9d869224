"""FedAvg (McMahan et al. 2017) and every strategy that keeps one global model and differs only in
how the round's client updates become one update (robust rules, FedNova, quality weights) and how
the server applies it (server optimizers)."""

from collections.abc import Callable

import torch

from fedbridge.local import GradientAdjust, LocalResult
from fedbridge.optim import Params
from fedbridge.strategies.aggregate import difference, moved, weighted_mean
from fedbridge.strategies.api import ServerState, Strategy
from fedbridge.strategies.server_opt import ServerOptimizer, init_moments, server_step

# combine(updates [K, ...], weights [K], local results) -> one update [1, ...]
Combine = Callable[[Params, torch.Tensor, LocalResult], Params]


def mean_update(updates: Params, weights: torch.Tensor, result: LocalResult) -> Params:
    return weighted_mean(updates, weights)


def client_start(state: ServerState, ids: torch.Tensor) -> Params:
    return {n: p.expand(len(ids), *p.shape[1:]).clone() for n, p in state.params.items()}


def global_strategy(
    name: str,
    combine: Combine = mean_update,
    server: ServerOptimizer | None = None,
    adjust: Callable[[ServerState, torch.Tensor], GradientAdjust | None] = lambda state, ids: None,
) -> Strategy:
    """A strategy with one global model: clients start from it, `combine` folds their updates into
    one, and `server` (plain addition when None) applies it."""

    def init_state(initial: Params, n_clients: int) -> ServerState:
        return ServerState(params=initial, extra={"server": init_moments(server, initial)} if server else {})

    def aggregate_with(state: ServerState, ids: torch.Tensor, result: LocalResult, weights: torch.Tensor) -> ServerState:
        update = combine(difference(result.params, state.params), weights, result)
        if server is None:
            return ServerState(params=moved(state.params, update), extra=state.extra)
        params, moments = server_step(server, state.params, update, state.extra["server"])
        return ServerState(params=params, extra={**state.extra, "server": moments})

    return Strategy(name, init_state, client_start, aggregate_with, adjust)


FEDAVG = global_strategy("fedavg")
init, aggregate = FEDAVG.init, FEDAVG.aggregate
