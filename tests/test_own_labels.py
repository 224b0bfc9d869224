"""Properties of what own data goes through before training: classes numbered in sorted order, the
common test set held out per class, a natural partition giving each holder exactly its rows, and
each client's table standardised with its own training rows."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbridge.data import labels
from fedbridge.data.datasets import Dataset
from fedbridge.errors import DataError
from fedbridge.experiment import validate
from fedbridge.federation import build_federation, client_rows

names = st.lists(st.sampled_from(["cat", "dog", "emu", "yak"]), min_size=2, max_size=60)


@settings(max_examples=50, deadline=None)
@given(train=names.filter(lambda x: len(set(x)) >= 2))
def test_classes_are_numbered_in_sorted_order(train):
    y, _, classes = labels.encode(np.array(train), np.array(train[:1]), "train", "test")
    assert list(classes) == sorted(set(train))
    assert [classes[k] for k in y] == train


def test_numbers_sort_as_numbers():
    y, _, classes = labels.encode(np.array([10, 2, 2, 10]), np.array([2]), "train", "test")
    assert classes == ("2", "10") and y.tolist() == [1, 0, 0, 1]


def test_one_class_is_no_classifier():
    with pytest.raises(DataError, match="every label is 'cat'"):
        labels.encode(np.array(["cat", "cat"]), np.array(["cat"]), "train", "test")


@settings(max_examples=50, deadline=None)
@given(y=st.lists(st.integers(0, 4), min_size=2, max_size=200), fraction=st.floats(0.05, 0.95))
def test_hold_out_takes_a_share_of_each_class_and_is_fixed(y, fraction):
    y = np.array(y)
    train, test = labels.hold_out(y, fraction)
    assert sorted([*train, *test]) == list(range(len(y)))  # disjoint, covering
    for c in np.unique(y):
        n = (y == c).sum()
        expected = 0 if n == 1 else min(max(round(fraction * n), 1), n - 1)
        assert (y[test] == c).sum() == expected
    assert np.array_equal(labels.hold_out(y, fraction)[1], test)


def table_dataset(owners: list[int], n_features: int = 3) -> Dataset:
    n = len(owners)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(n, n_features)) * [1, 10, 100] + [0, 5, -50]).astype(np.float32)
    y = np.arange(n) % 2
    return Dataset("t", x, y, x[:10].copy(), y[:10], "test", num_classes=2, train_clients=np.array(owners),
                   client_names=tuple(f"site{k}" for k in range(max(owners) + 1)))


def natural(counts: list[int]):
    return validate({
        "partition": {"name": "natural"}, "model": "tabular", "test_fraction": 0.25,
        "clients": [{"count": c} for c in counts], "train": {"lr": 0.1, "batch_size": 4, "rounds": 1},
    })


@settings(max_examples=30, deadline=None)
@given(owners=st.lists(st.integers(0, 3), min_size=40, max_size=120).filter(
    lambda o: all(o.count(k) >= 4 for k in range(4))))
def test_natural_partition_gives_each_holder_all_its_rows(owners):
    dataset = table_dataset(owners)
    rows = client_rows(dataset.train_labels, natural([4]), 0, dataset)
    for k, (train, test) in enumerate(rows):
        assert sorted([*train, *test]) == np.flatnonzero(np.array(owners) == k).tolist()


def test_each_client_is_standardised_with_its_own_training_rows():
    dataset = table_dataset([0] * 40 + [1] * 40)
    federation = build_federation(dataset, natural([2]), 0)
    for c in federation.clients:
        x = federation.train_images[c.train_rows]
        assert torch.allclose(x.mean(0), torch.zeros(3), atol=1e-5)
        assert torch.allclose(x.std(0, correction=0), torch.ones(3), atol=1e-4)
    # the common test set with every client's training rows together: raw rows 0..9 are training rows too
    pooled = torch.from_numpy(dataset.train_images[np.concatenate([r for r, _ in client_rows(dataset.train_labels, natural([2]), 0, dataset)])])
    expected = (torch.from_numpy(dataset.test_images) - pooled.mean(0)) / pooled.std(0, correction=0)
    assert torch.allclose(federation.clean_test_images, expected, atol=1e-5)


@pytest.mark.parametrize("profile", [{"name": "shift", "scale": 1.0}, {"name": "missing", "rate": 0.3},
                                     {"name": "feature_noise", "sigma": 0.5}, {"name": "symmetric", "rate": 0.5}])
def test_a_table_federation_is_the_same_for_the_same_seed(profile):
    dataset = table_dataset([0] * 40 + [1] * 40)
    exp = natural([2]).model_copy(update={"clients": validate({
        "clients": [{"count": 2, "profile": profile}], "train": {"lr": 0.1, "batch_size": 4, "rounds": 1}}).clients})
    a, b, other = (build_federation(dataset, exp, seed) for seed in (3, 3, 4))
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.train_labels, b.train_labels)
    assert not (torch.equal(a.train_images, other.train_images) and torch.equal(a.train_labels, other.train_labels))
