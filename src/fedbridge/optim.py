"""Client optimizers on stacked parameters: every tensor has a leading client axis [K, ...].

A client whose local data ran out this step (active[k] is False) keeps its parameters and its
optimizer state untouched, so shorter clients behave exactly as if trained alone.
Optimizer state starts fresh at every round, as in FedAvg (clients keep no state between rounds).
"""

from dataclasses import dataclass, field

import torch

Params = dict[str, torch.Tensor]

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass
class OptimizerState:
    steps: torch.Tensor  # [K] optimizer steps taken per client
    first: Params = field(default_factory=dict)  # SGD momentum buffer, or Adam's first moment
    second: Params = field(default_factory=dict)  # Adam's second moment


def init_state(params: Params, optimizer: str) -> OptimizerState:
    k = next(iter(params.values())).shape[0]
    state = OptimizerState(steps=torch.zeros(k))
    if optimizer == "adam":
        state.first = {n: torch.zeros_like(p) for n, p in params.items()}
        state.second = {n: torch.zeros_like(p) for n, p in params.items()}
    return state


def _per_client(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def step(
    params: Params,
    grads: Params,
    state: OptimizerState,
    active: torch.Tensor,
    *,
    optimizer: str,
    lr: float,
    momentum: float = 0.0,
) -> None:
    """One step in place for the active clients; matches torch.optim.SGD / torch.optim.Adam.

    The arithmetic follows torch.optim's single-tensor code operation by operation (lerp, addcmul,
    the bias corrections in double precision), so a client's weights agree with torch.optim's to
    float32 rounding even where Adam divides tiny gradients by tiny second moments.
    """
    state.steps += active.to(state.steps.dtype)
    everyone = bool(active.all())
    if optimizer == "adam" and everyone:
        # Every client is active, so all share one step count: torch's fused CPU Adam (the kernel
        # behind torch.optim.Adam(fused=True)) updates each tensor in one pass, where the op-by-op
        # code below allocates temporaries and reads every tensor nine times (a step of the seed
        # study's two MLP clients: 0.09 ms against 0.98 ms).
        names = list(params)
        torch._fused_adam_(
            [params[n] for n in names], [grads[n] for n in names],
            [state.first[n] for n in names], [state.second[n] for n in names], [],
            [state.steps[0]] * len(names), lr=lr, beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1],
            weight_decay=0.0, eps=ADAM_EPS, amsgrad=False, maximize=False,
        )
        return
    if optimizer == "adam":
        beta1, beta2 = ADAM_BETAS
        t = state.steps.clamp_min(1).double()
        step_size = (-lr / (1 - beta1**t)).float()
        correction2 = (1 - beta2**t).sqrt().float()
    for name, p in params.items():
        g = grads[name]
        on = None if everyone else _per_client(active, p)
        if optimizer == "sgd":
            if momentum:
                buf = state.first.get(name)
                # torch.optim.SGD's first momentum step copies the gradient
                new_buf = g.clone() if buf is None else buf * momentum + g
                keep = torch.zeros_like(g) if buf is None else buf
                state.first[name] = new_buf if on is None else torch.where(on, new_buf, keep)
                g = state.first[name]
            p.add_(g if on is None else torch.where(on, g, 0.0), alpha=-lr)
        else:
            m, v = state.first[name], state.second[name]
            if on is None:
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            else:
                m.copy_(torch.where(on, m.lerp(g, 1 - beta1), m))
                v.copy_(torch.where(on, (v * beta2).addcmul_(g, g, value=1 - beta2), v))
            denom = (v.sqrt() / _per_client(correction2, p)).add_(ADAM_EPS)
            update = (_per_client(step_size, p) * m).div_(denom)
            p.add_(update if on is None else torch.where(on, update, 0.0))
