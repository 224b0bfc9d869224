"""Each aggregation rule on tiny inputs whose answer can be checked by hand."""

import math

import pytest
import torch

from fedbridge.strategies import fedper, fedprox, fednova, scaffold
from fedbridge.strategies.aggregate import median
from fedbridge.strategies.api import ClientUpdates
from fedbridge.strategies.clipping import clipped_mean
from fedbridge.strategies.fedavg import global_strategy
from fedbridge.strategies.krum import krum, krum_scores
from fedbridge.strategies.quality import quality
from fedbridge.strategies.server_opt import ServerOptimizer
from fedbridge.strategies.trimmed_mean import trimmed_mean


def _u(rows):
    return {"w": torch.tensor(rows, dtype=torch.float32)}


def _trained(rows, weights=None, steps=None, loss=None, ids=None):
    k = len(rows)
    ids = torch.arange(k) if ids is None else torch.tensor(ids)
    return ClientUpdates(ids, torch.tensor(weights or [1.0] * k), _u(rows), torch.tensor(steps or [1.0] * k),
                         torch.tensor(loss or [0.0] * k))


def _one_round(strategy, start, rows, weights, **result):
    state = strategy.init(_u([start]), len(rows))
    return strategy.aggregate(state, _trained(rows, weights, **result))[0]


def test_median_of_three_vectors():
    out = median(_u([[1, 5], [2, 0], [9, 1]]), torch.ones(3))
    assert out["w"].tolist() == [[2.0, 1.0]]


def test_median_of_an_even_count_is_the_mean_of_the_middle_two():
    assert median(_u([[1], [2], [3], [10]]), torch.ones(4))["w"].item() == 2.5


def test_trimmed_mean_drops_a_planted_outlier():
    # beta 0.2 of 5 clients drops one value at each end: 100 and 0.8; mean of 1.0, 1.0, 1.2
    out = trimmed_mean(_u([[1.0], [1.2], [0.8], [1.0], [100.0]]), torch.ones(5), beta=0.2)
    assert out["w"].item() == pytest.approx(3.2 / 3)


def test_krum_picks_the_planted_honest_update():
    # honest updates around [0, 0]; [10, 10] is the attacker. With f = 1 each score sums the
    # squared distances to the 5 - 1 - 2 = 2 nearest: [0,0] scores 1 + 1 = 2, the other honest 3
    updates = _u([[1, 0], [10, 10], [0, 0], [0, 1], [-1, 0]])
    assert krum_scores(updates, byzantine=1)[[0, 2, 3, 4]].tolist() == [3.0, 2.0, 3.0, 3.0]
    assert krum(updates, torch.ones(5), byzantine=1)["w"].tolist() == [[0.0, 0.0]]
    # Multi-Krum with 4: the mean of the four honest updates
    assert krum(updates, torch.ones(5), byzantine=1, select=4)["w"].tolist() == [[0.0, 0.25]]


def test_norm_clipping_scales_long_updates_down():
    updates = _u([[3, 4], [0, 1]])  # norms 5 and 1
    assert clipped_mean(updates, torch.ones(2), max_norm=1.0)["w"][0].tolist() == pytest.approx([0.3, 0.9])
    # default bound: the median norm, 3 -> [1.8, 2.4] and [0, 1]
    assert clipped_mean(updates, torch.ones(2))["w"][0].tolist() == pytest.approx([0.9, 1.7])


def test_fedadam_first_step_by_hand():
    # clients at 2 and 0 from 0: delta = 1. m = 0.1 * 1; v = 0.99 * tau^2 + 0.01 * 1^2;
    # x = 0.1 * m / (sqrt(v) + tau)
    adam = global_strategy(server=ServerOptimizer("fedadam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3))
    new = _one_round(adam, [0.0], [[2.0], [0.0]], [1.0, 1.0])
    v = 0.99 * 1e-6 + 0.01
    assert new.params["w"].item() == pytest.approx(0.1 * 0.1 / (math.sqrt(v) + 1e-3), rel=1e-6)
    assert new.extra["server"]["first"]["w"].item() == pytest.approx(0.1)


@pytest.mark.parametrize("name, v", [("fedyogi", 1e-6 + 0.01), ("fedadagrad", 1e-6 + 1.0)])
def test_fedyogi_and_fedadagrad_first_step_by_hand(name, v):
    # yogi: v = tau^2 - 0.01 * 1 * sign(tau^2 - 1); adagrad: v = tau^2 + 1
    opt = global_strategy(server=ServerOptimizer(name, lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3))
    new = _one_round(opt, [0.0], [[2.0], [0.0]], [1.0, 1.0])
    assert new.params["w"].item() == pytest.approx(0.01 / (math.sqrt(v) + 1e-3), rel=1e-6)


def test_fedavgm_accumulates_momentum():
    avgm = global_strategy(server=ServerOptimizer("fedavgm", lr=1.0, beta1=0.9))
    state = avgm.init(_u([[0.0]]), 1)
    state, _ = avgm.aggregate(state, _trained([[1.0]]))  # m = 1, x = 1
    state, _ = avgm.aggregate(state, _trained([[2.0]]))  # m = 0.9 + 1, x = 2.9
    assert state.params["w"].item() == pytest.approx(2.9)


def test_fednova_normalises_by_local_steps():
    # updates 2 (in 2 steps) and 3 (in 1 step): per step 1 and 3, mean 2, times tau_eff 1.5 = 3
    # (FedAvg would give 2.5)
    new = _one_round(fednova.FEDNOVA, [0.0], [[2.0], [3.0]], [1.0, 1.0], steps=[2.0, 1.0])
    assert new.params["w"].item() == pytest.approx(3.0)


def test_quality_weights_down_a_high_loss_client():
    # alpha 1, losses 0 and ln 3: credibility 1 and 1/3, so (0 * 1 + 4 / 3) / (4 / 3) = 1
    new = _one_round(quality(1.0), [0.0], [[0.0], [4.0]], [1.0, 1.0], loss=[0.0, math.log(3)])
    assert new.params["w"].item() == pytest.approx(1.0)
    # alpha 0 is FedAvg
    assert _one_round(quality(0.0), [0.0], [[0.0], [4.0]], [1.0, 1.0], loss=[0.0, 9.0]).params["w"].item() == 2.0


def test_proximal_term_pulls_towards_the_anchor():
    adjust = fedprox.proximal(0.5, _u([[1.0]]))
    assert adjust(_u([[3.0]]), _u([[0.0]]))["w"].item() == 1.0  # 0 + 0.5 * (3 - 1)


def test_scaffold_control_variates_by_hand():
    # one of two clients moves 0 -> -2 in 4 steps of lr 0.5: c_1 = 0 - 0 + (0 - (-2)) / (4 * 0.5) = 1;
    # c moves by |S|/N = 1/2 of the mean change: 0.5
    strategy = scaffold.scaffold(client_lr=0.5)
    state = strategy.init(_u([[0.0]]), 2)
    state, _ = strategy.aggregate(state, _trained([[-2.0]], steps=[4.0]))
    assert state.extra["client_control"].take(torch.arange(2))["w"].flatten().tolist() == [1.0, 0.0]
    assert state.extra["control"]["w"].item() == 0.5
    # client 0's next gradients are corrected by c - c_0 = -0.5
    given = {}
    strategy.local(state, torch.tensor([0, 1]),
                   lambda start, adjust=None, **how: given.update(adjust=adjust) or _trained([[0.0], [0.0]]))
    correct = given["adjust"]
    assert correct(_u([[0.0], [0.0]]), _u([[1.0], [1.0]]))["w"].flatten().tolist() == [0.5, 1.5]


def test_fedper_averages_the_body_and_keeps_each_head():
    params = {"0.weight": torch.zeros(3, 2), "1.weight": torch.zeros(3, 1), "1.bias": torch.zeros(3, 1)}
    assert fedper.head_names(params) == {"1.weight", "1.bias"}
    state = fedper.FEDPER.init({n: p[:1] for n, p in params.items()}, 3)
    trained = ClientUpdates(
        torch.tensor([0, 2]), torch.tensor([1.0, 3.0]),
        {"0.weight": torch.tensor([[2.0, 0.0], [4.0, 2.0]]), "1.weight": torch.tensor([[1.0], [7.0]]),
         "1.bias": torch.tensor([[5.0], [6.0]])},
        torch.ones(2), torch.zeros(2),
    )
    new, _ = fedper.FEDPER.aggregate(state, trained)
    # body: (1 * [2, 0] + 3 * [4, 2]) / 4 = [3.5, 1.5] for every client, the unsampled one too
    assert new.params["0.weight"].tolist() == [[3.5, 1.5]]
    models = fedper.FEDPER.evaluate_with(new, torch.arange(3), None).take(torch.arange(3))
    assert models["0.weight"].tolist() == [[3.5, 1.5]] * 3
    assert models["1.weight"].flatten().tolist() == [1.0, 0.0, 7.0]


def test_frozen_parts_get_zero_gradients():
    grads = fedper.frozen({"a"})({"a": torch.ones(1), "b": torch.ones(1)}, {"a": torch.ones(1), "b": torch.ones(1)})
    assert (grads["a"].item(), grads["b"].item()) == (0.0, 1.0)
