"""Bulyan (El Mhamdi, Guerraoui & Rouault, ICML 2018, "The Hidden Vulnerability of Distributed
Learning in Byzantium"): Krum picks theta = K - 2f updates one at a time, each removed before the
next pick; then per coordinate the beta = theta - 2f picked values nearest their median are
averaged, so that an attacker Krum let through cannot pull any single coordinate far. It needs
K >= 4f + 3; byzantine = 0 is the unweighted mean. Sample weights are ignored, as in Krum."""

from typing import Literal

import torch
from pydantic import Field

from fedbridge.optim import Params
from fedbridge.strategies.aggregate import median
from fedbridge.strategies.api import Setup, Strategy, StrategySpec
from fedbridge.strategies.fedavg import global_strategy
from fedbridge.strategies.krum import krum_scores
from fedbridge.strict import Strict


class Config(Strict):
    name: Literal["bulyan"]
    byzantine: int = Field(default=1, ge=0)  # clients per round assumed bad (f)


def krum_selection(updates: Params, byzantine: int, count: int) -> torch.Tensor:
    """The indices of `count` updates [K, ...], each the Krum choice among those not yet picked (a
    tie goes to the earlier client)."""
    left = torch.arange(next(iter(updates.values())).shape[0])
    picked = []
    for _ in range(count):
        best = int(krum_scores({n: x[left] for n, x in updates.items()}, byzantine).argmin())
        picked.append(left[best])
        left = torch.cat([left[:best], left[best + 1:]])
    return torch.stack(picked)


def nearest_median_mean(updates: Params, beta: int) -> Params:
    """Per coordinate, the mean [1, ...] of the beta values of the updates [K, ...] nearest their median."""
    centre = median(updates, torch.ones(next(iter(updates.values())).shape[0]))
    out = {}
    for n, x in updates.items():
        nearest = (x - centre[n]).abs().argsort(dim=0, stable=True)[:beta]
        out[n] = x.gather(0, nearest).mean(dim=0, keepdim=True)
    return out


def bulyan(updates: Params, byzantine: int) -> Params:
    k = next(iter(updates.values())).shape[0]
    # a Flower round may have fewer answers than the config's K: keep at least one at each stage
    theta = max(k - 2 * byzantine, 1)
    picked = krum_selection(updates, byzantine, theta)
    return nearest_median_mean({n: x[picked] for n, x in updates.items()}, max(theta - 2 * byzantine, 1))


def check(config: Config, setup: Setup) -> str | None:
    k, f = setup.clients_per_round, config.byzantine
    if k < 4 * f + 3:
        return (f"strategy.byzantine = {f} but {setup.per_round}; Bulyan needs at least 4 x byzantine + 3 = "
                f"{4 * f + 3}: lower strategy.byzantine or raise train.client_fraction")
    return None


def build(config: Config, setup: Setup) -> Strategy:
    return global_strategy(combine=lambda updates, weights, trained: bulyan(updates, config.byzantine))


SPEC = StrategySpec(Config, build, {"bulyan": "Bulyan"}, check=check)
