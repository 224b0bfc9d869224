"""Stacked MLPs with a hand-written backward: the MLPs, and the Linear head of any other model.

An MLP here is Flatten, then Linear layers joined by ReLU (the study's mlp and 2nn, and the top of
its cnn). With the clients' weights stacked [K, out, in], each layer is one batched matmul forward,
one for the input gradient and one for the weight gradient. On the McMahan round (2 threads; issue
4's prototype measurements) this was 2.4-3x faster than vmap + autograd and 1.4-1.8x faster than
autograd on the same bmm graph: autograd's bookkeeping costs as much as the matmuls on these small
shapes. For plain SGD the weight gradient is never materialised: `baddbmm_` subtracts
lr * dZ^T H straight from the weights, saving one write and one read of a tensor the size of all K
models per step (for the CNN's 3136x512 layer, autograd's fresh 6.4 MB gradient and the separate
update took 1.7-4.3 ms of a 12 ms single-threaded step, the fused update 0.6 ms), and `sgd_steps`
updates an MLP's first layer once per block of steps (exactly; see there).
"""

from typing import Any

import torch
from torch import nn

from fedbridge import losses
from fedbridge.optim import Params


def split(model: nn.Module) -> tuple[nn.Module | None, list[str]]:
    """The model as a body and an MLP head: (body, names of the head's Linear layers).

    The head is a tail Flatten, Linear, (ReLU, Linear)* of an nn.Sequential and goes through these
    kernels; the body, what comes before it, goes through autograd (None for a plain MLP). A model
    without such a tail is all body.
    """
    children = list(model.named_children()) if isinstance(model, nn.Sequential) else []
    for start, (_, module) in enumerate(children):
        if isinstance(module, nn.Flatten) and module.start_dim == 1:
            tail = children[start + 1 :]
            linear = all(
                isinstance(m, nn.Linear) and m.bias is not None if i % 2 == 0 else isinstance(m, nn.ReLU)
                for i, (_, m) in enumerate(tail)
            )
            if linear and len(tail) % 2 == 1:
                return (model[:start] if start else None), [name for name, _ in tail[::2]]
    return model, []


def forward(params: Params, layers: list[str], x: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's input and the logits, [x, h1, ..., logits], each [K, B, features]."""
    acts = [x.flatten(2)]
    for i, name in enumerate(layers):
        z = torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), acts[-1], params[f"{name}.weight"].transpose(1, 2))
        acts.append(z.clamp_min_(0) if i < len(layers) - 1 else z)
    return acts


def backward(
    params: Params, layers: list[str], acts: list[torch.Tensor], grad_logits: torch.Tensor,
    sgd_lr: float | None = None, input_grad: bool = False,
) -> Params:
    """Gradients of the clients' losses w.r.t. their parameters.

    With `sgd_lr`, plain SGD is applied in place as each layer's gradient is known and no parameter
    gradient is returned. With `input_grad`, these layers are the top of a deeper stack and the
    gradient w.r.t. their input acts[0] is returned under "input".
    A client whose sample weights are all 0 gets exactly zero gradients, so it does not move.
    """
    grads = {}
    delta = grad_logits
    for i in reversed(range(len(layers))):
        weight, bias = params[f"{layers[i]}.weight"], params[f"{layers[i]}.bias"]
        # the input gradient needs this layer's weights before the fused update changes them
        delta_in = torch.bmm(delta, weight) if i or input_grad else None
        if sgd_lr is None:
            grads[f"{layers[i]}.weight"] = torch.bmm(delta.transpose(1, 2), acts[i])
            grads[f"{layers[i]}.bias"] = delta.sum(1)
        else:
            weight.baddbmm_(delta.transpose(1, 2), acts[i], alpha=-sgd_lr)
            bias.sub_(delta.sum(1), alpha=sgd_lr)
        # ReLU's gradient (acts[i] is its output) in one fused kernel, 6x faster than masked_fill_ here
        delta = torch.ops.aten.threshold_backward(delta_in, acts[i], 0) if i else delta_in
    if input_grad:
        grads["input"] = delta
    return grads


def clipped_backward(
    params: Params, layers: list[str], acts: list[torch.Tensor], grad_logits: torch.Tensor, clip: float,
) -> Params:
    """DP-SGD's sum over each client's batch of per-example gradients, each clipped to L2 norm `clip`.

    grad_logits [K, B, C] are those of per-example losses (weight 1, 0 on padding). No per-example
    gradient is materialised: for a Linear layer, example i's weight gradient is the outer product
    g_i a_i^T of its output gradient and input, so ||g_i a_i^T||^2 = ||g_i||^2 ||a_i||^2 and its bias
    gradient's is ||g_i||^2 (the "ghost norm"); the clipped sum is (c * g)^T a with c_i = min(1, C / n_i).
    """
    deltas: dict[int, torch.Tensor] = {}
    squared = torch.zeros(grad_logits.shape[:2])
    delta = grad_logits
    for i in reversed(range(len(layers))):
        deltas[i] = delta
        g2 = delta.square().sum(-1)
        squared += g2 * (acts[i].square().sum(-1) + 1)
        if i:
            delta = torch.ops.aten.threshold_backward(torch.bmm(delta, params[f"{layers[i]}.weight"]), acts[i], 0)
    scale = (clip / squared.sqrt().clamp_min(1e-12)).clamp_max(1.0).unsqueeze(-1)
    grads = {}
    for i, name in enumerate(layers):
        clipped = deltas[i] * scale
        grads[f"{name}.weight"] = torch.bmm(clipped.transpose(1, 2), acts[i])
        grads[f"{name}.bias"] = clipped.sum(1)
    return grads


# Steps whose first-layer work `sgd_steps` batches together. On the McMahan round (K = 10, B = 10,
# 2 threads) MKL's batched matmuls with 40 rows ran 1.7x faster per row than with 10 (forward
# 129 against 76 GFLOP/s, weight update 138 against 86), which pays for the block's Gram matrix;
# on an AVX-512 EPYC, forward 160-173 against 102-118, and blocks of 2, 6 or 8 steps were no faster.
SGD_BLOCK = 4


def sgd_steps(
    params: Params, layers: list[str], images: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor,
    sample_weights: torch.Tensor, lr: float, loss_fn: Any = losses.CE,
) -> torch.Tensor:
    """Plain SGD over all steps of a chunk; each client's summed loss [K].

    images [N, features]; rows, labels, sample_weights [S, K, B] per step. The first layer, which
    holds nearly all the weights, is updated once per block of SGD_BLOCK steps instead of every
    step: at step t of a block its pre-activations are x_t W^T - lr * sum_{s<t} (x_t x_s^T) d_s,
    which is exactly what the weights SGD would have at step t (W minus the block's earlier rank-B
    updates d_s^T x_s) give. So the block's inputs go through one matmul of SGD_BLOCK * B rows and
    the weight update is one rank-(SGD_BLOCK * B) update, with a small Gram matrix between them.
    """
    first_w, first_b = params[f"{layers[0]}.weight"], params[f"{layers[0]}.bias"]
    n_steps, k, b = rows.shape
    loss_sum = torch.zeros(k)
    # a block's tensors are reused, not allocated anew: glibc serves fresh ones this size with mmap,
    # and their page faults made whole rounds 1.6x slower in some processes and not in others
    buffers: dict[int, tuple[torch.Tensor, ...]] = {}
    for start in range(0, n_steps, SGD_BLOCK):
        m = min(SGD_BLOCK, n_steps - start)
        if m not in buffers:
            buffers[m] = tuple(torch.empty(k, m * b, n) for n in (images.shape[1], first_w.shape[1], m * b, first_w.shape[1]))
        x, pre, gram, deltas = buffers[m]
        torch.index_select(images, 0, rows[start : start + m].transpose(0, 1).reshape(-1), out=x.view(k * m * b, -1))
        torch.bmm(x, first_w.transpose(1, 2), out=pre)
        torch.bmm(x, x.transpose(1, 2), out=gram)
        for j in range(m):
            now = slice(j * b, (j + 1) * b)
            z = pre[:, now] + first_b.unsqueeze(1)
            if j:
                z.baddbmm_(gram[:, now, : j * b], deltas[:, : j * b], alpha=-lr)
            hidden = z.clamp_min_(0)
            acts = forward(params, layers[1:], hidden)
            loss, grad_logits = losses.weighted(acts.pop(), labels[start + j], sample_weights[start + j], loss_fn)
            loss_sum += loss
            grad_hidden = backward(params, layers[1:], acts, grad_logits, sgd_lr=lr, input_grad=True)["input"]
            deltas[:, now] = torch.ops.aten.threshold_backward(grad_hidden, hidden, 0)
            first_b.sub_(deltas[:, now].sum(1), alpha=lr)
        first_w.baddbmm_(deltas.transpose(1, 2), x, alpha=-lr)
    return loss_sum
