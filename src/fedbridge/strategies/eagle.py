"""EAGLE, loss-gap parity (Erraji, Perrot & Bellet 2026, arXiv 2603.29818): the federated objective
plus lam times the variance over clients of their loss gaps r_k(w) = L_k(w) - L_k*, where L_k* is
the lowest loss client k reaches on its own. A client the global model serves much worse than it could
serve itself gains weight; one already close to its own best loses some.

The gradient of sum_k p_k L_k + lam (1/K) sum_k (r_k - r_mean)^2 is sum_k [p_k + (2 lam / K)
(r_k - r_mean)] grad L_k, so each round the server takes the mean of the clients' updates with the
weights p_k + (2 lam / K) (r_k - r_mean) (p_k: sample shares; they still sum to 1, and a client far
below the mean gap can get a negative weight, as the gradient says).

L_k*, as the paper does, is approximated once by local training: the first time client k is sampled
it also trains alone from the initial model for `alone_epochs` epochs, then one more epoch, whose
mean training loss is taken as L_k* (kept in the server state). L_k(w) is the mean training loss the
client reports for the round, which starts from the global model (the closest the server has to
evaluating it there). Chosen here, not taken from the paper: lam = 1 and alone_epochs = 5.
"""

from dataclasses import replace
from typing import Literal

import torch
from pydantic import Field

from fedbridge.optim import Params
from fedbridge.strategies import diagnostics
from fedbridge.strategies.aggregate import difference, moved
from fedbridge.strategies.api import (
    ClientUpdates, Diagnostics, LocalTrain, ServerState, Setup, Strategy, StrategySpec, broadcast, from_server,
)
from fedbridge.strict import MAX_LOCAL_EPOCHS, Strict


class Config(Strict):
    name: Literal["eagle"]
    lam: float = Field(default=1.0, ge=0)  # weight of the loss-gap variance; 0 is FedAvg
    alone_epochs: int = Field(default=5, ge=1, le=MAX_LOCAL_EPOCHS)  # local training that estimates L_k*


def gap_weights(shares: torch.Tensor, gaps: torch.Tensor, lam: float) -> torch.Tensor:
    """The update weights [K]: sample shares [K] (summing to 1) moved by the gaps' deviations from their mean."""
    return shares + 2 * lam / len(gaps) * (gaps - gaps.mean())


def eagle(lam: float, alone_epochs: int) -> Strategy:
    def init(initial: Params, n_clients: int) -> ServerState:
        return ServerState(initial, {"initial": initial, "optimal_loss": torch.full((n_clients,), float("nan"))})

    def local(state: ServerState, ids: torch.Tensor, train: LocalTrain) -> ClientUpdates:
        trained = train(from_server(state, ids))
        if not state.extra["optimal_loss"][ids].isnan().any():
            return trained
        alone = train(broadcast(state.extra["initial"], len(ids)), epochs=alone_epochs, copy=1)
        settled = train(alone.params, epochs=1, copy=2)
        return replace(trained, extra={"optimal_loss": settled.loss})

    def aggregate(state: ServerState, trained: ClientUpdates) -> tuple[ServerState, Diagnostics]:
        optimal = state.extra["optimal_loss"].clone()
        if "optimal_loss" in trained.extra:
            fresh = optimal[trained.ids].isnan()
            optimal[trained.ids[fresh]] = trained.extra["optimal_loss"][fresh]
        gaps = trained.loss - optimal[trained.ids]
        weights = gap_weights(trained.weights / trained.weights.sum(), gaps, lam)
        updates = difference(trained.params, state.params)
        step = {n: torch.tensordot(weights, x, dims=1).unsqueeze(0) for n, x in updates.items()}
        scores = {**diagnostics.client_scores(updates, trained.loss), "gap": gaps, "weight": weights}
        return ServerState(moved(state.params, step), {**state.extra, "optimal_loss": optimal}), Diagnostics(trained.ids, scores)

    return Strategy(init, aggregate, local)


def build(config: Config, setup: Setup) -> Strategy:
    return eagle(config.lam, config.alone_epochs)


SPEC = StrategySpec(Config, build, {"eagle": "EAGLE"}, flower=False)
