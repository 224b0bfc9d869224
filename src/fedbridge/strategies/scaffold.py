"""SCAFFOLD (Karimireddy et al. 2020), option II: each local gradient is corrected by c - c_i; after
the round c_i+ = c_i - c + (x - y_i) / (K_i lr) and c moves by |S|/N times the mean change of the
c_i. With every control variate at zero (the first round) it is FedAvg. The server step takes the
sample-weighted mean update, as every FedAvg-family strategy here (the paper takes the plain mean)."""

from typing import Literal

import torch
from pydantic import Field

from fedbridge.local import GradientAdjust
from fedbridge.optim import Params
from fedbridge.strategies import diagnostics
from fedbridge.strategies.aggregate import difference, moved, weighted_mean
from fedbridge.strategies.api import (
    ClientUpdates, Diagnostics, ServerState, Setup, Strategy, StrategySpec, needs_plain_sgd, plain_local,
)
from fedbridge.strict import Strict


class Config(Strict):
    name: Literal["scaffold"]
    server_lr: float = Field(default=1.0, gt=0)


def scaffold(client_lr: float, server_lr: float = 1.0) -> Strategy:
    def init(initial: Params, n_clients: int) -> ServerState:
        zeros = {n: torch.zeros_like(p) for n, p in initial.items()}
        per_client = {n: torch.zeros(n_clients, *p.shape[1:]) for n, p in initial.items()}
        return ServerState(params=initial, extra={"control": zeros, "client_control": per_client})

    def adjust(state: ServerState, ids: torch.Tensor) -> GradientAdjust:
        c, c_i = state.extra["control"], state.extra["client_control"]
        correction = {n: c[n] - c_i[n][ids] for n in c}
        return lambda params, grads: {n: g + correction[n] for n, g in grads.items()}

    def aggregate(state: ServerState, trained: ClientUpdates) -> tuple[ServerState, Diagnostics]:
        c, c_all, ids = state.extra["control"], state.extra["client_control"], trained.ids
        update = difference(trained.params, state.params)
        steps = trained.steps.clamp_min(1)
        client_control = {n: t.clone() for n, t in c_all.items()}
        change = {}
        for n, u in update.items():
            new = c_all[n][ids] - c[n] - u / (steps * client_lr).view(-1, *[1] * (u.dim() - 1))
            change[n] = (new - c_all[n][ids]).mean(dim=0, keepdim=True)
            client_control[n][ids] = new
        share = len(ids) / next(iter(c_all.values())).shape[0]
        control = moved(c, change, share)
        params = moved(state.params, weighted_mean(update, trained.weights), server_lr)
        new_state = ServerState(params=params, extra={**state.extra, "control": control, "client_control": client_control})
        return new_state, diagnostics.of_updates(trained, update)

    return Strategy(init, aggregate, local=plain_local(adjust=adjust))


def build(config: Config, setup: Setup) -> Strategy:
    return scaffold(setup.lr, config.server_lr)


SPEC = StrategySpec(Config, build, {"scaffold": "SCAFFOLD"}, check=needs_plain_sgd, flower=False)
