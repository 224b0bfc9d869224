"""FedNoRo (Wu et al., IJCAI 2023, "FedNoRo: Towards Noise-Robust Federated Learning by Addressing
Class Imbalance and Label Noise Heterogeneity"), simplified: two stages, noisy-label clients found
after the first and treated differently in the second.

1. Warm-up: `warmup` rounds of FedAvg. The server averages, per client, the training losses it
   reported over these rounds, and splits the clients in two by exact 1-D 2-means (as FedNS's
   screen does); the higher-loss cluster is noisy. Clients first sampled after the warm-up are put
   on the side of the midpoint between the two centres.
2. Robust training: clean clients train as before; noisy clients train with a pull to the global
   model, mu/2 ||w - w_global||^2, and the server weighs every client by n_k exp(-d_k), with d_k
   the distance of a noisy client's model to the nearest clean client's model of the round,
   divided by the largest such distance (0 for clean clients): the paper's distance-aware
   aggregation, DaAgg.

What is simplified, and why: the paper scores clients by the per-class losses of the warmed-up
global model on each client's data and fits a 2-component Gaussian mixture; the server here has the
clients' reported training losses only, and 2-means stands in for the mixture. Its noisy clients
learn by knowledge distillation from the global model (KL to its outputs), which needs the global
model's logits on the client's data inside local training; the proximal pull to the global model
is the weight-space stand-in. Its logit-adjusted loss for class imbalance is left out (train.loss
picks the loss for everyone). Chosen here, not the paper's: warmup = 5 rounds (our runs are 10-30
rounds), mu = 0.1.
"""

from typing import Literal

import torch
from pydantic import Field

from fedbridge.local import GradientAdjust
from fedbridge.optim import Params
from fedbridge.strategies import diagnostics
from fedbridge.strategies.aggregate import difference, flat, moved, weighted_mean
from fedbridge.strategies.api import ClientUpdates, Diagnostics, ServerState, Setup, Strategy, StrategySpec, plain_local
from fedbridge.strategies.noise_screen import CLEAN, NOISY, UNKNOWN, two_means_split
from fedbridge.strict import MAX_ROUNDS, Strict


class Config(Strict):
    name: Literal["fednoro"]
    warmup: int = Field(default=5, ge=1, le=MAX_ROUNDS)  # rounds of FedAvg before the noisy clients are named
    mu: float = Field(default=0.1, ge=0)  # the noisy clients' pull to the global model in stage 2


def distance_weights(models: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """DaAgg's exp(-d_k) [K] from the clients' flat models [K, P]: d_k the distance of a noisy
    client to its nearest clean one over the largest such distance, 0 for clean clients."""
    d = torch.zeros(len(models))
    if noisy.any() and (~noisy).any():
        nearest = torch.cdist(models[noisy].double(), models[~noisy].double()).min(dim=1).values
        d[noisy] = (nearest / nearest.max().clamp_min(1e-30)).float()
    return torch.exp(-d)


def noisy_mask(mu: float, noisy: torch.Tensor, anchor: Params) -> GradientAdjust:
    """FedProx's gradient mu (w - anchor), on the noisy clients' rows only."""
    def adjust(params: Params, grads: Params) -> Params:
        out = {}
        for n, g in grads.items():
            mask = noisy.to(g.dtype).view(-1, *[1] * (g.dim() - 1))
            out[n] = g + mu * mask * (params[n].detach() - anchor[n])
        return out
    return adjust


def fednoro(warmup: int, mu: float) -> Strategy:
    def init(initial: Params, n_clients: int) -> ServerState:
        return ServerState(initial, {"round": torch.tensor(0), "loss_sum": torch.zeros(n_clients),
                                     "seen": torch.zeros(n_clients), "known": torch.full((n_clients,), UNKNOWN),
                                     "threshold": torch.tensor(float("nan"))})

    def adjust(state: ServerState, ids: torch.Tensor):
        noisy = state.extra["known"][ids] == NOISY
        return noisy_mask(mu, noisy, state.params) if mu and noisy.any() else None

    def aggregate(state: ServerState, trained: ClientUpdates) -> tuple[ServerState, Diagnostics]:
        extra = dict(state.extra)
        extra["round"] = state.extra["round"] + 1
        updates = difference(trained.params, state.params)
        known, threshold = extra["known"].clone(), extra["threshold"].item()
        if extra["round"] <= warmup:
            extra["loss_sum"] = extra["loss_sum"].index_add(0, trained.ids, trained.loss)
            extra["seen"] = extra["seen"].index_add(0, trained.ids, torch.ones(len(trained.ids)))
            weights = trained.weights
        else:
            if extra["round"] == warmup + 1:  # the end of the warm-up: name the noisy clients
                seen = extra["seen"] > 0
                mean_loss = extra["loss_sum"][seen] / extra["seen"][seen]
                split = two_means_split(mean_loss)
                threshold = float("nan") if split is None else split
                if split is not None:
                    known[seen] = torch.where(mean_loss > split, NOISY, CLEAN)
            fresh = known[trained.ids] == UNKNOWN
            # first seen after the warm-up: their loss of this round against the threshold
            known[trained.ids[fresh]] = torch.where(trained.loss[fresh] > threshold, NOISY, CLEAN) \
                if threshold == threshold else CLEAN
            noisy = known[trained.ids] == NOISY
            weights = trained.weights * distance_weights(flat(trained.params), noisy)
        extra.update(known=known, threshold=torch.tensor(threshold))
        scores = {**diagnostics.client_scores(updates, trained.loss),
                  "fednoro_noisy": (known[trained.ids] == NOISY).float()}
        return ServerState(moved(state.params, weighted_mean(updates, weights)), extra), Diagnostics(trained.ids, scores)

    return Strategy(init, aggregate, local=plain_local(adjust=adjust))


def build(config: Config, setup: Setup) -> Strategy:
    return fednoro(config.warmup, config.mu)


SPEC = StrategySpec(Config, build, {"fednoro": "FedNoRo"}, flower=False)
