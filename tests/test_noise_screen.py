"""FedNS (strategy.noise_screen): the client score, the split and the weights by hand, then through
the engine on FedAvg, trimmed mean and FedNova, and the strategies it cannot wrap refused."""


import pytest
import torch

from fedbridge import gradnorm
from conftest import through_a_checkpoint
from fedbridge.engines.simulation import train
from fedbridge.errors import ConfigError
from fedbridge.federation import Client, Federation
from fedbridge.strategies import registry
from fedbridge.strategies.api import ClientUpdates
from fedbridge.strategies.fedavg import FEDAVG
from fedbridge.strategies.noise_screen import CLEAN, NOISY, SCORE, UNKNOWN, FedNS, screened, two_means_split, verdicts
from fedbridge.strategies.trimmed_mean import trimmed_mean
from test_strategies import _u
from test_strategies_engine import _exp

SCREEN = FedNS(name="fedns")


def test_two_means_split_by_hand():
    # {1, 2} and {10, 11}: centres 1.5 and 10.5, threshold halfway
    assert two_means_split(torch.tensor([10.0, 1.0, 11.0, 2.0])) == 6.0
    # {0} against {9, 10, 11}: cost 0 + 2 beats {0, 9} + {10, 11} (40.5 + 0.5)
    assert two_means_split(torch.tensor([0.0, 9.0, 10.0, 11.0])) == (0 + 10) / 2
    assert two_means_split(torch.tensor([3.0, 3.0])) is None


def test_first_round_splits_later_clients_fall_on_a_side():
    known = torch.full((6,), UNKNOWN)
    known, threshold = verdicts(known, float("nan"), torch.arange(4), torch.tensor([10.0, 1.0, 11.0, 2.0]))
    assert threshold == 6.0 and known.tolist() == [CLEAN, NOISY, CLEAN, NOISY, UNKNOWN, UNKNOWN]
    # clients 4 and 5 come later: 5 < 6 is noisy, 7 clean; the first verdicts stand
    known, threshold = verdicts(known, threshold, torch.tensor([1, 4, 5]), torch.tensor([50.0, 5.0, 7.0]))
    assert threshold == 6.0 and known.tolist() == [CLEAN, NOISY, CLEAN, NOISY, NOISY, CLEAN]


def _round(strategy, rows, scores=None, weights=None):
    k = len(rows)
    extra = {SCORE: torch.tensor(scores)} if scores else {}
    trained = ClientUpdates(torch.arange(k), torch.tensor(weights or [1.0] * k), _u(rows), torch.ones(k), torch.zeros(k), extra)
    state = strategy.init(_u([[0.0]]), k)
    return strategy.aggregate(state, trained)


def test_fedavg_with_the_screen_by_hand():
    # grad norms 9, 8, 1: client 3 is noisy. Weights 1.2, 1.2, 0.1 (x equal samples):
    # (1.2 x 1 + 1.2 x 2 + 0.1 x 30) / 2.5 = 6.6 / 2.5 = 2.64, where FedAvg gives 11
    state, diagnostics = _round(screened(FEDAVG, SCREEN), [[1.0], [2.0], [30.0]], scores=[9.0, 8.0, 1.0])
    assert state.params["w"].item() == pytest.approx(2.64)
    assert diagnostics.scores["fedns_noisy"].tolist() == [0.0, 0.0, 1.0]
    assert state.extra["fedns"]["known"].tolist() == [CLEAN, CLEAN, NOISY]
    # the weights multiply the sample weights: client 3 with 10x the samples weighs 1.0 against 1.2
    state, _ = _round(screened(FEDAVG, SCREEN), [[1.0], [2.0], [30.0]], scores=[9.0, 8.0, 1.0], weights=[1.0, 1.0, 10.0])
    assert state.params["w"].item() == pytest.approx((1.2 + 2.4 + 30.0) / 3.4)


def test_trimmed_mean_averages_what_it_keeps_with_the_screen_weights():
    # 5 clients, beta 0.2: drop 0 and 100; keep 1, 2, 3 from clients with weights 1.2, 0.1, 1.2
    updates = _u([[0.0], [1.0], [2.0], [3.0], [100.0]])
    trust = torch.tensor([1.2, 1.2, 0.1, 1.2, 1.2])
    assert trimmed_mean(updates, torch.ones(5), 0.2, trust)["w"].item() == pytest.approx((1.2 + 0.2 + 3.6) / 2.5)
    assert trimmed_mean(updates, torch.ones(5), 0.2)["w"].item() == 2.0


def test_gradnorm_score_by_hand():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2))
    # W = 0, bias (ln 3, 0): p = (3/4, 1/4) for any input; C p - 1 = (1/2, -1/2); input h = (1, 2):
    # the gradient (C p - 1) h^T = [[1/2, 1], [-1/2, -1]], L1 norm 3
    params = {"1.weight": torch.zeros(1, 2, 2), "1.bias": torch.tensor([[torch.log(torch.tensor(3.0)), 0.0]])}
    images = torch.tensor([[[1.0, 2.0]], [[1.0, 2.0]]])
    assert gradnorm.scores(model, params, images, [torch.arange(2)], batch_size=1).item() == pytest.approx(3.0)


def test_gradnorm_score_equals_autograd():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    params = {n: p.detach().unsqueeze(0) for n, p in model.named_parameters()}
    images = torch.randn(7, 1, 6, generator=g)
    expected = []
    for batch in torch.arange(7).split(3):  # batches of 3, 3 and 1
        model.zero_grad()
        (-model(images[batch]).log_softmax(-1)).sum(-1).mean().backward()
        expected.append(model[3].weight.grad.abs().sum())
    got = gradnorm.scores(model, params, images, [torch.arange(7)], batch_size=3)
    assert got.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)


def _noisy_federation() -> Federation:
    """Four clients whose labels show in the pixels; the last one sees pure noise instead."""
    g = torch.Generator().manual_seed(0)
    per, n = 32, 4
    labels = torch.randint(0, 3, (per * n,), generator=g)
    images = torch.rand(len(labels), 1, 4, 4, generator=g) * 0.2 + labels.view(-1, 1, 1, 1) / 3
    images[3 * per:] = torch.rand(per, 1, 4, 4, generator=g)
    clients = [Client(i, "clean" if i < 3 else "gaussian", torch.arange(i * per, (i + 1) * per), images[:8], labels[:8])
               for i in range(n)]
    return Federation("tiny", "synthetic", 3, images, labels, clients, images[:16], labels[:16])


@pytest.mark.parametrize("strategy", [
    {"name": "fedavg", "noise_screen": "fedns"},
    {"name": "fednova", "noise_screen": {"name": "fedns", "noisy_weight": 0.0}},
    {"name": "trimmed_mean", "beta": 0.25, "noise_screen": "fedns"},
])
def test_the_screen_finds_the_noisy_clients_through_the_engine_and_resumes(strategy):
    exp = _exp(strategy, rounds=3, clients=4)
    fed, states = _noisy_federation(), {}
    method = exp.method(strategy["name"])
    whole = train(method, fed, exp, seed=0, on_round=lambda r, recs, diagnostics, state: states.update({r: state}))
    assert states[1].extra["fedns"]["known"].tolist() == [CLEAN, CLEAN, CLEAN, NOISY]
    resumed = train(method, fed, exp, seed=0, resume=(1, through_a_checkpoint(states[1])))
    assert all(torch.equal(whole[n], resumed[n]) for n in whole)
    unscreened = _exp({k: v for k, v in strategy.items() if k != "noise_screen"}, rounds=3, clients=4)
    plain = train(unscreened.method(strategy["name"]), fed, unscreened, seed=0)
    assert any((whole[n] - plain[n]).abs().max() > 1e-4 for n in whole), "the screen changed nothing"


def test_the_screen_is_not_offered_to_flower():
    assert registry.spec(_exp({"name": "fedavg", "noise_screen": "fedns"}).strategy).flower is False
    assert registry.spec(_exp({"name": "fedavg"}).strategy).flower is True


@pytest.mark.parametrize("strategy, expected", [
    ({"name": "krum", "noise_screen": "fedns"}, "strategy.noise_screen wraps the aggregation weights of fedavg, "
                                                 "trimmed_mean, fednova only (as FedNS does), not strategy.name = 'krum'"),
    ({"name": "ditto", "noise_screen": "fedns"}, "not strategy.name = 'ditto'"),
    ({"name": "fedavg", "noise_screen": "sifting"}, "strategy.noise_screen"),
    ({"name": "fedavg", "noise_screen": {"name": "fedns", "clean_weight": 0}}, "strategy.noise_screen.clean_weight"),
])
def test_a_screen_it_cannot_apply_is_refused(strategy, expected):
    with pytest.raises(ConfigError) as e:
        _exp(strategy, clients=5)
    assert expected in str(e.value)
    assert e.value.exit_code == 2
