"""The `fedbridge` command end to end: the happy path on the digits fallback and real MNIST,
and every kind of bad input ending in one clear message and a non-zero exit."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import CONFIGS
from fedbridge.cli import main

TINY = ["--set", "data.name=digits", "--set", "partition.sizes=[500,500]", "--set", "train.rounds=2"]


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def test_run_writes_the_run_directory_and_show_prints_it_again(tmp_path):
    out = tmp_path / "run"
    result = run("run", CONFIGS / "seed.toml", *TINY, "--seeds", 2, "--out", out)
    assert result.exit_code == 0, result.output
    assert "gain" in result.output and "client 1 alone" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    rows = summary["table"]
    keys = {(r["client"], r["method"], r["test_set"]) for r in rows}
    for client in (1, 2):
        for method in ("local", "fedavg", "pooled"):
            assert {(client, method, "own"), (client, method, "clean")} <= keys
    assert (1, "local", "client:2") in keys and (2, "local", "client:1") in keys
    assert all(r["n_seeds"] == 2 and set(r) == {
        "client", "profile", "method", "test_set", "accuracy_mean", "accuracy_std", "n_seeds"} for r in rows)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # one line per round per client per test set: 2 seeds x 3 methods x 2 rounds x 2 clients x (own, clean)
    # plus the final round's cross-client lines (2 seeds x 3 methods x 2 clients)
    assert len(metrics) == 2 * 3 * 2 * 2 * 2 + 2 * 3 * 2
    assert sorted(p.name for p in (out / "weights").iterdir()) == sorted(
        f"seed{s}-{m}.pt" for s in (0, 1) for m in ("local", "fedavg", "pooled"))
    assert "sizes" in (out / "config.toml").read_text()
    shown = run("show", out)
    assert shown.exit_code == 0 and "client 1 alone" in shown.output


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    def metrics(out, seed):
        assert run("run", CONFIGS / "seed.toml", *TINY, "--set", f"seed={seed}", "--out", out).exit_code == 0
        return [(r["method"], r["round"], r["client"], r["test_set"], r["accuracy"], r["loss"])
                for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]

    first, again, other = metrics(tmp_path / "a", 0), metrics(tmp_path / "b", 0), metrics(tmp_path / "c", 1)
    assert first == again
    assert first != other


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "train.rounds=0"], "train.rounds"),
        (["--set", "train.optimiser=adam"], "train.optimiser: unknown key"),
        (["--set", "clients.1.profile.sigma=-1"], "sigma"),
        (["--set", "oops"], "KEY=VALUE"),
        (["--seeds", "0"], "--seeds"),
        (["--set", "train.lr=inf"], "train.lr: Input should be a finite number"),
        # errors only the data can tell, still before a run directory exists
        (["--set", "test_fraction=0.999"], "leaves 0 for training"),
        (["--set", "partition.sizes=[2000,2000]"], "more than the 1437 samples available"),
    ],
)
def test_bad_config_exits_2_before_anything_runs(tmp_path, args, message):
    out = tmp_path / "run"
    result = run("run", CONFIGS / "seed.toml", *TINY, *args, "--out", out)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_missing_config_file(tmp_path):
    result = run("run", tmp_path / "nope.toml")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_existing_run_directory_is_never_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("precious")
    result = run("run", CONFIGS / "seed.toml", *TINY, "--out", out)
    assert result.exit_code == 1 and "already exists" in result.output
    assert (out / "summary.json").read_text() == "precious"


def test_show_on_something_that_is_not_a_run(tmp_path):
    assert "does not exist" in run("show", tmp_path).output
    (tmp_path / "summary.json").write_text("{half")
    result = run("show", tmp_path)
    assert result.exit_code == 1 and "not a fedbridge summary" in result.output


def test_missing_dataset_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDBRIDGE_DATA", raising=False)
    monkeypatch.setattr("fedbridge.data.sources.SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setattr("fedbridge.data.catalog.DATASETS", {
        name: spec.__class__(**{**spec.__dict__, "mirrors": ()}) for name, spec in
        __import__("fedbridge.data.catalog", fromlist=["DATASETS"]).DATASETS.items()})
    result = run("run", CONFIGS / "seed.toml", "--data-dir", tmp_path / "empty", "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert "FEDBRIDGE_DATA" in result.output and str(tmp_path / "empty") in result.output
    # the fallback says plainly which data it used instead, and why
    result = run("run", CONFIGS / "seed.toml", "--data-dir", tmp_path / "empty", "--out", tmp_path / "run2",
                 "--set", "train.rounds=1", "--set", "data.fallback=digits")
    assert result.exit_code == 0, result.output
    assert "ran on scikit-learn's bundled 8x8 digits instead" in result.output
    assert "Partition sizes scaled from [30000, 30000]" in result.output


def test_data_check(mnist_dir):
    result = run("data", "check", "--data-dir", mnist_dir)
    assert result.exit_code == 0 and "all verify" in result.output


@pytest.mark.integration
def test_seed_study_on_real_mnist_through_the_installed_command(tmp_path, mnist_dir):
    """The origin study, shortened to 3 rounds: already the honest picture's shape."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fedbridge.cli", "run", CONFIGS / "seed.toml", "--set", "train.rounds=3",
         "--set", "eval.every=3", "--out", out],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    acc = {(r["client"], r["method"], r["test_set"]): r["accuracy_mean"]
           for r in json.loads((out / "summary.json").read_text())["table"]}
    # measured at 3 rounds, seed 0: local 94.8 / 91.8, FedAvg 94.8 / 92.2, pooled 96.4 / 94.8
    assert acc[(1, "local", "own")] > 0.93 and acc[(2, "local", "own")] > 0.89
    assert acc[(1, "fedavg", "own")] > 0.93 and acc[(2, "fedavg", "own")] > 0.90
    assert acc[(2, "pooled", "own")] > acc[(2, "local", "own")]
    # the clean client's own model is much worse on the noisy client's data: where FL's gain lives
    assert acc[(1, "local", "client:2")] < acc[(2, "fedavg", "own")] - 0.05


def test_a_diverged_method_is_flagged_under_the_table(tmp_path):
    result = run("run", CONFIGS / "seed.toml", *TINY, "--set", "train.lr=1e8", "--set", 'baselines=["local"]',
                 "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "seed 0, FedAvg: training diverged" in result.output and "lower train.lr" in result.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["diverged"] == [
        {"seed": 0, "method": "fedavg"}, {"seed": 0, "method": "local"}]


GOOD_SUMMARY = {
    "name": "n", "dataset": "mnist", "data_source": "s", "data_note": None, "seeds": [0], "rounds": 1,
    "methods": ["fedavg"], "strategy": "fedavg", "seconds_per_method": {"fedavg": 1.0}, "versions": {"torch": "2"},
    "table": [{"client": 1, "profile": "clean", "method": "fedavg", "test_set": "own", "accuracy_mean": 0.5,
               "accuracy_std": 0.0, "n_seeds": 1}],
    "detection": {"fedavg": {"loss": {"auc_by_round": [0.5, None], "first": 0.5, "last": None, "reliable_from": None}}},
    "diverged": [],
}


@pytest.mark.parametrize("change, where", [
    ({"table": "x"}, "table"), ({"methods": None}, "methods"), ({"table": [{"client": 1}]}, "table.0"),
    ({"seeds": []}, "seeds"), ({"rounds": "1"}, "rounds"), ({"detection": [1]}, "detection"),
    ({"detection": {"fedavg": {"loss": 3}}}, "detection.fedavg.loss"), ({"diverged": 7}, "diverged"),
    ({"diverged": [{"x": 1}]}, "diverged.0"), ({"versions": None}, "versions"), (None, "the whole file"),
])
def test_show_names_a_damaged_summary_instead_of_failing_on_it(tmp_path, change, where):
    (tmp_path / "summary.json").write_text(json.dumps(GOOD_SUMMARY))
    assert run("show", tmp_path).exit_code == 0
    # a run made before detection and divergence were recorded still shows
    older = {k: v for k, v in GOOD_SUMMARY.items() if k not in ("detection", "diverged")}
    (tmp_path / "summary.json").write_text(json.dumps(older))
    assert run("show", tmp_path).exit_code == 0
    (tmp_path / "summary.json").write_text(json.dumps([1, 2] if change is None else {**GOOD_SUMMARY, **change}))
    result = run("show", tmp_path)
    assert result.exit_code == 1 and f"is not a fedbridge summary ({where}" in result.output


def test_show_on_an_unfinished_run_says_how_to_resume_it(tmp_path):
    (tmp_path / "config.toml").write_text("")  # the first file a run writes
    result = run("show", tmp_path)
    assert result.exit_code == 1 and f"fedbridge run --resume {tmp_path}" in result.output


def test_show_on_a_sweep_says_how_to_see_it(tmp_path):
    (tmp_path / "sweep.json").write_text("{}")
    result = run("show", tmp_path)
    assert result.exit_code == 1 and "is a sweep, not a run" in result.output
