"""The per-client reference loop: what most FL code does, one client after another.

Plain nn.Module, torch.optim and autograd, with the same minibatch order as the batched engine
(the same `batch_schedule` and per-client generators). It is kept as the yardstick the batched
engine is tested against (same weights) and timed against (benchmarks/speed.py), and has the same
signature as `local.local_update`, so the engine can run on it.
"""

import copy

import torch
from torch import nn

from fedbridge.generic import seeded_dropout
from fedbridge.losses import per_sample
from fedbridge.local import GradientAdjust, LocalResult, Recipe, batch_schedule
from fedbridge.optim import ADAM_BETAS, ADAM_EPS, Params


def _optimizer(recipe: Recipe, parameters) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=recipe.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    return torch.optim.SGD(parameters, lr=recipe.lr, momentum=recipe.momentum)


def reference_update(
    model: nn.Module,
    params: Params,
    images: torch.Tensor,
    labels: torch.Tensor,
    client_rows: list[torch.Tensor],
    recipe: Recipe,
    generators: list[torch.Generator],
    adjust: GradientAdjust | None = None,
) -> LocalResult:
    """`local.local_update`, one client at a time."""
    if adjust is not None:
        raise NotImplementedError("the reference loop trains plain clients; gradient hooks need the batched engine")
    out = {n: torch.empty_like(p) for n, p in params.items()}
    steps, losses = torch.zeros(len(client_rows)), torch.zeros(len(client_rows))
    for k, (rows, gen) in enumerate(zip(client_rows, generators)):
        net = seeded_dropout(copy.deepcopy(model), gen)  # its masks from the client's generator, as the engine's
        net.load_state_dict({n: p[k] for n, p in params.items()})
        opt = _optimizer(recipe, net.parameters())
        positions, weights = batch_schedule([len(rows)], recipe.batch_size, recipe.local_epochs, [gen])
        total = 0.0
        for batch, real in zip(positions[:, 0], weights[:, 0]):
            picked = rows[batch[real > 0]]
            loss = per_sample(net(images[picked]), labels[picked], recipe.loss).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        for n, p in net.state_dict().items():
            # an integer buffer (BatchNorm's step counter) stays as it began, as in the engine
            out[n][k] = p if p.is_floating_point() else params[n][k]
        steps[k], losses[k] = len(positions), total / len(positions)
    return LocalResult(out, steps, losses)
