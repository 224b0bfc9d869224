"""The scores a strategy reports per client and round, from what the server sees (higher = more
likely noisy); fedbridge.detection measures how well each finds the noisy clients.

- loss: the client's mean training loss of the round (it starts from the global model);
- update_norm: the L2 norm of its update;
- disagreement: 1 - cosine similarity of its update with the coordinate-wise median update.
"""

import torch

from fedbridge.optim import Params
from fedbridge.strategies.aggregate import flat, median, norms
from fedbridge.strategies.api import ClientUpdates, Diagnostics

SCORES = ("loss", "update_norm", "disagreement")


def client_scores(updates: Params, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each score [K] for the K clients of one round, from their updates [K, ...] and losses [K]."""
    x = flat(updates)
    centre = flat(median(updates, torch.ones(x.shape[0])))
    cosine = torch.nn.functional.cosine_similarity(x, centre, dim=1)
    return {"loss": loss, "update_norm": norms(updates), "disagreement": 1 - cosine}


def of_updates(trained: ClientUpdates, updates: Params) -> Diagnostics:
    return Diagnostics(trained.ids, client_scores(updates, trained.loss))
