"""FedAdam, FedYogi, FedAdagrad (Reddi et al. 2021, "Adaptive Federated Optimization"): the
averaged client update as a pseudo-gradient for one adaptive server step (server_opt.py)."""

from typing import Literal

from pydantic import Field

from fedbridge.strategies.api import Setup, Strategy, StrategySpec
from fedbridge.strategies.fedavg import global_strategy
from fedbridge.strategies.server_opt import ServerOptimizer
from fedbridge.strict import Strict


class Config(Strict):
    name: Literal["fedadam", "fedyogi", "fedadagrad"]
    server_lr: float = Field(default=0.01, gt=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.99, ge=0, lt=1)
    tau: float = Field(default=1e-3, gt=0)


def build(config: Config, setup: Setup) -> Strategy:
    c = config
    return global_strategy(server=ServerOptimizer(c.name, c.server_lr, c.beta1, c.beta2, c.tau))


SPEC = StrategySpec(Config, build, {"fedadam": "FedAdam", "fedyogi": "FedYogi", "fedadagrad": "FedAdagrad"})
