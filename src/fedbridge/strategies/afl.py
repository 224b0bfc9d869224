"""Agnostic Federated Learning (Mohri, Sivek & Suresh, ICML 2019): min over the model w, max over
mixture weights λ in the simplex, of sum_k λ_k L_k(w), so that the model serves the worst mixture of
the clients' distributions rather than the one the samples happen to make.

As in Stochastic-AFL, each round the model steps down the λ-weighted loss and λ steps up it:
- the server keeps λ over all n clients (in the state, starting uniform) and moves the model by the
  λ-weighted mean of the sampled clients' updates, λ renormalised over them;
- λ <- Proj_simplex(λ + step_size * g), g_k the loss client k reports for the round if it was
  sampled, 0 otherwise.

Where fedbridge differs from the paper: Λ is the whole simplex; the clients train their local epochs
and the server averages their updates (as FLGo's port of fair_flearn's AFL), where the paper takes
one stochastic gradient step; the loss is the mean training loss of the round's local steps, which
start from the global model, where the paper evaluates the current model; with partial
participation g is not scaled by n / K to make it unbiased (that is a larger step_size); and the
model scored is the last one, not the average of the rounds' models that the paper's bound is for.
step_size = 0.01 is FLGo's default (fair_flearn's Adult example uses 0.1, with 2 clients).
"""

from typing import Literal

import torch
from pydantic import Field

from fedbridge.optim import Params
from fedbridge.strategies import diagnostics
from fedbridge.strategies.aggregate import difference, moved, weighted_mean
from fedbridge.strategies.api import ClientUpdates, Diagnostics, ServerState, Setup, Strategy, StrategySpec
from fedbridge.strict import Strict


class Config(Strict):
    name: Literal["afl"]
    step_size: float = Field(default=0.01, gt=0)  # γ_λ: how far λ moves up the clients' losses per round


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """The point of the simplex (entries >= 0, sum 1) nearest to v [n] (Duchi et al. 2008, Figure 1)."""
    u = v.sort(descending=True).values
    shifted = u.cumsum(0) - 1
    # the entries kept positive are the largest rho, those with u_j > (u_1 + ... + u_j - 1) / j
    rho = int((u - shifted / torch.arange(1, len(v) + 1, dtype=v.dtype) > 0).sum())
    return (v - shifted[rho - 1] / rho).clamp_min(0)


def mixture_step(updates: Params, mixture: torch.Tensor) -> Params:
    """The λ-weighted mean [1, ...] of the updates [K, ...], λ [K] renormalised over these clients."""
    if not mixture.sum() > 0:
        # every sampled client has λ = 0: none of them counts in the mixture, the model stays
        return {n: torch.zeros_like(x[:1]) for n, x in updates.items()}
    return weighted_mean(updates, mixture)


def afl(step_size: float) -> Strategy:
    def init(initial: Params, n_clients: int) -> ServerState:
        return ServerState(params=initial, extra={"mixture": torch.full((n_clients,), 1 / n_clients)})

    def aggregate(state: ServerState, trained: ClientUpdates) -> tuple[ServerState, Diagnostics]:
        mixture = state.extra["mixture"]
        updates = difference(trained.params, state.params)
        params = moved(state.params, mixture_step(updates, mixture[trained.ids]))
        ascent = torch.zeros_like(mixture)
        ascent[trained.ids] = trained.loss
        mixture = project_simplex(mixture + step_size * ascent)
        # each client's λ after the round's step: a client whose loss stays high gains weight
        scores = {**diagnostics.client_scores(updates, trained.loss), "weight": mixture[trained.ids]}
        return ServerState(params, {**state.extra, "mixture": mixture}), Diagnostics(trained.ids, scores)

    return Strategy(init, aggregate)


def build(config: Config, setup: Setup) -> Strategy:
    return afl(config.step_size)


SPEC = StrategySpec(Config, build, {"afl": "AFL"})
