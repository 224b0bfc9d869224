"""Local training and evaluation with clients as a batch dimension.

The K clients of a round train together: their parameters are stacked on a leading axis and one
forward/backward/optimizer step moves all of them. Each client keeps its own minibatch order
(its own seeded generator); a client with fewer samples has a shorter epoch, and once its batches
run out it is masked and no longer changes. K=1 is the same code.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from fedbridge import optim
from fedbridge.optim import Params


@dataclass(frozen=True)
class Recipe:
    """How a client trains in one round."""

    optimizer: str  # "sgd" | "adam"
    lr: float
    batch_size: int
    local_epochs: int
    momentum: float = 0.0


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
    per_client = []
    for n, gen in zip(sizes, generators):
        batches = []
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            batches.extend(order.split(batch_size))
        per_client.append(batches)
    steps = max(len(b) for b in per_client)
    positions = torch.zeros(steps, len(sizes), batch_size, dtype=torch.long)
    weights = torch.zeros(steps, len(sizes), batch_size)
    for k, batches in enumerate(per_client):
        for s, batch in enumerate(batches):
            positions[s, k, : len(batch)] = batch
            weights[s, k, : len(batch)] = 1.0
    return positions, weights


def stacked_forward(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Logits [K, B, classes] of K stacked models on their own inputs x [K, B, ...]."""
    return vmap(lambda p, xb: functional_call(model, p, (xb,)))(params, x)


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
    """Train K clients from `params` [K, ...]; client k's samples are images[client_rows[k]]."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    sizes = [len(r) for r in client_rows]
    positions, weights = batch_schedule(sizes, recipe.batch_size, recipe.local_epochs, generators)
    # one padded row table so a step gathers every client's batch with a single index
    table = torch.zeros(len(client_rows), max(sizes), dtype=torch.long)
    for k, rows in enumerate(client_rows):
        table[k, : len(rows)] = rows
    state = optim.init_state(params, recipe.optimizer)
    client_axis = torch.arange(len(client_rows)).unsqueeze(1)
    loss_sum = torch.zeros(len(client_rows))
    for s in range(positions.shape[0]):
        rows = table[client_axis, positions[s]]
        w = weights[s]
        logits = stacked_forward(model, params, images[rows])
        per_sample = F.cross_entropy(logits.flatten(0, 1), labels[rows].flatten(), reduction="none")
        counts = w.sum(1)
        # each client's loss is the mean over its own real samples, so its gradient is its own
        client_loss = (per_sample.view_as(w) * w).sum(1) / counts.clamp_min(1)
        grads = dict(zip(params, torch.autograd.grad(client_loss.sum(), list(params.values()))))
        if adjust is not None:
            grads = adjust(params, grads)
        loss_sum += client_loss.detach()
        optim.step(
            params, grads, state, counts > 0,
            optimizer=recipe.optimizer, lr=recipe.lr, momentum=recipe.momentum,
        )
    steps = (weights.sum(2) > 0).sum(0).float()
    return LocalResult({n: p.detach() for n, p in params.items()}, steps, loss_sum / steps)


@torch.no_grad()
def evaluate(
    model: nn.Module, params: Params, images: torch.Tensor, labels: torch.Tensor, chunk: int = 2000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy [M] and mean cross-entropy [M] of M stacked models on one test set."""
    forward = vmap(lambda p, xb: functional_call(model, p, (xb,)), in_dims=(0, None))
    m = next(iter(params.values())).shape[0]
    correct, loss = torch.zeros(m), torch.zeros(m)
    for x, y in zip(images.split(chunk), labels.split(chunk)):
        logits = forward(params, x)
        correct += (logits.argmax(-1) == y).sum(1)
        loss += F.cross_entropy(logits.transpose(1, 2), y.expand(m, -1), reduction="none").sum(1)
    return correct / len(labels), loss / len(labels)
