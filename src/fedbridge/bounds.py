"""What a run asks of its data and of the machine, checked before its run directory exists.

`check_fits(exp, dataset)` refuses, with a ConfigError naming the key, its value and the fix, what
validation alone cannot know and training would only find out later (a traceback, or a
MemoryError, after the run directory exists and blocks the corrected re-run): a profile that does
not fit the images, train.device = "cuda" without a GPU, a model that does not fit the data (models.build_model checks a factory's),
FedBN's keep_local on a model without normalisation layers, and a run whose memory, estimated from the data, the model and the config,
exceeds the machine's.

The estimate counts what the study holds at once while it trains: the dataset and its federation,
every seed's partition, the clients' models, one evaluation chunk of every client's model and one
client's local training (a batch and its epochs' batch schedule: fedbridge.local trains at least
one client at a time). Each part is counted at or near what was measured, and what is small beside
them (the interpreter, torch itself) is left out, so a run it refuses would not have fit; one it
passes can still be short of memory on a machine busy with other work.
"""

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedbridge import client_state, kernels, per_sample
from fedbridge.data import corrupt
from fedbridge.data.datasets import Dataset
from fedbridge.errors import ConfigError
from fedbridge.data.partitions import IID, Shards, Sizes
from fedbridge.experiment import Experiment, Method
from fedbridge.models import build_model, norm_state, state_size
from fedbridge.schema import LOCAL, POOLED
from fedbridge.strategies import registry

# test images local.evaluate scores at once, and the clients' models scored together on them
# (engines/simulation.py's EVAL_IMAGES and EVAL_MODELS)
EVAL_CHUNK, EVAL_MODELS = 2000, 64
# the batch schedule keeps 32 bytes per slot: positions, rows and labels as int64, weights and
# sample weights as float32 (local.batch_schedule and local._train_chunk)
SCHEDULE_BYTES = 32


@dataclass(frozen=True)
class Need:
    """One part of a run's memory: what it is, its bytes, and the config key that sets its size."""

    what: str
    bytes: int
    key: str
    value: object
    fix: str


def check_fits(exp: Experiment, dataset: Dataset) -> None:
    """Refuse `exp` on `dataset` if a profile does not fit the images or the run does not fit in memory."""
    shape = dataset.input_shape
    _profiles_fit(exp, shape, dataset)
    if exp.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = 'cuda', but torch {torch.__version__} finds no CUDA GPU here "
                          f"({'a CPU-only build' if torch.version.cuda is None else 'no device visible'}); use "
                          "train.device = 'cpu', or 'auto' to take a GPU where there is one")
    if registry.kept_local(exp.strategy) and not norm_state(build_model(exp.model, shape, dataset.num_classes)):
        raise ConfigError(f"strategy.keep_local = {registry.kept_local(exp.strategy)}: model = {exp.model!r} has no "
                          "normalisation layers (BatchNorm, LayerNorm, GroupNorm, InstanceNorm) to keep; drop "
                          "strategy.keep_local or choose a model with them")
    if exp.privacy is not None and exp.privacy.level == "sample" and (
            why := per_sample.refusal(build_model(exp.model, shape, dataset.num_classes), shape)):
        raise ConfigError(f"model = {exp.model!r}: {why}")
    available = machine_memory()
    needs = memory_needs(exp, dataset, shape)
    total = sum(n.bytes for n in needs)
    if available is None or total <= available:
        return
    largest = sorted(needs, key=lambda n: -n.bytes)
    top = largest[0]
    # the parts that make the total, not every small one
    parts = "; ".join(f"{n.what}: {_size(n.bytes)}" for n in largest[:3] if n.bytes >= total / 100)
    raise ConfigError(
        f"{top.key} = {top.value!r}: this run needs about {_size(total)} of memory, more than this machine's "
        f"{_size(available)}; {top.fix}. The largest parts of the estimate: {parts}"
    )


def _profiles_fit(exp: Experiment, shape: tuple[int, ...], dataset: Dataset) -> None:
    data = dataset.name
    for i, group in enumerate(exp.clients):
        if why := corrupt.refusal(group.profile.name, dataset.tabular):
            raise ConfigError(f"clients.{i}.profile: {why}")
        size = group.profile.params.get("size")
        height, width = shape[-2:] if len(shape) == 3 else (0, 0)  # occlusion is refused on a table above
        if group.profile.name == "occlusion" and size > min(height, width):
            raise ConfigError(
                f"clients.{i}.profile.size = {size}: an occlusion square of {size}x{size} does not fit in "
                f"the {height}x{width} images of {data}; choose a size of at most {min(height, width)}"
            )


def memory_needs(exp: Experiment, dataset: Dataset, shape: tuple[int, ...]) -> list[Need]:
    """The parts of the run's memory, in bytes, each with the key to change to make it smaller."""
    pixels = math.prod(shape)
    n_train, n_test = len(dataset.train_labels), len(dataset.test_labels)
    dealt, largest = _dealt(exp, n_train)
    own_train = math.ceil(largest * (1 - exp.test_fraction))
    # pooled training's one participant holds everyone's training data
    trainee = math.ceil(dealt * (1 - exp.test_fraction)) if any(m.name == POOLED for m in exp.methods) else own_train
    model = build_model(exp.model, shape, dataset.num_classes)
    outputs = _layer_outputs(model, shape)
    k, batch = exp.n_clients, exp.train.batch_size
    epochs_key, epochs = _epochs(exp)
    steps = epochs * math.ceil(trainee / batch)
    return [
        Need("the dataset, and its federation as float32",
             (n_train + n_test) * pixels * dataset.train_images.itemsize + 4 * pixels * (dealt + n_test),
             "data.name", exp.data.name, "choose a smaller dataset or partition"),
        *_blur_needs(exp, shape, own_train),
        # a seed's partition: every dealt sample's row as int64, in a train and a test array a client
        Need(f"{exp.seeds} seeds' partitions, all drawn before the first round",
             exp.seeds * (8 * dealt + 2 * k * sys.getsizeof(np.empty(0, np.int64))),
             "seeds", exp.seeds, "run fewer seeds, or the rest in another run starting at `seed`"),
        # every client's own model where one is saved per client (the local baseline, personalised
        # strategies), and the round's start and trained models with their gradients and optimizer state
        Need(f"the models of {k if _saves_per_client(exp) else 0:,} clients and of a round",
             4 * state_size(model) * (k * _saves_per_client(exp) + 5 * exp.setup.clients_per_round),
             "clients", [g.count for g in exp.clients], "run fewer clients (clients.N.count) or a smaller model"),
        *_state_needs(exp, state_size(model)),
        # evaluation runs up to EVAL_MODELS clients' models on the same chunk of test images at once;
        # a layer's input and output are alive together
        Need(f"evaluating {min(k, EVAL_MODELS):,} models on {min(EVAL_CHUNK, n_test):,} images at once",
             4 * min(k, EVAL_MODELS) * min(EVAL_CHUNK, n_test) * max(a + b for a, b in zip(outputs, outputs[1:] + [0])),
             "clients", [g.count for g in exp.clients], "run fewer clients (clients.N.count) or a smaller model"),
        # a batch is its full size even beyond a client's data (the rest is padding); the peak
        # memory of one client's training measured 0.95-1.4x this (mlp, 2nn, cnn; sgd and adam)
        Need(f"a batch of {batch:,} images of {'x'.join(map(str, shape))} with the model's activations",
             4 * batch * (pixels + sum(outputs)), "train.batch_size", batch, "lower train.batch_size"),
        *_gram_needs(exp, model, batch, steps),
        Need(f"the batch schedule of {steps:,} steps ({epochs:,} epochs of {trainee:,} samples) of {batch:,}",
             SCHEDULE_BYTES * steps * batch, epochs_key, epochs, f"lower {epochs_key}"),
    ]


def _saves_per_client(exp: Experiment) -> bool:
    """Whether every client's model is in memory at once: a strategy that scores one model a client
    and keeps no store (fine-tuning's copies), or, for those that keep them in a store (the local
    baseline, personalised strategies), an evaluation that takes every row (on every client's test
    data, or off the CPU: engines.simulation.evaluate_clients). The weights file of a store is written
    a chunk of clients at a time (weights_file)."""
    whole = exp.eval.cross_clients or exp.train.device != "cpu"  # "auto" may be a GPU

    def all_in_memory(m: Method) -> bool:
        if m.name == LOCAL:
            return whole
        spec = registry.spec(m.strategy)
        return spec.scores_per_client and (whole or not spec.keeps_per_client)

    return any(map(all_in_memory, exp.methods))


def _state_needs(exp: Experiment, params: int) -> list[Need]:
    """A stateful strategy's rows per client (client_state), counted as a whole model a client (FedPer
    keeps only a head: an upper bound): in memory while they fit MEMORY_BUDGET, twice (a round's
    state and the next); beyond it in files, and in memory only the rows changed between two
    checkpoints (eval.every rounds of clients), twice at a checkpoint (and its journal)."""
    stateful = [m.name for m in exp.methods if m.name == LOCAL or registry.spec(m.strategy).keeps_per_client]
    if not stateful:
        return []
    k, row = exp.n_clients, 4 * params
    if k * row <= client_state.MEMORY_BUDGET:
        rows, where = k, "in memory"
    else:
        rows, where = min(k, exp.eval.every * exp.setup.clients_per_round), "changed between checkpoints, the rest in files"
    return [Need(f"the per-client state of {', '.join(stateful)} ({rows:,} clients' rows {where})", 2 * rows * row,
                 "eval.every" if rows < k else "clients", exp.eval.every if rows < k else [g.count for g in exp.clients],
                 "lower eval.every (a checkpoint writes the changed rows to files)" if rows < k
                 else "run fewer clients (clients.N.count) or a smaller model")]


def _gram_needs(exp: Experiment, model: nn.Module, batch: int, steps: int) -> list[Need]:
    """Plain SGD on an MLP takes kernels.sgd_steps' fused path: a block of up to SGD_BLOCK steps'
    inputs multiplied with each other, a Gram matrix of (block * batch)^2 floats."""
    body, layers = kernels.split(model)
    if exp.train.optimizer != "sgd" or exp.train.momentum or body is not None or len(layers) < 2:
        return []
    rows = min(kernels.SGD_BLOCK, steps) * batch
    return [Need(f"plain SGD's Gram matrix of {rows:,} x {rows:,} inputs", 4 * rows**2, "train.batch_size", batch,
                 'lower train.batch_size (or take train.optimizer = "adam" or a momentum: no Gram matrix)')]


def _dealt(exp: Experiment, n_train: int) -> tuple[int, int]:
    """Samples the partition deals to all clients and to the largest one, as far as the config says
    (a skewed partition's largest client is taken as an average one)."""
    p, k = exp.partition, exp.n_clients
    if isinstance(p, Sizes):
        return min(sum(p.sizes), n_train), min(max(p.sizes), n_train)
    per_client = None
    if isinstance(p, IID):
        per_client = p.samples_per_client
    elif isinstance(p, Shards) and p.shard_size is not None:
        per_client = p.shards_per_client * p.shard_size
    dealt = n_train if per_client is None else min(n_train, k * per_client)
    return dealt, math.ceil(dealt / k)


def _epochs(exp: Experiment) -> tuple[str, int]:
    """The most epochs one training call runs, and its key: train.local_epochs, or a strategy's own
    epochs where it trains more (finetune.epochs, fedrep.head_epochs)."""
    mine = {f"strategy.{key}": value for key, value in exp.strategy if key.endswith("epochs")}
    return max([("train.local_epochs", exp.train.local_epochs), *mine.items()], key=lambda kv: kv[1])


def _blur_needs(exp: Experiment, shape: tuple[int, ...], samples: int) -> list[Need]:
    """Blurring a client's images pads each one by the kernel's radius on two sides (corrupt.blur)."""
    needs = []
    for i, group in enumerate(exp.clients):
        if group.profile.name == "blur":  # images only: _profiles_fit refuses it on a table first
            channels, height, width = shape
            side = max(height, width)
            sigma = group.profile.params["sigma"]
            padded = 4 * samples * channels * (side + 2 * math.ceil(3 * sigma)) * side
            needs.append(Need(f"blurring a client of clients.{i} (sigma {sigma:g})", padded,
                              f"clients.{i}.profile.sigma", sigma, f"lower clients.{i}.profile.sigma"))
    return needs


def _layer_outputs(model: nn.Module, shape: tuple[int, ...]) -> list[int]:
    """Floats each layer outputs for one sample, in the order they run, from the first layer with
    parameters on: what comes before it (the MLP's Flatten) is a view of the input. A layer is a
    module without children (any module a factory makes, not only build_model's nn.Sequential)."""
    sizes: list[int] = []

    def count(module, inputs, output):
        if (sizes or list(module.parameters())) and isinstance(output, torch.Tensor):
            sizes.append(output.numel())

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape))
    finally:
        model.train()
        for h in hooks:
            h.remove()
    return sizes


def machine_memory() -> int | None:
    """Bytes of memory this process may use: the machine's, or its container's limit (cgroup v2)
    where that is lower; None where the system does not say."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or no such name
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def _size(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"
