"""q-FedAvg, AFL and Bulyan: each rule on tiny inputs whose answer can be checked by hand, then
through the simulation engine (resumed equal to uninterrupted), and their keys that make no sense."""


import pytest
import torch

from conftest import through_a_checkpoint
from fedbridge.engines.simulation import train
from fedbridge.errors import ConfigError
from fedbridge.strategies.afl import afl, mixture_step, project_simplex
from fedbridge.strategies.bulyan import bulyan, krum_selection, nearest_median_mean
from fedbridge.strategies.fedavg import FEDAVG
from fedbridge.strategies.qfedavg import qfedavg
from test_strategies import _one_round, _trained, _u
from test_strategies_engine import _exp, _federation, _same, _train


def test_qfedavg_by_hand():
    # lr 0.5: L = 2. Clients at 1 and -1 from 0: Δw = L (w - w_k) = -2 and 2, ||Δw||^2 = 4; losses 1 and 3
    step = lambda q: _one_round(qfedavg(q, client_lr=0.5), [0.0], [[1.0], [-1.0]], None, loss=[1.0, 3.0])  # noqa: E731
    # q = 1: h = q F^0 ||Δw||^2 + L F = 6 and 10; w = 0 - (1 x -2 + 3 x 2) / 16: towards the high-loss client
    assert step(1.0).params["w"].item() == pytest.approx(-0.25)
    # q = 2: h = 2 F ||Δw||^2 + L F^2 = 10 and 42; w = 0 - (1 x -2 + 9 x 2) / 52: further
    assert step(2.0).params["w"].item() == pytest.approx(-16 / 52)


def test_qfedavg_with_q_zero_is_the_unweighted_mean():
    # q = 0: h_k = L, so the step is the plain mean of the updates 2 and 0, whatever the losses and samples;
    # FedAvg weighs them by their samples, 3 and 1
    rows, weights = [[2.0], [0.0]], [3.0, 1.0]
    new = _one_round(qfedavg(0.0, client_lr=0.1), [0.0], rows, weights, loss=[0.5, 2.0])
    assert new.params["w"].item() == pytest.approx(1.0)
    assert _one_round(FEDAVG, [0.0], rows, weights).params["w"].item() == 1.5


def test_qfedavg_stays_finite_at_a_zero_loss_and_a_large_q():
    # F = 0 is taken as 1e-10: q = 0.5, L = 1, both updates 1: h = 0.5 x 1e-10^-0.5 + 1e-10^0.5 and 0.5 + 1
    new = _one_round(qfedavg(0.5, client_lr=1.0), [0.0], [[1.0], [1.0]], None, loss=[0.0, 1.0])
    assert new.params["w"].item() == pytest.approx((1e-5 + 1) / (5e4 + 1e-5 + 1.5), rel=1e-5)
    # q = 100, losses 3 and 2 (3^100 is beyond float32): (3^100 + 2^100) / (100 (3^99 + 2^99) + 3^100 + 2^100) ~ 3 / 103
    new = _one_round(qfedavg(100.0, client_lr=1.0), [0.0], [[1.0], [1.0]], None, loss=[3.0, 2.0])
    assert new.params["w"].item() == pytest.approx(3 / 103, rel=1e-6)


def test_simplex_projection_by_hand():
    assert project_simplex(torch.tensor([0.5, 0.5, 0.5])).tolist() == pytest.approx([1 / 3] * 3)
    assert project_simplex(torch.tensor([2.0, 0.0])).tolist() == [1.0, 0.0]
    # the two 0.6 stay positive, each lowered by (0.6 + 0.6 - 1) / 2
    assert project_simplex(torch.tensor([0.6, -1.0, 0.6])).tolist() == pytest.approx([0.5, 0.0, 0.5])
    # a point of the simplex is its own projection
    assert project_simplex(torch.tensor([0.2, 0.3, 0.5])).tolist() == pytest.approx([0.2, 0.3, 0.5])


def test_afl_moves_the_mixture_towards_the_higher_loss_client():
    strategy = afl(step_size=0.1)
    state = strategy.init(_u([[0.0]]), 2)
    state, diagnostics = strategy.aggregate(state, _trained([[0.0], [10.0]], loss=[1.0, 3.0]))
    # round 1 weighs the updates 0 and 10 by the uniform λ; then λ + 0.1 x losses = [0.6, 0.8], both
    # lowered by (1.4 - 1) / 2 back onto the simplex
    assert state.params["w"].item() == 5.0
    assert state.extra["mixture"].tolist() == pytest.approx([0.4, 0.6])
    assert diagnostics.scores["weight"].tolist() == pytest.approx([0.4, 0.6])
    assert set(diagnostics.scores) == {"loss", "update_norm", "disagreement", "weight"}
    # round 2 from 5: the updates 0 and 10 weigh 0.4 and 0.6
    state, _ = strategy.aggregate(state, _trained([[5.0], [15.0]], loss=[1.0, 3.0]))
    assert state.params["w"].item() == pytest.approx(11.0)


def test_afl_with_part_of_the_clients_sampled():
    # 4 clients at λ = 0.25; clients 0 and 1 report losses 0.4 and 0.8, step 0.5: [0.45, 0.65, 0.25, 0.25],
    # all lowered by (1.6 - 1) / 4; the model moves by the mean of their updates, λ 0.25 and 0.25 renormalised
    strategy = afl(step_size=0.5)
    state = strategy.init(_u([[0.0]]), 4)
    state, _ = strategy.aggregate(state, _trained([[2.0], [4.0]], loss=[0.4, 0.8], ids=[0, 1]))
    assert state.params["w"].item() == 3.0
    assert state.extra["mixture"].tolist() == pytest.approx([0.3, 0.5, 0.1, 0.1])


def test_afl_step_renormalises_the_sampled_weights():
    # (0.1 x 1 + 0.3 x 3) / 0.4; sampled clients all at λ = 0 count for nothing: the model stays
    assert mixture_step(_u([[1.0], [3.0]]), torch.tensor([0.1, 0.3]))["w"].item() == pytest.approx(2.5)
    assert mixture_step(_u([[1.0], [3.0]]), torch.zeros(2))["w"].tolist() == [[0.0]]


def test_bulyan_selects_by_repeated_krum():
    # f = 1. Of 5, each scores its 5 - 1 - 2 = 2 nearest: 0 -> 1 + 9, 1 -> 1 + 4, 3 -> 4 + 9, 7 -> 16 + 36,
    # 20 -> 169 + 289: 1 first. Of the 4 left, 1 nearest: 0 and 3 tie at 9, the earlier goes. Of 3: 3 and 7 tie at 16
    assert krum_selection(_u([[0.0], [1.0], [3.0], [7.0], [20.0]]), byzantine=1, count=3).tolist() == [1, 0, 2]


def test_bulyan_averages_the_values_nearest_the_median():
    # per coordinate the 3 of 5 nearest the median: column 0 (median 1): 1, 0, 2; column 1 (median 3): 3, 3, 4
    out = nearest_median_mean(_u([[0, 3], [1, 3], [2, 4], [10, 9], [-5, 0]]), beta=3)
    assert out["w"][0].tolist() == pytest.approx([1.0, 10 / 3])


def test_bulyan_drops_a_planted_outlier():
    # f = 1 of 7: Krum picks theta = 5, never the 100, and at least four of the 0s (whichever of -1 and 1 a tie
    # gives), so the beta = 3 values nearest the median 0 are 0s; the mean would be 100 / 7
    assert bulyan(_u([[-1.0], [0.0], [0.0], [0.0], [0.0], [1.0], [100.0]]), byzantine=1)["w"].item() == 0.0
    # a round with fewer answers than 4f + 3 (on Flower) keeps the Krum choice: 0 and 1 tie, 0 goes
    assert bulyan(_u([[0.0], [1.0], [5.0]]), byzantine=1)["w"].item() == 0.0


def test_qfedavg_with_q_zero_is_fedavg_on_clients_of_equal_size():
    # the tiny federation's clients hold 24 samples each, so the unweighted mean is FedAvg's
    assert _same(_train({"name": "qfedavg", "q": 0.0}), _train({"name": "fedavg"}))
    assert not _same(_train({"name": "qfedavg"}), _train({"name": "fedavg"}))


def test_afl_starts_as_fedavg_then_follows_its_mixture():
    # round 1 weighs the clients of equal size uniformly, as FedAvg; from round 2 by the mixture
    assert _same(_train({"name": "afl"}, rounds=1), _train({"name": "fedavg"}, rounds=1))
    assert not _same(_train({"name": "afl", "step_size": 1.0}), _train({"name": "fedavg"}))
    seen = []
    fed, exp = _federation(), _exp({"name": "afl", "step_size": 1.0})
    train(exp.method("afl"), fed, exp, seed=0, on_round=lambda r, recs, diagnostics, state: seen.extend(diagnostics))
    weights = [[d["scores"]["weight"] for d in seen if d["round"] == r] for r in (1, 2)]
    assert all(sum(w) == pytest.approx(1.0) for w in weights) and weights[0] != [1 / 3] * 3


@pytest.mark.parametrize("strategy, clients", [
    ({"name": "qfedavg", "q": 2.0}, 3), ({"name": "afl", "step_size": 1.0}, 3), ({"name": "bulyan"}, 7),
])
def test_a_run_resumed_from_its_checkpointed_state_equals_an_uninterrupted_one(strategy, clients):
    fed, exp = _federation(clients), _exp(strategy, rounds=2, clients=clients)
    method, states = exp.method(exp.strategy.name), {}
    whole = train(method, fed, exp, seed=0, on_round=lambda r, recs, diagnostics, state: states.update({r: state}))
    resumed = train(method, fed, exp, seed=0, resume=(1, through_a_checkpoint(states[1])))
    assert all(torch.equal(whole[n], resumed[n]) for n in whole)


@pytest.mark.parametrize("strategy, clients, fraction, expected", [
    ({"name": "qfedavg", "q": -1}, 3, 1.0, "strategy.q: Input should be greater than or equal to 0 (got -1)"),
    ({"name": "afl", "step_size": 0}, 3, 1.0, "strategy.step_size: Input should be greater than 0 (got 0)"),
    ({"name": "afl", "step_size": -0.5}, 3, 1.0, "strategy.step_size: Input should be greater than 0 (got -0.5)"),
    ({"name": "bulyan"}, 6, 1.0, "strategy.byzantine = 1 but a round has 6 clients"),
    ({"name": "bulyan"}, 10, 0.5, "a round has 5 clients (10 clients x train.client_fraction 0.5); Bulyan needs"),
    ({"name": "bulyan", "byzantine": 2}, 10, 1.0, "Bulyan needs at least 4 x byzantine + 3 = 11"),
])
def test_keys_that_make_no_sense_are_rejected(strategy, clients, fraction, expected):
    with pytest.raises(ConfigError) as e:
        _exp(strategy, clients=clients, fraction=fraction)
    assert expected in str(e.value)
    assert e.value.exit_code == 2
