"""`strategy.keep_local = ["bn"]`: FedBN (Li et al. 2021) on top of any strategy. The model's
normalisation layers (their weights and running statistics) are left out of aggregation: each
client starts every round from its own, trains them, and keeps them; the rest of the model is
combined by the strategy as usual, and each client is evaluated with the strategy's model and its
own normalisation layers.

The clients' own entries live in the state's extra under KEEP_LOCAL ([n, ...] each), so a
checkpoint resumes them. The strategy itself never sees them move: its aggregation is given the
server's entries for them (a zero update), so its diagnostics and robust rules judge the shared
part of the model only.
"""

import torch

from fedbridge.optim import Params
from fedbridge.strategies.api import ClientUpdates, Diagnostics, LocalTrain, ServerState, Strategy

KEEP_LOCAL = "keep_local"


def _inner(state: ServerState) -> ServerState:
    return ServerState(state.params, {k: v for k, v in state.extra.items() if k != KEEP_LOCAL})


def _own(state: ServerState, ids: torch.Tensor, params: Params) -> Params:
    """`params` [K, ...] of clients `ids` with their own entries in place of the kept ones."""
    own = state.extra[KEEP_LOCAL]
    return {n: own[n][ids] if n in own else p for n, p in params.items()}


def keep_local(strategy: Strategy, names: set[str]) -> Strategy:
    """`strategy` with the state entries `names` kept by each client (models.norm_state)."""

    def init(initial: Params, n_clients: int) -> ServerState:
        state = strategy.init(initial, n_clients)
        own = {n: initial[n].expand(n_clients, *initial[n].shape[1:]).clone() for n in names}
        return ServerState(state.params, {**state.extra, KEEP_LOCAL: own})

    def trains_own(state: ServerState, ids: torch.Tensor, train: LocalTrain) -> LocalTrain:
        return lambda start, *args, **kwargs: train(_own(state, ids, start), *args, **kwargs)

    def local(state: ServerState, ids: torch.Tensor, train: LocalTrain) -> ClientUpdates:
        return strategy.local(_inner(state), ids, trains_own(state, ids, train))

    def aggregate(state: ServerState, trained: ClientUpdates) -> tuple[ServerState, Diagnostics]:
        own = {n: p.clone() for n, p in state.extra[KEEP_LOCAL].items()}
        for n in own:
            own[n][trained.ids] = trained.params[n]
        m = next(iter(state.params.values())).shape[0]
        rows = trained.ids if m > 1 else torch.zeros(len(trained.ids), dtype=torch.long)
        shared = {n: state.params[n][rows] if n in own else p for n, p in trained.params.items()}
        new, diagnostics = strategy.aggregate(_inner(state), ClientUpdates(
            trained.ids, trained.weights, shared, trained.steps, trained.loss, trained.extra))
        return ServerState(new.params, {**new.extra, KEEP_LOCAL: own}), diagnostics

    def evaluate_with(state: ServerState, ids: torch.Tensor, train: LocalTrain) -> Params:
        params = strategy.evaluate_with(_inner(state), ids, trains_own(state, ids, train))
        if not isinstance(params, dict):  # a store of the clients' own models or heads (FedPer's): the rows of `ids`
            params = params.take(ids)
        # one model for all, or one per client of `ids` (every client, as the round loop asks)
        return _own(state, ids, {n: p.expand(len(ids), *p.shape[1:]) if len(p) == 1 else p for n, p in params.items()})

    return Strategy(init, aggregate, local, evaluate_with)
