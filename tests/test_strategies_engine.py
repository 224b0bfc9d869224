"""Strategies through the simulation engine on a tiny synthetic federation; configs that make no sense."""

import pytest
import torch

from fedbridge.errors import ConfigError
from fedbridge.engines.simulation import train
from fedbridge.experiment import validate
from fedbridge.federation import Client, Federation


def _federation(n_clients: int = 3, per_client: int = 24) -> Federation:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (n_clients * per_client,), generator=g)
    # the label shows in the pixels, so there is something to learn
    images = torch.rand(len(labels), 1, 2, 2, generator=g) * 0.5 + labels.view(-1, 1, 1, 1) / 3
    clients = [
        Client(i, "clean", torch.arange(i * per_client, (i + 1) * per_client), images[:8], labels[:8])
        for i in range(n_clients)
    ]
    return Federation("tiny", "synthetic", 3, images, labels, clients, images[:12], labels[:12])


def _exp(strategy: dict, rounds: int = 2, clients: int = 3, fraction: float = 1.0):
    return validate({
        "clients": [{"count": clients}], "model": "mlp", "strategy": strategy,
        "train": {"optimizer": "sgd", "lr": 0.1, "batch_size": 8, "rounds": rounds, "client_fraction": fraction},
        "eval": {"cross_clients": False},
    })


def _train(strategy: dict, rounds: int = 2, records: list | None = None):
    fed = _federation()
    exp = _exp(strategy, rounds)
    keep = (lambda r, recs, diagnostics, state: records.extend(recs)) if records is not None else (lambda *a: None)
    return train(exp.method(exp.strategy.name), fed, exp, seed=0, on_round=keep)


def _same(a, b):
    # a gradient hook, even one adding zeros, may change float rounding in the last bit
    return all(torch.allclose(a[n], b[n], rtol=0, atol=1e-6) for n in a)


def test_fedprox_with_zero_mu_is_fedavg():
    assert _same(_train({"name": "fedprox", "mu": 0.0}), _train({"name": "fedavg"}))
    assert not _same(_train({"name": "fedprox", "mu": 1.0}), _train({"name": "fedavg"}))


def test_scaffold_with_zero_control_variates_is_fedavg():
    # every control variate starts at zero, so round 1 is FedAvg; from round 2 the correction acts
    assert _same(_train({"name": "scaffold"}, rounds=1), _train({"name": "fedavg"}, rounds=1))
    assert not _same(_train({"name": "scaffold"}, rounds=2), _train({"name": "fedavg"}, rounds=2))


def test_server_momentum_zero_and_lr_one_is_fedavg():
    assert _same(_train({"name": "fedavgm", "momentum": 0.0, "server_lr": 1.0}), _train({"name": "fedavg"}))


def test_fednova_with_equal_steps_is_fedavg():
    # every client has 24 samples: equal local steps
    assert _same(_train({"name": "fednova"}), _train({"name": "fedavg"}))


@pytest.mark.parametrize("name", ["ditto", "fedper", "fedrep"])
def test_personal_strategies_keep_one_model_per_client(name):
    params = _train({"name": name})
    assert next(iter(params.values())).shape[0] == 3


def test_finetune_evaluates_each_clients_fine_tuned_copy():
    fedavg, tuned = [], []
    _train({"name": "fedavg"}, records=fedavg)
    params = _train({"name": "finetune", "epochs": 2}, records=tuned)
    own = lambda recs: [r["loss"] for r in recs if r["test_set"] == "own"]  # noqa: E731
    # same global model, but each client's evaluated copy trained two more epochs on its own data
    assert own(fedavg) != own(tuned)
    # what it returns, and a run saves for its report, is what was evaluated: one model per client
    assert next(iter(params.values())).shape[0] == 3


def test_ditto_with_huge_lambda_keeps_personal_models_near_the_global_one():
    far, near = _train({"name": "ditto", "lam": 0.0}), _train({"name": "ditto", "lam": 5.0})
    spread = lambda p: sum((x - x.mean(0)).abs().sum() for x in p.values())  # noqa: E731
    assert spread(near) < spread(far)


def test_diagnostics_are_reported_every_round_also_between_evaluations():
    seen = []
    fed = _federation()
    exp = _exp({"name": "fedavg"}, rounds=3).model_copy(update={"eval": validate({
        "clients": [{"count": 3}], "train": {"lr": 0.1, "batch_size": 8, "rounds": 3}, "eval": {"every": 2}}).eval})
    train(exp.method("fedavg"), fed, exp, seed=0, on_round=lambda r, recs, diagnostics, state: seen.append((r, diagnostics)))
    # evaluated at rounds 2 and 3; round 1's diagnostics come with round 2's call
    assert [(r, [(d["round"], d["client"]) for d in ds]) for r, ds in seen] == [
        (2, [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]), (3, [(3, 1), (3, 2), (3, 3)])]
    assert set(seen[0][1][0]["scores"]) == {"loss", "update_norm", "disagreement"}


@pytest.mark.parametrize(
    "strategy, clients, fraction, expected",
    [
        ({"name": "krum", "byzantine": 2}, 5, 1.0, "strategy.byzantine = 2 but a round has 5 clients"),
        ({"name": "krum", "byzantine": 1, "select": 5}, 10, 0.5, "strategy.select = 5"),
        ({"name": "trimmed_mean", "beta": 0.1}, 5, 1.0, "strategy.beta = 0.1 trims nothing"),
        ({"name": "median"}, 2, 1.0, "needs at least 3"),
        ({"name": "fedprox", "mu": -1}, 3, 1.0, "strategy.mu: Input should be greater than or equal to 0 (got -1)"),
        ({"name": "fedprox", "beta": 0.1}, 3, 1.0, "strategy.beta: unknown key for strategy.name = 'fedprox'"),
        ({"name": "fedsgd"}, 3, 1.0, "'fedsgd'"),
    ],
)
def test_strategy_configs_that_make_no_sense_are_rejected(strategy, clients, fraction, expected):
    with pytest.raises(ConfigError) as e:
        _exp(strategy, clients=clients, fraction=fraction)
    assert expected in str(e.value)
    assert e.value.exit_code == 2


def test_a_strategy_table_without_a_name_is_fedavg():
    assert _exp({}).strategy.name == "fedavg"


@pytest.mark.parametrize("strategy", [{"name": "scaffold"}, {"name": "fedadam"}, {"name": "ditto"}, {"name": "fedrep"}])
def test_a_resumed_run_equals_an_uninterrupted_one(strategy):
    # everything the strategy remembers (moments, control variates, personal models) is in the state
    fed, exp = _federation(), _exp(strategy, rounds=3)
    states = {}
    method = exp.method(exp.strategy.name)
    whole = train(method, fed, exp, seed=0, on_round=lambda r, recs, diagnostics, state: states.update({r: state}))
    resumed = train(method, fed, exp, seed=0, resume=(1, states[1]))
    assert all(torch.equal(whole[n], resumed[n]) for n in whole)


def test_fedavg_as_a_baseline_beside_a_personal_strategy():
    exp = validate({
        "clients": [{"count": 3}], "strategy": {"name": "ditto"}, "baselines": ["pooled", "fedavg", "local"],
        "train": {"lr": 0.1, "batch_size": 8, "rounds": 1},
    })
    assert [m.name for m in exp.methods] == ["local", "fedavg", "ditto", "pooled"]
    fed = _federation()
    assert _same(train(exp.method("fedavg"), fed, exp, seed=0), _train({"name": "fedavg"}, rounds=1))
    assert [m.name for m in validate({**exp.model_dump(), "strategy": {"name": "fedavg"}}).methods] == ["local", "fedavg", "pooled"]
