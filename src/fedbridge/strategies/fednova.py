"""FedNova (Wang et al. 2020), for plain local SGD: each update is divided by the client's own
number of local steps tau_i, and the weighted mean of these is scaled by tau_eff = sum p_i tau_i,
so clients that took more steps do not pull the model further. Equal steps: FedAvg."""

from typing import Literal

import torch

from fedbridge.optim import Params
from fedbridge.strategies.aggregate import weighted_mean
from fedbridge.strategies.api import ClientUpdates, Setup, Strategy, StrategySpec, needs_plain_sgd
from fedbridge.strategies.fedavg import global_strategy
from fedbridge.strategies.noise_screen import Screened


class Config(Screened):  # strategy.noise_screen: FedNS
    name: Literal["fednova"]


def fednova_update(updates: Params, weights: torch.Tensor, trained: ClientUpdates) -> Params:
    p = weights / weights.sum()
    tau = trained.steps.clamp_min(1)
    normalised = {n: x / tau.view(-1, *[1] * (x.dim() - 1)) for n, x in updates.items()}
    tau_eff = (p * tau).sum()
    return {n: tau_eff * x for n, x in weighted_mean(normalised, p).items()}


FEDNOVA = global_strategy(combine=fednova_update)


def build(config: Config, setup: Setup) -> Strategy:
    return FEDNOVA


SPEC = StrategySpec(Config, build, {"fednova": "FedNova"}, check=needs_plain_sgd)
