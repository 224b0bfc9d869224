"""The in-process engine: rounds of sample -> local update (all sampled clients at once) -> aggregate.

Local-only, the federated strategy and pooled training are this one loop with a different
strategy or federation, so every number in the before/after table comes from the same code.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from fedbridge.experiment import Experiment, FedAvg, clients_per_round
from fedbridge.federation import Client, Federation
from fedbridge.local import GradientAdjust, LocalResult, Recipe, client_generator, evaluate, local_update
from fedbridge.models import build_model, init_params
from fedbridge.optim import Params
from fedbridge.strategies.api import LocalTrain, ServerState, Strategy
from fedbridge.strategies.fedavg import FEDAVG
from fedbridge.strategies.local_only import LOCAL_ONLY
from fedbridge.strategies.registry import build

STREAM_INIT, STREAM_SAMPLE, STREAM_BATCHES, STREAM_FINETUNE = 10, 11, 12, 13

Record = dict  # one metrics.jsonl line


def recipe(exp: Experiment) -> Recipe:
    t = exp.train
    return Recipe(t.optimizer, t.lr, t.batch_size, t.local_epochs, t.momentum)


def sample_clients(n_clients: int, fraction: float, seed: int, round_: int) -> torch.Tensor:
    """clients_per_round distinct clients, in increasing order."""
    m = clients_per_round(n_clients, fraction)
    if m == n_clients:
        return torch.arange(n_clients)
    order = torch.randperm(n_clients, generator=client_generator(seed, STREAM_SAMPLE, round_))
    return order[:m].sort().values


def pooled(federation: Federation) -> list[torch.Tensor]:
    """Training rows of one client holding everyone's data."""
    return [torch.cat([c.train_rows for c in federation.clients])]


@dataclass
class Plan:
    strategy: Strategy
    train_rows: list[torch.Tensor]  # rows per training participant
    fraction: float


def plan(method: str, federation: Federation, exp: Experiment) -> Plan:
    rows = [c.train_rows for c in federation.clients]
    if method == "local":
        return Plan(LOCAL_ONLY, rows, 1.0)
    if method == "pooled":
        return Plan(FEDAVG, pooled(federation), 1.0)
    # the FedAvg baseline beside another strategy, or the strategy itself
    config = exp.strategy if method == exp.strategy.name else FedAvg()
    return Plan(build(config, exp.train), rows, exp.train.client_fraction)


def evaluate_clients(
    model: torch.nn.Module, state: ServerState, federation: Federation, cross: bool
) -> list[tuple[Client, str, float, float]]:
    """(client, test set, accuracy, loss) for each client's model on its own and the clean test set,
    and with `cross`, on every other client's own test data."""
    clients = federation.clients
    m = next(iter(state.params.values())).shape[0]
    out = []
    clean_acc, clean_loss = evaluate(model, state.params, federation.clean_test_images, federation.clean_test_labels)
    for target in clients:
        # every model on this test set in one batched call, then read off the rows we need
        acc, loss = evaluate(model, state.params, target.test_images, target.test_labels)
        for c in clients:
            i = c.index if m > 1 else 0
            if c is target:
                out.append((c, "own", acc[i].item(), loss[i].item()))
            elif cross:
                out.append((c, f"client:{target.index + 1}", acc[i].item(), loss[i].item()))
    for c in clients:
        i = c.index if m > 1 else 0
        out.append((c, "clean", clean_acc[i].item(), clean_loss[i].item()))
    return out


OnRound = Callable[[int, list[Record], ServerState], None]


def round_trainer(
    model: torch.nn.Module, federation: Federation, rows: list[torch.Tensor], how: Recipe,
    seed: int, round_: int, ids: torch.Tensor, stream: int = STREAM_BATCHES,
) -> LocalTrain:
    """run(start, adjust, epochs, copy) -> LocalResult for the clients `ids` (see strategies.api.LocalTrain)."""

    def run(start: Params, adjust: GradientAdjust | None = None, epochs: int | None = None, copy: int = 0) -> LocalResult:
        # copy 0 keeps the stream every strategy had before strategies could train more than one model
        generators = [client_generator(seed, stream, round_, i, *([copy] if copy else [])) for i in ids.tolist()]
        recipe_ = replace(how, local_epochs=epochs) if epochs else how
        return local_update(model, start, federation.train_images, federation.train_labels, rows, recipe_, generators, adjust)

    return run


def finetuned(model: torch.nn.Module, state: ServerState, federation: Federation, how: Recipe, epochs: int, seed: int, round_: int) -> ServerState:
    """Every client's copy of the global model after `epochs` epochs on its own training data."""
    ids = torch.arange(len(federation.clients))
    run = round_trainer(model, federation, [c.train_rows for c in federation.clients], how, seed, round_, ids, STREAM_FINETUNE)
    start = {n: p.expand(len(ids), *p.shape[1:]).clone() for n, p in state.params.items()}
    return ServerState(run(start, epochs=epochs).params)


def train(
    method: str,
    federation: Federation,
    exp: Experiment,
    seed: int,
    on_round: OnRound = lambda r, records, state: None,
    resume: tuple[int, ServerState] | None = None,
) -> Params:
    """Run `exp.train.rounds` rounds of `method` and return the parameters the clients were last
    evaluated with: the server's, or with fine-tuning, every client's fine-tuned copy [K, ...].

    `on_round(r, records, state)` sees each evaluated round's metrics and the state after it;
    `resume=(r, state)` continues after round r from that state. Every random choice of round
    r+1 onwards derives from (seed, round, client), so a resumed run equals an uninterrupted one.
    """
    model = build_model(exp.model, federation.input_shape, federation.num_classes)
    initial = {n: p.unsqueeze(0) for n, p in init_params(model, client_generator(seed, STREAM_INIT)).items()}
    p = plan(method, federation, exp)
    done, state = resume or (0, p.strategy.init(initial, len(p.train_rows)))
    how = recipe(exp)
    rounds = exp.train.rounds
    k = p.strategy.finetune_epochs
    evaluated = None  # what the clients were last scored with: with fine-tuning, each one's own copy
    for r in range(done + 1, rounds + 1):
        ids = sample_clients(len(p.train_rows), p.fraction, seed, r)
        rows = [p.train_rows[i] for i in ids.tolist()]
        run = round_trainer(model, federation, rows, how, seed, r, ids)
        if p.strategy.local is None:
            result = run(p.strategy.client_start(state, ids), p.strategy.adjust(state, ids))
        else:
            result = p.strategy.local(state, ids, run)
        weights = torch.tensor([float(len(x)) for x in rows])
        state = p.strategy.aggregate(state, ids, result, weights)
        if r % exp.eval.every == 0 or r == rounds:
            cross = exp.eval.cross_clients and r == rounds
            evaluated = finetuned(model, state, federation, how, k, seed, r) if k else state
            records = [
                {
                    "seed": seed, "method": method, "round": r, "client": c.index + 1,
                    "profile": c.profile, "test_set": test_set, "accuracy": acc, "loss": loss,
                }
                for c, test_set, acc, loss in evaluate_clients(model, evaluated, federation, cross)
            ]
            on_round(r, records, state)
    if evaluated is None:  # resumed from the last round's checkpoint: nothing was left to train
        evaluated = finetuned(model, state, federation, how, k, seed, rounds) if k else state
    return evaluated.params
