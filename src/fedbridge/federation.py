"""A federation: K clients, each with its own train rows, own test split and data-quality profile.

Built once per seed from a dataset and an experiment: partition -> per-client train/test split ->
corruption (applied once, seeded, to train and own-test data alike).
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedbridge.data import corrupt, partition
from fedbridge.data.datasets import Dataset, load_dataset
from fedbridge.data.resolve import with_fallback
from fedbridge.experiment import Experiment, IID, Dirichlet, Quantity, Shards, Sizes
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


@dataclass
class Federation:
    dataset: str
    source: str
    num_classes: int
    train_images: torch.Tensor  # float32 [N, C, H, W] in [0, 1], each client's rows with its own profile
    train_labels: torch.Tensor  # int64 [N]
    clients: list[Client]
    clean_test_images: torch.Tensor
    clean_test_labels: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])


def resolve_dataset(
    exp: Experiment, data_dir: Path | None, load: Callable[..., Dataset] = load_dataset
) -> tuple[Dataset, Experiment, str | None]:
    """The dataset to run on, the experiment adjusted to it, and a note when it fell back."""
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


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W] -> float32 [N, 1, H, W] in [0, 1]."""
    return torch.from_numpy(images).unsqueeze(1).float().div_(255.0)


def split_clients(labels: np.ndarray, exp: Experiment, rng: np.random.Generator) -> list[np.ndarray]:
    p, k = exp.partition, exp.n_clients
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


def client_rows(labels: np.ndarray, exp: Experiment, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each client's (train, own test) rows into the dataset's training images, for one seed.

    Only indices: cheap enough to check every seed's partition before a run directory is made."""
    rng = np.random.default_rng([seed, STREAM_PARTITION])
    return [partition.train_test_split(rows, exp.test_fraction, rng) for rows in split_clients(labels, exp, rng)]


def build_federation(
    dataset: Dataset, exp: Experiment, seed: int, rows: list[tuple[np.ndarray, np.ndarray]] | None = None
) -> Federation:
    """The federation of one seed; `rows` are client_rows' result for it, if already made."""
    images, labels, clients = [], [], []
    offset = 0
    rows = rows if rows is not None else client_rows(dataset.train_labels, exp, seed)
    for i, ((train_idx, test_idx), profile) in enumerate(zip(rows, exp.profiles)):
        x_train, y_train = corrupt.apply_profile(
            profile.name, profile.params,
            to_float(dataset.train_images[train_idx]), torch.from_numpy(dataset.train_labels[train_idx]),
            dataset.num_classes, client_generator(seed, STREAM_TRAIN_NOISE, i),
        )
        x_test, y_test = corrupt.apply_profile(
            profile.name, profile.params,
            to_float(dataset.train_images[test_idx]), torch.from_numpy(dataset.train_labels[test_idx]),
            dataset.num_classes, client_generator(seed, STREAM_TEST_NOISE, i),
        )
        images.append(x_train)
        labels.append(y_train)
        clients.append(Client(i, profile.label, torch.arange(offset, offset + len(x_train)), x_test, y_test))
        offset += len(x_train)
    return Federation(
        dataset=dataset.name,
        source=dataset.source,
        num_classes=dataset.num_classes,
        train_images=torch.cat(images),
        train_labels=torch.cat(labels),
        clients=clients,
        clean_test_images=to_float(dataset.test_images),
        clean_test_labels=torch.from_numpy(dataset.test_labels),
    )
