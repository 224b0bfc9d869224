"""What a private method spends: its σ (given, or found for the planned rounds) and each client's ε
after every round, and what makes a [privacy] table impossible to honour before anything trains."""

import math
from collections.abc import Callable
from dataclasses import dataclass

from fedbridge.privacy import accountant
from fedbridge.privacy.accountant import Mechanism
from fedbridge.privacy.config import MAX_NOISE_MULTIPLIER, Privacy, count_noise, update_noise


def client_mechanism(n_clients: int, clients_per_round: int) -> Mechanism:
    """One noised mean of the round's clients, a fixed-size subset (rounds.sample_clients)."""
    return Mechanism(n_clients, clients_per_round, 1, fixed_size=True)


def sample_mechanism(size: int, batch_size: int, local_epochs: int) -> Mechanism:
    """A client's DP-SGD steps of one round: every step one noised batch of its `size` examples."""
    return Mechanism(size, min(batch_size, size), local_epochs * math.ceil(size / batch_size), fixed_size=False)


def client_sigma(p: Privacy, n_clients: int, clients_per_round: int, rounds: int) -> float | None:
    """σ at client level: the given one, or the smallest reaching target_epsilon in `rounds` (None if none does)."""
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    mech = client_mechanism(n_clients, clients_per_round)
    return accountant.calibrate(p.target_epsilon, mech, rounds, p.delta, p.accountant)


def problem(p: Privacy, n_clients: int, clients_per_round: int, rounds: int) -> str | None:
    """Why this table cannot be honoured in the planned rounds, or None."""
    if p.level == "sample":
        return None
    sigma = client_sigma(p, n_clients, clients_per_round, rounds)
    if sigma is None:
        reached = accountant.epsilon(MAX_NOISE_MULTIPLIER, client_mechanism(n_clients, clients_per_round), rounds,
                                     p.delta, p.accountant)
        return (f"privacy.target_epsilon = {p.target_epsilon:g} cannot be reached in {rounds} rounds: even "
                f"noise_multiplier = {MAX_NOISE_MULTIPLIER:g} spends ε = {reached:.3g}; allow a larger ε, or fewer "
                "train.rounds or a smaller train.client_fraction")
    if p.adaptive is not None and update_noise(p, sigma, clients_per_round) is None:
        return (f"privacy.adaptive.count_noise = {count_noise(p, clients_per_round):g} takes all of σ = {sigma:.3g}: "
                "the clipped count's noise must exceed σ / 2; raise privacy.adaptive.count_noise or the noise")
    return None


@dataclass(frozen=True)
class Plan:
    """One private method of a run."""

    sigma: float
    # epsilon(round, client) -> that client's ε after the round (every round counted as one it took part in)
    epsilon: Callable[[int, int], float]


def client_plan(p: Privacy, n_clients: int, clients_per_round: int, rounds: int) -> Plan:
    sigma = client_sigma(p, n_clients, clients_per_round, rounds)
    assert sigma is not None, "the experiment's validation refuses an unreachable target"
    mech = client_mechanism(n_clients, clients_per_round)
    return Plan(sigma, lambda r, client: accountant.epsilon(sigma, mech, r, p.delta, p.accountant))


def sample_plan(p: Privacy, sizes: list[int], batch_size: int, local_epochs: int) -> Plan:
    """DP-SGD in each participant: `sizes` its examples (one participant for pooled training)."""
    assert p.noise_multiplier is not None
    sigma = p.noise_multiplier
    mechs = [sample_mechanism(n, batch_size, local_epochs) for n in sizes]
    return Plan(sigma, lambda r, client: accountant.epsilon(sigma, mechs[client if len(mechs) > 1 else 0], r,
                                                            p.delta, p.accountant))


# what a strategy keeps on its clients, outside what ε covers
NOT_RELEASED = {
    "ditto": "each client's personal model (Ditto's) never leaves it and is neither clipped nor noised; the "
             "table scores those personal models, which ε does not cover",
    "finetune": "each client's fine-tuned copy of the private global model never leaves it; the table scores "
                "those copies, which ε does not cover",
    "fedper": "each client's own head (the model's last layer) never leaves it and is neither clipped nor noised; "
              "only the shared body is released, and the table scores it with those heads, which ε does not cover",
    "fedrep": "each client's own head (the model's last layer) never leaves it and is neither clipped nor noised; "
              "only the shared body is released, and the table scores it with those heads, which ε does not cover",
}


def summary(p: Privacy, strategy: str, n_clients: int, clients_per_round: int, rounds: int, batch_size: int,
            spent: dict[str, dict[int, float]], local_baseline: bool) -> dict:
    """summary.json's "privacy": `spent` is every private method's final ε per client (1-based)."""
    if p.level == "client":
        sigma = client_sigma(p, n_clients, clients_per_round, rounds)
        sampling = accountant.sampling(client_mechanism(n_clients, clients_per_round), p.accountant)
    else:
        sigma = p.noise_multiplier
        sampling = f"Poisson at rate {batch_size} / a client's samples per step (approximation of shuffled batches)"
    kept = [NOT_RELEASED[strategy]] if strategy in NOT_RELEASED else []
    if local_baseline:
        kept.append("the 'alone' models train without DP: they never leave their client")
    own = spent.get(strategy, {})
    return {
        "epsilon": max(own.values()) if own else None, "delta": p.delta, "noise_multiplier": sigma, "clip": p.clip,
        "accountant": p.accountant, "level": p.level, "mode": p.mode, "adaptive": p.adaptive is not None,
        "sampling": sampling, "methods": {m: max(e.values()) if e else None for m, e in spent.items()},
        "clients": {str(c): e for c, e in sorted(own.items())}, "not_released": "; ".join(kept) or None,
    }
