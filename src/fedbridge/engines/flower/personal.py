"""Strategies whose clients keep state between rounds (SCAFFOLD's control variates, FedPer's and
FedRep's heads, Ditto's personal models, FedBN's normalisation layers) and fine-tuning, deployed:
each client's part runs on its own node, through the strategy's own functions.

The server runs the strategy exactly as the simulation does (rounds.train), with one seam
(registry.build's `deployed`) that lets the transport see the state each step starts from. A
round's training is one message per sampled node holding the server's global model and the
state's shared entries (SCAFFOLD's c); the node runs the strategy's `local` and `aggregate` on a
one-client state made of those and its own entries (node_state.py), keeps its entries, and sends
back only what leaves a client in the simulation too: the trained shared model, without the
parameters it keeps to itself (`registry.personal`). The server reads those as unmoved, and what
the strategy trains with `copy` > 0 (Ditto's personal model) or only to score (fine-tuning) as its
start: stand-ins, never used on the server (its rows of per-client stores are never read but by
its aggregation's bookkeeping, which the nodes' copies replace). Evaluation sends the global
state; each node scores the model the strategy's `evaluate_with` gives it.

SCAFFOLD's server step needs each client's control-variate change c_i+ - c_i = -c - (x - y_i) /
(K_i lr), which the server derives from the update it receives: a client's c_i itself is never sent.
"""

import io
from dataclasses import dataclass, replace
from typing import Any

import torch

from fedbridge.client_state import ClientState
from fedbridge.strategies import registry
from fedbridge.strategies.api import ServerState, Strategy
from fedbridge.strategies.keep_local import KEEP_LOCAL


def stateful(config: Any) -> bool:
    """Whether the strategy's clients keep state on their nodes or are scored with a model of their
    own (so each node runs the strategy's steps on its own state, as this module says)."""
    spec = registry.spec(config)
    return spec.keeps_per_client or spec.scores_per_client or bool(registry.kept_local(config))


def own_entries(extra: dict) -> dict:
    """The entries of a state's extra that hold one row per client: a node keeps its own row."""
    return {k: v for k, v in extra.items() if isinstance(v, ClientState) or k == KEEP_LOCAL}


def shared_bytes(state: ServerState) -> bytes:
    """The state's extra without the per-client entries (SCAFFOLD's c), as a node receives it."""
    buffer = io.BytesIO()
    torch.save({k: v for k, v in state.extra.items() if k not in own_entries(state.extra)}, buffer)
    return buffer.getvalue()


def read_shared(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), weights_only=True)


@dataclass
class Seen:
    """The state the strategy's last step started from, as the transport sends it to the nodes."""

    state: ServerState | None = None


def seam(seen: Seen) -> registry.Wrap:
    """registry.build's `deployed`: the strategy with every state its steps start from kept in `seen`."""

    def deployed(strategy: Strategy) -> Strategy:
        def local(state, ids, train):
            seen.state = state
            return strategy.local(state, ids, train)

        def evaluate_with(state, ids, train):
            seen.state = state
            return strategy.evaluate_with(state, ids, train)

        return replace(strategy, local=local, evaluate_with=evaluate_with)

    return deployed
