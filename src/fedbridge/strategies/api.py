"""What the engine needs from a strategy: four functions and an explicit server state.

As in fedjax's fed_avg.py: `init` makes the server state, `client_start` gives the sampled
clients their starting parameters, `aggregate` folds their trained parameters back in.
The state's `params` are either one global model [1, ...] or one model per client [n, ...].
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

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
class Strategy:
    name: str
    init: Callable[[Params, int], ServerState]  # (initial model [1, ...], number of clients)
    client_start: Callable[[ServerState, torch.Tensor], Params]  # sampled ids -> [K, ...]
    aggregate: Callable[[ServerState, torch.Tensor, Params, torch.Tensor], ServerState]
    # aggregate(state, sampled ids, trained [K, ...], weights [K]) -> new state
