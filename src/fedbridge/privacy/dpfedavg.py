"""Client-level DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models") as a wrapper around a strategy whose server step is a mean of the clients' updates.

Each sampled client's update (its model after local training minus the model it started from) is
clipped to L2 norm C, and every client counts the same in the mean (weight 1, not its sample count,
so one client moves the mean by at most C / m). Gaussian noise of std σC is added to the sum at the
server (central), or each client adds σC/√m before sending (distributed; the m noises sum to σC).
The wrapped strategy then aggregates these released updates as it would the raw ones: FedAvg's
mean, a server optimizer's step, Ditto's global model. A model a strategy trains with `copy` > 0
(Ditto's personal one, FedRep's head phase) never leaves its client and is neither clipped nor noised,
nor covered by ε; nor are FedPer's and FedRep's personal heads: only the shared body's update is
clipped and noised, and the heads stay on their clients as trained.

Adaptive clipping (Andrew et al. 2021): every client also reports whether its update was within C,
the server noises that count (std σ_b) and moves C geometrically toward the target quantile. The
current C and the round counter live in the state's extra, so a checkpoint resumes them.
"""

import math
from collections.abc import Callable
from dataclasses import replace

import torch

from fedbridge.local import client_generator
from fedbridge.optim import Params
from fedbridge.privacy.config import Privacy, count_noise, update_noise
from fedbridge.strategies.aggregate import difference, moved, norms
from fedbridge.strategies.api import ClientUpdates, Diagnostics, LocalTrain, ServerState, Strategy
from fedbridge.strategies.fedper import head_names

KEY = "privacy"  # in ServerState.extra and ClientUpdates.extra
# random streams of the noise, apart from rounds.py's (10-13) and federation.py's (1-3)
STREAM_NOISE, STREAM_COUNT = 170, 171


def clip(updates: Params, bound: float) -> tuple[Params, torch.Tensor]:
    """Each client's update [K, ...] scaled to L2 norm at most `bound`, and whether it was within [K]."""
    size = norms(updates)
    scale = (bound / size.clamp_min(1e-12)).clamp(max=1.0)
    return {n: x * scale.view(-1, *[1] * (x.dim() - 1)) for n, x in updates.items()}, size <= bound


def _gaussian(like: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(like.shape, generator=gen, dtype=like.dtype) * std


def noised(clipped: Params, ids: torch.Tensor, std: float, mode: str, seed: int, round_: int) -> Params:
    """The released updates [K, ...], whose mean is (sum of clipped + N(0, std^2)) / K: central adds one
    draw, split evenly over the K (so the mean carries it whole); distributed, each client k adds its
    own N(0, std^2 / K) from its own stream."""
    k = len(ids)
    if mode == "central":
        gen = client_generator(seed, STREAM_NOISE, round_)
        return {n: x + _gaussian(x[0], std, gen) / k for n, x in clipped.items()}
    gens = [client_generator(seed, STREAM_NOISE, round_, int(i)) for i in ids]
    return {n: x + torch.stack([_gaussian(x[0], std / math.sqrt(k), g) for g in gens]) for n, x in clipped.items()}


def personal_parts(strategy: str) -> Callable[[Params], set[str]] | None:
    """The parameters `strategy` keeps on each client, out of what it releases (of a model's names)."""
    return head_names if strategy in ("fedper", "fedrep") else None


def wrap(inner: Strategy, p: Privacy, sigma: float, clients_per_round: int, seed: int,
         personal: Callable[[Params], set[str]] | None = None) -> Strategy:
    """`inner` with every client's released update clipped and noised (module docstring); the
    parameters `personal` names (FedPer's and FedRep's heads) are neither released nor clipped: the
    update of the rest, the shared body, is, and its clip bounds it alone."""
    sigma_update = update_noise(p, sigma, clients_per_round)
    assert sigma_update is not None, "the experiment's validation refuses a count noise that leaves none"

    def init(initial: Params, n_clients: int) -> ServerState:
        state = inner.init(initial, n_clients)
        return ServerState(state.params, {**state.extra, KEY: {"clip": p.clip, "round": 0}})

    def local(state: ServerState, ids: torch.Tensor, train: LocalTrain) -> ClientUpdates:
        bound, round_ = state.extra[KEY]["clip"], state.extra[KEY]["round"] + 1
        within: list[torch.Tensor] = []

        def released(start: Params, adjust=None, epochs: int | None = None, copy: int = 0) -> ClientUpdates:
            trained = train(start, adjust, epochs, copy)
            if copy:  # a personal model: it stays with its client
                return trained
            kept = personal(start) if personal else set()
            shared = {n: x for n, x in start.items() if n not in kept}
            clipped, inside = clip(difference({n: trained.params[n] for n in shared}, shared), bound)
            within.append(inside)
            update = moved(shared, noised(clipped, trained.ids, sigma_update * bound, p.mode, seed, round_))
            params = {n: update[n] if n in update else x for n, x in trained.params.items()}
            return replace(trained, params=params, weights=torch.ones_like(trained.weights))

        out = inner.local(state, ids, released)
        return replace(out, extra={**out.extra, KEY: next_clip(p, bound, within[0], clients_per_round, seed, round_)})

    def aggregate(state: ServerState, trained: ClientUpdates) -> tuple[ServerState, Diagnostics]:
        new, diagnostics = inner.aggregate(state, trained)
        kept = {"clip": trained.extra[KEY], "round": state.extra[KEY]["round"] + 1}
        return ServerState(new.params, {**new.extra, KEY: kept}), diagnostics

    return Strategy(init, aggregate, local, inner.evaluate_with)


def next_clip(p: Privacy, bound: float, within: torch.Tensor, clients_per_round: int, seed: int, round_: int) -> float:
    """C for the next round: the same, or with adaptive clipping C exp(-lr (b - target_quantile)) where b
    is the noised share of updates that were within C (Andrew et al. 2021, Algorithm 1)."""
    if p.adaptive is None:
        return bound
    noise = torch.randn((), generator=client_generator(seed, STREAM_COUNT, round_)).item()
    share = (within.float().sum().item() + count_noise(p, clients_per_round) * noise) / len(within)
    return bound * math.exp(-p.adaptive.lr * (share - p.adaptive.target_quantile))
