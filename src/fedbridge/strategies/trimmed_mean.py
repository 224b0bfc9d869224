"""Coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, drop the floor(beta K) largest
and smallest client values and average the rest; sample weights ignored, as published."""

import math
from typing import Literal

import torch
from pydantic import Field

from fedbridge.optim import Params
from fedbridge.strategies.api import Setup, Strategy, StrategySpec, needs_clients
from fedbridge.strategies.fedavg import global_strategy
from fedbridge.strategies.noise_screen import Screened, trust


class Config(Screened):  # strategy.noise_screen: FedNS
    name: Literal["trimmed_mean"]
    beta: float = Field(default=0.2, gt=0, lt=0.5)  # share trimmed at each end, per coordinate


def trimmed_count(k: int, beta: float) -> int:
    """How many values trimmed mean drops at each end, of k."""
    return math.floor(beta * k)


def trimmed_mean(updates: Params, weights: torch.Tensor, beta: float, trust: torch.Tensor | None = None) -> Params:
    """`trust` [K] (a noise screen's client weights): the values kept per coordinate are averaged
    with the weights of the clients they come from, instead of equally."""
    out = {}
    for n, x in updates.items():
        t = trimmed_count(x.shape[0], beta)
        if trust is None:
            s = x.sort(dim=0).values
            out[n] = s[t : x.shape[0] - t].mean(dim=0, keepdim=True)
        else:
            s, order = x.sort(dim=0)
            w = trust[order[t : x.shape[0] - t]]
            out[n] = ((s[t : x.shape[0] - t] * w).sum(dim=0) / w.sum(dim=0)).unsqueeze(0)
    return out


def check(config: Config, setup: Setup) -> str | None:
    k = setup.clients_per_round
    if problem := needs_clients(config, setup):
        return problem
    if trimmed_count(k, config.beta) == 0:
        return (f"strategy.beta = {config.beta} trims nothing: {setup.per_round} and floor(beta x {k}) = 0; "
                f"use strategy.beta >= {1 / k:.3g} or strategy.name = \"fedavg\"")
    return None


def build(config: Config, setup: Setup) -> Strategy:
    return global_strategy(combine=lambda updates, weights, trained: trimmed_mean(updates, weights, config.beta, trust(trained)))


SPEC = StrategySpec(Config, build, {"trimmed_mean": "trimmed mean"}, check=check)
