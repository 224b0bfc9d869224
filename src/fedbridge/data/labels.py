"""A user's class labels, strings or integers, numbered in sorted order and named; and the common
test set held out of data that comes without one."""

from __future__ import annotations

import numpy as np

from fedbridge.errors import DataError

# the common test set is the same on every run and seed, so runs and seeds compare on one test set
HOLD_OUT_SEED = 0


def encode(train: np.ndarray, test: np.ndarray, where: str, test_where: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Class numbers for the training and test labels, and each class's name. The classes are those of
    the training labels in sorted order (numerically for numbers); a test label outside them is refused."""
    train, test = _plain(train, where), _plain(test, test_where)
    if train.dtype.kind != test.dtype.kind and {train.dtype.kind, test.dtype.kind} != {"i", "u"}:
        raise DataError(f"{test_where} holds labels of another kind ({_kind(test)}) than {where} ({_kind(train)}); "
                        "give both the same kind of labels")
    classes = np.unique(train)
    if len(classes) < 2:
        raise DataError(f"{where}: every label is {classes[0].item()!r}; a classifier needs at least two classes")
    unknown = np.setdiff1d(np.unique(test), classes)
    if len(unknown):
        shown = ", ".join(map(repr, unknown[:5].tolist()))
        raise DataError(f"{test_where} has labels outside the training classes ({shown}); the classes are "
                        f"{', '.join(map(str, classes[:20].tolist()))}: drop those rows or give training samples of them")
    return (np.searchsorted(classes, train).astype(np.int64), np.searchsorted(classes, test).astype(np.int64),
            tuple(str(c) for c in classes.tolist()))


def _plain(labels: np.ndarray, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must be one per sample, a 1-D array, not of shape {labels.shape}")
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise DataError(f"{where}: labels are fractional or NaN numbers; give class names or whole numbers")
        return labels.astype(np.int64)
    if labels.dtype.kind in "OSU":
        return labels.astype(str)
    if labels.dtype.kind not in "iub":
        raise DataError(f"{where}: labels of type {labels.dtype} are neither class names nor whole numbers")
    return labels.astype(np.int64)


def _kind(labels: np.ndarray) -> str:
    return "names" if labels.dtype.kind == "U" else "numbers"


def hold_out(labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices, both sorted: round(fraction * n) of each class's n rows go to the test
    set (at least one, where the class has two or more), chosen with a fixed seed."""
    rng = np.random.default_rng(HOLD_OUT_SEED)
    test = []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n = round(fraction * len(rows))
        test.append(rows[: min(max(n, 1), len(rows) - 1)])
    test_rows = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(labels)), test_rows), test_rows
