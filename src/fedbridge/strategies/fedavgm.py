"""FedAvgM (Hsu et al. 2019): server momentum on the averaged client update (server_opt.py)."""

from typing import Literal

from pydantic import Field

from fedbridge.strategies.api import Setup, Strategy, StrategySpec
from fedbridge.strategies.fedavg import global_strategy
from fedbridge.strategies.server_opt import ServerOptimizer
from fedbridge.strict import Strict


class Config(Strict):
    name: Literal["fedavgm"]
    # server_lr / (1 - momentum) = 1: once momentum builds up, steps as long as FedAvg's (Hsu et al. 2019)
    server_lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)


def build(config: Config, setup: Setup) -> Strategy:
    return global_strategy(server=ServerOptimizer(config.name, config.server_lr, beta1=config.momentum))


SPEC = StrategySpec(Config, build, {"fedavgm": "FedAvgM"})
