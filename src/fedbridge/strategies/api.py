"""The strategy protocol: what the round loop needs from a way of combining client models.

As in fedjax's fed_avg.py, a strategy is a few functions over an explicit server state:
- `init(initial [1, ...], n_clients)` makes the state;
- `local(state, ids, train)` has the round's sampled clients trained through the transport's
  `train` (the simulation's batched engine, or Flower's SuperNodes); by default every client starts
  from the server's model, optionally with a gradient adjustment (`plain_local`);
- `aggregate(state, updates)` folds the clients' results in and returns the new state and the
  round's diagnostics (per client: training loss, update norm, whatever the strategy reports);
- `evaluate_with(state, ids, train)` gives the models the clients are scored with (by default the
  state's; fine-tuning trains every client's copy first, through `train`).
The state's `params` are one global model [1, ...] or one model per client [n, ...]. Everything a
strategy remembers between rounds lives in the state, so checkpointing the state is enough to
resume a run; only the strategy that put something in `extra` reads it back.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel

from fedbridge.local import GradientAdjust
from fedbridge.optim import Params


@dataclass
class ServerState:
    params: Params
    extra: dict = field(default_factory=dict)  # e.g. a server optimizer's moments

    def model_for(self, client: int) -> Params:
        """The parameters [1, ...] client `client` (0-based) is evaluated with."""
        m = next(iter(self.params.values())).shape[0]
        i = client if m > 1 else 0
        return {n: p[i : i + 1] for n, p in self.params.items()}


@dataclass(frozen=True)
class ClientUpdates:
    """The clients of a round after local training, in the order of `ids`."""

    ids: torch.Tensor  # [K] clients (0-based) that trained and answered
    weights: torch.Tensor  # [K] their training samples
    params: Params  # [K, ...] after local training
    steps: torch.Tensor  # [K] optimizer steps each took (FedNova normalises by these)
    loss: torch.Tensor  # [K] mean training loss over the round's steps
    extra: dict = field(default_factory=dict)  # what a strategy's own `local` adds (Ditto's personal models)


@dataclass(frozen=True)
class Diagnostics:
    """What a strategy reports about each client it aggregated in a round (noisy-client detection
    reads these): score name -> [K] values, in the order of `ids`."""

    ids: torch.Tensor
    scores: dict[str, torch.Tensor] = field(default_factory=dict)


# train(start [K, ...], adjust=None, epochs=None, copy=0) -> ClientUpdates of the round's clients;
# `epochs` overrides the recipe's local epochs, and each `copy` gets its own minibatch order, so a
# strategy can train several models per client (Ditto) or in phases (FedRep); `probe=True` (simulation
# only) has each client also report FedNS's score in `extra` (strategies/noise_screen.py)
LocalTrain = Callable[..., ClientUpdates]
Local = Callable[[ServerState, torch.Tensor, LocalTrain], ClientUpdates]
Adjust = Callable[[ServerState, torch.Tensor], GradientAdjust | None]


def from_server(state: ServerState, ids: torch.Tensor) -> Params:
    """The global model [1, ...], one copy per sampled client [K, ...]."""
    return broadcast(state.params, len(ids))


def broadcast(params: Params, k: int) -> Params:
    return {n: p.expand(k, *p.shape[1:]).clone() for n, p in params.items()}


def plain_local(start: Callable[[ServerState, torch.Tensor], Params] = from_server, adjust: Adjust | None = None) -> Local:
    """The usual local step: each sampled client trains from `start`, its gradients changed by `adjust`."""

    def local(state: ServerState, ids: torch.Tensor, train: LocalTrain) -> ClientUpdates:
        return train(start(state, ids), adjust(state, ids) if adjust else None)

    return local


@dataclass(frozen=True)
class Strategy:
    init: Callable[[Params, int], ServerState]  # (initial model [1, ...], number of clients)
    aggregate: Callable[[ServerState, ClientUpdates], tuple[ServerState, Diagnostics]]
    local: Local = plain_local()
    # (state, every client's id, train for every client) -> the models [1 or n, ...] clients are scored with
    evaluate_with: Callable[[ServerState, torch.Tensor, LocalTrain], Params] = lambda state, ids, train: state.params


def shares_everything(params: Params) -> set[str]:
    """StrategySpec.personal of most strategies: no parameter stays with its client."""
    return set()


@dataclass(frozen=True)
class Setup:
    """What a strategy may need to know of the experiment: to build itself, and to say whether it fits."""

    n_clients: int
    clients_per_round: int
    client_fraction: float
    optimizer: str
    momentum: float
    lr: float

    @property
    def per_round(self) -> str:
        return (f"a round has {self.clients_per_round} clients ({self.n_clients} clients x "
                f"train.client_fraction {self.client_fraction})")


@dataclass(frozen=True)
class StrategySpec:
    """One strategy as the config knows it: its typed keys (a pydantic class whose `name` is a Literal
    of the names it answers to), how to build it, its titles in tables and whether it fits a setup."""

    config: type[BaseModel]
    build: Callable[[Any, Setup], Strategy]
    titles: dict[str, str]  # config name -> title in tables and reports
    # why the strategy cannot run in this setup (a message naming the keys to change), or None
    check: Callable[[Any, Setup], str | None] = lambda config, setup: None
    # whether the Flower deployment runs it
    flower: bool = True
    # its `local` step (e.g. FedProx's proximal term) runs on each Flower node, which gets the
    # strategy's config and calls `local` on a state holding the received model (and, for a
    # strategy that keeps per-client state, the node's own: engines/flower/personal.py)
    on_node: bool = False
    # the model's parameters [names] each client keeps to itself (FedPer's head): on Flower they never leave its node
    personal: Callable[[Params], set[str]] = shares_everything
    # a row per client in a client_state store (control variates, personal models, heads), and
    # clients scored, and saved, with one model each: what bounds.py counts in memory
    keeps_per_client: bool = False
    scores_per_client: bool = False


def needs_clients(config: BaseModel, setup: Setup, minimum: int = 3) -> str | None:
    """For rules that compare the clients of a round."""
    if setup.clients_per_round < minimum:
        return (f"strategy.name = {config.name!r} compares the clients of a round, but {setup.per_round}; "
                f"it needs at least {minimum} (add clients or raise train.client_fraction)")
    return None


def needs_plain_sgd(config: BaseModel, setup: Setup) -> str | None:
    """For strategies whose formulas divide by the local steps of plain SGD."""
    if setup.optimizer != "sgd" or setup.momentum:
        return (f"strategy.name = {config.name!r} is written for plain SGD local steps, but train.optimizer = "
                f"{setup.optimizer!r}, train.momentum = {setup.momentum}; use train.optimizer = \"sgd\" with momentum 0")
    return None
