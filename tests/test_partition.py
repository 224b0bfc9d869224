import numpy as np
import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from fedbridge.data import partition
from fedbridge.errors import ConfigError


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def assert_disjoint_sorted(parts: list[np.ndarray]) -> np.ndarray:
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)  # sorted and no repeats within a client
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)
    return joined


# --- shards -----------------------------------------------------------------------------------


def test_shards_tiny_histogram_is_two_whole_shards_per_client():
    # 5 classes x 4 labels; 5 clients x 2 shards -> shard_size 20 // 10 = 2.
    # After the stable sort, shard s is sorted positions [2s, 2s+2), all of class s // 2.
    labels = np.repeat(np.arange(5), 4)
    parts = partition.shards(labels, 5, rng(3), shards_per_client=2)
    dealt = rng(3).permutation(10).reshape(5, 2)  # the documented dealing order
    for part, (s1, s2) in zip(parts, dealt):
        expected = np.bincount([s1 // 2, s1 // 2, s2 // 2, s2 // 2], minlength=5)
        assert np.array_equal(np.bincount(labels[part], minlength=5), expected)
    assert len(assert_disjoint_sorted(parts)) == 20


def test_shards_tiny_unsorted_labels_use_stable_sort():
    # Class 0 sits at 1, 3; class 1 at 0, 2: shard 0 = [1, 3], shard 1 = [0, 2].
    labels = np.array([1, 0, 1, 0])
    parts = partition.shards(labels, 2, rng(0), shards_per_client=1)
    first = rng(0).permutation(2)[0]
    assert parts[0].tolist() == ([1, 3] if first == 0 else [0, 2])


def test_shards_mnist_size_two_shards_of_300():
    labels = np.repeat(np.arange(10), 6000)
    parts = partition.shards(labels, 100, rng(0))
    assert len(parts) == 100
    assert all(len(p) == 600 for p in parts)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)
    # 6000 / 300 = 20 shards per class, so every client's label counts are multiples of 300.
    assert all(set(np.bincount(labels[p]).tolist()) <= {0, 300, 600} for p in parts)
    assert len(assert_disjoint_sorted(parts)) == 60_000


def test_shards_leftover_samples_are_dropped():
    labels = np.arange(11) % 3
    parts = partition.shards(labels, 2, rng(0), shards_per_client=2)  # shard_size 11 // 4 = 2
    assert sum(len(p) for p in parts) == 8


def test_shards_explicit_shard_size_too_big():
    with pytest.raises(ConfigError, match="shard_size=3"):
        partition.shards(np.zeros(10, dtype=np.int64), 2, rng(), shards_per_client=2, shard_size=3)


# --- properties: disjoint and covering ---------------------------------------------------------

small_labels = st.lists(st.integers(0, 4), min_size=1, max_size=60).map(np.array)


@settings(max_examples=40, deadline=None)
@given(labels=small_labels, data=st.data())
def test_iid_covers_everything(labels, data):
    k = data.draw(st.integers(1, len(labels)))
    parts = partition.iid(labels, k, rng(data.draw(st.integers(0, 99))))
    assert sorted(assert_disjoint_sorted(parts)) == list(range(len(labels)))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@settings(max_examples=40, deadline=None)
@given(labels=small_labels, data=st.data())
def test_iid_fixed_size(labels, data):
    k = data.draw(st.integers(1, len(labels)))
    m = data.draw(st.integers(1, len(labels) // k))
    parts = partition.iid(labels, k, rng(), samples_per_client=m)
    assert_disjoint_sorted(parts)
    assert [len(p) for p in parts] == [m] * k


@settings(max_examples=40, deadline=None)
@given(labels=small_labels, data=st.data())
def test_dirichlet_covers_everything(labels, data):
    k = data.draw(st.integers(1, len(labels)))
    alpha = data.draw(st.sampled_from([0.05, 0.5, 5.0]))
    parts = partition.dirichlet(labels, k, alpha, rng(data.draw(st.integers(0, 99))), min_size=0)
    assert len(parts) == k
    assert sorted(assert_disjoint_sorted(parts)) == list(range(len(labels)))


@settings(max_examples=40, deadline=None)
@given(labels=small_labels, data=st.data())
def test_quantity_covers_everything(labels, data):
    k = data.draw(st.integers(1, len(labels)))
    parts = partition.quantity(labels, k, 1.0, rng(data.draw(st.integers(0, 99))), min_size=0)
    assert len(parts) == k
    assert sorted(assert_disjoint_sorted(parts)) == list(range(len(labels)))


@settings(max_examples=40, deadline=None)
@given(labels=small_labels, data=st.data())
def test_shards_cover_whole_shards(labels, data):
    k = data.draw(st.integers(1, len(labels)))
    per = data.draw(st.integers(1, len(labels) // k))
    parts = partition.shards(labels, k, rng(), shards_per_client=per)
    shard_size = len(labels) // (k * per)
    assert [len(p) for p in parts] == [per * shard_size] * k
    assert_disjoint_sorted(parts)


@settings(max_examples=40, deadline=None)
@given(labels=small_labels, data=st.data())
def test_sizes_property(labels, data):
    k = data.draw(st.integers(1, min(5, len(labels))))
    wanted = data.draw(st.lists(st.integers(1, len(labels) // k), min_size=k, max_size=k))
    parts = partition.sizes(labels, wanted, rng())
    assert [len(p) for p in parts] == wanted
    assert assert_disjoint_sorted(parts).max() < len(labels)


# --- every partition on dataset-sized labels ----------------------------------------------------

NAMES = ["iid", "dirichlet", "shards", "quantity", "sizes"]


@st.composite
def dataset_labels(draw) -> np.ndarray:
    """Several classes of uneven sizes (a class may have a single sample), a few hundred to a few
    thousand samples, label-sorted (as a dataset file may be) or shuffled."""
    r = rng(draw(st.integers(0, 2**16)))
    n_classes = draw(st.integers(2, 10))
    labels = r.choice(n_classes, size=draw(st.integers(200, 3000)), p=r.dirichlet(np.ones(n_classes)))
    return np.sort(labels) if draw(st.booleans()) else labels


def draw_partition(name: str, labels: np.ndarray, data: st.DataObject) -> tuple[list[np.ndarray], int, int]:
    """`name` with random valid parameters: (parts, samples it deals, the size each client is promised)."""
    n = len(labels)
    k = data.draw(st.integers(1, 20), label="n_clients")
    r = rng(data.draw(st.integers(0, 2**16), label="seed"))
    if name == "iid":
        m = data.draw(st.none() | st.integers(1, n // k), label="samples_per_client")
        return partition.iid(labels, k, r, samples_per_client=m), n if m is None else k * m, m or n // k
    if name == "shards":
        per = data.draw(st.integers(1, 5), label="shards_per_client")
        size = data.draw(st.none() | st.integers(1, n // (k * per)), label="shard_size")
        parts = partition.shards(labels, k, r, shards_per_client=per, shard_size=size)
        size = size or n // (k * per)
        assert_whole_shards(labels, parts, size, per)
        return parts, k * per * size, per * size
    if name == "sizes":
        wanted = data.draw(st.lists(st.integers(1, n // k), min_size=k, max_size=k), label="sizes")
        parts = partition.sizes(labels, wanted, r)
        assert [len(p) for p in parts] == wanted
        return parts, sum(wanted), min(wanted)
    method = partition.dirichlet if name == "dirichlet" else partition.quantity
    alpha = data.draw(st.sampled_from([0.3, 1.0, 10.0]), label="alpha")
    min_size = data.draw(st.integers(0, 3), label="min_size")
    try:
        return method(labels, k, alpha, r, min_size=min_size), n, min_size
    except ConfigError as e:
        # a documented refusal (no draw reached min_size), not a wrong partition
        assert "smallest client got" in str(e)
        reject()


def assert_whole_shards(labels: np.ndarray, parts: list[np.ndarray], size: int, per: int) -> None:
    # each client holds `per` whole shards of the stably label-sorted data
    position = np.empty(len(labels), dtype=np.int64)
    position[np.argsort(labels, kind="stable")] = np.arange(len(labels))
    for p in parts:
        assert sorted(np.bincount(position[p] // size).tolist())[-per:] == [size] * per


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, deadline=None)
@given(labels=dataset_labels(), data=st.data())
def test_every_partition_is_disjoint_in_range_non_empty_and_covers_the_labels(name, labels, data):
    """The clients' rows are disjoint and within range, each client holds what it was promised (at
    least one sample, or min_size for dirichlet and quantity), and together they cover the labels:
    every label when every sample is dealt (iid, dirichlet, quantity); when the config deals only
    part (sizes, iid's samples_per_client, shards' shard_size, whole shards only), each label with
    more samples than are left out - so enough samples per label means every label appears."""
    parts, dealt, promised = draw_partition(name, labels, data)
    rows = assert_disjoint_sorted(parts)
    assert len(rows) == dealt and rows.min() >= 0 and rows.max() < len(labels)
    assert min(len(p) for p in parts) >= promised
    counts = np.bincount(labels)
    held = np.bincount(labels[rows], minlength=len(counts))
    assert np.all(held[counts > len(labels) - dealt] > 0)


MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
@pytest.mark.parametrize("seed", range(5))
def test_small_shards_are_dealt_from_the_whole_dataset(order, seed):
    # issue 21: 8 clients x 2 shards of 600 were the first 9,600 label-sorted samples, digits 0 and 1 only
    labels = np.repeat(np.arange(10), MNIST_TRAIN_COUNTS)
    if order == "shuffled":
        labels = rng(99).permutation(labels)
    parts = partition.shards(labels, 8, rng(seed), shards_per_client=2, shard_size=600)
    assert [len(p) for p in parts] == [1200] * 8
    assert len(np.unique(labels[assert_disjoint_sorted(parts)])) > 2


def test_small_shards_reach_every_shard_over_seeds():
    # 20 whole shards of 50, 4 dealt per seed: a selection biased to the first labels would never reach the last
    labels = np.repeat(np.arange(10), 100)
    position = np.empty(1000, dtype=np.int64)
    position[np.argsort(labels, kind="stable")] = np.arange(1000)
    reached = set()
    for seed in range(50):
        for p in partition.shards(labels, 2, rng(seed), shards_per_client=2, shard_size=50):
            reached |= set((position[p] // 50).tolist())
    assert reached == set(range(20))


def test_default_shards_deal_every_shard_in_the_permutation_order():
    # McMahan's setting (benchmarks.mcmahan): 100 clients x 2 shards of 300 of 60,000 samples, all 200 dealt,
    # client i getting the shards at positions 2i, 2i + 1 of rng.permutation(200), as before issue 21
    labels = rng(5).permutation(np.repeat(np.arange(10), MNIST_TRAIN_COUNTS))
    cut = np.argsort(labels, kind="stable").reshape(200, 300)
    dealt = rng(1).permutation(200).reshape(100, 2)
    parts = partition.shards(labels, 100, rng(1), shards_per_client=2, shard_size=300)
    assert all(np.array_equal(p, np.sort(cut[row].ravel())) for p, row in zip(parts, dealt))
    assert all(np.array_equal(p, q) for p, q in zip(parts, partition.shards(labels, 100, rng(1))))


# --- seeds ------------------------------------------------------------------------------------

LABELS = np.repeat(np.arange(10), 20)
METHODS = {
    "iid": lambda r: partition.iid(LABELS, 5, r),
    "dirichlet": lambda r: partition.dirichlet(LABELS, 5, 0.5, r, min_size=5),
    "shards": lambda r: partition.shards(LABELS, 5, r),
    "quantity": lambda r: partition.quantity(LABELS, 5, 1.0, r, min_size=5),
    "sizes": lambda r: partition.sizes(LABELS, [50, 30], r),
}


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_partition_other_seed_differs(method):
    make = METHODS[method]
    a, b, c = make(rng(1)), make(rng(1)), make(rng(2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_dirichlet_alpha_controls_label_skew():
    labels = np.repeat(np.arange(10), 100)
    skewed = partition.dirichlet(labels, 10, 0.05, rng(), min_size=0)
    even = partition.dirichlet(labels, 10, 100.0, rng(), min_size=0)
    assert np.median([len(np.unique(labels[p])) for p in skewed]) <= 4
    assert all(len(np.unique(labels[p])) == 10 for p in even)


# --- bounded retries --------------------------------------------------------------------------


def test_dirichlet_unreachable_min_size_gives_up_after_max_retries():
    # One class of 10 split between 2 clients needs a 5/5 cut; with alpha 0.01 the proportions
    # are almost always ~0/~1, so no draw gets there, and 1 + 3 draws are made before giving up.
    with pytest.raises(ConfigError, match=r"after 4 draws.*smallest client got") as err:
        partition.dirichlet(np.zeros(10, dtype=np.int64), 2, 0.01, rng(), min_size=5, max_retries=3)
    assert "larger alpha" in str(err.value) and "min_size" in str(err.value)


def test_quantity_unreachable_min_size_gives_up():
    with pytest.raises(ConfigError, match="smallest client got"):
        partition.quantity(np.zeros(10, dtype=np.int64), 2, 0.01, rng(), min_size=5, max_retries=3)


@pytest.mark.parametrize("method", [partition.dirichlet, partition.quantity])
def test_impossible_min_size_fails_without_drawing(method):
    with pytest.raises(ConfigError, match="min_size=11"):
        method(np.zeros(100, dtype=np.int64), 10, 1.0, rng(), min_size=11)


# --- sizes, iid, train_test_split -------------------------------------------------------------


def test_sizes_3_2_of_10():
    parts = partition.sizes(np.arange(10), [3, 2], rng())
    assert [len(p) for p in parts] == [3, 2]
    assert len(assert_disjoint_sorted(parts)) == 5


def test_sizes_too_many():
    with pytest.raises(ConfigError, match="sum to 11"):
        partition.sizes(np.arange(10), [6, 5], rng())


def test_iid_sizes_without_and_with_samples_per_client():
    assert [len(p) for p in partition.iid(np.arange(10), 3, rng())] == [4, 3, 3]
    assert [len(p) for p in partition.iid(np.arange(10), 3, rng(), samples_per_client=3)] == [3] * 3
    with pytest.raises(ConfigError, match="samples_per_client=4"):
        partition.iid(np.arange(10), 3, rng(), samples_per_client=4)


@pytest.mark.parametrize(("n", "n_train", "n_test"), [(100, 80, 20), (10, 8, 2), (7, 6, 1)])
def test_train_test_split_80_20(n, n_train, n_test):
    indices = np.arange(1000, 1000 + n)
    train, test = partition.train_test_split(indices, 0.2, rng())
    assert (len(train), len(test)) == (n_train, n_test)
    assert sorted(np.concatenate([train, test])) == list(indices)


@pytest.mark.parametrize(("n", "fraction"), [(2, 0.2), (4, 0.9), (10, 0.0), (10, 1.0)])
def test_train_test_split_empty_part_rejected(n, fraction):
    with pytest.raises(ConfigError, match="test_fraction"):
        partition.train_test_split(np.arange(n), fraction, rng())


# --- argument validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: partition.iid(LABELS, 0, rng()), "n_clients=0"),
        (lambda: partition.iid(LABELS, 201, rng()), "n_clients=201"),
        (lambda: partition.dirichlet(LABELS, 5, 0.0, rng()), "alpha=0.0"),
        (lambda: partition.dirichlet(LABELS, 5, -1.0, rng()), "alpha=-1.0"),
        (lambda: partition.dirichlet(LABELS, 5, 1.0, rng(), max_retries=-1), "max_retries=-1"),
        (lambda: partition.quantity(LABELS, 5, float("nan"), rng()), "alpha=nan"),
        (lambda: partition.shards(LABELS, 5, rng(), shards_per_client=0), "shards_per_client=0"),
        (lambda: partition.shards(LABELS, 150, rng()), "300 shards"),
        (lambda: partition.sizes(LABELS, [3, 0], rng()), r"sizes\[1\]=0"),
        (lambda: partition.sizes(LABELS, [], rng()), "sizes=\\[\\]"),
    ],
)
def test_bad_arguments_name_the_parameter(call, name):
    with pytest.raises(ConfigError, match=name):
        call()
