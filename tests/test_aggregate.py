import pytest
import torch

from fedbridge.strategies import local_only
from fedbridge.strategies.aggregate import weighted_mean
from fedbridge.strategies.api import ClientUpdates
from fedbridge.strategies.fedavg import FEDAVG


def _trained(ids, weights, values):
    k = len(values)
    return ClientUpdates(torch.tensor(ids), torch.tensor(weights), {"w": torch.tensor(values)}, torch.ones(k), torch.zeros(k))


def test_weighted_mean_of_three_tiny_updates():
    updates = {"w": torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])}
    # weights 1:2:1 -> (1*[1,0] + 2*[0,2] + 1*[3,3]) / 4 = [1, 1.75]
    out = weighted_mean(updates, torch.tensor([100.0, 200.0, 100.0]))
    assert out["w"].flatten().tolist() == pytest.approx([1.0, 1.75])


def test_fedavg_moves_global_to_the_sample_weighted_mean():
    state = FEDAVG.init({"w": torch.tensor([[10.0]])}, 3)
    given = {}
    FEDAVG.local(state, torch.tensor([0, 2]), lambda start, adjust=None, **how: given.update(start=start))
    assert given["start"]["w"].tolist() == [[10.0], [10.0]]
    new, _ = FEDAVG.aggregate(state, _trained([0, 2], [3.0, 1.0], [[12.0], [6.0]]))
    assert new.params["w"].item() == pytest.approx((3 * 12 + 6) / 4)


def test_local_only_keeps_each_clients_own_model():
    state = local_only.init({"w": torch.tensor([[0.0]])}, n_clients=3)
    new, _ = local_only.aggregate(state, _trained([0, 2], [5.0, 1.0], [[1.0], [3.0]]))
    # each client's model in the client-state store; client 1 was not sampled and keeps the initial one
    assert local_only.own(new).take(torch.arange(3))["w"].flatten().tolist() == [1.0, 0.0, 3.0]
