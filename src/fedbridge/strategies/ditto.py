"""Ditto (Li et al. 2021): FedAvg trains the global model w; each sampled client also trains its
personal model v on its own loss + lambda/2 ||v - w||^2 (lambda = 0: training alone; large lambda:
FedAvg's model). The state's params are w; the personal models live in a client_state store
(extra["own"]), and clients are scored with them."""

from dataclasses import replace
from typing import Literal

import torch
from pydantic import Field

from fedbridge.strategies import diagnostics
from fedbridge.strategies.aggregate import difference, weighted_mean
from fedbridge.strategies.api import (
    ClientUpdates, Diagnostics, LocalTrain, ServerState, Setup, Strategy, StrategySpec, broadcast,
)
from fedbridge.strategies.fedprox import proximal
from fedbridge.strategies.local_only import init as one_model_per_client
from fedbridge.strategies.local_only import own, with_own
from fedbridge.strict import Strict


class Config(Strict):
    name: Literal["ditto"]
    lam: float = Field(default=0.1, ge=0)  # Ditto's lambda: pull of the personal model to the global one


def ditto(lam: float) -> Strategy:
    def local(state: ServerState, ids: torch.Tensor, train: LocalTrain) -> ClientUpdates:
        w = state.params
        shared = train(broadcast(w, len(ids)))
        personal = train(own(state).take(ids), proximal(lam, w) if lam else None, copy=1)
        return replace(shared, extra={"personal": personal.params})

    def aggregate(state: ServerState, trained: ClientUpdates) -> tuple[ServerState, Diagnostics]:
        w = state.params
        updates = difference(trained.params, w)
        update = weighted_mean(updates, trained.weights)
        extra = with_own(state, trained.ids, trained.extra["personal"])
        return ServerState({n: w[n] + update[n] for n in w}, extra), diagnostics.of_updates(trained, updates)

    return Strategy(one_model_per_client, aggregate, local, evaluate_with=lambda state, ids, train: own(state))


def build(config: Config, setup: Setup) -> Strategy:
    return ditto(config.lam)


SPEC = StrategySpec(Config, build, {"ditto": "Ditto"}, on_node=True,
                    keeps_per_client=True, scores_per_client=True)
