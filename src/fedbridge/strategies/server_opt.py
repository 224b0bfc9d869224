"""Server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2; FedAvgM:
Hsu et al. 2019): the averaged client update is treated as a pseudo-gradient and the server takes
one optimizer step with it. Their moments live in ServerState.extra so a checkpoint resumes them.

    m = beta1 m + (1 - beta1) delta
    v = v + delta^2                                  (FedAdagrad)
    v = v - (1 - beta2) delta^2 sign(v - delta^2)    (FedYogi)
    v = beta2 v + (1 - beta2) delta^2                (FedAdam)
    x = x + lr m / (sqrt(v) + tau)                   (no bias correction, as in the paper)
    FedAvgM: m = momentum m + delta; x = x + lr m    (momentum 0, lr 1: FedAvg)
"""

from dataclasses import dataclass
from typing import Literal

import torch

from fedbridge.optim import Params

ServerOptimizerName = Literal["fedavgm", "fedadam", "fedyogi", "fedadagrad"]


@dataclass(frozen=True)
class ServerOptimizer:
    name: ServerOptimizerName
    lr: float
    beta1: float = 0.9  # FedAvgM's momentum
    beta2: float = 0.99
    tau: float = 1e-3  # adaptivity: bounds the step where v is tiny


def init_moments(opt: ServerOptimizer, params: Params) -> dict[str, Params]:
    first = {n: torch.zeros_like(p) for n, p in params.items()}
    if opt.name == "fedavgm":
        return {"first": first}
    # the paper starts v at tau^2 (Algorithm 2: v_{-1} >= tau^2)
    return {"first": first, "second": {n: torch.full_like(p, opt.tau**2) for n, p in params.items()}}


def server_step(opt: ServerOptimizer, params: Params, delta: Params, moments: dict[str, Params]) -> tuple[Params, dict[str, Params]]:
    """The new global params and moments after one step with the pseudo-gradient `delta` [1, ...]."""
    new_params, first, second = {}, {}, {}
    for n, p in params.items():
        d = delta[n]
        if opt.name == "fedavgm":
            first[n] = opt.beta1 * moments["first"][n] + d
            new_params[n] = p + opt.lr * first[n]
            continue
        first[n] = opt.beta1 * moments["first"][n] + (1 - opt.beta1) * d
        v, d2 = moments["second"][n], d * d
        if opt.name == "fedadagrad":
            second[n] = v + d2
        elif opt.name == "fedyogi":
            second[n] = v - (1 - opt.beta2) * d2 * torch.sign(v - d2)
        else:
            second[n] = opt.beta2 * v + (1 - opt.beta2) * d2
        new_params[n] = p + opt.lr * first[n] / (second[n].sqrt() + opt.tau)
    return new_params, {"first": first, **({"second": second} if second else {})}
