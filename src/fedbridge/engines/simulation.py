"""The in-process transport: the round's sampled clients train together in this process, as one
batch (fedbridge.local), and are evaluated in one batched call per test set.

Local-only, the federated strategy and pooled training are the one round loop (fedbridge.rounds)
with a different strategy or federation, so every number in the before/after table comes from the
same code.
"""

from dataclasses import replace

import torch

from fedbridge import rounds
from fedbridge.experiment import Experiment, Method, Role
from fedbridge.federation import Federation
from fedbridge.local import GradientAdjust, Recipe, client_generator, evaluate, local_update
from fedbridge.models import build_model, norm_state
from fedbridge.optim import Params
from fedbridge.strategies import registry
from fedbridge.strategies.api import ClientUpdates, LocalTrain, ServerState, Strategy
from fedbridge.strategies.keep_local import keep_local
from fedbridge.strategies.local_only import LOCAL_ONLY


def strategy_for(method: Method, exp: Experiment, model: torch.nn.Module) -> Strategy:
    if method.role is Role.LOCAL:
        return LOCAL_ONLY
    strategy = registry.build(method.strategy, exp.setup)
    # "bn" is the only kind keep_local takes so far: every normalisation layer
    return keep_local(strategy, norm_state(model)) if registry.kept_local(method.strategy) else strategy


def participants(method: Method, federation: Federation) -> list[torch.Tensor]:
    """Training rows of each participant: every client, or for pooled one holding everyone's data."""
    rows = [c.train_rows for c in federation.clients]
    return [torch.cat(rows)] if method.role is Role.POOLED else rows


def evaluate_clients(model: torch.nn.Module, params: Params, federation: Federation, cross: bool,
                     device: str = "cpu") -> list[rounds.Score]:
    """Each client's model (row of `params`, or the one global model) on its own and the clean test
    set, and with `cross`, on every other client's own test data."""
    clients = federation.clients
    m = next(iter(params.values())).shape[0]
    out = []
    clean_acc, clean_loss = evaluate(model, params, federation.clean_test_images, federation.clean_test_labels,
                                     device=device)
    for target in clients:
        # every model on this test set in one batched call, then read off the rows we need
        acc, loss = evaluate(model, params, target.test_images, target.test_labels, device=device)
        for c in clients:
            i = c.index if m > 1 else 0
            if c is target:
                out.append((c.index, "own", acc[i].item(), loss[i].item()))
            elif cross:
                out.append((c.index, f"client:{target.index + 1}", acc[i].item(), loss[i].item()))
    for c in clients:
        i = c.index if m > 1 else 0
        out.append((c.index, "clean", clean_acc[i].item(), clean_loss[i].item()))
    return out


def transport(model: torch.nn.Module, federation: Federation, rows: list[torch.Tensor], how: Recipe,
              seed: int) -> rounds.Transport:
    def local(round_: int, ids: torch.Tensor, stream: int) -> LocalTrain:
        chosen = [rows[i] for i in ids.tolist()]
        weights = torch.tensor([float(len(x)) for x in chosen])

        def train(start: Params, adjust: GradientAdjust | None = None, epochs: int | None = None,
                  copy: int = 0) -> ClientUpdates:
            # copy 0 keeps the stream every strategy had before strategies could train more than one model
            generators = [client_generator(seed, stream, round_, i, *([copy] if copy else [])) for i in ids.tolist()]
            how_now = replace(how, local_epochs=epochs) if epochs else how
            result = local_update(model, start, federation.train_images, federation.train_labels, chosen, how_now,
                                  generators, adjust)
            return ClientUpdates(ids, weights, result.params, result.steps, result.loss)

        return train

    return rounds.Transport(len(rows), local, lambda params, round_, cross: evaluate_clients(model, params, federation, cross, how.device))



def train(method: Method, federation: Federation, exp: Experiment, seed: int,
          on_round: rounds.OnRound = lambda r, records, diagnostics, state: None,
          resume: tuple[int, ServerState] | None = None) -> Params:
    """Train `method` on `federation` for the experiment's rounds (rounds.train) and return the
    models the clients were last evaluated with."""
    model = build_model(exp.model, federation.input_shape, federation.num_classes)
    rows = participants(method, federation)
    profiles = [c.profile for c in federation.clients]
    return rounds.train(strategy_for(method, exp, model), transport(model, federation, rows, rounds.recipe(exp), seed),
                        rounds.initial_model(model, seed), rounds.schedule(method, exp, seed, profiles), on_round, resume)
