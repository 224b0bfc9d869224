import numpy as np
import pytest
from hypothesis import given, settings
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
