"""Quality-aware aggregation: FOCUS's credibility weights (Chen et al. 2020, "FOCUS: Dealing with
Label Quality Discrepancy in Federated Learning", arXiv 2007.11785), in the spirit of FedNS
(Li et al. 2024, arXiv 2409.02189), which also down-weights clients it judges noisy.

FOCUS weights client k by n_k * exp(-alpha * E_k), where E_k is a mutual cross-entropy between
the client's model and a clean benchmark set held by the server. fedbridge's server holds no data,
so E_k here is the half of it the client can report without a server benchmark: the mean training
loss of its round, which starts from the global model. Noisy labels and heavy input noise raise
it; clean clients keep it low. alpha = 0 is FedAvg.
"""

from typing import Literal

import torch
from pydantic import Field

from fedbridge.optim import Params
from fedbridge.strategies.aggregate import weighted_mean
from fedbridge.strategies.api import ClientUpdates, Setup, Strategy, StrategySpec, needs_clients
from fedbridge.strategies.fedavg import global_strategy
from fedbridge.strict import Strict


class Config(Strict):
    name: Literal["quality"]
    alpha: float = Field(default=5.0, ge=0)  # weight n_k exp(-alpha * loss_k); 0 is FedAvg


def credibility(loss: torch.Tensor, alpha: float) -> torch.Tensor:
    """exp(-alpha * loss), shifted by the round's lowest loss so the weights never all underflow."""
    return torch.exp(-alpha * (loss - loss.min()))


def quality(alpha: float) -> Strategy:
    def combine(updates: Params, weights: torch.Tensor, trained: ClientUpdates) -> Params:
        return weighted_mean(updates, weights * credibility(trained.loss, alpha))

    return global_strategy(combine=combine)


def build(config: Config, setup: Setup) -> Strategy:
    return quality(config.alpha)


SPEC = StrategySpec(Config, build, {"quality": "quality-weighted"}, check=needs_clients)
