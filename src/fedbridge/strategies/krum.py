"""Krum and Multi-Krum (Blanchard et al. 2017; El Mhamdi et al. 2018): the update (or the mean of
the `select` updates) closest to its K - f - 2 nearest neighbours; sample weights ignored."""

from typing import Literal

import torch
from pydantic import Field

from fedbridge.optim import Params
from fedbridge.strategies.aggregate import flat, weighted_mean
from fedbridge.strategies.api import Setup, Strategy, StrategySpec, needs_clients
from fedbridge.strategies.fedavg import global_strategy
from fedbridge.strict import Strict


class Config(Strict):
    name: Literal["krum"]
    byzantine: int = Field(default=1, ge=0)  # clients per round assumed bad (Krum's f)
    select: int = Field(default=1, ge=1)  # 1: Krum; more: Multi-Krum averages this many


def krum_scores(updates: Params, byzantine: int) -> torch.Tensor:
    """Each update's summed squared distance to its K - f - 2 nearest other updates [K]."""
    x = flat(updates)
    d2 = torch.cdist(x, x).square()
    k = x.shape[0]
    nearest = max(k - byzantine - 2, 1)
    # column 0 of the sorted row is the update's zero distance to itself
    return d2.sort(dim=1).values[:, 1 : nearest + 1].sum(dim=1)


def krum(updates: Params, weights: torch.Tensor, byzantine: int, select: int = 1) -> Params:
    """Krum (select=1): the update with the lowest score; Multi-Krum: the mean of the `select` lowest."""
    chosen = krum_scores(updates, byzantine).argsort()[:select]
    return weighted_mean({n: x[chosen] for n, x in updates.items()}, torch.ones(len(chosen)))


def check(config: Config, setup: Setup) -> str | None:
    k, f = setup.clients_per_round, config.byzantine
    if k < 2 * f + 3:
        return (f"strategy.byzantine = {f} but {setup.per_round}; Krum needs at least 2 x byzantine + 3 = "
                f"{2 * f + 3}: lower strategy.byzantine or raise train.client_fraction")
    if config.select > k - f:
        return (f"strategy.select = {config.select} but {setup.per_round} and strategy.byzantine = {f}; "
                f"Multi-Krum can select at most {k - f}")
    return needs_clients(config, setup)


def build(config: Config, setup: Setup) -> Strategy:
    return global_strategy(combine=lambda u, w, trained: krum(u, w, config.byzantine, config.select))


SPEC = StrategySpec(Config, build, {"krum": "Krum"}, check=check)
