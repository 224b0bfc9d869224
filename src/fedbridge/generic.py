"""The generic training path: any nn.Module the hand-written kernels (fedbridge.kernels) do not
cover trains through autograd, its clients stacked under vmap or one module copy each.

A client's state is its parameters and buffers (BatchNorm's running statistics), stacked [K, ...]
like the parameters; a copy of the module per client (`bound`) computes with views of them, so
the optimizer's in-place steps and BatchNorm's running updates land in the stacked state. Its
Dropout draws from the client's own generator (`seeded_dropout`). docs/performance.md, "The
generic path", has the measurements behind `per_client`.
"""

import copy
import functools
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

from fedbridge import kernels, pooling
from fedbridge.optim import OptimizerState, Params


def stacked_forward(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Logits [K, B, classes] of K stacked models on their own inputs x [K, B, ...]."""
    if x.shape[0] == 1:  # one client: vmap would only add overhead
        return functional_call(model, {n: p[0] for n, p in params.items()}, (x[0],)).unsqueeze(0)
    return vmap(lambda p, xb: functional_call(model, p, (xb,)))(params, x)


BodyGrads = Callable[[torch.Tensor], Params]


def body_forward(
    body: nn.Module, clients: list[nn.Module] | None, params: Params, x: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, BodyGrads]:
    """The body's output [K, B, ...] on inputs x [K, B, ...], with its autograd graph, and how to
    get the gradients [K, ...] of its parameters from the gradient of that output.

    `clients` are `bound` copies, one a client: each runs on its own real samples only (the first
    counts[k] of its batch; padding is zeros after it), as a per-client loop does, which BatchNorm's
    batch statistics and Dropout's per-client masks need, and which for one client costs less than
    vmap's or functional_call's parameter swapping at every step. Without them, vmap over the
    stacked clients (a model without batch statistics or randomness).
    """
    with torch.enable_grad():
        if clients is None:
            trained = trainable(body)
            leaves = {n: params[n].detach().requires_grad_(True) for n in trained}
            fixed = {n: params[n] for n in body.state_dict() if n in params and n not in trained}
            out = stacked_forward(body, leaves | fixed, x)
            # as autograd gives them: vmap's weight gradients come transposed (see in_gradient_layout)
            return out, lambda grad: dict(zip(leaves, torch.autograd.grad(out, list(leaves.values()), grad)))
        outs = [module(xk[: int(n)]) if n else None for module, xk, n in zip(clients, x, counts.tolist())]
        out = _padded(outs, x.shape[1])
        names = trainable(body)
        leaves = [p for module in clients for p in module.parameters() if p.requires_grad]

        def grads_of(grad: torch.Tensor) -> Params:
            found = torch.autograd.grad(out, leaves, grad, allow_unused=True)
            found = [torch.zeros_like(p) if g is None else g for g, p in zip(found, leaves)]
            if len(clients) == 1:
                return {n: g.contiguous().unsqueeze(0) for n, g in zip(names, found)}
            return {n: torch.stack(found[i :: len(names)]) for i, n in enumerate(names)}

        return out, grads_of


def in_gradient_layout(params: Params, grads: Params, state: OptimizerState) -> None:
    """Each parameter (and its optimizer state) given, in place in the dicts, the strides its gradient
    comes in, same values: vmap's weight gradients come transposed, and copying each step's into its
    parameter's layout was a third of the generic MLP round (docs/performance.md, "The generic path").
    Called once, after the first step's gradients; `laid_out_as` then copies only what still differs."""
    for name, g in grads.items():
        if (layout := torch.empty_like(g)).stride() != params[name].stride():
            params[name] = layout.copy_(params[name])
            for buffers in (state.first, state.second):
                if name in buffers:
                    buffers[name] = torch.empty_like(g).copy_(buffers[name])


def laid_out_as(grads: Params, params: Params) -> Params:
    """The gradients in their parameters' strides: torch's fused Adam (optim.step) misreads a gradient
    whose strides differ from its parameter's."""
    return {n: g if g.stride() == params[n].stride() else torch.empty_like(params[n]).copy_(g) for n, g in grads.items()}


def _padded(outs: list[torch.Tensor | None], batch: int) -> torch.Tensor:
    """The clients' outputs [K, batch, ...], each padded with zeros after its real samples (None: none)."""
    like = next(o for o in outs if o is not None)
    if len(outs) == 1 and len(like) == batch:
        return like.unsqueeze(0)
    zeros = like.new_zeros(batch, *like.shape[1:])
    return torch.stack([zeros if o is None else torch.cat([o, zeros[len(o) :]]) for o in outs])


def trainable(model: nn.Module) -> list[str]:
    """The parameters training moves (a factory's module may freeze some); the rest of the state, the
    buffers among it, is carried along per client."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def stateful(model: nn.Module) -> bool:
    """Whether the model's output for a sample depends on the rest of its batch or on chance
    (BatchNorm in training, Dropout): then each client trains through its own module call."""
    return any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)) for m in model.modules())


def per_client(model: nn.Module) -> bool:
    """Whether the clients train one module call each (on the worker pool), or stacked under vmap.

    What the kernels do not cover goes one client per call when it convolves (issue 4's measurements
    at local.CONV_CLIENTS_PER_CHUNK; on the LeNet-5 round, 1 thread, under load: 7.25 s against 7.05 s
    for vmap and 7.70 s for the loop) or needs its own batch (`stateful`); anything else (Linear,
    Embedding, LayerNorm, ...) under vmap, which on the McMahan MLP round measured 2.26 s against
    3.13 s for one call per client (docs/performance.md, "The generic path").
    """
    body = kernels.split(model)[0]
    return body is not None and (stateful(body) or any(isinstance(m, nn.modules.conv._ConvNd) for m in body.modules()))


def bound(model: nn.Module, params: Params, k: int, generator: torch.Generator) -> nn.Module:
    """A copy of `model` whose parameters and float buffers are views of client k's stacked state, so the
    optimizer's in-place steps on `params` (and BatchNorm's on its running statistics) are what the
    module computes with and leaves behind; its dropout draws from the client's generator, and its
    max pools take ATen's faster channels-last kernel (same values and gradients)."""
    client = seeded_dropout(pooling.with_fast_pools(copy.deepcopy(model)), generator)
    for name, p in client.named_parameters():
        p.data = params[name][k]
    for prefix, module in client.named_modules():
        for name, buffer in module.named_buffers(recurse=False):
            full = f"{prefix}.{name}" if prefix else name
            # an integer buffer (BatchNorm's step counter) is not trained state: left as the round
            # began, so it does not count as the clients' update in norms, distances and detection
            if full in params and buffer.is_floating_point():
                module._buffers[name] = params[full][k]
    return client


def seeded_dropout(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """`model` with each Dropout drawing its masks from `generator` (in place): the global RNG is
    shared by the worker threads, so its draws would depend on their timing. Same distribution as
    torch's: a mask of Bernoulli(1 - p) keeps, scaled by 1 / (1 - p); Dropout1d/2d/3d drop whole
    channels."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.forward = functools.partial(_dropout, module, generator)
    return model


def _dropout(module: nn.Module, generator: torch.Generator, x: torch.Tensor) -> torch.Tensor:
    if not module.training or module.p == 0:
        return x
    shape = x.shape if type(module) is nn.Dropout else (*x.shape[:2], *[1] * (x.dim() - 2))
    # drawn on the CPU, so a client's masks are the same on every device
    keep = torch.empty(shape, device="cpu").bernoulli_(1 - module.p, generator=generator).to(x.device, x.dtype)
    return x * keep / (1 - module.p) if module.p < 1 else x * keep
