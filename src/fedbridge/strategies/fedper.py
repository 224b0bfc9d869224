"""FedPer (Arivazhagan et al. 2019): the body is averaged, each client keeps its own head (the last
layer); body and head train together. The state's params are the body and the initial head [1, ...];
each client's head lives in a client_state store (extra["own"])."""

from typing import Literal

import torch

from fedbridge import client_state
from fedbridge.local import GradientAdjust
from fedbridge.optim import Params
from fedbridge.strategies import diagnostics
from fedbridge.strategies.aggregate import difference, weighted_mean
from fedbridge.strategies.api import ClientUpdates, Diagnostics, ServerState, Setup, Strategy, StrategySpec, plain_local
from fedbridge.strategies.local_only import OWN, own, with_own
from fedbridge.strict import Strict


class Config(Strict):
    name: Literal["fedper"]


def head_names(params: Params) -> set[str]:
    """The parameters of the model's last layer (e.g. '3.weight', '3.bias')."""
    last = next(reversed(params)).rpartition(".")[0]
    return {n for n in params if n.rpartition(".")[0] == last}


def frozen(names: set[str]) -> GradientAdjust:
    """Zero gradients for `names`, so local training leaves them as they are."""
    return lambda params, grads: {n: torch.zeros_like(g) if n in names else g for n, g in grads.items()}


def init(initial: Params, n_clients: int) -> ServerState:
    heads = {n: initial[n] for n in head_names(initial)}
    return ServerState(initial, {OWN: client_state.create("heads", heads, n_clients)})


def client_models(state: ServerState) -> client_state.Joined:
    """Every client's model: the body, and its own head."""
    return client_state.Joined(state.params, own(state))


def own_models(state: ServerState, ids: torch.Tensor) -> Params:
    return client_models(state).take(ids)


def shared_body_aggregate(state: ServerState, trained: ClientUpdates) -> tuple[ServerState, Diagnostics]:
    """The body moves by the weighted mean body update, for every client; heads stay the clients' own."""
    head = head_names(state.params)
    updates = difference(trained.params, own_models(state, trained.ids))
    body = weighted_mean({n: u for n, u in updates.items() if n not in head}, trained.weights)
    params = {n: p + body[n] if n in body else p for n, p in state.params.items()}
    extra = with_own(state, trained.ids, {n: trained.params[n] for n in head})
    return ServerState(params, extra), diagnostics.of_updates(trained, updates)


FEDPER = Strategy(init, shared_body_aggregate, plain_local(start=own_models),
                  evaluate_with=lambda state, ids, train: client_models(state))


def build(config: Config, setup: Setup) -> Strategy:
    return FEDPER


SPEC = StrategySpec(Config, build, {"fedper": "FedPer"}, on_node=True, personal=head_names,
                    keeps_per_client=True, scores_per_client=True)
