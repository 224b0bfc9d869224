"""DP-SGD for any nn.Module: each example's gradient (from Linear and Conv2d layers' inputs and
output gradients, or torch.func's vmap over grad) clipped to L2 norm C, their sum noised with
N(0, σ²C²) per coordinate and divided by the batch size.

The MLP kernels get the clipped sum from ghost norms without materialising per-example gradients
(kernels.clipped_backward); a model with convolutions, or any other layer those kernels do not
cover, takes this path. Each example's gradient is that of its own loss through the whole model,
body and head, so its norm is exact. Linear and Conv2d layers get it from one batched backward
(`_from_layers`), a Linear layer's without making it (`Outer`); any other layer through torch.func,
whose per-example gradients are made a slice of the batch at a time (SLICE_BYTES). Clients of a
chunk are one more vmap level there, a loop on the layer path.

A model whose output for one example depends on the rest of its batch (BatchNorm) has no
per-example gradient, and one that draws random masks (Dropout) would need each example's mask
from the client's own generator: both are refused before anything trains (`refusal`).
"""

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedbridge import losses, optim, pooling
from fedbridge.generic import trainable
from fedbridge.optim import Params

# per-example gradients torch.func holds at once: a slice of the batch of at most this many bytes
# (a 26k-parameter model takes a batch of 256 whole, McMahan's 1.66M-parameter CNN slices of 20)
SLICE_BYTES = 128 * 2**20


def refusal(model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
    """Why per-example gradients of `model` cannot be computed here, or None (tried on 2 zero inputs)."""
    said = "privacy.level = 'sample' (DP-SGD clips each example's gradient)"
    if mixing := [type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]:
        return (f"{said}: the model's {mixing[0]} normalises each example with its batch's statistics, so one "
                "example's gradient depends on the others' and clipping it bounds nothing; replace it with "
                "nn.GroupNorm (what Opacus's ModuleValidator.fix does), or use privacy.level = 'client'")
    if drops := [type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]:
        return (f"{said}: the model's {drops[0]} would need each example's mask drawn from the client's own "
                "generator, which DP-SGD does not do yet; remove it, or use privacy.level = 'client'")
    params = {n: t.detach().unsqueeze(0) for n, t in model.state_dict().items()}
    try:
        per_example_grads(model, params, torch.zeros(1, 2, *input_shape), torch.zeros(1, 2, dtype=torch.long))
    except Exception as e:  # the user's module under torch.func
        return (f"{said}: torch.func cannot take the model's per-example gradients ({type(e).__name__}: {e}); "
                "make its forward free of in-place updates of inputs and of .item(), or use privacy.level = 'client'")
    return None


def per_example_grads(
    model: nn.Module, params: Params, x: torch.Tensor, labels: torch.Tensor, loss: Any = losses.CE,
    fast: nn.Module | None = None,
) -> tuple[Params, torch.Tensor]:
    """Each example's gradient [K, B, ...] of its own loss w.r.t. the trainable parameters, and the
    losses [K, B], for K stacked models `params` on their inputs x [K, B, ...]. `fast`: the same model
    with channels-last max pools (pooling.with_fast_pools: same values and gradients), for the layer
    formulas; torch.func cannot take it."""
    if layered(model):
        found = [_from_layers(fast or model, {n: p[k] for n, p in params.items()}, x[k], labels[k], loss)
                 for k in range(len(x))]
        if all(f is not None for f in found):
            dense = [{n: g.dense() if isinstance(g, Outer) else g for n, g in grads.items()} for grads, _ in found]
            return {n: torch.stack([d[n] for d in dense]) for n in dense[0]}, torch.stack([v for _, v in found])
    return _by_vmap(model, params, x, labels, loss)


def layered(model: nn.Module) -> bool:
    """Whether every parameter belongs to a Linear or an ungrouped, zero-padded Conv2d with numeric
    padding, whose per-example gradients follow from its input and output gradient (`_from_layers`)."""
    for module in model.modules():
        if not list(module.parameters(recurse=False)):
            continue
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
                return False
        elif not isinstance(module, nn.Linear):
            return False
    return True


@dataclass(frozen=True)
class Outer:
    """Each example's gradient g_i^T a_i [B, out, in] of a Linear layer on one input vector, kept as
    its factors g [B, out] and a [B, in]: its norm is ||g_i|| ||a_i|| and a weighted sum over the
    batch is one matmul, so it need not be made (for the tutorials' CNN its 32x512 layer was most of
    the per-example floats)."""

    g: torch.Tensor
    a: torch.Tensor

    def dense(self) -> torch.Tensor:
        return torch.bmm(self.g.unsqueeze(2), self.a.unsqueeze(1))

    def squared_norms(self) -> torch.Tensor:
        return self.g.square().sum(1) * self.a.square().sum(1)

    def weighted_sum(self, weight: torch.Tensor) -> torch.Tensor:
        return (self.g * weight.unsqueeze(1)).T @ self.a


def _from_layers(
    model: nn.Module, params: Params, x: torch.Tensor, labels: torch.Tensor, loss: Any,
) -> tuple[dict[str, torch.Tensor | Outer], torch.Tensor] | None:
    """One client's per-example gradients [B, ...] from one batched forward and backward, as Opacus
    computes them: a Linear layer's weight gradient for example i is g_i^T a_i (its output gradient
    and input), a Conv2d's is g_i times the unfolded input patches of example i; biases sum g_i. The
    loss is the sum of the examples' losses, so g_i is example i's own. None when a layer ran other
    than once (a module reused in the forward), for which the vmap path is taken."""
    seen: dict[str, list] = {}
    layers = [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))]
    hooks = [model.get_submodule(name).register_forward_hook(
        lambda m, args, out, name=name: seen.setdefault(name, []).append((args[0], out))) for name in layers]
    try:
        with torch.enable_grad():
            # the input in the graph, so every layer's output is, frozen parameters or not
            values = losses.per_sample(functional_call(model, params, (x.detach().requires_grad_(True),)), labels, loss)
            if set(seen) != set(layers) or any(len(calls) != 1 for calls in seen.values()):
                return None
            names = list(seen)
            outputs = torch.autograd.grad(values.sum(), [seen[n][0][1] for n in names])
    finally:
        for h in hooks:
            h.remove()
    grads = {}
    for name, g in zip(names, outputs):
        module, a = model.get_submodule(name), seen[name][0][0].detach()
        if isinstance(module, nn.Conv2d):
            patches = F.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride)
            g = g.flatten(2)  # [B, out, L]
            weight = torch.bmm(g, patches.transpose(1, 2)).view(len(a), *module.weight.shape)
            bias = g.sum(2)
        elif g.dim() == 2:
            weight, bias = Outer(g, a), g
        else:  # a Linear layer over a sequence: its positions' outer products summed per example
            weight = torch.einsum("b...o,b...i->boi", g, a)
            bias = g.sum(tuple(range(1, g.dim() - 1)))
        prefix = f"{name}." if name else ""
        grads[f"{prefix}weight"] = weight
        if module.bias is not None:
            grads[f"{prefix}bias"] = bias
    return {n: grads[n] for n in trainable(model)}, values.detach()


def _by_vmap(
    model: nn.Module, params: Params, x: torch.Tensor, labels: torch.Tensor, loss: Any,
) -> tuple[Params, torch.Tensor]:
    names = trainable(model)
    state = {n: params[n] for n in names}
    fixed = {n: p for n, p in params.items() if n not in state}

    def one(theirs: Params, rest: Params, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, theirs | rest, (xi.unsqueeze(0),))
        return losses.per_sample(logits, yi.unsqueeze(0), loss).sum()

    examples = vmap(grad_and_value(one), in_dims=(None, None, 0, 0))
    if x.shape[0] == 1:  # one client: no vmap level for it
        grads, values = examples({n: p[0] for n, p in state.items()}, {n: p[0] for n, p in fixed.items()}, x[0], labels[0])
        return {n: g.unsqueeze(0) for n, g in grads.items()}, values.unsqueeze(0)
    return vmap(examples)(state, fixed, x, labels)


def clip_scale(grads: Params, clip: float) -> torch.Tensor:
    """min(1, C / ||g_i||) [K, B] over each example's whole gradient (every parameter together)."""
    squared = sum(g.flatten(2).square().sum(-1) for g in grads.values())
    return (clip / squared.sqrt().clamp_min(1e-12)).clamp_max(1.0)


def clipped_sum(
    model: nn.Module, params: Params, x: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, clip: float,
    loss: Any = losses.CE, fast: nn.Module | None = None,
) -> tuple[torch.Tensor, Params]:
    """Each client's summed loss [K] over its real examples (real [K, B]: 1, or 0 on padding) and the
    sum of their gradients, each clipped to L2 norm `clip` [K, ...]."""
    if layered(model):
        found = [_from_layers(fast or model, {n: p[k] for n, p in params.items()}, x[k], labels[k], loss)
                 for k in range(len(x))]
        if all(f is not None for f in found):
            sums = [_clipped(grads, clip, real[k]) for k, (grads, _) in enumerate(found)]
            total = torch.stack([(values * real[k]).sum() for k, (_, values) in enumerate(found)])
            return total, {n: torch.stack([one[n] for one in sums]) for n in sums[0]}
    size = 4 * x.shape[0] * sum(params[n][0].numel() for n in trainable(model))
    step = max(1, SLICE_BYTES // size)
    total, summed = torch.zeros(x.shape[0]), None
    for lo in range(0, x.shape[1], step):
        grads, values = _by_vmap(model, params, x[:, lo : lo + step], labels[:, lo : lo + step], loss)
        weight = (clip_scale(grads, clip) * real[:, lo : lo + step]).unsqueeze(1)  # [K, 1, B]
        part = {n: torch.bmm(weight, g.flatten(2)).view(g.shape[0], *g.shape[2:]) for n, g in grads.items()}
        summed = part if summed is None else {n: summed[n] + part[n] for n in summed}
        total += (values * real[:, lo : lo + step]).sum(1).to(total.device)
    return total, summed


def _clipped(grads: dict[str, torch.Tensor | Outer], clip: float, real: torch.Tensor) -> Params:
    """One client's sum of its examples' gradients (dense [B, ...] or Outer), each clipped to `clip`."""
    squared = sum(g.squared_norms() if isinstance(g, Outer) else g.flatten(1).square().sum(1) for g in grads.values())
    weight = (clip / squared.sqrt().clamp_min(1e-12)).clamp_max(1.0) * real
    return {n: g.weighted_sum(weight) if isinstance(g, Outer) else (weight @ g.flatten(1)).view(g.shape[1:])
            for n, g in grads.items()}


def noised_mean(
    summed: Params, clip: float, noise_multiplier: float, batch_size: int, generators: list[torch.Generator],
) -> Params:
    """DP-SGD's gradient: the clipped sum plus N(0, (σC)²) per coordinate from each client's own
    generator, over the batch size (the last, partial batch too, as Opacus does)."""
    out = {}
    for n, g in summed.items():
        noise = torch.stack([torch.randn(g.shape[1:], generator=gen) for gen in generators]).to(g.device)
        out[n] = (g + noise * (noise_multiplier * clip)) / batch_size
    return out


def dp_sgd_steps(
    model: nn.Module, params: Params, images: torch.Tensor, steps_rows: torch.Tensor, steps_labels: torch.Tensor,
    weights: torch.Tensor, *, clip: float, noise_multiplier: float, batch_size: int, optimizer: str, lr: float,
    momentum: float, loss: Any, generators: list[torch.Generator], adjust: Any = None,
) -> torch.Tensor:
    """Every DP-SGD step of a chunk of clients, in place on `params` [K, ...]; each client's summed
    loss [K]. steps_rows, steps_labels, weights [S, K, B] as local._train_chunk makes them; `adjust`
    (a strategy's gradient hook) sees the noised gradient: post-processing."""
    # a copy of its own: functional_call swaps the module's parameters and the hooks live on it, while
    # the worker threads of local_update train other clients with the same model
    model = copy.deepcopy(model)
    fast = pooling.with_fast_pools(copy.deepcopy(model))
    state = optim.init_state({n: params[n] for n in trainable(model)}, optimizer)
    flat = images.flatten(1)
    loss_sum = torch.zeros(steps_rows.shape[1])
    for rows, labels, real in zip(steps_rows, steps_labels, weights):
        x = torch.index_select(flat, 0, rows.reshape(-1)).view(*rows.shape, *images.shape[1:])
        counts = real.sum(1)
        summed_loss, summed = clipped_sum(model, params, x, labels, real, clip, loss, fast)
        grads = noised_mean(summed, clip, noise_multiplier, batch_size, generators)
        loss_sum += summed_loss / counts.clamp_min(1)
        if adjust is not None:
            grads = adjust(params, grads)
        optim.step({n: params[n] for n in grads}, grads, state, counts > 0, optimizer=optimizer, lr=lr, momentum=momentum)
    return loss_sum

