"""The Python API: every example in docs/api.md and README's Quick start runs; saved weights load the
PyTorch way and predict as fedbridge scored them; old weight files still read; bad input is named."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fedbridge
from conftest import CONFIGS, ROOT
from fedbridge import experiment, results
from fedbridge.api import default_run_dir
from fedbridge.errors import ConfigError, FedbridgeError
from fedbridge.models import build_model

TINY = {"data.name": "digits", "partition.sizes": [400, 400], "train.rounds": 2, "baselines": ["local", "pooled"]}


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


@pytest.fixture
def in_tmp_with_configs(tmp_path, monkeypatch):
    """The examples' working directory: a copy of configs/, and room for their runs/."""
    shutil.copytree(CONFIGS, tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_examples(blocks: list[str]) -> dict:
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "<example>", "exec"), namespace)
    return namespace


def test_every_example_in_docs_api_md_runs(in_tmp_with_configs, capsys):
    blocks = python_blocks((ROOT / "docs" / "api.md").read_text())
    assert len(blocks) >= 8
    namespace = run_examples(blocks)
    assert isinstance(namespace["mlp"], torch.nn.Module)
    assert "train.rounds: Input should be greater than or equal to 1" in capsys.readouterr().out


def test_readme_quick_start_python_runs(in_tmp_with_configs):
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = python_blocks(quick_start)
    assert len(blocks) == 1 and len(blocks[0].strip().splitlines()) <= 5  # import + three lines
    namespace = run_examples(blocks)
    assert namespace["study"].path.parent == Path("runs")
    assert isinstance(namespace["model"], torch.nn.Module)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    exp = fedbridge.load_experiment(CONFIGS / "seed.toml", TINY)
    return fedbridge.run(exp, tmp_path_factory.mktemp("api") / "run")


def clean_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits' clean test set as fedbridge reads it: the last 360 images, 0-16 scaled to 0-255 to [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.int64) * 255 // 16).astype(np.uint8)[1437:]
    return torch.from_numpy(images).unsqueeze(1).float() / 255, torch.from_numpy(bunch.target[1437:])


@pytest.mark.parametrize("method", ["fedavg", "local", "pooled"])
def test_saved_weights_load_with_plain_torch_and_predict_as_fedbridge_scored(study, method):
    images, labels = clean_digits()
    saved = torch.load(results.weights_path(study.path, 0, method), weights_only=True)
    final = {r["client"]: r["accuracy"] for r in results.read_metrics(study.path)
             if r["method"] == method and r["round"] == 2 and r["test_set"] == "clean"}
    assert set(final) == {1, 2}
    for client, accuracy in final.items():
        model = build_model("mlp", (1, 8, 8), 10)
        model.load_state_dict(saved[f"client{client}"] if method == "local" else saved)
        with torch.no_grad():
            predicted = model(images).argmax(1)
        assert (predicted == labels).float().mean().item() == pytest.approx(accuracy, abs=1e-6)
        with torch.no_grad():
            assert torch.equal(study.model(client, method)(images), model(images))
    assert study.model(1, method).training is False


def test_study_tables_are_the_summary_and_the_metrics(study):
    table = study.table()
    assert list(table.columns) == ["client", "profile", "method", "test_set", "accuracy_mean", "accuracy_std", "n_seeds"]
    assert table.to_dict("records") == study.summary["table"]
    metrics = study.metrics()
    assert metrics.to_dict("records") == results.read_metrics(study.path)
    assert sorted(metrics["round"].unique()) == [1, 2]
    assert fedbridge.open_run(study.path).summary == study.summary
    assert study.experiment.data.name == "digits" and study.experiment.train.rounds == 2


def test_old_stacked_weights_still_load(study, tmp_path):
    run = shutil.copytree(study.path, tmp_path / "old")
    (run / results.HASHES).unlink()  # those runs recorded no hashes of their weights
    for method in ("fedavg", "local"):
        new = results.load_weights(run, 0, method)
        assert next(iter(new.values())).shape[0] == (2 if method == "local" else 1)
        torch.save(new, results.weights_path(run, 0, method))  # the layout runs were saved in before
        old = results.load_weights(run, 0, method)
        assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in new)
        images, _ = clean_digits()
        with torch.no_grad():
            assert torch.equal(fedbridge.open_run(run).model(2, method)(images), study.model(2, method)(images))


def test_model_shape_from_the_summary_else_from_the_dataset_name(study, tmp_path):
    run = shutil.copytree(study.path, tmp_path / "run")
    older = {k: v for k, v in study.summary.items() if k not in ("input_shape", "num_classes")}
    results.write_summary(run, older)  # as runs made before the summary recorded them
    assert isinstance(fedbridge.open_run(run).model(1, "fedavg"), torch.nn.Sequential)
    results.write_summary(run, {**older, "dataset": "cifar10"})
    with pytest.raises(FedbridgeError, match="records no input_shape and num_classes, and its dataset 'cifar10'"):
        fedbridge.open_run(run).model(1, "fedavg")
    results.write_summary(run, {**older, "input_shape": [1, 8, 8], "num_classes": 7})
    with pytest.raises(FedbridgeError, match="does not fit the run's model"):
        fedbridge.open_run(run).model(1, "fedavg")


def test_weights_saved(study):
    assert results.weights_saved(study.path, 0, "fedavg") and not results.weights_saved(study.path, 1, "fedavg")


@pytest.mark.parametrize("args, message", [
    ((3, "fedavg"), "client 3 is not in this run; its clients: 1, 2"),
    ((0, "fedavg"), "client 0 is not in this run; its clients: 1, 2"),
    ((1, "fedprox"), "method 'fedprox' is not in this run; its methods: local, fedavg, pooled"),
    ((1, "fedavg", 1), "seed 1 is not in this run; its seeds: 0"),
])
def test_model_names_what_the_run_has(study, args, message):
    with pytest.raises(FedbridgeError) as e:
        study.model(*args)
    assert str(e.value) == message


def test_open_run_says_what_is_not_a_finished_run(tmp_path):
    with pytest.raises(FedbridgeError, match="is it a run directory"):
        fedbridge.open_run(tmp_path)
    (tmp_path / "config.toml").write_text("")
    with pytest.raises(FedbridgeError, match="fedbridge run --resume"):
        fedbridge.open_run(tmp_path)


def test_overrides_as_dict_or_strings_are_the_cli_set():
    path = CONFIGS / "seed.toml"
    as_dict = fedbridge.load_experiment(path, {
        "train.rounds": 3, "train.lr": 0.01, "baselines": ["local"], "data.name": "digits",
        "clients.1.profile": {"name": "salt_pepper", "p": 0.1}, "eval.cross_clients": False,
    })
    as_set = ["train.rounds=3", "train.lr=0.01", 'baselines=["local"]', "data.name=digits",
              'clients.1.profile={name="salt_pepper", p=0.1}', "eval.cross_clients=false"]
    assert as_dict == fedbridge.load_experiment(path, as_set) == experiment.load_experiment(path, as_set)[0]
    assert as_dict.clients[1].profile.params == {"p": 0.1}


def test_bad_overrides_get_the_cli_messages():
    path = CONFIGS / "seed.toml"
    with pytest.raises(ConfigError) as api:
        fedbridge.load_experiment(path, {"train.rounds": 0, "strategy.name": "fedsgd"})
    with pytest.raises(ConfigError) as cli:
        experiment.load_experiment(path, ["train.rounds=0", 'strategy.name="fedsgd"'])  # strings go as TOML strings
    assert str(api.value) == str(cli.value) and "strategy.name = 'fedsgd' is unknown; choose one of" in str(api.value)
    for bad, message in [
        ({"train.rounds": None}, "overrides['train.rounds'] = None has no TOML form"),
        ("train.rounds=3", "give a list of \"KEY=VALUE\" strings or a dict"),
        ([("train.rounds", 3)], "is not a \"KEY=VALUE\" string"),
        ({"train.round": 3}, "train.round: unknown key"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            fedbridge.load_experiment(path, bad)
    with pytest.raises(ConfigError, match="config file nowhere.toml does not exist"):
        fedbridge.load_experiment("nowhere.toml")
    with pytest.raises(ConfigError, match="run\\(\\) takes an Experiment, not str"):
        fedbridge.run("configs/seed.toml")


def test_run_prints_nothing_when_quiet_and_defaults_to_runs_name_time(in_tmp_with_configs, capfd):
    exp = fedbridge.load_experiment("configs/seed.toml", {**TINY, "train.rounds": 1, "baselines": []})
    study = fedbridge.run(exp)
    assert capfd.readouterr() == ("", "")
    assert study.path.parent == Path("runs") and study.path.name.startswith("seed-")
    taken = default_run_dir(exp)
    taken.mkdir(parents=True)
    assert default_run_dir(exp) != taken  # a second run in the same second gets its own directory


def test_import_fedbridge_stays_light():
    code = ("import sys, fedbridge, fedbridge.local; "
            "heavy = [m for m in ('pandas', 'matplotlib', 'fedbridge.study', 'fedbridge.api') if m in sys.modules]; "
            "assert not heavy, heavy; assert callable(fedbridge.run) and 'pandas' not in sys.modules; "
            "assert sorted(fedbridge.__all__) == sorted(set(fedbridge.__all__) & set(dir(fedbridge)))")
    subprocess.run([sys.executable, "-c", code], check=True)
