"""A user's own data, and the other sources beside the IDX files: an .npz archive, a CSV or Parquet
table, a folder of images, CIFAR-10, scikit-learn's bundled tables. Each is read into a Dataset with
its classes numbered and named, a test set (its own, `test_path`'s, or one held out of it) and, where
the data says who holds each row, its clients."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedbridge.data import arrays, cifar, folders, labels, tables
from fedbridge.data.datasets import Dataset
from fedbridge.data.sources import ENV_DATA
from fedbridge.errors import ConfigError, DataError

FORMATS = ("npz", "csv", "image-folder", "cifar10")


@dataclass(frozen=True)
class Source:
    """What [data] says about a source other than the IDX files (fedbridge.experiment.Data)."""

    name: str
    format: str  # one of FORMATS, or "bundled" for scikit-learn's tables
    path: Path | None = None
    test_path: Path | None = None
    common_test_fraction: float = 0.2
    label: str | None = None
    drop: tuple[str, ...] = ()
    client: str | None = None
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    by_client: bool = False  # the rows' holders are wanted (partition "natural")
    roots: list[Path] = field(default_factory=list)  # where to look for CIFAR-10 without a path


def load_own(source: Source) -> Dataset:
    train, test = _read(source)
    if test is None and source.test_path is not None:
        test = _read_test(source)
    common = test is None
    if common:
        keep, held = labels.hold_out(np.asarray(train.labels).astype(str), source.common_test_fraction)
        test = tables.Part(train.samples[held], train.labels[held], train.where, class_names=train.class_names)
        train = tables.Part(train.samples[keep], train.labels[keep], train.where,
                            None if train.clients is None else train.clients[keep], train.class_names)
    y_train, y_test, names = labels.encode(train.labels, test.labels, train.where, test.where)
    if train.class_names:  # numbered labels the source names (CIFAR-10, scikit-learn)
        names = tuple(train.class_names[int(n)] if int(n) < len(train.class_names) else n for n in names)
    owners, client_names = None, ()
    if source.by_client:
        if train.clients is None:
            raise ConfigError(_no_clients(source))
        client_names = tuple(sorted(set(train.clients.tolist()), key=_natural_key))
        owners = np.array([client_names.index(c) for c in train.clients.tolist()], dtype=np.int64)
    if test.samples.shape[1:] != train.samples.shape[1:]:
        raise DataError(f"{test.where}: its samples are {test.samples.shape[1:]}, those of {train.where} "
                        f"{train.samples.shape[1:]}; give the test set the same columns (or image size)")
    held_out = f"; common test set: {len(y_test)} rows held out of it" if common else f"; test set: {test.where}"
    where = str(source.path) if source.format in ("npz", "csv", "image-folder") else train.where
    return Dataset(
        name=source.name, train_images=train.samples, train_labels=y_train, test_images=test.samples,
        test_labels=y_test, source=where + held_out, num_classes=len(names), class_names=names,
        train_clients=owners, client_names=client_names, common_test=common,
    )


def _read(source: Source) -> tuple[tables.Part, tables.Part | None]:
    if source.format == "bundled":
        return tables.bundled(source.name), None
    if source.format == "cifar10":
        return cifar.read_cifar(cifar.find(source.path, source.roots))
    assert source.path is not None  # experiment.Data requires it for these formats
    if source.format == "npz":
        return arrays.read_npz(source.path)
    if source.format == "csv":
        owner = source.client if source.by_client else None
        return tables.read_table(source.path, source.label, list(source.drop), owner,
                                 ignore=(source.client,) if source.client else ()), None
    return folders.read_folder(source.path, source.image_size, source.channels, source.by_client), None


def _read_test(source: Source) -> tables.Part:
    """The test set `test_path` names (experiment.Data allows it for tables and image folders only)."""
    path = source.test_path
    if source.format == "csv":  # the test table may hold the client column too: it is not a feature
        return tables.read_table(path, source.label, list(source.drop), None, key="data.test_path",
                                 ignore=(source.client,) if source.client else ())
    return folders.read_folder(path, source.image_size, source.channels, False, key="data.test_path")


def _natural_key(name: str) -> tuple:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _no_clients(source: Source) -> str:
    how = {"csv": "name the column that says which client holds each row: data.client = \"COLUMN\"",
           "image-folder": "lay the images out as path/<client>/<class>/<image>"}
    fix = how.get(source.format, "use a CSV with a data.client column or a folder of client folders")
    return f"partition.name = \"natural\" needs data that says which client holds each sample; {fix}"


def roots(data_dir: Path | None) -> list[Path]:
    """Where to look for a dataset without a path: --data-dir (or data.dir), then FEDBRIDGE_DATA."""
    env = os.environ.get(ENV_DATA)
    return [Path(p).expanduser() for p in (data_dir, env) if p]
