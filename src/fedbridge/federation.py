"""A federation: K clients, each with its own train rows, own test split and data-quality profile.

Built once per seed from a dataset and an experiment: partition -> per-client train/test split ->
corruption (applied once, seeded, to train and own-test data alike).
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedbridge.data import corrupt, own, partition
from fedbridge.data.datasets import Dataset, load_dataset
from fedbridge.data.resolve import with_fallback
from fedbridge.data.partitions import IID, Dirichlet, Natural, Quantity, Shards, Sizes
from fedbridge.errors import ConfigError
from fedbridge.experiment import Experiment
from fedbridge.local import client_generator

# independent random streams derived from the seed, so changing one never shifts another
STREAM_PARTITION, STREAM_TRAIN_NOISE, STREAM_TEST_NOISE = 1, 2, 3


@dataclass
class Client:
    index: int  # 0-based; shown to people as index + 1
    profile: str
    train_rows: torch.Tensor  # rows of Federation.train_images
    test_images: torch.Tensor
    test_labels: torch.Tensor
    name: str = ""  # the holder's name in a natural partition (a hospital, a branch); "" otherwise


@dataclass
class Federation:
    dataset: str
    source: str
    num_classes: int
    # float32 [N, C, H, W] in [0, 1], or a table [N, F] standardised per client; each client's rows with its own profile
    train_images: torch.Tensor
    train_labels: torch.Tensor  # int64 [N]
    clients: list[Client]
    clean_test_images: torch.Tensor
    clean_test_labels: torch.Tensor
    class_names: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_images.shape[1:])


def resolve_dataset(
    exp: Experiment, data_dir: Path | None, load: Callable[..., Dataset] = load_dataset
) -> tuple[Dataset, Experiment, str | None]:
    """The dataset to run on, the experiment adjusted to it, and a note when it fell back."""
    if exp.data.kind != "idx":
        return load_data(exp, data_dir), exp, None
    dataset, note = with_fallback(exp.data.name, exp.data.fallback, data_dir or exp.data.dir, load)
    if note is None:
        return dataset, exp, None
    p = exp.partition
    if isinstance(p, Sizes) and sum(p.sizes) > len(dataset.train_labels):
        # keep the clients' proportions on the smaller dataset
        total = len(dataset.train_labels)
        scaled = [max(1, s * total // sum(p.sizes)) for s in p.sizes]
        note += f" Partition sizes scaled from {p.sizes} to {scaled}."
        exp = exp.model_copy(update={"partition": Sizes(name="sizes", sizes=scaled)})
    exp = exp.model_copy(update={"data": exp.data.model_copy(update={"name": exp.data.fallback})})
    return dataset, exp, note


def load_data(exp: Experiment, data_dir: Path | None, load: Callable[..., Dataset] = load_dataset) -> Dataset:
    """The dataset [data] names, without a fallback: the IDX files through `load`, any other source
    through fedbridge.data.own."""
    d = exp.data
    if d.kind == "idx":
        return load(d.name, data_dir or d.dir)
    return own.load_own(own.Source(
        name=d.name, format=d.kind, path=d.path, test_path=d.test_path, common_test_fraction=d.common_test_fraction,
        label=d.label, drop=tuple(d.drop), client=d.client, image_size=tuple(d.image_size) if d.image_size else None, channels=d.channels,
        by_client=isinstance(exp.partition, Natural), roots=own.roots(data_dir or d.dir),
    ))


def to_float(images: np.ndarray) -> torch.Tensor:
    """Samples as the models take them: uint8 [N, H, W] -> float32 [N, 1, H, W] in [0, 1]; uint8
    [N, C, H, W] -> float32 in [0, 1]; float32 images and tables as they are (a copy)."""
    x = torch.from_numpy(images)
    if images.ndim == 3:
        x = x.unsqueeze(1)
    return x.float().div_(255.0) if images.dtype == np.uint8 else x.to(torch.float32, copy=True)


def natural_clients(exp: Experiment, dataset: Dataset) -> list[int]:
    """For each client, in client order, its holder in `dataset.client_names`: the groups that name
    their clients get those, the others the next unnamed holders in sorted order."""
    names = dataset.client_names
    named = {n for g in exp.clients for n in g.names or []}
    if unknown := sorted(named - set(names)):
        raise ConfigError(f"clients.N.names: {unknown[0]!r} holds no rows of the data; its clients are "
                          f"{', '.join(names)}")
    if exp.n_clients != len(names):
        raise ConfigError(
            f"partition.name = \"natural\": the data has {len(names)} clients ({', '.join(names[:10])}"
            f"{', ...' if len(names) > 10 else ''}) but the clients groups add up to {exp.n_clients}; make the "
            f"counts (or names) add up to {len(names)}")
    rest = iter([i for i, n in enumerate(names) if n not in named])
    return [i for g in exp.clients
            for i in ([names.index(n) for n in g.names] if g.names else [next(rest) for _ in range(g.count)])]


def client_names(exp: Experiment, dataset: Dataset) -> list[str] | None:
    """Each client's name, in client order, where the partition is natural; None otherwise."""
    if not isinstance(exp.partition, Natural):
        return None
    return [dataset.client_names[i] for i in natural_clients(exp, dataset)]


def split_clients(labels: np.ndarray, exp: Experiment, rng: np.random.Generator,
                  dataset: Dataset | None = None) -> list[np.ndarray]:
    p, k = exp.partition, exp.n_clients
    if isinstance(p, Natural):
        if dataset is None or dataset.train_clients is None:
            raise ConfigError('partition.name = "natural" needs data that says which client holds each sample: a csv '
                              "with data.client, or an image folder laid out as path/<client>/<class>/<image>")
        return [np.flatnonzero(dataset.train_clients == i) for i in natural_clients(exp, dataset)]
    if isinstance(p, IID):
        return partition.iid(labels, k, rng, samples_per_client=p.samples_per_client)
    if isinstance(p, Dirichlet):
        return partition.dirichlet(labels, k, p.alpha, rng, min_size=p.min_size)
    if isinstance(p, Shards):
        return partition.shards(labels, k, rng, shards_per_client=p.shards_per_client, shard_size=p.shard_size)
    if isinstance(p, Quantity):
        return partition.quantity(labels, k, p.alpha, rng, min_size=p.min_size)
    assert isinstance(p, Sizes)
    return partition.sizes(labels, p.sizes, rng)


def client_rows(labels: np.ndarray, exp: Experiment, seed: int,
                dataset: Dataset | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each client's (train, own test) rows into the dataset's training images, for one seed; a
    natural partition needs the `dataset` (who holds which row).

    Only indices: cheap enough to check every seed's partition before a run directory is made."""
    rng = np.random.default_rng([seed, STREAM_PARTITION])
    return [partition.train_test_split(rows, exp.test_fraction, rng) for rows in split_clients(labels, exp, rng, dataset)]


def build_federation(
    dataset: Dataset, exp: Experiment, seed: int, rows: list[tuple[np.ndarray, np.ndarray]] | None = None
) -> Federation:
    """The federation of one seed; `rows` are client_rows' result for it, if already made."""
    rows = rows if rows is not None else client_rows(dataset.train_labels, exp, seed, dataset)
    names = client_names(exp, dataset) or [""] * exp.n_clients
    build = _table_client if dataset.tabular else _image_client
    parts = [build(dataset, profile, train_idx, test_idx, seed, i)
             for i, ((train_idx, test_idx), profile) in enumerate(zip(rows, exp.profiles))]
    test = to_float(dataset.test_images)
    if dataset.tabular:
        parts, test = _standardised(parts, test)
    clients, offset = [], 0
    for i, ((x_train, _, x_test, y_test), profile) in enumerate(zip(parts, exp.profiles)):
        clients.append(Client(i, profile.label, torch.arange(offset, offset + len(x_train)), x_test, y_test, names[i]))
        offset += len(x_train)
    return Federation(
        dataset=dataset.name,
        source=dataset.source,
        num_classes=dataset.num_classes,
        train_images=torch.cat([p[0] for p in parts]),
        train_labels=torch.cat([p[1] for p in parts]),
        clients=clients,
        clean_test_images=test,
        clean_test_labels=torch.from_numpy(dataset.test_labels),
        class_names=dataset.class_names,
    )


Part = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x_train, y_train, x_test, y_test


def _image_client(dataset: Dataset, profile, train_idx: np.ndarray, test_idx: np.ndarray, seed: int, i: int) -> Part:
    """Images: the profile applied to the client's train and own test images, each with its own stream."""
    out = []
    for idx, stream in ((train_idx, STREAM_TRAIN_NOISE), (test_idx, STREAM_TEST_NOISE)):
        out += corrupt.apply_profile(
            profile.name, profile.params, to_float(dataset.train_images[idx]),
            torch.from_numpy(dataset.train_labels[idx]), dataset.num_classes, client_generator(seed, stream, i))
    return tuple(out)


def _table_client(dataset: Dataset, profile, train_idx: np.ndarray, test_idx: np.ndarray, seed: int, i: int) -> Part:
    """A table: the profile applied once to all the client's rows, so a miscalibration (shift) is the
    same on its train and own test rows, with the client's training rows setting its scale."""
    idx = np.concatenate([train_idx, test_idx])
    x, y = corrupt.apply_profile(
        profile.name, profile.params, to_float(dataset.train_images[idx]), torch.from_numpy(dataset.train_labels[idx]),
        dataset.num_classes, client_generator(seed, STREAM_TRAIN_NOISE, i), train=len(train_idx))
    n = len(train_idx)
    return x[:n], y[:n], x[n:], y[n:]


def _standardised(parts: list[Part], test: torch.Tensor) -> tuple[list[Part], torch.Tensor]:
    """Each client's rows standardised with its own training rows' mean and std (never its test rows),
    as each site would; the common test set with those of every client's training rows together, the
    statistics the federation holds (one set for every model, so all are scored on the same rows)."""
    def scaled(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        mean, std = reference.mean(0), reference.std(0, correction=0)
        return (x - mean) / torch.where(std > 0, std, torch.ones_like(std))  # a constant feature stays 0

    pooled = torch.cat([p[0] for p in parts])
    return [(scaled(x, x), y, scaled(xt, x), yt) for x, y, xt, yt in parts], scaled(test, pooled)
