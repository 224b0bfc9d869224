"""FedRep (Collins et al. 2021): as FedPer, but each round the client first trains only its head
for `head_epochs`, then only the body for the recipe's local epochs."""

from dataclasses import replace
from typing import Literal

import torch
from pydantic import Field

from fedbridge.strategies.api import ClientUpdates, LocalTrain, ServerState, Setup, Strategy, StrategySpec
from fedbridge.strategies.fedper import FEDPER, frozen, head_names, own_models, shared_body_aggregate
from fedbridge.strict import MAX_LOCAL_EPOCHS, Strict


class Config(Strict):
    name: Literal["fedrep"]
    head_epochs: int = Field(default=1, ge=1, le=MAX_LOCAL_EPOCHS)


def fedrep(head_epochs: int) -> Strategy:
    def local(state: ServerState, ids: torch.Tensor, train: LocalTrain) -> ClientUpdates:
        head = head_names(state.params)
        body = set(state.params) - head
        first = train(own_models(state, ids), frozen(body), epochs=head_epochs, copy=1)
        second = train(first.params, frozen(head))
        return replace(second, steps=first.steps + second.steps)

    return Strategy(FEDPER.init, shared_body_aggregate, local, FEDPER.evaluate_with)


def build(config: Config, setup: Setup) -> Strategy:
    return fedrep(config.head_epochs)


SPEC = StrategySpec(Config, build, {"fedrep": "FedRep"}, on_node=True, personal=head_names,
                    keeps_per_client=True, scores_per_client=True)
