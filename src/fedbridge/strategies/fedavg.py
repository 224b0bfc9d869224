"""FedAvg (McMahan et al. 2017), and the shape of every strategy that keeps one global model and
differs only in how the round's client updates become one update (robust rules, FedNova, quality
weights) and how the server applies it (server optimizers)."""

from collections.abc import Callable
from typing import Literal

import torch

from fedbridge.optim import Params
from fedbridge.strategies import diagnostics
from fedbridge.strategies.aggregate import difference, moved, weighted_mean
from fedbridge.strategies.api import (
    Adjust, ClientUpdates, Diagnostics, ServerState, Setup, Strategy, StrategySpec, plain_local,
)
from fedbridge.strategies.server_opt import ServerOptimizer, init_moments, server_step
from fedbridge.strategies.noise_screen import Screened

# combine(updates [K, ...], weights [K], the round's client updates) -> one update [1, ...]
Combine = Callable[[Params, torch.Tensor, ClientUpdates], Params]


class Config(Screened):  # strategy.noise_screen: FedNS
    name: Literal["fedavg"] = "fedavg"


def mean_update(updates: Params, weights: torch.Tensor, trained: ClientUpdates) -> Params:
    return weighted_mean(updates, weights)


def global_strategy(combine: Combine = mean_update, server: ServerOptimizer | None = None,
                    adjust: Adjust | None = None) -> Strategy:
    """A strategy with one global model: clients start from it, `combine` folds their updates into
    one, and `server` (plain addition when None) applies it."""

    def init(initial: Params, n_clients: int) -> ServerState:
        return ServerState(params=initial, extra={"server": init_moments(server, initial)} if server else {})

    def aggregate(state: ServerState, trained: ClientUpdates) -> tuple[ServerState, Diagnostics]:
        updates = difference(trained.params, state.params)
        update = combine(updates, trained.weights, trained)
        if server is None:
            new = ServerState(params=moved(state.params, update), extra=state.extra)
        else:
            params, moments = server_step(server, state.params, update, state.extra["server"])
            new = ServerState(params=params, extra={**state.extra, "server": moments})
        return new, diagnostics.of_updates(trained, updates)

    return Strategy(init, aggregate, local=plain_local(adjust=adjust))


FEDAVG = global_strategy()


def build(config: Config, setup: Setup) -> Strategy:
    return FEDAVG


SPEC = StrategySpec(Config, build, {"fedavg": "FedAvg"})
