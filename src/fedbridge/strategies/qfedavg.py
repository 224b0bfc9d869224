"""q-FedAvg (Li, Sanjabi, Beirami & Smith, ICLR 2020, "Fair Resource Allocation in Federated
Learning", Algorithm 2): it minimises the q-FFL objective sum_k p_k F_k^(q+1) / (q+1), which weighs
a client the more the higher its loss, so that accuracy spreads less over the clients.

Each sampled client k reports its update u_k = w_k - w (trained minus global) and its loss F_k. With
L = 1 / train.lr, the paper's estimate of the Lipschitz constant from the clients' step size, and
Δw_k = L (w - w_k) = -L u_k:

    h_k = q F_k^(q-1) ||Δw_k||^2 + L F_k^q
    w  <-  w - sum_k F_k^q Δw_k / sum_k h_k  =  w + L sum_k F_k^q u_k / sum_k h_k

The step is the F^q-weighted mean update shrunk by sum_k L F_k^q / sum_k h_k <= 1: the longer the
updates (many local steps), the shorter the step. Sample weights do not enter, as in the paper.

F_k: the paper evaluates the global model on the client's training data before it trains; the
clients here report the mean training loss of the round's local steps, which start from the global
model: the closest the server has. A loss of 0 is clamped to 1e-10 (the paper's code adds 1e-10)
so that F_k^(q-1) stays finite.

q = 0: h_k = L, and the step is the unweighted mean of the updates. That is the paper's FedAvg,
which samples clients in proportion to their data and then averages uniformly; fedbridge samples
clients uniformly and its `fedavg` weighs them by their samples, so q = 0 equals `fedavg` when the
clients hold equal numbers of samples and is the unweighted mean otherwise.
"""

from typing import Literal

import torch
from pydantic import Field

from fedbridge.optim import Params
from fedbridge.strategies.aggregate import flat
from fedbridge.strategies.api import ClientUpdates, Setup, Strategy, StrategySpec
from fedbridge.strategies.fedavg import global_strategy
from fedbridge.strict import Strict

SMALLEST_LOSS = 1e-10


class Config(Strict):
    name: Literal["qfedavg"]
    q: float = Field(default=1.0, ge=0)  # 0: the unweighted mean update; higher: high-loss clients weigh more


def q_fair_step(updates: Params, loss: torch.Tensor, q: float, lipschitz: float) -> Params:
    """The server's step [1, ...] from the updates [K, ...] (trained minus global) and losses F [K]."""
    log_f = loss.double().clamp_min(SMALLEST_LOSS).log()
    # every F^q and F^(q-1) is divided by the largest F^q, which cancels in the ratio: F^q of a
    # loss of 3 is beyond float32 from q = 81 on, beyond float64 from q = 647
    top = q * log_f.max()
    f_q, f_q1 = (q * log_f - top).exp(), ((q - 1) * log_f - top).exp()
    squared = lipschitz**2 * flat(updates).double().square().sum(dim=1)  # ||Δw_k||^2
    h = q * f_q1 * squared + lipschitz * f_q
    share = (lipschitz * f_q / h.sum()).float()
    return {n: torch.tensordot(share, x, dims=1).unsqueeze(0) for n, x in updates.items()}


def qfedavg(q: float, client_lr: float) -> Strategy:
    def combine(updates: Params, weights: torch.Tensor, trained: ClientUpdates) -> Params:
        return q_fair_step(updates, trained.loss, q, lipschitz=1 / client_lr)

    return global_strategy(combine=combine)


def build(config: Config, setup: Setup) -> Strategy:
    return qfedavg(config.q, setup.lr)


SPEC = StrategySpec(Config, build, {"qfedavg": "q-FedAvg"})
