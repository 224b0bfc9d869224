"""FedNS's client score (Li, Funk, Gürel & Saeed 2024, arXiv 2409.02189): how large the gradient
of the last layer is, on the client's own data, for a label-free loss.

After its local training a client runs its batches through its model and takes, per batch, the L1
norm of the last Linear layer's weight gradient of the batch mean of sum_c -log softmax(z)_c (the
cross-entropy against a uniform target, as GradNorm, Huang et al. 2021, uses for out-of-distribution
inputs); its score is the mean over its batches. Inputs the model fits confidently give large
gradients there, noisy inputs small ones: the paper's observation that the two densities of this
norm barely overlap is what FedNS clusters on. Labels are not used.

The gradient is written out, so no autograd graph is built: with z = W h + b over C classes, the
loss's gradient w.r.t. z is C softmax(z) - 1, and w.r.t. W, the batch mean of (C softmax(z) - 1) h^T.
"""

import torch
from torch import nn
from torch.func import functional_call

from fedbridge.optim import Params


def _last_linear(model: nn.Module) -> nn.Module:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("FedNS scores the last Linear layer's gradient, and this model has none")
    return linears[-1]


@torch.no_grad()
def scores(model: nn.Module, params: Params, images: torch.Tensor, client_rows: list[torch.Tensor],
           batch_size: int) -> torch.Tensor:
    """Each client's mean last-layer gradient L1 norm [K], client k with parameters params[k] on
    images[client_rows[k]] in batches of `batch_size`, in row order (no randomness)."""
    last = _last_linear(model)
    seen: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    out = torch.zeros(len(client_rows))
    try:
        for k, rows in enumerate(client_rows):
            own = {n: p[k] for n, p in params.items()}
            norms = []
            for batch in rows.split(batch_size):
                seen.clear()
                logits = functional_call(model, own, (images[batch],))
                features = seen[0].flatten(1)
                delta = logits.shape[-1] * logits.softmax(-1) - 1
                norms.append((delta.T @ features / len(batch)).abs().sum())
            out[k] = torch.stack(norms).mean()
    finally:
        hook.remove()
    return out
