"""SCAFFOLD (Karimireddy et al. 2020), option II: each local gradient is corrected by c - c_i; after
the round c_i+ = c_i - c + (x - y_i) / (K_i lr) and c moves by |S|/N times the mean change of the
c_i. With every control variate at zero (the first round) it is FedAvg. The server step takes the
sample-weighted mean update, as every FedAvg-family strategy here (the paper takes the plain mean)."""

from dataclasses import replace
from typing import Literal

import torch
from pydantic import Field

from fedbridge import client_state
from fedbridge.optim import Params
from fedbridge.strategies import diagnostics
from fedbridge.strategies.aggregate import difference, moved, weighted_mean
from fedbridge.strategies.api import (
    ClientUpdates, Diagnostics, LocalTrain, ServerState, Setup, Strategy, StrategySpec, from_server, needs_plain_sgd,
)
from fedbridge.strict import Strict


class Config(Strict):
    name: Literal["scaffold"]
    server_lr: float = Field(default=1.0, gt=0)


def scaffold(client_lr: float, server_lr: float = 1.0) -> Strategy:
    """The clients' control variates c_i live in a client_state store (10,000 clients of the 2NN
    hold 8 GB of them); a round reads only its sampled clients' rows, once, and passes them from
    `local` to `aggregate` in the updates' extra."""

    def init(initial: Params, n_clients: int) -> ServerState:
        zeros = {n: torch.zeros_like(p) for n, p in initial.items()}
        return ServerState(params=initial, extra={"control": zeros, "client_control": client_state.create(
            "client_control", zeros, n_clients)})

    def local(state: ServerState, ids: torch.Tensor, train: LocalTrain) -> ClientUpdates:
        c, c_i = state.extra["control"], client_state.in_memory(state.extra["client_control"]).take(ids)
        correction = {n: c[n] - c_i[n] for n in c}
        trained = train(from_server(state, ids), lambda params, grads: {n: g + correction[n] for n, g in grads.items()})
        return replace(trained, extra={**trained.extra, "client_control": c_i})

    def aggregate(state: ServerState, trained: ClientUpdates) -> tuple[ServerState, Diagnostics]:
        c, ids = state.extra["control"], trained.ids
        store = client_state.in_memory(state.extra["client_control"])
        c_i = trained.extra["client_control"] if "client_control" in trained.extra else store.take(ids)
        update = difference(trained.params, state.params)
        steps = trained.steps.clamp_min(1)
        new, change = {}, {}
        for n, u in update.items():
            new[n] = c_i[n] - c[n] - u / (steps * client_lr).view(-1, *[1] * (u.dim() - 1))
            change[n] = (new[n] - c_i[n]).mean(dim=0, keepdim=True)
        control = moved(c, change, len(ids) / store.n)
        params = moved(state.params, weighted_mean(update, trained.weights), server_lr)
        new_state = ServerState(params=params, extra={**state.extra, "control": control,
                                                      "client_control": store.put(ids, new)})
        return new_state, diagnostics.of_updates(trained, update)

    return Strategy(init, aggregate, local)


def build(config: Config, setup: Setup) -> Strategy:
    return scaffold(setup.lr, config.server_lr)


SPEC = StrategySpec(Config, build, {"scaffold": "SCAFFOLD"}, check=needs_plain_sgd, on_node=True,
                    keeps_per_client=True)
