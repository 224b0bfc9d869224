"""strategy.keep_local = ["bn"] (FedBN): normalisation layers stay each client's own, by hand."""

import pytest
import torch
from rich.console import Console

from conftest import CONFIGS, invoke, stopping_after
from fedbridge import results
from fedbridge.api import open_run
from fedbridge.experiment import load_experiment
from fedbridge.models import build_model, norm_state
from fedbridge.strategies.api import ClientUpdates
from fedbridge.strategies.fedavg import FEDAVG
from fedbridge.strategies.keep_local import keep_local
from fedbridge.study import run_study
from test_cli import run

IDS = torch.tensor([0, 1])


def _train(start, adjust=None, epochs=None, copy=0):
    # client k moves the shared weight by k + 1 and its BatchNorm weight by 10 (k + 1)
    step = torch.tensor([1.0, 2.0])
    trained = {"w": start["w"] + step.view(2, 1), "bn.weight": start["bn.weight"] + 10 * step.view(2, 1)}
    return ClientUpdates(IDS, torch.tensor([1.0, 3.0]), trained, torch.ones(2), torch.zeros(2))


def test_fedbn_averages_the_rest_and_leaves_each_client_its_own_normalisation():
    strategy = keep_local(FEDAVG, {"bn.weight"})
    state = strategy.init({"w": torch.zeros(1, 1), "bn.weight": torch.zeros(1, 1)}, 2)
    for _ in range(2):
        state, diagnostics = strategy.aggregate(state, strategy.local(state, IDS, _train))
    # w: round 1 (1 * 1 + 3 * 2) / 4 = 1.75, round 2 1.75 + 1.75 = 3.5; BatchNorm: 0 -> 10 -> 20 and 0 -> 20 -> 40
    assert state.params["w"].tolist() == [[3.5]]
    assert state.extra["keep_local"]["bn.weight"].tolist() == [[20.0], [40.0]]
    assert state.params["bn.weight"].tolist() == [[0.0]]  # the server's stays as it began
    evaluated = strategy.evaluate_with(state, IDS, _train)
    assert evaluated["w"].tolist() == [[3.5], [3.5]] and evaluated["bn.weight"].tolist() == [[20.0], [40.0]]
    # the strategy judges the shared part only: the update norms are 1 and 2, the BatchNorm moves unseen
    assert diagnostics.scores["update_norm"].tolist() == [1.0, 2.0]


def test_the_normalisation_layers_are_batchnorm_and_layernorm_with_their_buffers():
    model = build_model("custom_models:mixed", (1, 12, 12), 10)
    assert norm_state(model) == {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked",
                                 "norm.weight", "norm.bias"}
    assert norm_state(build_model("mlp", (1, 12, 12), 10)) == set()


def test_keep_local_is_a_key_of_every_strategy_and_only_takes_bn():
    exp, _ = load_experiment(CONFIGS / "seed.toml", ["strategy.name=fedprox", "strategy.keep_local=['bn']"])
    assert exp.strategy.keep_local == ["bn"]
    result = run("run", CONFIGS / "seed.toml", "--set", "strategy.keep_local=['all']", "--out", "unused")
    assert result.exit_code == 2 and "strategy.keep_local" in result.output


def test_fedbn_runs_end_to_end_and_refuses_a_model_without_normalisation(tmp_path):
    tiny = ["--set", "data.name=digits", "--set", "partition.sizes=[300,300]", "--set", "train.rounds=2",
            "--set", "strategy.keep_local=['bn']"]
    result = run("run", CONFIGS / "seed.toml", *tiny, "--set", "model=custom_models:batch_normed", "--out", tmp_path / "bn")
    assert result.exit_code == 0, result.output
    # the saved weights hold one model per client: the shared layers equal, the BatchNorm each one's own
    study = open_run(tmp_path / "bn")
    first, second = (study.model(client=c, method="fedavg") for c in (1, 2))
    assert torch.equal(first[1].weight, second[1].weight)
    assert not torch.equal(first[2].running_mean, second[2].running_mean) and not first.training
    result = run("run", CONFIGS / "seed.toml", *tiny, "--out", tmp_path / "mlp")
    assert result.exit_code == 2 and "no normalisation layers" in result.output and not (tmp_path / "mlp").exists()


def test_a_fedbn_run_stopped_midway_resumes_to_the_same_metrics(tmp_path):
    small = ["data.name=digits", "partition.sizes=[300,300]", "train.rounds=3", "train.batch_size=16",
             'baselines=["local"]', "model=custom_models:batch_normed", "strategy.keep_local=['bn']"]
    exp, _ = load_experiment(CONFIGS / "seed.toml", small)
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    run_study(exp, whole, None, Console(quiet=True), quiet=True)
    with pytest.raises(KeyboardInterrupt):  # after round 2's checkpoint: the clients' BatchNorm is in it
        run_study(exp, stopped, None, Console(quiet=True), stopping_after("fedavg", 2), quiet=True)
    assert invoke("run", "--resume", stopped, "--quiet").exit_code == 0
    assert (stopped / results.METRICS).read_bytes() == (whole / results.METRICS).read_bytes()
