"""FedPer (Arivazhagan et al. 2019): the body is averaged, each client keeps its own head (the last
layer); body and head train together. The state's params are one model per client [n, ...]."""

from typing import Literal

import torch

from fedbridge.local import GradientAdjust
from fedbridge.optim import Params
from fedbridge.strategies import diagnostics
from fedbridge.strategies.aggregate import difference, weighted_mean
from fedbridge.strategies.api import ClientUpdates, Diagnostics, ServerState, Setup, Strategy, StrategySpec, plain_local
from fedbridge.strategies.local_only import init as one_model_per_client
from fedbridge.strategies.local_only import own_models
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


def shared_body_aggregate(state: ServerState, trained: ClientUpdates) -> tuple[ServerState, Diagnostics]:
    """The body moves by the weighted mean body update, for every client; heads stay the clients' own."""
    head = head_names(state.params)
    ids = trained.ids
    updates = difference(trained.params, own_models(state, ids))
    params = {}
    for n, p in state.params.items():
        if n in head:
            params[n] = p.clone()
            params[n][ids] = trained.params[n]
        else:
            update = weighted_mean({n: updates[n]}, trained.weights)[n]
            params[n] = (p[:1] + update).expand_as(p).clone()
    return ServerState(params, state.extra), diagnostics.of_updates(trained, updates)


FEDPER = Strategy(one_model_per_client, shared_body_aggregate, plain_local(start=own_models))


def build(config: Config, setup: Setup) -> Strategy:
    return FEDPER


SPEC = StrategySpec(Config, build, {"fedper": "FedPer"}, flower=False)
