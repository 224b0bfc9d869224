"""The strategy a config names, built with its typed parameters (fedbridge.experiment validates them)."""

from fedbridge import detection
from fedbridge.experiment import (
    AdaptiveServer, Clipping, Ditto, FedAvg, FedAvgM, FedNova, FedPer, FedProx, FedRep, FineTune,
    Krum, Median, Quality, Scaffold, StrategyConfig, Train, TrimmedMean,
)
from fedbridge.strategies import client_side, personal, robust
from fedbridge.strategies.api import Strategy
from fedbridge.strategies.fedavg import FEDAVG, global_strategy
from fedbridge.strategies.quality import quality
from fedbridge.strategies.server_opt import ServerOptimizer


def _robust(name: str, rule) -> Strategy:
    return global_strategy(name, combine=lambda updates, weights, result: rule(updates, weights))


def build(config: StrategyConfig, train: Train) -> Strategy:
    """The strategy for `config`; those with one global model also record noisy-client scores."""
    c = config
    if isinstance(c, FedAvg):
        strategy = FEDAVG
    elif isinstance(c, FedAvgM):
        strategy = global_strategy(c.name, server=ServerOptimizer(c.name, c.server_lr, beta1=c.momentum))
    elif isinstance(c, AdaptiveServer):
        strategy = global_strategy(c.name, server=ServerOptimizer(c.name, c.server_lr, c.beta1, c.beta2, c.tau))
    elif isinstance(c, FedProx):
        strategy = client_side.fedprox(c.mu)
    elif isinstance(c, Scaffold):
        strategy = client_side.scaffold(train.lr, c.server_lr)
    elif isinstance(c, FedNova):
        strategy = client_side.FEDNOVA
    elif isinstance(c, Median):
        strategy = _robust(c.name, robust.median)
    elif isinstance(c, TrimmedMean):
        strategy = _robust(c.name, lambda u, w: robust.trimmed_mean(u, w, c.beta))
    elif isinstance(c, Krum):
        strategy = _robust(c.name, lambda u, w: robust.krum(u, w, c.byzantine, c.select))
    elif isinstance(c, Clipping):
        strategy = _robust(c.name, lambda u, w: robust.clipped_mean(u, w, c.max_norm))
    elif isinstance(c, Quality):
        strategy = quality(c.alpha)
    elif isinstance(c, FineTune):
        strategy = personal.finetune(c.epochs)
    elif isinstance(c, Ditto):
        return personal.ditto(c.lam)
    elif isinstance(c, FedPer):
        return personal.FEDPER
    else:
        assert isinstance(c, FedRep)
        return personal.fedrep(c.head_epochs)
    return detection.observed(strategy)
