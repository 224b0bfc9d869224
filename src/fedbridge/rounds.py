"""The round loop, written once: sample -> local -> aggregate -> evaluate -> records.

A transport says how the round's clients train and are evaluated: the simulation engine trains
them in this process (engines/simulation.py), the Flower ServerApp sends them to SuperNodes
(engines/flower/server_app.py). Everything else, the strategy's steps and the records they leave,
is here, so both give the same metrics for the same seed.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedbridge.experiment import Experiment, Method, Role, clients_per_round
from fedbridge.local import Recipe, client_generator, resolve_device
from fedbridge.models import init_params
from fedbridge.optim import Params
from fedbridge.schema import Diagnostic, Record
from fedbridge.strategies.api import Diagnostics, LocalTrain, ServerState, Strategy

# independent random streams derived from the seed (federation.py has the data's)
STREAM_INIT, STREAM_SAMPLE, STREAM_BATCHES, STREAM_FINETUNE = 10, 11, 12, 13

Score = tuple[int, str, float, float]  # (client, 0-based; test set; accuracy; loss)


@dataclass(frozen=True)
class Transport:
    n_clients: int  # the participants a strategy sees (one for pooled training)
    # local(round, ids, stream) -> train for those clients, each with minibatches from its own stream
    local: Callable[[int, torch.Tensor, int], LocalTrain]
    # evaluate(models [1 or n, ...], round, cross) -> each client's model on its own and the clean
    # test data, and with `cross` on every other client's own test data
    evaluate: Callable[[Params, int, bool], list[Score]]


@dataclass(frozen=True)
class Schedule:
    """What the loop needs to know of the experiment, besides the strategy and the transport."""

    seed: int
    method: str
    rounds: int
    fraction: float  # train.client_fraction
    every: int  # eval.every: the last round is always evaluated
    cross: bool  # eval.cross_clients, at the last round
    profiles: list[str]  # each client's profile label, for the records


# on_round(round, metrics records, diagnostics since the last call, state after the round)
OnRound = Callable[[int, list[Record], list[Diagnostic], ServerState], None]


def recipe(exp: Experiment) -> Recipe:
    t = exp.train
    return Recipe(t.optimizer, t.lr, t.batch_size, t.local_epochs, t.momentum, resolve_device(t.device))


def schedule(method: Method, exp: Experiment, seed: int, profiles: list[str]) -> Schedule:
    fraction = exp.train.client_fraction if method.role is Role.FEDERATED else 1.0
    return Schedule(seed, method.name, exp.train.rounds, fraction, exp.eval.every, exp.eval.cross_clients, profiles)


def sample_clients(n_clients: int, fraction: float, seed: int, round_: int) -> torch.Tensor:
    """clients_per_round distinct clients, in increasing order."""
    m = clients_per_round(n_clients, fraction)
    if m == n_clients:
        return torch.arange(n_clients)
    order = torch.randperm(n_clients, generator=client_generator(seed, STREAM_SAMPLE, round_))
    return order[:m].sort().values


def initial_model(model: torch.nn.Module, seed: int) -> Params:
    """The seeded starting model [1, ...] every method of a seed shares."""
    return {n: p.unsqueeze(0) for n, p in init_params(model, client_generator(seed, STREAM_INIT)).items()}


def diagnostic_records(s: Schedule, round_: int, diagnostics: Diagnostics) -> list[Diagnostic]:
    scores = {name: v.tolist() for name, v in diagnostics.scores.items()}
    return [
        Diagnostic(seed=s.seed, method=s.method, round=round_, client=c + 1,
                   scores={name: values[k] for name, values in scores.items()})
        for k, c in enumerate(diagnostics.ids.tolist())
    ] if scores else []


def metric_records(s: Schedule, round_: int, scores: list[Score]) -> list[Record]:
    return [
        Record(seed=s.seed, method=s.method, round=round_, client=c + 1, profile=s.profiles[c], test_set=test_set,
               accuracy=accuracy, loss=loss)
        for c, test_set, accuracy, loss in scores
    ]


def train(strategy: Strategy, transport: Transport, initial: Params, s: Schedule,
          on_round: OnRound = lambda r, records, diagnostics, state: None,
          resume: tuple[int, ServerState] | None = None) -> Params:
    """Run the rounds and return the models the clients were last evaluated with: the server's, or
    e.g. with fine-tuning, every client's fine-tuned copy [n, ...].

    `resume=(r, state)` continues after round r from that state. Every random choice of round r+1
    onwards derives from (seed, round, client), so a resumed run equals an uninterrupted one.
    """
    done, state = resume or (0, strategy.init(initial, transport.n_clients))
    everyone = torch.arange(transport.n_clients)
    evaluated, diagnostics = None, []
    for r in range(done + 1, s.rounds + 1):
        ids = sample_clients(transport.n_clients, s.fraction, s.seed, r)
        trained = strategy.local(state, ids, transport.local(r, ids, STREAM_BATCHES))
        state, reported = strategy.aggregate(state, trained)
        diagnostics += diagnostic_records(s, r, reported)
        if r % s.every == 0 or r == s.rounds:
            evaluated = strategy.evaluate_with(state, everyone, transport.local(r, everyone, STREAM_FINETUNE))
            on_round(r, metric_records(s, r, transport.evaluate(evaluated, r, s.cross and r == s.rounds)), diagnostics, state)
            diagnostics = []
    if evaluated is None:  # resumed from the last round's checkpoint: nothing was left to train
        evaluated = strategy.evaluate_with(state, everyone, transport.local(s.rounds, everyone, STREAM_FINETUNE))
    return evaluated
