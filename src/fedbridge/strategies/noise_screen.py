"""FedNS, Federated Noise-Sifting (Li, Funk, Gürel & Saeed 2024, arXiv 2409.02189): noisy-input
clients found once, from their first round, then down-weighted inside the strategy's own aggregation.

`strategy.noise_screen = "fedns"` on FedAvg, trimmed mean or FedNova (the strategies of the paper):
1. the first time a client is sampled it also reports its score (fedbridge.gradnorm: the mean L1
   norm of its last layer's gradient for a label-free loss, after its local training);
2. the first round's scores are split in two by 1-D 2-means (the paper's k-means with k = 2,
   solved exactly: the split of the sorted scores with the least within-cluster sum of squares);
   the cluster of lower norms is noisy. A client first sampled later is put on the side of the
   midpoint between the two centres it falls on (the k-means assignment rule);
3. every round, a clean client's aggregation weight is multiplied by `clean_weight` (1.2) and a
   noisy one's by `noisy_weight` (0.1), the authors' code's values; the weights then pass to the
   strategy, so FedAvg and FedNova (which weigh clients by samples) take them as they are, and
   trimmed mean, which ignores sample weights, averages the values it keeps per coordinate with
   these weights (`trust`).

The screen is one wrapper over the strategy's `local` and `aggregate`; its verdicts live in the
server state, so a resumed run keeps them. Deviations from the paper: the authors' code reads each
client's true noise flag after round 1 (the clustering only decides round 1); here the verdicts of
the clustering stand for the whole run, as the paper describes. Its trimmed-mean variant averages
copies of the screen-weighted mean (so trims nothing); here the trimming stays.
"""

from dataclasses import replace
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from fedbridge.strategies.api import ClientUpdates, Diagnostics, ServerState, Strategy, StrategySpec
from fedbridge.strict import Strict

WRAPS = ("fedavg", "trimmed_mean", "fednova")
KEY = "fedns"  # its entry in the server state's extra
UNKNOWN, CLEAN, NOISY = -1, 0, 1
SCORE = "grad_norm"  # what a probed client reports, in ClientUpdates.extra
TRUST = "trust"  # the screen's weight [K] of each client, in ClientUpdates.extra


class FedNS(Strict):
    name: Literal["fedns"]
    clean_weight: float = Field(default=1.2, gt=0)
    noisy_weight: float = Field(default=0.1, ge=0)


class Screened(Strict):
    """The keys of a strategy FedNS can wrap."""

    noise_screen: FedNS | None = None  # "fedns", or {name = "fedns", clean_weight, noisy_weight}

    @field_validator("noise_screen", mode="before")
    @classmethod
    def _by_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


def refusal(strategy: Any) -> str | None:
    """Why a `[strategy]` table (as written) asks for a screen on a strategy it cannot wrap, or None."""
    if isinstance(strategy, dict) and "noise_screen" in strategy and strategy.get("name") not in WRAPS:
        return (f"strategy.noise_screen wraps the aggregation weights of {', '.join(WRAPS)} only (as FedNS "
                f"does), not strategy.name = {strategy.get('name')!r}; remove strategy.noise_screen or "
                f"use one of those")
    return None


def two_means_split(scores: torch.Tensor) -> float | None:
    """The threshold between the two clusters of 1-D scores: the midpoint of their centres under the
    exact 2-means split; None if the scores are all equal (nothing to split)."""
    s = scores.double().sort().values
    if len(s) < 2 or s[0] == s[-1]:
        return None
    best = None
    for i in range(1, len(s)):
        low, high = s[:i], s[i:]
        cost = ((low - low.mean()) ** 2).sum() + ((high - high.mean()) ** 2).sum()
        if best is None or cost < best[0]:
            best = (cost, (low.mean() + high.mean()).item() / 2)
    return best[1]


def verdicts(known: torch.Tensor, threshold: float, ids: torch.Tensor, score: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The clients' verdicts [n] and the threshold after the round's probed clients `ids` reported `score`."""
    known = known.clone()
    fresh = known[ids] == UNKNOWN
    if threshold != threshold:  # NaN: no split yet, the first probed round sets it
        split = two_means_split(score[fresh])
        threshold = float("nan") if split is None else split
    if threshold == threshold:
        known[ids[fresh]] = torch.where(score[fresh] < threshold, NOISY, CLEAN)
    else:  # one client, or all scored alike: nobody stands out as noisy
        known[ids[fresh]] = CLEAN
    return known, threshold


def trust(trained: ClientUpdates) -> torch.Tensor | None:
    """The screen's weight [K] of each client of the round, for rules that ignore sample weights."""
    return trained.extra.get(TRUST)


def screened(inner: Strategy, screen: FedNS) -> Strategy:
    def init(initial, n_clients: int) -> ServerState:
        state = inner.init(initial, n_clients)
        verdict = {"known": torch.full((n_clients,), UNKNOWN), "threshold": torch.tensor(float("nan"))}
        return ServerState(state.params, {**state.extra, KEY: verdict})

    def local(state: ServerState, ids: torch.Tensor, train) -> ClientUpdates:
        if (state.extra[KEY]["known"][ids] == UNKNOWN).any():
            return inner.local(state, ids, lambda *args, **kwargs: train(*args, probe=True, **kwargs))
        return inner.local(state, ids, train)

    def aggregate(state: ServerState, trained: ClientUpdates) -> tuple[ServerState, Diagnostics]:
        known, threshold = state.extra[KEY]["known"], state.extra[KEY]["threshold"].item()
        if SCORE in trained.extra:
            known, threshold = verdicts(known, threshold, trained.ids, trained.extra[SCORE])
        noisy = known[trained.ids] == NOISY
        factor = torch.where(noisy, screen.noisy_weight, screen.clean_weight).float()
        weighted = replace(trained, weights=trained.weights * factor, extra={**trained.extra, TRUST: factor})
        new, reported = inner.aggregate(state, weighted)
        verdict = {"known": known, "threshold": torch.tensor(threshold)}
        # the verdict as a detection score (1 = noisy), so `fedbridge show` rates it like the others
        scores = {**reported.scores, "fedns_noisy": noisy.float()}
        return ServerState(new.params, {**new.extra, KEY: verdict}), Diagnostics(reported.ids, scores)

    return Strategy(init, aggregate, local=local, evaluate_with=inner.evaluate_with)


def screened_spec(spec: StrategySpec) -> StrategySpec:
    """The spec of a strategy with FedNS on it (registry.build applies the screen itself): Flower's
    clients do not report the score."""
    return replace(spec, flower=False)
