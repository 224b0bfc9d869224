"""eval.clients: which clients' models a round scores, and the batched scoring of each client's own
model on its own test data, against scoring them one by one."""

import pytest
import torch

from conftest import CONFIGS, invoke
from fedbridge import rounds
from fedbridge.client_state import in_memory
from fedbridge.engines.simulation import evaluate_clients, train
from fedbridge.experiment import validate
from fedbridge.federation import Client, Federation
from fedbridge.local import evaluate
from fedbridge.models import build_model


def _federation(n_clients: int = 5) -> Federation:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (n_clients * 20,), generator=g)
    images = torch.rand(len(labels), 1, 2, 2, generator=g) * 0.5 + labels.view(-1, 1, 1, 1) / 3
    # own test sets of 3 to 7 images, so the batched scoring pads them
    clients = [Client(i, "clean", torch.arange(i * 20, i * 20 + 12), images[i * 20 + 12: i * 20 + 15 + i],
                      labels[i * 20 + 12: i * 20 + 15 + i]) for i in range(n_clients)]
    return Federation("tiny", "synthetic", 3, images, labels, clients, images[:30], labels[:30])


def _schedule(evaluated):
    return rounds.Schedule(0, "fedavg", 3, 0.4, 1, False, ["clean"] * 5, evaluated)


def test_all_sampled_or_the_same_seeded_subset_every_round():
    sampled = torch.tensor([1, 3])
    assert rounds.evaluated_clients(_schedule("all"), 5, sampled).tolist() == [0, 1, 2, 3, 4]
    assert rounds.evaluated_clients(_schedule("sampled"), 5, sampled).tolist() == [1, 3]
    subset = rounds.evaluated_clients(_schedule(3), 5, sampled).tolist()
    assert len(subset) == 3 and subset == sorted(subset) == rounds.evaluated_clients(_schedule(3), 5, sampled).tolist()
    assert rounds.evaluated_clients(_schedule(9), 5, sampled).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("per_client", [True, False])
def test_each_clients_model_on_its_own_test_data_as_when_scored_one_by_one(per_client):
    fed = _federation()
    model = build_model("mlp", fed.input_shape, 3)
    g = torch.Generator().manual_seed(1)
    m = 5 if per_client else 1
    params = {n: torch.randn(m, *p.shape, generator=g) for n, p in model.named_parameters()}
    ids = torch.tensor([0, 2, 4])
    rows = {n: p[ids] for n, p in params.items()} if per_client else params
    scores = {(c, t): (a, loss) for c, t, a, loss in evaluate_clients(model, rows, fed, False, ids)}
    assert sorted({c for c, _ in scores}) == [0, 2, 4]
    for c in ids.tolist():
        own = {n: p[c if per_client else 0: (c if per_client else 0) + 1] for n, p in params.items()}
        acc, loss = evaluate(model, own, fed.clients[c].test_images, fed.clients[c].test_labels)
        assert scores[(c, "own")] == pytest.approx((acc.item(), loss.item()), abs=1e-6)
        acc, loss = evaluate(model, own, fed.clean_test_images, fed.clean_test_labels)
        assert scores[(c, "clean")] == pytest.approx((acc.item(), loss.item()), abs=1e-6)
    # a store of the models gives the same scores
    if per_client:
        stored = evaluate_clients(model, in_memory(params), fed, False, ids)
        assert {(c, t): (a, loss) for c, t, a, loss in stored} == scores


def test_a_run_records_only_the_evaluated_clients():
    exp = validate({
        "clients": [{"count": 5}], "model": "mlp", "strategy": {"name": "ditto"},
        "train": {"optimizer": "sgd", "lr": 0.1, "batch_size": 8, "rounds": 2, "client_fraction": 0.4},
        "eval": {"cross_clients": False, "clients": "sampled"},
    })
    records = []
    models = train(exp.method("ditto"), _federation(), exp, seed=0,
                   on_round=lambda r, recs, diagnostics, state: records.extend(recs))
    for r in (1, 2):
        sampled = rounds.sample_clients(5, 0.4, 0, r).tolist()
        assert sorted({x["client"] - 1 for x in records if x["round"] == r}) == sampled
    assert next(iter(models.values())).shape[0] == 5  # the saved models are still every client's


@pytest.mark.parametrize("value", ['"some"', "0", "true", "2.5", "1000001"])
def test_a_bad_eval_clients_is_refused_with_what_it_takes(tmp_path, value):
    result = invoke("run", CONFIGS / "seed.toml", "--set", f"eval.clients={value}", "--out", tmp_path / "run")
    assert result.exit_code == 2 and 'eval.clients: give "all", "sampled" or a number of clients' in result.output
    assert not (tmp_path / "run").exists()
