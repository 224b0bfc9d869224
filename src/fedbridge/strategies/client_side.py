"""Strategies that change what clients do locally, through the gradient hook of local training.

- FedProx (Li et al. 2020): local objective + mu/2 ||w - w_global||^2, so the gradient gains
  mu (w - w_global); mu = 0 is FedAvg.
- SCAFFOLD (Karimireddy et al. 2020), option II: the gradient is corrected by c - c_i; after the
  round c_i+ = c_i - c + (x - y_i) / (K_i lr) and c moves by |S|/N times the mean change of the
  c_i. With every control variate at zero (the first round) it is FedAvg.
- FedNova (Wang et al. 2020), for plain local SGD: each update is divided by the client's own
  number of local steps tau_i, and the weighted mean of these is scaled by tau_eff = sum p_i tau_i,
  so clients that took more steps do not pull the model further. Equal steps: FedAvg.
"""

import torch

from fedbridge.local import GradientAdjust, LocalResult
from fedbridge.optim import Params
from fedbridge.strategies.aggregate import difference, moved, weighted_mean
from fedbridge.strategies.api import ServerState, Strategy
from fedbridge.strategies.fedavg import client_start, global_strategy


def proximal(mu: float, anchor: Params) -> GradientAdjust:
    """g + mu (w - anchor): the gradient of mu/2 ||w - anchor||^2 added to the client's own."""
    return lambda params, grads: {n: g + mu * (params[n].detach() - anchor[n]) for n, g in grads.items()}


def fedprox(mu: float) -> Strategy:
    return global_strategy("fedprox", adjust=lambda state, ids: proximal(mu, state.params) if mu else None)


def fednova_update(updates: Params, weights: torch.Tensor, result: LocalResult) -> Params:
    p = weights / weights.sum()
    tau = result.steps.clamp_min(1)
    normalised = {n: x / tau.view(-1, *[1] * (x.dim() - 1)) for n, x in updates.items()}
    tau_eff = (p * tau).sum()
    return {n: tau_eff * x for n, x in weighted_mean(normalised, p).items()}


FEDNOVA = global_strategy("fednova", combine=fednova_update)


def scaffold(client_lr: float, server_lr: float = 1.0) -> Strategy:
    def init(initial: Params, n_clients: int) -> ServerState:
        zeros = {n: torch.zeros_like(p) for n, p in initial.items()}
        per_client = {n: torch.zeros(n_clients, *p.shape[1:]) for n, p in initial.items()}
        return ServerState(params=initial, extra={"control": zeros, "client_control": per_client})

    def adjust(state: ServerState, ids: torch.Tensor) -> GradientAdjust:
        c, c_i = state.extra["control"], state.extra["client_control"]
        correction = {n: c[n] - c_i[n][ids] for n in c}
        return lambda params, grads: {n: g + correction[n] for n, g in grads.items()}

    def aggregate(state: ServerState, ids: torch.Tensor, result: LocalResult, weights: torch.Tensor) -> ServerState:
        c, c_all = state.extra["control"], state.extra["client_control"]
        update = difference(result.params, state.params)
        steps = result.steps.clamp_min(1)
        client_control = {n: t.clone() for n, t in c_all.items()}
        change = {}
        for n, u in update.items():
            new = c_all[n][ids] - c[n] - u / (steps * client_lr).view(-1, *[1] * (u.dim() - 1))
            change[n] = (new - c_all[n][ids]).mean(dim=0, keepdim=True)
            client_control[n][ids] = new
        share = len(ids) / next(iter(c_all.values())).shape[0]
        control = moved(c, change, share)
        params = moved(state.params, weighted_mean(update, weights), server_lr)
        return ServerState(params=params, extra={**state.extra, "control": control, "client_control": client_control})

    return Strategy("scaffold", init, client_start, aggregate, adjust)
