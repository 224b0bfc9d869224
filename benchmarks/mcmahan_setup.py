"""The McMahan et al. 2017 MNIST federation and its FedAvg round, shared by the speed and the
reproduction benchmarks: 100 clients of 600 training images (IID, or 2 label-sorted shards of 300
each), C = 0.1, B = 10, and the paper's models (2NN, CNN) plus the study's MLP.

The engine's configs hold out part of every client's data as its own test split; the paper's
clients keep all 600 images for training and the global model is tested on the 10,000 MNIST test
images, so the federation is built here from the library's pieces instead.
"""

import argparse
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from benchmarks import positive_float, positive_int
from fedbridge.data import partition
from fedbridge.data.datasets import load_dataset
from fedbridge.rounds import STREAM_BATCHES, sample_clients
from fedbridge.federation import to_float
from fedbridge.local import Recipe, client_generator, evaluate
from fedbridge.models import build_model
from fedbridge.optim import Params
from fedbridge.strategies.aggregate import weighted_mean


@dataclass
class McMahan:
    images: torch.Tensor  # [60000, 1, 28, 28] float32
    labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    rows: list[torch.Tensor]  # each client's rows into images


def load_mnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # no data_dir: these scripts have no --data-dir, so the library's own lookup (FEDBRIDGE_DATA,
    # cache, download) and its messages apply
    ds = load_dataset("mnist")
    return (
        to_float(ds.train_images), torch.from_numpy(ds.train_labels).long(),
        to_float(ds.test_images), torch.from_numpy(ds.test_labels).long(),
    )


def federation(
    mnist: tuple, n_clients: int = 100, samples: int = 600, iid: bool = True, seed: int = 0
) -> McMahan:
    """n_clients of `samples` images each; past 60,000 in all, clients share images (scaling runs)."""
    images, labels, test_images, test_labels = mnist
    rng = np.random.default_rng([seed, 1])
    if iid:
        order = np.concatenate([rng.permutation(len(labels)) for _ in range(-(-n_clients * samples // len(labels)))])
        parts = np.split(order[: n_clients * samples], n_clients)
    else:
        parts = partition.shards(labels.numpy(), n_clients, rng, shards_per_client=2, shard_size=samples // 2)
    return McMahan(images, labels, test_images, test_labels, [torch.from_numpy(np.sort(p)).long() for p in parts])


def fedavg_round(
    update, model: torch.nn.Module, params: Params, fed: McMahan, recipe: Recipe, fraction: float,
    seed: int, round_: int,
) -> Params:
    """One FedAvg round (sample, local training by `update`, sample-weighted mean): the engine's round."""
    ids = sample_clients(len(fed.rows), fraction, seed, round_).tolist()
    rows = [fed.rows[i] for i in ids]
    generators = [client_generator(seed, STREAM_BATCHES, round_, i) for i in ids]
    start = {n: p.expand(len(ids), *p.shape[1:]).clone() for n, p in params.items()}
    result = update(model, start, fed.images, fed.labels, rows, recipe, generators)
    return weighted_mean(result.params, torch.tensor([float(len(r)) for r in rows]))


def test_accuracy(model: torch.nn.Module, params: Params, fed: McMahan) -> float:
    return evaluate(model, params, fed.test_images, fed.test_labels)[0].item()


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of one FedAvg job on this federation, shared by fedbridge's and Flower's runners."""
    parser.add_argument("--model", default="2nn", choices=["mlp", "2nn", "cnn"])
    parser.add_argument("--epochs", type=positive_int, default=1)
    parser.add_argument("--rounds", type=positive_int, default=15)
    parser.add_argument("--lr", type=positive_float, default=0.1)


def model_for(name: str) -> torch.nn.Module:
    return build_model(name, (1, 28, 28), 10)


def training_flops_per_sample(model: nn.Module, input_shape=(1, 28, 28)) -> float:
    """FLOPs of one training sample: 2 per multiply-add forward; backward, every layer's weight
    gradient plus the input gradient of every layer but the first (biases and ReLUs not counted)."""
    macs: list[int] = []

    def count(module, inputs, output):
        per_output = module.in_features if isinstance(module, nn.Linear) else module.weight[0].numel()
        macs.append(output[0].numel() * per_output)

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    return 2 * sum(macs) * 2 + 2 * sum(macs[1:])


def round_flops(name: str, epochs: int) -> float:
    """Training FLOPs of one McMahan round: 10 clients (C = 0.1) of 600 samples, `epochs` local epochs."""
    return training_flops_per_sample(model_for(name)) * 10 * 600 * epochs
