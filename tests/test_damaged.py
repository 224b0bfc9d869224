"""Damaged run state is recognised and named, and nothing damaged passes silently into a result:
checkpoints checked against the run, finished weights checked against their recorded sha256 (and
trained again on resume when they fail it), summary.json rebuilt whole, metrics.jsonl's lines read as
UTF-8 accuracies, a missing last round named, intervals within what they measure, a chance-level
model warned of, and run directories made before all this still read."""

import json
import shutil

import pytest
import torch
from rich.console import Console

from conftest import CONFIGS, invoke as run
from fedbridge import results
from fedbridge.api import open_run
from fedbridge.engines import simulation
from fedbridge.errors import FedbridgeError
from fedbridge.experiment import load_experiment
from fedbridge.report.grid import interval
from fedbridge.study import run_study

ROUNDS = 6
# the offline digits, two clients (the second noisy, so detection has something to find): seconds a run
SETTINGS = ["data.name=digits", "partition.sizes=[300,300]", f"train.rounds={ROUNDS}", "train.batch_size=16",
            'baselines=["local"]']


def study(out, stop_at: int | None = None, settings=()) -> None:
    """Run the study into `out`; with `stop_at`, stop it as a kill would after FedAvg's round `stop_at`
    (local finished, a checkpoint of FedAvg there)."""
    exp, _ = load_experiment(CONFIGS / "seed.toml", [*SETTINGS, *settings])

    def stopping(method, federation, exp, seed, on_round, **more):
        def then_stop(r, records, diagnostics, state):
            on_round(r, records, diagnostics, state)
            if method.name == "fedavg" and r == stop_at:
                raise KeyboardInterrupt
        return simulation.train(method, federation, exp, seed, then_stop, **more)

    try:
        run_study(exp, out, None, Console(quiet=True), stopping, quiet=True)
    except KeyboardInterrupt:
        assert stop_at is not None


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("damaged") / "reference"
    study(out)
    return out


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("damaged") / "interrupted"
    study(out, stop_at=3)
    assert (out / results.CHECKPOINT).exists() and not (out / results.SUMMARY).exists()
    return out


def copy(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / run_dir.name)


def refused(*args, code: int = 1) -> str:
    result = run(*args)
    assert result.exit_code == code, result.output
    return " ".join(result.output.split())  # rich and click wrap long messages


def test_a_checkpoint_that_loads_but_is_nonsense_is_named(interrupted, tmp_path):
    out = copy(interrupted, tmp_path)
    torch.save({"what": "ever", "round": [1]}, out / results.CHECKPOINT)
    message = refused("run", "--resume", out)
    assert f"{out / results.CHECKPOINT} is not a checkpoint of this run (it has no 'seed'" in message
    assert "delete it" in message and "from round 0" in message
    torch.save([1, 2], out / results.CHECKPOINT)
    assert "(it holds a list, not a dict)" in refused("run", "--resume", out)


def test_a_checkpoint_round_past_the_end_is_named(interrupted, tmp_path):
    out = copy(interrupted, tmp_path)
    checkpoint = results.load_checkpoint(out)
    results.save_checkpoint(out, {**checkpoint, "round": ROUNDS + 5})
    message = refused("run", "--resume", out)
    assert f"(round {ROUNDS + 5} is not one of the run's rounds, 1 to {ROUNDS})" in message and "delete it" in message
    results.save_checkpoint(out, {**checkpoint, "seed": 7})
    assert "(seed 7 is not one of the run's seeds, 0)" in refused("run", "--resume", out)


def test_checkpoint_params_of_the_wrong_shape_are_named(interrupted, tmp_path):
    out = copy(interrupted, tmp_path)
    checkpoint = results.load_checkpoint(out)
    params = {**checkpoint["params"], "1.weight": torch.zeros(1, 128, 784)}  # an MNIST model's, not 8x8 digits'
    results.save_checkpoint(out, {**checkpoint, "params": params})
    message = refused("run", "--resume", out)
    assert "(its parameter 1.weight is [1, 128, 784], the run's mlp has [models, 128, 64])" in message
    results.save_checkpoint(out, {**checkpoint, "params": {"w": torch.zeros(3)}})
    assert "its parameters w are not those of the run's mlp" in refused("run", "--resume", out)


def test_a_truncated_finished_weights_file_is_trained_again_on_resume(reference, interrupted, tmp_path):
    out = copy(interrupted, tmp_path)
    local = results.weights_path(out, 0, "local")
    local.write_bytes(local.read_bytes()[: local.stat().st_size // 2])
    resumed = run("run", "--resume", out)
    assert resumed.exit_code == 0, resumed.output
    assert f"{local} differs from the sha256 recorded" in " ".join(resumed.output.split())
    assert "seed 0's local is trained again" in " ".join(resumed.output.split())
    # the local records move after FedAvg's first rounds; the records themselves are the same
    assert sorted(map(json.dumps, results.read_metrics(out))) == sorted(map(json.dumps, results.read_metrics(reference)))
    for method in ("local", "fedavg"):
        mine, theirs = results.load_weights(out, 0, method), results.load_weights(reference, 0, method)
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert results.read_summary(out)["table"] == results.read_summary(reference)["table"]


def test_a_finished_run_with_damaged_weights_is_named_and_retrained_once_its_summary_goes(reference, tmp_path):
    out = copy(reference, tmp_path)
    fedavg = results.weights_path(out, 0, "fedavg")
    weights = torch.load(fedavg)
    torch.save({k: v + 1 for k, v in weights.items()}, fedavg)  # still loads: only the hash tells
    with pytest.raises(FedbridgeError, match="differs from the sha256 recorded"):
        open_run(out).model(1, "fedavg")
    assert run("report", out).exit_code == 0
    assert "Damaged weights" in (out / "report.html").read_text()
    message = refused("run", "--resume", out)
    assert f"{out} finished, but {fedavg} differs from the sha256" in message
    assert f"delete {out / results.SUMMARY}, then `fedbridge run --resume {out}`" in message
    (out / results.SUMMARY).unlink()
    assert run("run", "--resume", out, "--quiet").exit_code == 0
    assert torch.equal(results.load_weights(out, 0, "fedavg")["1.weight"], weights["1.weight"].unsqueeze(0))
    assert run("run", "--resume", out).exit_code == 0  # finished again, with every weights file sound


def test_a_deleted_summary_is_rebuilt_whole_on_resume(reference, tmp_path):
    out = copy(reference, tmp_path)
    (out / results.SUMMARY).unlink()
    resumed = run("run", "--resume", out, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    rebuilt, original = results.read_summary(out), results.read_summary(reference)
    assert original["detection"]["fedavg"]  # there is something to rebuild
    assert rebuilt["detection"] == original["detection"]
    assert rebuilt["table"] == original["table"] and rebuilt["diverged"] == original["diverged"]
    # the training times were kept only in the summary and the checkpoint, both gone: unknown, not made up
    assert rebuilt["seconds_per_method"] == {"local": None, "fedavg": None}
    assert run("show", out).exit_code == 0


def test_a_metrics_line_that_is_not_utf8_is_named(reference, tmp_path):
    out = copy(reference, tmp_path)
    lines = (out / results.METRICS).read_bytes().split(b"\n")
    (out / results.METRICS).write_bytes(b"\n".join([lines[0], b'{"seed": 0, "method": "\xff"}', *lines[1:]]))
    for command in ("show", "report"):
        message = refused(command, out)
        assert f"{out / results.METRICS}, line 2, is not a metrics record (not UTF-8 text: byte 24)" in message


def test_an_accuracy_outside_0_1_is_named(reference, tmp_path):
    out = copy(reference, tmp_path)
    records = results.read_metrics(out)
    results.rewrite_lines(out, results.METRICS, [{**records[0], "accuracy": 5.0}, *records[1:]])
    for command in ("show", "report"):
        message = refused(command, out)
        assert "line 1, is not a metrics record (accuracy: Input should be less than or equal to 1)" in message
    results.rewrite_lines(out, results.METRICS, records)
    summary = results.read_summary(out)
    results.write_summary(out, {**summary, "table": [{**summary["table"][0], "accuracy_mean": 5.0}, *summary["table"][1:]]})
    assert "is not a fedbridge summary (table.0.accuracy_mean: Input should be less" in refused("show", out)


def test_a_method_whose_metrics_stop_before_the_last_round_is_named(reference, tmp_path):
    out = copy(reference, tmp_path)
    records = results.read_metrics(out)
    results.rewrite_lines(out, results.METRICS, [r for r in records if r["method"] != "fedavg" or r["round"] < ROUNDS])
    for command in ("show", "report"):
        message = refused(command, out)
        assert f"{out / results.METRICS} has no round {ROUNDS} of fedavg (seed 0, client 1, own test set)" in message
        assert f"delete {results.weights_path(out, 0, 'fedavg')} and {out / results.SUMMARY}" in message
    # following the advice trains it again
    results.weights_path(out, 0, "fedavg").unlink()
    (out / results.SUMMARY).unlink()
    assert run("run", "--resume", out, "--quiet").exit_code == 0
    assert sorted(map(json.dumps, results.read_metrics(out))) == sorted(map(json.dumps, records))


def test_a_confidence_interval_beyond_100_is_clipped():
    low, high = results.confidence_interval([0.99, 0.80, 1.0], bounds=results.BOUNDS["federated"])
    assert 0 < low < 0.8 and high == 1.0
    assert results.confidence_interval([-0.99, -0.5, -1.0], bounds=results.BOUNDS["gain"])[0] == -1.0
    # a sweep summary written before intervals were clipped shows clipped too
    row = {"mean": 0.95, "std": 0.05, "ci_low": 0.791, "ci_high": 1.109, "quantity": "federated"}
    assert interval(row) == "95.0 ± 5.0 [79.1, 100.0]"


def test_a_model_at_chance_is_warned_of(tmp_path):
    result = run("run", CONFIGS / "seed.toml", *(a for s in SETTINGS for a in ("--set", s)),
                 "--set", "train.rounds=1", "--set", "train.lr=1e-9", "--set", "train.optimizer=sgd",
                 "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "seed 0, FedAvg: it ends at chance accuracy on the clean test set" in output
    summary = results.read_summary(tmp_path / "run")
    assert summary["chance"] == [{"seed": 0, "method": "fedavg"}, {"seed": 0, "method": "local"}]
    assert summary["diverged"] == []


def test_a_run_made_before_hashes_and_new_summary_fields_still_reads(reference, tmp_path):
    out = copy(reference, tmp_path)
    (out / results.HASHES).unlink()
    summary = results.read_summary(out)
    older = {k: v for k, v in summary.items() if k not in ("chance", "threads", "detection", "diverged")}
    results.write_summary(out, older)
    assert run("show", out).exit_code == 0 and run("report", out).exit_code == 0
    assert "Damaged weights" not in (out / "report.html").read_text()
    assert isinstance(open_run(out).model(1, "fedavg"), torch.nn.Module)
    assert "finished already" in run("run", "--resume", out).output
    # without hashes a weights file is taken when it loads, and named when it does not
    results.weights_path(out, 0, "local").write_bytes(b"not a weights file")
    assert "seed0-local.pt cannot be read as saved weights" in refused("run", "--resume", out)
