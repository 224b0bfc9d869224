"""Split a dataset's labels among clients.

Every function is pure: the only randomness comes from the `rng` argument, so the same seed
always gives the same partition. Each returns one sorted int64 index array per client; the
arrays are disjoint. Impossible parameters raise ConfigError before (or instead of) any work.
"""

import numpy as np

from fedbridge.errors import ConfigError

__all__ = ["dirichlet", "iid", "quantity", "shards", "sizes", "train_test_split"]


def iid(
    labels: np.ndarray,
    n_clients: int,
    rng: np.random.Generator,
    samples_per_client: int | None = None,
) -> list[np.ndarray]:
    """Shuffle and deal equal parts.

    Without `samples_per_client` every sample is used and sizes differ by at most one
    (the first N % n_clients clients get the extra sample); with it, each client gets exactly
    that many and the rest are left out.
    """
    n = _check_labels(labels)
    _check_n_clients(n_clients, n)
    perm = rng.permutation(n)
    if samples_per_client is None:
        return _sorted_parts(np.array_split(perm, n_clients))
    _check_int("samples_per_client", samples_per_client, 1)
    if n_clients * samples_per_client > n:
        raise ConfigError(
            f"n_clients={n_clients} x samples_per_client={samples_per_client} = "
            f"{n_clients * samples_per_client} exceeds the {n} samples available; "
            f"use at most {n // n_clients} samples per client or fewer clients"
        )
    return _sorted_parts(np.split(perm[: n_clients * samples_per_client], n_clients))


def dirichlet(
    labels: np.ndarray,
    n_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 10,
    max_retries: int = 100,
) -> list[np.ndarray]:
    """Label skew: each class is split among clients with proportions ~ Dir(alpha).

    This is the widely copied FedLab / NIID-Bench procedure (after Hsu et al. 2019), including
    its balancing step: a client already holding N / n_clients samples gets no share of later
    classes. Smaller alpha means more skew. The draw is repeated, at most 1 + max_retries times,
    until every client holds at least `min_size` samples.
    """
    n = _check_labels(labels)
    _check_n_clients(n_clients, n)
    _check_alpha(alpha)
    _check_min_size(min_size, n_clients, n)
    _check_int("max_retries", max_retries, 0)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    best = 0
    for _ in range(1 + max_retries):
        parts = _dirichlet_draw(by_class, n_clients, alpha, n, rng)
        smallest = min(len(p) for p in parts)
        if smallest >= min_size:
            return _sorted_parts(parts)
        best = max(best, smallest)
    raise ConfigError(_retry_message("dirichlet", best, min_size, max_retries))


def _dirichlet_draw(
    by_class: list[np.ndarray],
    n_clients: int,
    alpha: float,
    n: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    counts = np.zeros(n_clients, dtype=np.int64)
    for idx in by_class:
        shuffled = rng.permutation(idx)
        proportions = rng.dirichlet(np.full(n_clients, alpha))
        capped = proportions * (counts < n / n_clients)
        # With tiny alpha the only clients under the cap can all draw exactly 0; the cap is a
        # balancing heuristic, so fall back to the raw draw rather than divide by zero.
        if capped.sum() > 0:
            proportions = capped / capped.sum()
        cuts = (np.cumsum(proportions) * len(shuffled)).astype(np.int64)[:-1]
        for client, chunk in enumerate(np.split(shuffled, cuts)):
            parts[client].append(chunk)
            counts[client] += len(chunk)
    return [np.concatenate(p) for p in parts]


def shards(
    labels: np.ndarray,
    n_clients: int,
    rng: np.random.Generator,
    shards_per_client: int = 2,
    shard_size: int | None = None,
) -> list[np.ndarray]:
    """McMahan et al. 2017: sort by label, cut into equal shards, deal a few to each client at random.

    Indices are sorted by label with a stable sort, so within a class the original order is
    kept. The sorted data is cut into all its whole shards, shard s holding sorted positions
    [s * shard_size, (s + 1) * shard_size); the fewer than shard_size samples past the last whole
    shard are left out. The first n_clients * shards_per_client entries of
    `rng.permutation(number of whole shards)` are dealt: client i gets the i-th run of
    `shards_per_client` of them. The default shard_size (N // (n_clients * shards_per_client))
    makes about that many whole shards, so (almost) every sample is dealt; a smaller one deals a
    random selection of the whole shards, from the whole dataset rather than its first labels.
    """
    n = _check_labels(labels)
    _check_n_clients(n_clients, n)
    _check_int("shards_per_client", shards_per_client, 1)
    n_shards = n_clients * shards_per_client
    if shard_size is None:
        shard_size = n // n_shards
        if shard_size == 0:
            raise ConfigError(
                f"n_clients={n_clients} x shards_per_client={shards_per_client} = {n_shards} "
                f"shards is more than the {n} samples available; use fewer clients or shards"
            )
    _check_int("shard_size", shard_size, 1)
    if n_shards * shard_size > n:
        raise ConfigError(
            f"shard_size={shard_size} x {n_shards} shards = {n_shards * shard_size} exceeds "
            f"the {n} samples available; use shard_size <= {n // n_shards}"
        )
    whole = n // shard_size
    cut = np.argsort(labels, kind="stable")[: whole * shard_size].reshape(whole, shard_size)
    # When every whole shard is dealt (the default size, mostly) this is a permutation of them all,
    # as in McMahan et al.; otherwise a random selection, so small shards span every label's part.
    dealt = rng.permutation(whole)[:n_shards].reshape(n_clients, shards_per_client)
    return _sorted_parts([cut[row].ravel() for row in dealt])


def quantity(
    labels: np.ndarray,
    n_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 10,
    max_retries: int = 100,
) -> list[np.ndarray]:
    """Quantity skew: client sizes ~ Dir(alpha) * N, samples drawn IID.

    Every sample is used. Redrawn, at most 1 + max_retries times, until every client holds at
    least `min_size` samples.
    """
    n = _check_labels(labels)
    _check_n_clients(n_clients, n)
    _check_alpha(alpha)
    _check_min_size(min_size, n_clients, n)
    _check_int("max_retries", max_retries, 0)
    best = 0
    for _ in range(1 + max_retries):
        perm = rng.permutation(n)
        proportions = rng.dirichlet(np.full(n_clients, alpha))
        cuts = (np.cumsum(proportions) * n).astype(np.int64)[:-1]
        parts = np.split(perm, cuts)
        smallest = min(len(p) for p in parts)
        if smallest >= min_size:
            return _sorted_parts(parts)
        best = max(best, smallest)
    raise ConfigError(_retry_message("quantity", best, min_size, max_retries))


def sizes(labels: np.ndarray, sizes: list[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Client i gets `sizes[i]` samples drawn at random without replacement."""
    n = _check_labels(labels)
    if len(sizes) == 0:
        raise ConfigError("sizes=[] is empty; give one positive size per client")
    for i, size in enumerate(sizes):
        _check_int(f"sizes[{i}]", size, 1)
    if sum(sizes) > n:
        raise ConfigError(
            f"sizes={list(sizes)} sum to {sum(sizes)}, more than the {n} samples available; "
            f"make them sum to at most {n}"
        )
    perm = rng.permutation(n)
    return _sorted_parts(np.split(perm[: sum(sizes)], np.cumsum(sizes)[:-1]))


def train_test_split(
    indices: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's indices into (train, test), both sorted.

    The test part has round(len(indices) * test_fraction) entries (Python's round, so exact
    halves go to the even count), chosen at random.
    """
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction={test_fraction} must be strictly between 0 and 1")
    n = len(indices)
    n_test = round(n * test_fraction)
    if n_test == 0 or n_test == n:
        raise ConfigError(
            f"test_fraction={test_fraction} of a client's {n} samples leaves "
            f"{n - n_test} for training and {n_test} for testing; both need at least one "
            f"- give the client more samples or pick a fraction nearer 0.5"
        )
    shuffled = np.asarray(indices, dtype=np.int64)[rng.permutation(n)]
    return np.sort(shuffled[n_test:]), np.sort(shuffled[:n_test])


def _sorted_parts(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(p).astype(np.int64) for p in parts]


def _retry_message(method: str, best: int, min_size: int, max_retries: int) -> str:
    return (
        f"{method} partition: after {1 + max_retries} draws (max_retries={max_retries}) the "
        f"smallest client got {best} samples at best, fewer than min_size={min_size}; "
        f"use a larger alpha, fewer clients, or a smaller min_size"
    )


def _check_labels(labels: np.ndarray) -> int:
    # Wrong labels are a bug in the caller, not something a config can fix, hence ValueError.
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    return len(labels)


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")


def _check_n_clients(n_clients: int, n: int) -> None:
    _check_int("n_clients", n_clients, 1)
    if n_clients > n:
        raise ConfigError(
            f"n_clients={n_clients} is more than the {n} samples available; "
            f"use at most {n} clients"
        )


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < np.inf:
        raise ConfigError(f"alpha={alpha} must be a finite number > 0 (smaller means more skew)")


def _check_min_size(min_size: int, n_clients: int, n: int) -> None:
    _check_int("min_size", min_size, 0)
    # No draw can succeed, so fail now instead of after every retry.
    if n_clients * min_size > n:
        raise ConfigError(
            f"min_size={min_size} x n_clients={n_clients} = {n_clients * min_size} exceeds the "
            f"{n} samples available; use min_size <= {n // n_clients} or fewer clients"
        )

