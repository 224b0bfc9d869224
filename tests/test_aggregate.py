import pytest
import torch

from fedbridge.local import LocalResult
from fedbridge.strategies import fedavg, local_only
from fedbridge.strategies.aggregate import weighted_mean


def _result(values):
    return LocalResult({"w": torch.tensor(values)}, steps=torch.ones(len(values)), loss=torch.zeros(len(values)))


def test_weighted_mean_of_three_tiny_updates():
    updates = {"w": torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])}
    # weights 1:2:1 -> (1*[1,0] + 2*[0,2] + 1*[3,3]) / 4 = [1, 1.75]
    out = weighted_mean(updates, torch.tensor([100.0, 200.0, 100.0]))
    assert out["w"].flatten().tolist() == pytest.approx([1.0, 1.75])


def test_fedavg_moves_global_to_the_sample_weighted_mean():
    state = fedavg.init({"w": torch.tensor([[10.0]])}, n_clients=3)
    ids = torch.tensor([0, 2])
    start = fedavg.client_start(state, ids)
    assert start["w"].tolist() == [[10.0], [10.0]]
    new = fedavg.aggregate(state, ids, _result([[12.0], [6.0]]), torch.tensor([3.0, 1.0]))
    assert new.params["w"].item() == pytest.approx((3 * 12 + 6) / 4)


def test_local_only_keeps_each_clients_own_model():
    state = local_only.init({"w": torch.tensor([[0.0]])}, n_clients=3)
    ids = torch.tensor([0, 2])
    new = local_only.aggregate(state, ids, _result([[1.0], [3.0]]), torch.tensor([5.0, 1.0]))
    assert new.params["w"].flatten().tolist() == [1.0, 0.0, 3.0]
    assert new.model_for(2)["w"].tolist() == [[3.0]]
