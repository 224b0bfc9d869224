"""Coordinate-wise median (Yin et al. 2018, "Byzantine-robust distributed learning"): per
coordinate, the median of the clients' updates. It ignores the sample weights, as published: a
client cannot buy influence by claiming more samples."""

from typing import Literal

from fedbridge.strategies.aggregate import median
from fedbridge.strategies.api import Setup, Strategy, StrategySpec, needs_clients
from fedbridge.strategies.fedavg import global_strategy
from fedbridge.strict import Strict


class Config(Strict):
    name: Literal["median"]


def build(config: Config, setup: Setup) -> Strategy:
    return global_strategy(combine=lambda updates, weights, trained: median(updates, weights))


SPEC = StrategySpec(Config, build, {"median": "median"}, check=needs_clients)
