"""Norm clipping (Sun et al. 2019, "Can you really backdoor federated learning?"): every update
scaled to norm at most `max_norm` (default: the round's median update norm), then averaged."""

from typing import Literal

import torch
from pydantic import Field

from fedbridge.optim import Params
from fedbridge.strategies.aggregate import norms, weighted_mean
from fedbridge.strategies.api import Setup, Strategy, StrategySpec, needs_clients
from fedbridge.strategies.fedavg import global_strategy
from fedbridge.strict import Strict


class Config(Strict):
    name: Literal["clipping"]
    max_norm: float | None = Field(default=None, gt=0)  # unset: the round's median update norm


def clipped_mean(updates: Params, weights: torch.Tensor, max_norm: float | None = None) -> Params:
    size = norms(updates)
    bound = size.quantile(0.5) if max_norm is None else torch.tensor(max_norm)
    scale = (bound / size.clamp_min(1e-12)).clamp(max=1.0)
    return weighted_mean({n: x * scale.view(-1, *[1] * (x.dim() - 1)) for n, x in updates.items()}, weights)


def build(config: Config, setup: Setup) -> Strategy:
    return global_strategy(combine=lambda u, w, trained: clipped_mean(u, w, config.max_norm))


SPEC = StrategySpec(Config, build, {"clipping": "clipped mean"}, check=needs_clients)
