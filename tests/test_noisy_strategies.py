"""EAGLE (loss-gap parity) and FedNoRo (two-stage noisy-label clients): their rules by hand, through
the engine, and keys that make no sense refused."""

import math

import pytest
import torch

from fedbridge.errors import ConfigError
from fedbridge.strategies.api import ClientUpdates
from fedbridge.strategies.eagle import eagle, gap_weights
from fedbridge.strategies.fednoro import distance_weights, fednoro, noisy_mask
from fedbridge.strategies.noise_screen import CLEAN, NOISY
from test_strategies import _u
from test_strategies_engine import _exp, _same, _train


def _trained(rows, loss, extra=None):
    k = len(rows)
    return ClientUpdates(torch.arange(k), torch.ones(k), _u(rows), torch.ones(k), torch.tensor(loss), extra or {})


def test_gap_weights_by_hand():
    # shares 1/2 each, gaps 0.2 and 0.6: deviations -0.2, +0.2, times 2 lam / K = 1
    assert gap_weights(torch.tensor([0.5, 0.5]), torch.tensor([0.2, 0.6]), lam=1.0).tolist() == pytest.approx([0.3, 0.7])
    assert gap_weights(torch.tensor([0.5, 0.5]), torch.tensor([0.2, 0.6]), lam=0.0).tolist() == [0.5, 0.5]


def test_eagle_round_by_hand():
    # updates 1 and 3; losses 1.0 and 2.0 against L* 0.8 and 0.6: gaps 0.2 and 1.4, deviations -0.6 and +0.6;
    # lam 1, K 2: weights 0.5 - 0.6 = -0.1 and 1.1, step -0.1 + 3.3 = 3.2 (FedAvg: 2)
    def step(lam):
        strategy = eagle(lam, alone_epochs=1)
        state = strategy.init(_u([[0.0]]), 2)
        new, reported = strategy.aggregate(state, _trained([[1.0], [3.0]], [1.0, 2.0], {"optimal_loss": torch.tensor([0.8, 0.6])}))
        return new, reported
    new, reported = step(1.0)
    assert new.params["w"].item() == pytest.approx(3.2)
    assert reported.scores["gap"].tolist() == pytest.approx([0.2, 1.4])
    assert new.extra["optimal_loss"].tolist() == pytest.approx([0.8, 0.6])
    assert step(0.0)[0].params["w"].item() == pytest.approx(2.0)


def test_eagle_with_lam_zero_is_fedavg_through_the_engine():
    # estimating L* trains other copies on their own batch streams; the global model's rounds are FedAvg's
    assert _same(_train({"name": "eagle", "lam": 0.0}), _train({"name": "fedavg"}))
    assert not _same(_train({"name": "eagle", "lam": 5.0}), _train({"name": "fedavg"}))


def test_distance_weights_by_hand():
    models = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0], [6.0, 8.0]])
    noisy = torch.tensor([False, True, False, True])
    # client 2 (3, 4) is sqrt(18) from (0, 1), client 4 (6, 8) is sqrt(85): divided by the largest, sqrt(85)
    expected = [1.0, math.exp(-math.sqrt(18) / math.sqrt(85)), 1.0, math.exp(-1.0)]
    assert distance_weights(models, noisy).tolist() == pytest.approx(expected)
    assert distance_weights(models, torch.zeros(4, dtype=torch.bool)).tolist() == [1.0] * 4


def test_fednoro_names_the_high_loss_clients_after_the_warmup():
    strategy = fednoro(warmup=1, mu=0.1)
    state = strategy.init(_u([[0.0, 0.0]]), 4)
    rows = [[0.0, 0.0], [0.0, 1.0], [3.0, 4.0], [6.0, 8.0]]
    # warm-up round: FedAvg, mean update (2.25, 3.25); losses 0.1, 0.2, 2.0, 2.1
    state, _ = strategy.aggregate(state, _trained(rows, [0.1, 0.2, 2.0, 2.1]))
    assert state.params["w"].tolist() == [[2.25, 3.25]]
    # round 2, from 0 again so that the updates are the rows: 2-means on the warm-up losses puts
    # clients 3 and 4 on the high side
    state.params["w"].zero_()
    state, reported = strategy.aggregate(state, _trained(rows, [0.1, 0.2, 2.0, 2.1]))
    assert state.extra["known"].tolist() == [CLEAN, CLEAN, NOISY, NOISY]
    assert reported.scores["fednoro_noisy"].tolist() == [0.0, 0.0, 1.0, 1.0]
    # DaAgg: clients 3 and 4 at sqrt(18) and sqrt(85) from client 2, weights exp(-0.46) and exp(-1)
    w = distance_weights(torch.tensor(rows), torch.tensor([False, False, True, True]))
    expected = (w.view(-1, 1) * torch.tensor(rows)).sum(0) / w.sum()
    assert state.params["w"][0].tolist() == pytest.approx(expected.tolist())


def test_only_the_noisy_clients_are_pulled_to_the_global_model():
    # mu 0.5, both clients at 3, the global model at 1: the noisy one's gradient gains 0.5 x (3 - 1)
    adjust = noisy_mask(0.5, torch.tensor([False, True]), {"w": torch.tensor([[1.0]])})
    assert adjust({"w": torch.tensor([[3.0], [3.0]])}, {"w": torch.zeros(2, 1)})["w"].tolist() == [[0.0], [1.0]]


def test_fednoro_during_its_warmup_is_fedavg_through_the_engine():
    assert _same(_train({"name": "fednoro", "warmup": 2}), _train({"name": "fedavg"}))


@pytest.mark.parametrize("strategy, expected", [
    ({"name": "eagle", "lam": -1}, "strategy.lam: Input should be greater than or equal to 0 (got -1)"),
    ({"name": "eagle", "alone_epochs": 0}, "strategy.alone_epochs: Input should be greater than or equal to 1"),
    ({"name": "fednoro", "warmup": 0}, "strategy.warmup: Input should be greater than or equal to 1 (got 0)"),
    ({"name": "fednoro", "mu": -0.1}, "strategy.mu: Input should be greater than or equal to 0 (got -0.1)"),
])
def test_keys_that_make_no_sense_are_refused(strategy, expected):
    with pytest.raises(ConfigError) as e:
        _exp(strategy)
    assert expected in str(e.value)
    assert e.value.exit_code == 2
