"""FedProx (Li et al. 2020): local objective + mu/2 ||w - w_global||^2, so each local gradient gains
mu (w - w_global); mu = 0 is FedAvg."""

from typing import Literal

from pydantic import Field

from fedbridge.local import GradientAdjust
from fedbridge.optim import Params
from fedbridge.strategies.api import Setup, Strategy, StrategySpec
from fedbridge.strategies.fedavg import global_strategy
from fedbridge.strict import Strict


class Config(Strict):
    name: Literal["fedprox"]
    mu: float = Field(default=0.01, ge=0)


def proximal(mu: float, anchor: Params) -> GradientAdjust:
    """g + mu (w - anchor): the gradient of mu/2 ||w - anchor||^2 added to the client's own."""
    return lambda params, grads: {n: g + mu * (params[n].detach() - anchor[n]) for n, g in grads.items()}


def fedprox(mu: float) -> Strategy:
    return global_strategy(adjust=lambda state, ids: proximal(mu, state.params) if mu else None)


def build(config: Config, setup: Setup) -> Strategy:
    return fedprox(config.mu)


# the proximal term's anchor is the model the client starts from, so a Flower node rebuilds it
SPEC = StrategySpec(Config, build, {"fedprox": "FedProx"}, on_node=True)
