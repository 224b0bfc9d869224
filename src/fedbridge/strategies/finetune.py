"""FedAvg + fine-tuning (e.g. Wang et al. 2019, arXiv 1910.10252): FedAvg trains the global model,
and before each evaluation every client trains its copy of it `epochs` epochs on its own data; the
clients are scored (and their models saved) with their fine-tuned copies."""

from typing import Literal

import torch
from pydantic import Field

from fedbridge.optim import Params
from fedbridge.strategies.api import LocalTrain, ServerState, Setup, Strategy, StrategySpec, broadcast
from fedbridge.strategies.fedavg import FEDAVG
from fedbridge.strict import MAX_LOCAL_EPOCHS, Strict


class Config(Strict):
    name: Literal["finetune"]
    epochs: int = Field(default=1, ge=1, le=MAX_LOCAL_EPOCHS)


def finetune(epochs: int) -> Strategy:
    def evaluate_with(state: ServerState, ids: torch.Tensor, train: LocalTrain) -> Params:
        return train(broadcast(state.params, len(ids)), epochs=epochs).params

    return Strategy(FEDAVG.init, FEDAVG.aggregate, FEDAVG.local, evaluate_with)


def build(config: Config, setup: Setup) -> Strategy:
    return finetune(config.epochs)


SPEC = StrategySpec(Config, build, {"finetune": "FedAvg + fine-tuning"}, on_node=True, scores_per_client=True)
