"""What the engine needs from a strategy: a few functions and an explicit server state.

As in fedjax's fed_avg.py: `init` makes the server state, `client_start` gives the sampled
clients their starting parameters, `adjust` (optional) changes their gradients during local
training, `aggregate` folds their local results back in. The state's `params` are either one
global model [1, ...] or one model per client [n, ...]. Everything a strategy remembers between
rounds (server optimizer moments, SCAFFOLD's control variates, personal models) lives in the
state, so checkpointing the state is enough to resume a run.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fedbridge.local import GradientAdjust, LocalResult
from fedbridge.optim import Params

# run(start [K, ...], adjust=None, epochs=None, copy=0) -> LocalResult: the engine's local training of
# the round's sampled clients; `epochs` overrides the recipe's local epochs, and each `copy` gets
# its own minibatch order, so a strategy can train several models per client (Ditto) or in phases (FedRep)
LocalTrain = Callable[..., LocalResult]


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
class Strategy:
    name: str
    init: Callable[[Params, int], ServerState]  # (initial model [1, ...], number of clients)
    client_start: Callable[[ServerState, torch.Tensor], Params]  # sampled ids -> [K, ...]
    aggregate: Callable[[ServerState, torch.Tensor, LocalResult, torch.Tensor], ServerState]
    # aggregate(state, sampled ids, local results [K, ...], weights [K]) -> new state
    adjust: Callable[[ServerState, torch.Tensor], GradientAdjust | None] = lambda state, ids: None
    # local(state, ids, run) -> LocalResult replaces the default run(client_start, adjust)
    local: Callable[[ServerState, torch.Tensor, LocalTrain], LocalResult] | None = None
    # before each evaluation, every client trains the global model this many epochs on its own data
    finetune_epochs: int = 0
