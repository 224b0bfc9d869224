"""Personalization: each client ends with its own model, reported per client beside "alone" and FedAvg.

- finetune: FedAvg, and before each evaluation every client trains the global model k epochs on its
  own data (the "FedAvg + FT" baseline, e.g. Wang et al. 2019, arXiv 1910.10252);
- Ditto (Li et al. 2021): FedAvg trains the global model w; each sampled client also trains its
  personal model v on its own loss + lambda/2 ||v - w||^2 (lambda = 0: training alone;
  large lambda: FedAvg's model);
- FedPer (Arivazhagan et al. 2019): the body is averaged, each client keeps its own head (the last
  layer); body and head train together;
- FedRep (Collins et al. 2021): as FedPer, but each round the client first trains only its head
  for `head_epochs`, then only the body for the recipe's local epochs.
The state's params are one model per client [n, ...]; Ditto keeps the global model in extra.
"""

from dataclasses import replace

import torch

from fedbridge.local import GradientAdjust, LocalResult
from fedbridge.optim import Params
from fedbridge.strategies.aggregate import difference, weighted_mean
from fedbridge.strategies.api import LocalTrain, ServerState, Strategy
from fedbridge.strategies.client_side import proximal
from fedbridge.strategies.fedavg import global_strategy
from fedbridge.strategies.local_only import client_start as own_models
from fedbridge.strategies.local_only import init as one_model_per_client


def finetune(epochs: int) -> Strategy:
    return replace(global_strategy("finetune"), finetune_epochs=epochs)


def ditto(lam: float) -> Strategy:
    def init(initial: Params, n_clients: int) -> ServerState:
        return ServerState(one_model_per_client(initial, n_clients).params, {"global": initial})

    def local(state: ServerState, ids: torch.Tensor, run: LocalTrain) -> LocalResult:
        w = state.extra["global"]
        shared = run({n: p.expand(len(ids), *p.shape[1:]).clone() for n, p in w.items()})
        personal = run(own_models(state, ids), proximal(lam, w) if lam else None, copy=1)
        return LocalResult(
            {n: torch.cat([shared.params[n], personal.params[n]]) for n in w},
            torch.cat([shared.steps, personal.steps]), torch.cat([shared.loss, personal.loss]),
        )

    def aggregate(state: ServerState, ids: torch.Tensor, result: LocalResult, weights: torch.Tensor) -> ServerState:
        k, w = len(ids), state.extra["global"]
        update = weighted_mean(difference({n: p[:k] for n, p in result.params.items()}, w), weights)
        params = {n: p.clone() for n, p in state.params.items()}
        for n, p in params.items():
            p[ids] = result.params[n][k:]
        return ServerState(params, {**state.extra, "global": {n: w[n] + update[n] for n in w}})

    return Strategy("ditto", init, own_models, aggregate, local=local)


def head_names(params: Params) -> set[str]:
    """The parameters of the model's last layer (e.g. '3.weight', '3.bias')."""
    last = next(reversed(params)).rpartition(".")[0]
    return {n for n in params if n.rpartition(".")[0] == last}


def frozen(names: set[str]) -> GradientAdjust:
    """Zero gradients for `names`, so local training leaves them as they are."""
    return lambda params, grads: {n: torch.zeros_like(g) if n in names else g for n, g in grads.items()}


def shared_body_aggregate(state: ServerState, ids: torch.Tensor, result: LocalResult, weights: torch.Tensor) -> ServerState:
    """The body moves by the weighted mean body update, for every client; heads stay the clients' own."""
    head = head_names(state.params)
    start = own_models(state, ids)
    params = {}
    for n, p in state.params.items():
        if n in head:
            params[n] = p.clone()
            params[n][ids] = result.params[n]
        else:
            update = weighted_mean({n: result.params[n] - start[n]}, weights)[n]
            params[n] = (p[:1] + update).expand_as(p).clone()
    return ServerState(params, state.extra)


FEDPER = Strategy("fedper", one_model_per_client, own_models, shared_body_aggregate)


def fedrep(head_epochs: int) -> Strategy:
    def local(state: ServerState, ids: torch.Tensor, run: LocalTrain) -> LocalResult:
        head = head_names(state.params)
        body = set(state.params) - head
        first = run(own_models(state, ids), frozen(body), epochs=head_epochs, copy=1)
        second = run(first.params, frozen(head))
        return LocalResult(second.params, first.steps + second.steps, second.loss)

    return Strategy("fedrep", one_model_per_client, own_models, shared_body_aggregate, local=local)
