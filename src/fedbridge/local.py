"""Local training and evaluation with clients as a batch dimension.

The K clients of a round train together: their parameters are stacked on a leading axis and one
forward/backward/optimizer step moves all of them. Each client keeps its own minibatch order
(its own seeded generator); a client with fewer samples has a shorter epoch, and once its batches
run out it is masked and no longer changes. K=1 is the same code.

Every model's head, its closing Linear layers, goes through `kernels` (batched matmuls, a
hand-written backward with plain SGD fused into it); what comes before the head (the CNN's
convolutions), or a whole model without such a head, goes through autograd (fedbridge.generic),
and an MLP has nothing before it. Clients are trained in
chunks sized from a memory budget, so a round of 1,000 clients needs no more working memory than
one of a few hundred.
"""

import contextlib
import copy
import functools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from fedbridge import kernels, losses, optim, per_sample
from fedbridge.errors import DataError
from fedbridge.generic import body_forward, bound, in_gradient_layout, laid_out_as, per_client, stateful, trainable
from fedbridge.optim import Params

# Working memory for one chunk of clients (parameters, gradients, optimizer state, activations).
# 512 MiB keeps a 1,000-client round of the 2NN (0.8 MB a model) within 3 GB peak RSS, counting
# the round's input and output models, while a chunk still holds hundreds of MLP clients.
MEMORY_BUDGET = 512 * 2**20

# Conv models train one client at a time per worker, through a plain module call. On the McMahan
# CNN round (2 threads) vmap over clients took 3.58 s and grouped convolutions 3.21 s against 2.80 s
# for a plain per-client loop (issue 4's prototypes); single-threaded, a vmap step of 10 clients
# measured on par with 10 one-client steps. Two single-threaded workers, one client each, measured
# 3.1-3.3 s against 3.5-4.7 s for the loop on its best thread setting (interleaved, load ~2).
CONV_CLIENTS_PER_CHUNK = 1


@dataclass(frozen=True)
class DpSgd:
    """Sample-level DP-SGD (Abadi et al. 2016): each step's per-example gradients clipped to `clip`,
    their sum noised with N(0, (noise_multiplier clip)^2) per coordinate, divided by the batch size."""

    clip: float
    noise_multiplier: float


@dataclass(frozen=True)
class Recipe:
    """How a client trains in one round."""

    optimizer: str  # "sgd" | "adam"
    lr: float
    batch_size: int
    local_epochs: int
    momentum: float = 0.0
    loss: Any = losses.CE  # train.loss: a losses.LossConfig
    dp: DpSgd | None = None
    device: str = "cpu"  # "cpu" or "cuda" (train.device, resolved)


@dataclass
class LocalResult:
    params: Params  # [K, ...] after local training
    steps: torch.Tensor  # [K] optimizer steps each client took (FedNova normalises by these)
    loss: torch.Tensor  # [K] mean training loss over the round's steps


# adjust(params, grads) -> grads: how client-side strategies (FedProx's proximal term, SCAFFOLD's
# control variates, Ditto) change the gradient before the optimizer sees it
GradientAdjust = Callable[[Params, Params], Params]


def client_generator(seed: int, *stream: int) -> torch.Generator:
    """A generator for one purpose (e.g. round r, client k), independent of every other."""
    entropy = np.random.SeedSequence([seed, *stream]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(entropy[0] >> np.uint64(1)))


def batch_schedule(
    sizes: list[int], batch_size: int, epochs: int, generators: list[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minibatches for K clients: positions [S, K, B] into each client's samples, weights [S, K, B].

    Each epoch is a fresh permutation cut into batches of B, the last one partial (as a
    DataLoader without drop_last). Padding slots have weight 0; S is the longest client's steps.
    """
    steps = [epochs * -(-n // batch_size) for n in sizes]
    # on the CPU whatever the training device: the generators are CPU generators
    positions = torch.zeros(max(steps), len(sizes), batch_size, dtype=torch.long, device="cpu")
    weights = torch.zeros(max(steps), len(sizes), batch_size, device="cpu")
    for k, (n, gen) in enumerate(zip(sizes, generators)):
        # each epoch's permutation padded with -1 to whole batches: one tensor op per client, not per batch
        padded = torch.full((epochs, steps[k] // epochs * batch_size), -1, dtype=torch.long, device="cpu")
        for e in range(epochs):
            padded[e, :n] = torch.randperm(n, generator=gen, device="cpu")
        padded = padded.view(steps[k], batch_size)
        positions[: steps[k], k] = padded.clamp_min(0)
        weights[: steps[k], k] = (padded >= 0).float()
    return positions, weights


@functools.lru_cache(maxsize=16)
def _activation_floats(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Floats every module outputs for one sample: what a training step keeps per sample."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        total += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return total


def clients_per_chunk(
    model: nn.Module, params: Params, input_shape: tuple[int, ...], recipe: Recipe, max_size: int, budget: int
) -> int:
    """How many clients train together within `budget` bytes of working memory."""
    if per_client(model):
        return CONV_CLIENTS_PER_CHUNK
    model_bytes = 4 * sum(p[0].numel() for p in params.values())
    # parameters, gradients and temporaries of that size, plus the optimizer's state
    copies = 3 + (2 if recipe.optimizer == "adam" else int(recipe.momentum > 0))
    # activations and their gradients, a few times over, plus a block of SGD steps' inputs
    # (kernels.sgd_steps); the batch schedule (positions, rows and labels as int64, weights and
    # sample weights as float32)
    inputs = kernels.SGD_BLOCK * math.prod(input_shape)
    activations = 4 * recipe.batch_size * (4 * _activation_floats(model, tuple(input_shape)) + inputs)
    schedule = 32 * recipe.local_epochs * (math.ceil(max_size / recipe.batch_size) + 1) * recipe.batch_size
    return max(1, budget // (copies * model_bytes + activations + schedule + 8 * max_size))


def _train_chunk(
    model: nn.Module,
    params: Params,
    images: torch.Tensor,
    labels: torch.Tensor,
    client_rows: list[torch.Tensor],
    recipe: Recipe,
    generators: list[torch.Generator],
    adjust: GradientAdjust | None,
) -> LocalResult:
    params = {n: p.detach().clone() for n, p in params.items()}
    sizes = [len(r) for r in client_rows]
    positions, weights = (t.to(images.device) for t in batch_schedule(sizes, recipe.batch_size, recipe.local_epochs, generators))
    counts = weights.sum(2)  # [S, K] real samples per client and step
    if (counts == 1).any() and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        n = sizes[int((counts == 1).any(0).nonzero()[0])]
        raise DataError(f"a client with {n} training samples has a last batch of 1 sample at train.batch_size = "
                        f"{recipe.batch_size}, and the model's BatchNorm cannot normalise a batch of one; choose a "
                        "train.batch_size that leaves every client's last batch at least 2 samples")
    # each client's loss is the mean over its own real samples, so its gradient is its own
    sample_weights = weights / counts.clamp_min(1).unsqueeze(2)
    # one padded row table, so every client's batches are gathered with a single index
    table = torch.zeros(len(client_rows), max(sizes), dtype=torch.long)
    for k, rows in enumerate(client_rows):
        table[k, : len(rows)] = rows
    body, layers = kernels.split(model)
    # DP-SGD on what the ghost norms of the MLP kernels do not cover: torch.func per-example gradients
    per_example = recipe.dp is not None and (body is not None or not layers)
    clients = None
    if body is not None and (len(client_rows) == 1 or stateful(body)):
        clients = [bound(body, params, i, g) for i, g in enumerate(generators)]
    # plain SGD without a gradient hook is fused into the head's backward pass; a finished client's
    # zero weights give it exactly zero gradients there, so it needs no mask
    fused_lr = (recipe.lr if layers and recipe.optimizer == "sgd" and not recipe.momentum and adjust is None
                and recipe.dp is None else None)
    # every step's rows into images [S, K, B] and their labels, gathered once
    n_steps, k, b = positions.shape
    steps_rows = table.gather(1, positions.transpose(0, 1).reshape(k, -1)).view(k, n_steps, b).transpose(0, 1).contiguous()
    steps_labels = labels[steps_rows]
    flat = images.flatten(1)
    if per_example:
        loss_sum = per_sample.dp_sgd_steps(
            model, params, images, steps_rows, steps_labels, weights, clip=recipe.dp.clip,
            noise_multiplier=recipe.dp.noise_multiplier, batch_size=recipe.batch_size, optimizer=recipe.optimizer,
            lr=recipe.lr, momentum=recipe.momentum, loss=recipe.loss, generators=generators, adjust=adjust)
    elif fused_lr is not None and body is None and len(layers) > 1:
        loss_sum = kernels.sgd_steps(params, layers, flat, steps_rows, steps_labels, sample_weights, fused_lr,
                                     recipe.loss)
    else:
        state = optim.init_state({n: params[n] for n in trainable(model)}, recipe.optimizer)
        loss_sum = torch.zeros(k)
        # MLP steps gather their flat rows with index_select into one reused buffer: several times
        # faster than advanced indexing of [N, C, H, W], and a fresh allocation this size is a fresh mmap
        batch = torch.empty(0)
        for s, (rows, y) in enumerate(zip(steps_rows, steps_labels)):
            if body is None:
                features = torch.index_select(flat, 0, rows.view(-1), out=batch).view(*rows.shape, -1)
            else:
                # index_select of flat rows, as for the MLPs, not advanced indexing of [N, C, H, W]
                x = torch.index_select(flat, 0, rows.view(-1)).view(*rows.shape, *images.shape[1:])
                features, body_grads = body_forward(body, clients, params, x, counts[s])
            acts = kernels.forward(params, layers, features.detach())
            if recipe.dp is not None:
                loss, grads = _dp_sgd_grads(params, layers, acts, y, weights[s], counts[s], recipe, generators)
            else:
                loss, grad_logits = losses.weighted(acts.pop(), y, sample_weights[s], recipe.loss)
                grads = kernels.backward(params, layers, acts, grad_logits, sgd_lr=fused_lr, input_grad=body is not None)
            if body is not None:
                grad_features = grads.pop("input").view_as(features)
                grads.update(body_grads(grad_features))
                if s == 0 and clients is None:  # a module per client computes with views of `params`
                    in_gradient_layout(params, grads, state)
            loss_sum += loss
            if adjust is not None:
                grads = adjust(params, grads)
            if grads:  # the body's, or every parameter's when the head's step is not fused
                optim.step(
                    {n: params[n] for n in grads}, laid_out_as(grads, params), state, counts[s] > 0,
                    optimizer=recipe.optimizer, lr=recipe.lr, momentum=recipe.momentum,
                )
    steps = (counts > 0).sum(0).float()
    return LocalResult({n: p.contiguous() for n, p in params.items()}, steps, loss_sum / steps)


def _dp_sgd_grads(
    params: Params, layers: list[str], acts: list[torch.Tensor], labels: torch.Tensor, weights: torch.Tensor,
    counts: torch.Tensor, recipe: Recipe, generators: list[torch.Generator],
) -> tuple[torch.Tensor, Params]:
    """Each client's mean loss [K] of one step and its DP-SGD gradient: the clipped per-example sum
    plus noise from the client's own generator (after its batch schedule), over the batch size."""
    dp = recipe.dp
    summed, grad_logits = losses.weighted(acts.pop(), labels, weights, recipe.loss)
    grads = kernels.clipped_backward(params, layers, acts, grad_logits, dp.clip)
    std = dp.noise_multiplier * dp.clip
    for n, g in grads.items():
        noise = torch.stack([torch.randn(g.shape[1:], generator=gen) for gen in generators])
        grads[n] = g.add_(noise, alpha=std).div_(recipe.batch_size)
    return summed / counts.clamp_min(1), grads


@contextlib.contextmanager
def _intra_op_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def local_update(
    model: nn.Module,
    params: Params,
    images: torch.Tensor,
    labels: torch.Tensor,
    client_rows: list[torch.Tensor],
    recipe: Recipe,
    generators: list[torch.Generator],
    adjust: GradientAdjust | None = None,
) -> LocalResult:
    """Train K clients from `params` [K, ...]; client k's samples are images[client_rows[k]].

    Without a gradient hook, the clients are cut into chunks that fit MEMORY_BUDGET. Conv models'
    chunks (one client each) share the CPU's threads as independent single-threaded workers; MLP
    chunks run one after another with all threads. A hook sees all K clients at once, as the
    strategy that made it indexes its state by the round's clients.

    On a machine busy with other work, OpenMP's barriers between tiny kernels stall whenever a
    thread is descheduled (2NN rounds 30x slower were measured at load 13 on 2 cores);
    `torch.set_num_threads(1)` avoids that there.
    """
    if images.device.type != recipe.device:
        return _on_device(model, params, images, labels, client_rows, recipe, generators, adjust)
    k = len(client_rows)
    if adjust is not None:
        return _train_chunk(model, params, images, labels, client_rows, recipe, generators, adjust)
    # conv steps are long enough for workers to run free of the GIL; an MLP step is dozens of tiny
    # kernels, and two Python workers contending for the GIL measured 1.07-1.5x slower than one
    # stream of clients with every thread inside each kernel (McMahan rounds, 2 threads)
    # a GPU runs one client's kernels after another's on its one stream: no workers there
    workers = 1 if not per_client(model) or recipe.device != "cpu" else min(torch.get_num_threads(), k)
    chunk = clients_per_chunk(
        model, params, tuple(images.shape[1:]), recipe, max(len(r) for r in client_rows), MEMORY_BUDGET // workers
    )
    chunk = min(chunk, math.ceil(k / workers))
    parts = [slice(lo, lo + chunk) for lo in range(0, k, chunk)]
    if len(parts) == 1:
        return _train_chunk(model, params, images, labels, client_rows, recipe, generators, None)
    # each part writes its clients' rows as it finishes, so finished chunks are not held twice
    out = LocalResult({n: torch.empty(k, *p.shape[1:], dtype=p.dtype) for n, p in params.items()}, torch.zeros(k), torch.zeros(k))

    def train(part: slice) -> None:
        result = _train_chunk(
            model, {n: p[part] for n, p in params.items()}, images, labels,
            client_rows[part], recipe, generators[part], None,
        )
        for n, p in result.params.items():
            out.params[n][part] = p
        out.steps[part], out.loss[part] = result.steps, result.loss

    if workers == 1:
        for part in parts:
            train(part)
    else:
        with _intra_op_threads(1), ThreadPoolExecutor(workers) as pool:
            list(pool.map(train, parts))
    return out


def _on_device(
    model: nn.Module, params: Params, images: torch.Tensor, labels: torch.Tensor, client_rows: list[torch.Tensor],
    recipe: Recipe, generators: list[torch.Generator], adjust: GradientAdjust | None,
) -> LocalResult:
    """`local_update` on recipe.device: the model, its state and the data moved there (the data once,
    and kept), every tensor the engine makes there too, and the result brought back to the CPU."""
    device = torch.device(recipe.device)
    if adjust is not None:  # a strategy's hook computes with its own state, on the CPU
        inner = adjust
        adjust = lambda p, g: _to(inner(_to(p, "cpu"), _to(g, "cpu")), device)  # noqa: E731
    with torch.device(device):
        result = local_update(copy.deepcopy(model).to(device), _to(params, device), resident(images, device),
                              resident(labels, device), client_rows, recipe, generators, adjust)
    return LocalResult(_to(result.params, "cpu"), result.steps.cpu(), result.loss.cpu())


def _to(params: Params, device) -> Params:
    return {n: p.to(device) for n, p in params.items()}


@functools.lru_cache(maxsize=8)
def resident(data: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`data` on `device`, copied there once: a federation's images serve every round."""
    return data.to(device)


def resolve_device(device: str) -> str:
    """train.device as the engine takes it: "auto" is "cuda" where torch finds a GPU, else "cpu"."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


@torch.no_grad()
def evaluate(
    model: nn.Module, params: Params, images: torch.Tensor, labels: torch.Tensor, chunk: int = 2000, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy [M] and mean cross-entropy [M] of M stacked models on one test set (on `device`)."""
    if images.device.type != device:
        on = torch.device(device)
        with torch.device(on):
            accuracy, loss = evaluate(copy.deepcopy(model).to(on), _to(params, on), resident(images, on),
                                      resident(labels, on), chunk, device)
        return accuracy.cpu(), loss.cpu()
    forward = vmap(lambda p, xb: functional_call(model, p, (xb,)), in_dims=(0, None))
    m = next(iter(params.values())).shape[0]
    correct, loss = torch.zeros(m), torch.zeros(m)
    with scoring(model):
        for x, y in zip(images.split(chunk), labels.split(chunk)):
            logits = forward(params, x)
            correct += (logits.argmax(-1) == y).sum(1)
            loss += F.cross_entropy(logits.transpose(1, 2), y.expand(m, -1), reduction="none").sum(1)
    return correct / len(labels), loss / len(labels)


@contextlib.contextmanager
def scoring(model: nn.Module):
    """`model` in eval mode for the block: BatchNorm from each model's running statistics, no Dropout."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
