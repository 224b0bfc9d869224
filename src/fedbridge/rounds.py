"""The round loop, written once: sample -> local -> aggregate -> evaluate -> records.

A transport says how the round's clients train and are evaluated: the simulation engine trains
them in this process (engines/simulation.py), the Flower ServerApp sends them to SuperNodes
(engines/flower/server_app.py). Everything else, the strategy's steps and the records they leave,
is here, so both give the same metrics for the same seed.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from fedbridge import losses
from fedbridge.client_state import Models
from fedbridge.experiment import Experiment, Method, Role, clients_per_round
from fedbridge.local import DpSgd, Recipe, client_generator, resolve_device
from fedbridge.models import init_params, norm_state
from fedbridge.optim import Params
from fedbridge.privacy import budget, dpfedavg
from fedbridge.schema import Diagnostic, Record
from fedbridge.strategies import registry
from fedbridge.strategies.api import Diagnostics, LocalTrain, ServerState, Strategy
from fedbridge.strategies.local_only import LOCAL_ONLY

# independent random streams derived from the seed (federation.py has the data's)
STREAM_INIT, STREAM_SAMPLE, STREAM_BATCHES, STREAM_FINETUNE, STREAM_EVAL = 10, 11, 12, 13, 14

Score = tuple[int, str, float, float]  # (client, 0-based; test set; accuracy; loss)


@dataclass(frozen=True)
class Transport:
    n_clients: int  # the participants a strategy sees (one for pooled training)
    # local(round, ids, stream) -> train for those clients, each with minibatches from its own stream
    local: Callable[[int, torch.Tensor, int], LocalTrain]
    # evaluate(models [1 or n, ...], round, cross) -> each client's model on its own and the clean
    # test data, and with `cross` on every other client's own test data
    evaluate: Callable[[Params, int, bool], list[Score]]
    # evaluate_some(models, ids, round, cross) -> as `evaluate`, for clients `ids` only (eval.clients),
    # `models` [1 or len(ids), ...] or a store read by client; a transport without it scores everyone
    evaluate_some: Callable[[Models, torch.Tensor, int, bool], list[Score]] | None = None


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
    evaluated: str | int = "all"  # eval.clients: "all", "sampled", or a seeded subset of that many
    # a private method's plan ([privacy]): its σ and each client's ε after a round, put in its records
    privacy: budget.Plan | None = None
    # client-level DP-FedAvg around the strategy (registry.build applies it, outermost)
    wrap: Callable[[Strategy], Strategy] = lambda strategy: strategy


# on_round(round, metrics records, diagnostics since the last call, state after the round)
OnRound = Callable[[int, list[Record], list[Diagnostic], ServerState], None]


def recipe(exp: Experiment, private: bool = True) -> Recipe:
    """How clients train; with `private` and sample-level [privacy], by DP-SGD."""
    t, p = exp.train, exp.privacy
    dp = DpSgd(p.clip, p.noise_multiplier) if private and p is not None and p.level == "sample" else None
    return Recipe(t.optimizer, t.lr, t.batch_size, t.local_epochs, t.momentum, loss=t.loss or losses.CE, dp=dp,
                  device=resolve_device(t.device))


def schedule(method: Method, exp: Experiment, seed: int, profiles: list[str], sizes: list[int] | None = None) -> Schedule:
    """`sizes`: each participant's training samples, which sample-level ε depends on (without them a
    sample-level run's records carry no ε)."""
    fraction = exp.train.client_fraction if method.role is Role.FEDERATED else 1.0
    s = Schedule(seed, method.name, exp.train.rounds, fraction, exp.eval.every, exp.eval.cross_clients, profiles,
                 exp.eval.clients)
    p, t = exp.privacy, exp.train
    if p is None or not exp.private(method):
        return s
    if p.level == "sample":
        return s if sizes is None else replace(s, privacy=budget.sample_plan(p, sizes, t.batch_size, t.local_epochs))
    m = clients_per_round(exp.n_clients, fraction)
    plan = budget.client_plan(p, exp.n_clients, m, t.rounds)
    return replace(s, privacy=plan, wrap=lambda strategy: dpfedavg.wrap(strategy, p, plan.sigma, m, seed,
                                                                       dpfedavg.personal_parts(method.name)))


def strategy(method: Method, exp: Experiment, model: torch.nn.Module, s: Schedule,
             deployed: registry.Wrap | None = None) -> Strategy:
    """The strategy `method` runs as, on either engine: registry.build's wrappers in their one order,
    client-level DP-FedAvg (`s.wrap`) outermost; `deployed` is the Flower nodes' seam."""
    if method.role is Role.LOCAL:
        return s.wrap(LOCAL_ONLY)
    return registry.build(method.strategy, exp.setup, norm_state(model), deployed, s.wrap)


def sample_clients(n_clients: int, fraction: float, seed: int, round_: int) -> torch.Tensor:
    """clients_per_round distinct clients, in increasing order."""
    m = clients_per_round(n_clients, fraction)
    if m == n_clients:
        return torch.arange(n_clients)
    order = torch.randperm(n_clients, generator=client_generator(seed, STREAM_SAMPLE, round_))
    return order[:m].sort().values


def evaluated_clients(s: Schedule, n_clients: int, sampled: torch.Tensor) -> torch.Tensor:
    """The clients a round scores (eval.clients): everyone, the round's sampled ones, or the same
    seeded subset of N clients at every round, so that its curves follow the same clients."""
    if s.evaluated == "sampled":
        return sampled
    if s.evaluated == "all" or s.evaluated >= n_clients:
        return torch.arange(n_clients)
    return torch.randperm(n_clients, generator=client_generator(s.seed, STREAM_EVAL))[: s.evaluated].sort().values


def rows_for(models: Models, ids: torch.Tensor, n_clients: int) -> Models:
    """`models` as evaluate_some takes them: one model [1, ...], one per client of `ids`, or a store."""
    if isinstance(models, dict) and next(iter(models.values())).shape[0] == n_clients != len(ids):
        return {n: p[ids] for n, p in models.items()}
    return models


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
    records = [
        Record(seed=s.seed, method=s.method, round=round_, client=c + 1, profile=s.profiles[c], test_set=test_set,
               accuracy=accuracy, loss=loss)
        for c, test_set, accuracy, loss in scores
    ]
    if s.privacy is not None:  # each client's own ε (sample level: it depends on the client's size)
        for r in records:
            r["epsilon"] = s.privacy.epsilon(round_, r["client"] - 1)
    return records


def train(strategy: Strategy, transport: Transport, initial: Params, s: Schedule,
          on_round: OnRound = lambda r, records, diagnostics, state: None,
          resume: tuple[int, ServerState] | None = None) -> Models:
    """Run the rounds of `strategy` (as rounds.strategy builds it, its wrappers on) and return the
    models every client was last evaluated with: the server's, a store of the clients' own, or
    e.g. with fine-tuning, every client's fine-tuned copy [n, ...].

    `resume=(r, state)` continues after round r from that state. Every random choice of round r+1
    onwards derives from (seed, round, client), so a resumed run equals an uninterrupted one.
    """
    done, state = resume or (0, strategy.init(initial, transport.n_clients))
    n = transport.n_clients
    everyone = torch.arange(n)
    evaluated, diagnostics = None, []
    for r in range(done + 1, s.rounds + 1):
        ids = sample_clients(n, s.fraction, s.seed, r)
        trained = strategy.local(state, ids, transport.local(r, ids, STREAM_BATCHES))
        state, reported = strategy.aggregate(state, trained)
        diagnostics += diagnostic_records(s, r, reported)
        if r % s.every == 0 or r == s.rounds:
            scored = evaluated_clients(s, n, ids) if transport.evaluate_some else everyone
            models = strategy.evaluate_with(state, scored, transport.local(r, scored, STREAM_FINETUNE))
            cross = s.cross and r == s.rounds
            scores = (transport.evaluate(models, r, cross) if len(scored) == n
                      else transport.evaluate_some(rows_for(models, scored, n), scored, r, cross))
            evaluated = models if len(scored) == n else None
            on_round(r, metric_records(s, r, scores), diagnostics, state)
            diagnostics = []
    if evaluated is None:  # resumed from the last round's checkpoint, or the last round scored only some clients
        evaluated = strategy.evaluate_with(state, everyone, transport.local(s.rounds, everyone, STREAM_FINETUNE))
    return evaluated
