"""The training losses a client can minimise (`train.loss`), each with its gradient w.r.t. the logits.

- `ce`: cross-entropy, -log p_y;
- `gce`: generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018), (1 - p_y^q) / q with q in (0, 1]:
  q -> 0 is cross-entropy, q = 1 the mean absolute error, robust to noisy labels but slow to fit;
- `sce`: symmetric cross-entropy (Wang et al., ICCV 2019), alpha CE + beta RCE, where the reverse
  cross-entropy RCE = -sum_c p_c log y_c takes log 0 = A = -4 (the paper's clamp), so that for a
  one-hot label RCE = -A (1 - p_y).

For all three the gradient w.r.t. the logits is the cross-entropy one scaled per sample,
c(p_y) (softmax - onehot), with c = 1 (CE), p_y^q (GCE) and alpha + beta (-A) p_y (SCE): the
hand-written kernels (fedbridge.kernels) take it from `weighted`, the autograd paths differentiate
`per_sample`, and tests hold the two to each other. Evaluation always reports cross-entropy.
"""

from typing import Annotated, Any, Literal, Union

import torch
from pydantic import Field

from fedbridge.strict import Strict

# Wang et al. 2019, section 4: log 0 in the reverse cross-entropy is clamped to A = -4
LOG_ZERO = -4.0


class CrossEntropy(Strict):
    name: Literal["ce"]


class GeneralizedCE(Strict):
    name: Literal["gce"]
    q: float = Field(default=0.7, gt=0, le=1)  # the paper's default; 1 is MAE, towards 0 CE


class SymmetricCE(Strict):
    name: Literal["sce"]
    # the paper's CIFAR-10 setting (alpha 0.1, beta 1.0); on MNIST it takes alpha 0.01
    alpha: float = Field(default=0.1, gt=0)
    beta: float = Field(default=1.0, gt=0)


LossConfig = Annotated[Union[CrossEntropy, GeneralizedCE, SymmetricCE], Field(discriminator="name")]
CE = CrossEntropy(name="ce")
NAMES = ("ce", "gce", "sce")


def by_name(value: Any) -> Any:
    """`train.loss = "gce"` stands for the table {name = "gce"} with the paper's keys."""
    return {"name": value} if isinstance(value, str) else value


def per_sample(logits: torch.Tensor, labels: torch.Tensor, loss: Any = CE) -> torch.Tensor:
    """The loss of every sample [...], from logits [..., C] and labels [...]; differentiable."""
    log_p = logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    if loss.name == "gce":
        return -torch.expm1(loss.q * log_p) / loss.q
    if loss.name == "sce":
        return -loss.alpha * log_p - loss.beta * LOG_ZERO * (1 - log_p.exp())
    return -log_p


def weighted(
    logits: torch.Tensor, labels: torch.Tensor, sample_weights: torch.Tensor, loss: Any = CE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each client's weighted mean loss [K] and its gradient w.r.t. the logits [K, B, C].

    sample_weights [K, B] sum to 1 over a client's real samples (0 on padding), so the gradient is
    c(p_y) (softmax - onehot) * weight, what autograd gives for the per-client mean of `per_sample`.
    """
    log_probs = logits.log_softmax(-1)
    target = labels.unsqueeze(-1)
    log_p = log_probs.gather(-1, target)  # [K, B, 1]
    grad = log_probs.exp_().scatter_add_(-1, target, torch.full_like(target, -1, dtype=logits.dtype))
    if loss.name == "ce":
        value = torch.bmm(sample_weights.unsqueeze(1), log_p).view(-1).neg_()
        return value, grad.mul_(sample_weights.unsqueeze(-1))
    if loss.name == "gce":
        scale = (loss.q * log_p).exp()
        each = -torch.expm1(loss.q * log_p) / loss.q
    else:
        p_y = log_p.exp()
        scale = loss.alpha - loss.beta * LOG_ZERO * p_y
        each = -loss.alpha * log_p - loss.beta * LOG_ZERO * (1 - p_y)
    value = torch.bmm(sample_weights.unsqueeze(1), each).view(-1)
    return value, grad.mul_(scale * sample_weights.unsqueeze(-1))
