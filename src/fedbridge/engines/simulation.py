"""The in-process transport: the round's sampled clients train together in this process, as one
batch (fedbridge.local), and are evaluated in one batched call per test set.

Local-only, the federated strategy and pooled training are the one round loop (fedbridge.rounds)
with a different strategy or federation, so every number in the before/after table comes from the
same code.
"""

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from fedbridge import gradnorm, rounds
from fedbridge.client_state import Models, every_row
from fedbridge.experiment import Experiment, Method, Role
from fedbridge.federation import Federation
from fedbridge.local import GradientAdjust, Recipe, client_generator, evaluate, local_update, scoring
from fedbridge.models import build_model
from fedbridge.optim import Params
from fedbridge.strategies.api import ClientUpdates, LocalTrain, ServerState
from fedbridge.strategies.noise_screen import SCORE

# clients' models scored at once (each on its own test data, then on the clean test set's chunks of
# local.evaluate), and test images one model scores at once
EVAL_MODELS, EVAL_IMAGES = 64, 2000


def participants(method: Method, federation: Federation) -> list[torch.Tensor]:
    """Training rows of each participant: every client, or for pooled one holding everyone's data."""
    rows = [c.train_rows for c in federation.clients]
    return [torch.cat(rows)] if method.role is Role.POOLED else rows


def evaluate_clients(model: torch.nn.Module, models: Models, federation: Federation, cross: bool,
                     ids: torch.Tensor | None = None, device: str = "cpu") -> list[rounds.Score]:
    """Each evaluated client's model (one global model, rows [len(ids), ...] in the order of `ids`, or
    a store read by client) on its own and the clean test set, and with `cross`, on every other
    evaluated client's own test data. `ids`: the clients evaluated, all of them by default. Off the
    CPU every test set goes through local.evaluate, which moves it to `device`."""
    ids = torch.arange(len(federation.clients)) if ids is None else ids
    if cross or device != "cpu":
        rows = models if isinstance(models, dict) else models.take(ids)
        return _on_each_test_set(model, rows, federation, ids.tolist(), cross, device)
    if isinstance(models, dict) and next(iter(models.values())).shape[0] == 1:
        own = _own_with_one(model, models, federation, ids.tolist())
        clean = [x.item() for x in evaluate(model, models, federation.clean_test_images, federation.clean_test_labels)]
        return [(c, "own", *own[k]) for k, c in enumerate(ids.tolist())] + [(c, "clean", *clean) for c in ids.tolist()]
    # as many models at once as keep their padded test sets within EVAL_IMAGES images
    longest = max(1, *(len(federation.clients[c].test_labels) for c in ids.tolist()))
    per_part = max(1, min(EVAL_MODELS, EVAL_IMAGES // longest))
    own, clean = [], []
    for lo in range(0, len(ids), per_part):
        part = ids[lo : lo + per_part]
        params = {n: p[lo : lo + per_part] for n, p in models.items()} if isinstance(models, dict) else models.take(part)
        own += _own_with_each(model, params, federation, part.tolist())
        acc, loss = evaluate(model, params, federation.clean_test_images, federation.clean_test_labels)
        clean += zip(acc.tolist(), loss.tolist())
    return [(c, "own", *own[k]) for k, c in enumerate(ids.tolist())] + [(c, "clean", *clean[k]) for k, c in enumerate(ids.tolist())]


@torch.no_grad()
def _own_with_one(model: torch.nn.Module, params: Params, federation: Federation, ids: list[int]) -> list[tuple[float, float]]:
    """One model on each client's own test data: all clients' test sets as one batch, summed per client."""
    clients = [federation.clients[i] for i in ids]
    images = torch.cat([c.test_images for c in clients])
    labels = torch.cat([c.test_labels for c in clients])
    owner = torch.repeat_interleave(torch.arange(len(clients)), torch.tensor([len(c.test_labels) for c in clients]))
    one = {n: p[0] for n, p in params.items()}
    correct, loss = torch.zeros(len(clients)), torch.zeros(len(clients))
    for x, y, o in zip(images.split(EVAL_IMAGES), labels.split(EVAL_IMAGES), owner.split(EVAL_IMAGES)):
        with scoring(model):
            logits = functional_call(model, one, (x,))
        correct.index_add_(0, o, (logits.argmax(-1) == y).float())
        loss.index_add_(0, o, F.cross_entropy(logits, y, reduction="none"))
    counts = torch.bincount(owner, minlength=len(clients)).float()
    return list(zip((correct / counts).tolist(), (loss / counts).tolist()))


@torch.no_grad()
def _own_with_each(model: torch.nn.Module, params: Params, federation: Federation, ids: list[int]) -> list[tuple[float, float]]:
    """Client k's model (row k of `params`) on client ids[k]'s own test data, all in one batched
    call: the test sets padded to the longest, the padding masked out."""
    clients = [federation.clients[i] for i in ids]
    if len(clients) == 1:  # a test set too large to pad beside others: in local.evaluate's chunks
        acc, loss = evaluate(model, params, clients[0].test_images, clients[0].test_labels)
        return [(acc.item(), loss.item())]
    sizes = torch.tensor([len(c.test_labels) for c in clients])
    longest = int(sizes.max())
    images = torch.zeros(len(clients), longest, *federation.input_shape)
    labels = torch.zeros(len(clients), longest, dtype=torch.long)
    for k, c in enumerate(clients):
        images[k, : sizes[k]], labels[k, : sizes[k]] = c.test_images, c.test_labels
    real = (torch.arange(longest) < sizes.unsqueeze(1)).float()
    with scoring(model):
        logits = vmap(lambda p, x: functional_call(model, p, (x,)))(params, images)
    correct = ((logits.argmax(-1) == labels).float() * real).sum(1)
    loss = (F.cross_entropy(logits.transpose(1, 2), labels, reduction="none") * real).sum(1)
    return list(zip((correct / sizes).tolist(), (loss / sizes).tolist()))


def _on_each_test_set(model: torch.nn.Module, params: Params, federation: Federation, ids: list[int], cross: bool,
                      device: str = "cpu") -> list[rounds.Score]:
    """Each evaluated client's model on its own test data through local.evaluate, and with `cross`
    every evaluated model on every evaluated client's own test data (a grid of len(ids)^2)."""
    m = next(iter(params.values())).shape[0]
    out = []
    for j, target in enumerate(ids):
        test = federation.clients[target]
        if not cross:  # only its owner's model on this test set
            i = j if m > 1 else 0
            acc, loss = evaluate(model, {n: p[i : i + 1] for n, p in params.items()}, test.test_images,
                                 test.test_labels, device=device)
            out.append((target, "own", acc[0].item(), loss[0].item()))
            continue
        # every model on this test set in one batched call, then read off the rows we need
        acc, loss = evaluate(model, params, test.test_images, test.test_labels, device=device)
        for k, c in enumerate(ids):
            i = k if m > 1 else 0
            test_set = "own" if c == target else f"client:{target + 1}"
            out.append((c, test_set, acc[i].item(), loss[i].item()))
    clean_acc, clean_loss = evaluate(model, params, federation.clean_test_images, federation.clean_test_labels,
                                     device=device)
    return out + [(c, "clean", clean_acc[k if m > 1 else 0].item(), clean_loss[k if m > 1 else 0].item())
                  for k, c in enumerate(ids)]


def transport(model: torch.nn.Module, federation: Federation, rows: list[torch.Tensor], how: Recipe,
              seed: int) -> rounds.Transport:
    def local(round_: int, ids: torch.Tensor, stream: int) -> LocalTrain:
        chosen = [rows[i] for i in ids.tolist()]
        weights = torch.tensor([float(len(x)) for x in chosen])

        def train(start: Params, adjust: GradientAdjust | None = None, epochs: int | None = None,
                  copy: int = 0, probe: bool = False) -> ClientUpdates:
            # copy 0 keeps the stream every strategy had before strategies could train more than one model
            generators = [client_generator(seed, stream, round_, i, *([copy] if copy else [])) for i in ids.tolist()]
            how_now = replace(how, local_epochs=epochs) if epochs else how
            result = local_update(model, start, federation.train_images, federation.train_labels, chosen, how_now,
                                  generators, adjust)
            # `probe`: each client also reports FedNS's score of its trained model
            extra = {SCORE: gradnorm.scores(model, result.params, federation.train_images, chosen, how.batch_size)} if probe else {}
            return ClientUpdates(ids, weights, result.params, result.steps, result.loss, extra)

        return train

    return rounds.Transport(
        len(rows), local, lambda models, round_, cross: evaluate_clients(model, models, federation, cross, device=how.device),
        lambda models, ids, round_, cross: evaluate_clients(model, models, federation, cross, ids, how.device))


def train_models(method: Method, federation: Federation, exp: Experiment, seed: int,
                 on_round: rounds.OnRound = lambda r, records, diagnostics, state: None,
                 resume: tuple[int, ServerState] | None = None) -> Models:
    """Train `method` on `federation` for the experiment's rounds (rounds.train) and return the
    models the clients were last evaluated with: stacked [1 or n, ...], or a store of the clients'
    own, which results.save_weights writes a chunk of clients at a time (the study's default)."""
    model = build_model(exp.model, federation.input_shape, federation.num_classes)
    rows = participants(method, federation)
    profiles = [c.profile for c in federation.clients]
    how = rounds.recipe(exp, private=exp.private(method))
    schedule = rounds.schedule(method, exp, seed, profiles, sizes=[len(r) for r in rows])
    strategy = rounds.strategy(method, exp, model, schedule)
    return rounds.train(strategy, transport(model, federation, rows, how, seed),
                        rounds.initial_model(model, seed), schedule, on_round, resume)


def train(method: Method, federation: Federation, exp: Experiment, seed: int,
          on_round: rounds.OnRound = lambda r, records, diagnostics, state: None,
          resume: tuple[int, ServerState] | None = None) -> Params:
    """train_models' models as tensors [1 or n, ...], a store's rows taken whole."""
    return every_row(train_models(method, federation, exp, seed, on_round, resume))
