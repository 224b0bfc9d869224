"""The Flower adapter's checks, without Flower processes: client replies the server must reject, run
configs and flags it must refuse, and the clients a run left out. Each test takes well under a second
(the server loop runs against a fake Grid whose nodes answer at once)."""

import math
import types

import numpy as np
import pytest
import torch

from conftest import CONFIGS
from fake_grid import Grid

pytest.importorskip("flwr")  # the `flower` extra; `make test` installs it

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedbridge.engines.flower import channel, server_app  # noqa: E402
from fedbridge.engines.flower.arrays import from_record  # noqa: E402
from fedbridge.deploy import Faults, left_out_lines  # noqa: E402
from fedbridge.engines.flower.submit import follow  # noqa: E402
from fedbridge.engines.flower.processes import Cluster  # noqa: E402
from fedbridge.engines.flower.replies import evaluate_expected, reply_problem, train_expected  # noqa: E402
from fedbridge.engines.flower.server_app import Settings, limits_problem  # noqa: E402
from fedbridge.errors import ConfigError, FedbridgeError  # noqa: E402
from fedbridge.experiment import load_experiment  # noqa: E402
from fedbridge.strategies.api import ServerState  # noqa: E402

# a model of two arrays, trained by a client with 6 samples
EXPECTED = train_expected({"w": (2, 2), "b": (2,)}, client=1, examples=6)
GOOD_ARRAYS = {"w": np.ones((2, 2), np.float32), "b": np.zeros(2, np.float32)}
GOOD_METRICS = {"partition-id": 1, "num-examples": 6, "steps": 3, "loss": 0.5}


def array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({n: Array.from_numpy_ndarray(a) for n, a in arrays.items()})


def reply(arrays=GOOD_ARRAYS, metrics=GOOD_METRICS) -> RecordDict:
    return RecordDict({"arrays": array_record(arrays), "metrics": MetricRecord(metrics)})


def with_value(name, index, value):
    arrays = {n: a.copy() for n, a in GOOD_ARRAYS.items()}
    arrays[name][index] = value
    return arrays


def test_a_good_train_reply_passes():
    assert reply_problem(reply(), EXPECTED) is None


@pytest.mark.parametrize("arrays, problem", [
    ({**GOOD_ARRAYS, "w": np.ones((3, 2), np.float32)}, "array 'w' has shape (3, 2), expected (2, 2)"),
    ({"w": GOOD_ARRAYS["w"]}, "array 'b' is missing (expected w, b)"),
    ({"w": GOOD_ARRAYS["w"], "bias": GOOD_ARRAYS["b"]}, "array 'b' is missing (expected w, b)"),
    ({**GOOD_ARRAYS, "evil": np.zeros(3, np.float32)}, "array 'evil' is not a parameter of the model (expected w, b)"),
    ({}, "array 'w' is missing (expected w, b)"),
    ({**GOOD_ARRAYS, "b": np.zeros(2, np.float64)}, "array 'b' is float64, expected float32"),
    ({**GOOD_ARRAYS, "b": np.zeros(2, np.int64)}, "array 'b' is int64, expected float32"),
    ({**GOOD_ARRAYS, "b": np.zeros(2, np.float16)}, "array 'b' is float16, expected float32"),
    (with_value("w", (0, 1), np.nan), "array 'w' has 1 NaN or infinite values"),
    (with_value("b", 1, -np.inf), "array 'b' has 1 NaN or infinite values"),
])
def test_bad_arrays_are_named(arrays, problem):
    assert reply_problem(reply(arrays), EXPECTED) == problem


@pytest.mark.parametrize("change, problem", [
    ({"num-examples": None}, "metric 'num-examples' is missing"),
    ({"num-examples": math.nan}, "metric 'num-examples' = nan is not a finite number"),
    ({"num-examples": -6}, "metric 'num-examples' = -6, expected 6"),
    ({"num-examples": 10**9}, "metric 'num-examples' = 1000000000, expected 6"),  # as said at connect
    ({"loss": math.inf}, "metric 'loss' = inf is not a finite number"),
    ({"partition-id": 0}, "metric 'partition-id' = 0, expected 1"),  # answering for another client
])
def test_bad_train_metrics_are_named(change, problem):
    metrics = {k: v for k, v in {**GOOD_METRICS, **change}.items() if v is not None}
    assert reply_problem(reply(metrics=metrics), EXPECTED) == problem


def test_a_reply_without_its_records_is_rejected():
    assert reply_problem(RecordDict({"metrics": MetricRecord(GOOD_METRICS)}), EXPECTED) == "it has no ArrayRecord 'arrays'"
    assert reply_problem(RecordDict({"arrays": array_record(GOOD_ARRAYS)}), EXPECTED) == "it has no MetricRecord 'metrics'"


@pytest.mark.parametrize("change, problem", [
    ({}, None),
    ({"own-accuracy": math.nan}, "metric 'own-accuracy' = nan is not a finite number"),
    ({"own-accuracy": 7.5}, "metric 'own-accuracy' = 7.5 is outside [0, 1]"),
    ({"clean-loss": -0.1}, "metric 'clean-loss' = -0.1 is outside [0, inf]"),
    ({"clean-accuracy": None}, "metric 'clean-accuracy' is missing"),
])
def test_evaluate_metrics_must_be_finite_and_in_range(change, problem):
    good = {"partition-id": 0, "own-accuracy": 0.5, "own-loss": 1.0, "clean-accuracy": 0.25, "clean-loss": 2.0}
    metrics = {k: v for k, v in {**good, **change}.items() if v is not None}
    assert reply_problem(RecordDict({"metrics": MetricRecord(metrics)}), evaluate_expected(0)) == problem


# --- the server loop against a fake Grid ---------------------------------------------------------

TINY = ["data.name=digits", "partition.sizes=[300,300]", "train.rounds=1", "baselines=[]"]
SAMPLES = 240  # each client's training samples (80% of 300), as it says at connect


class FakeGrid(Grid):
    """Two nodes that answer at once: train adds 0.01 to every weight; `spoil(client, kind, content)`
    may alter a reply's records."""

    def __init__(self, spoil=lambda client, kind, content: content):
        super().__init__([101, 102])
        self.spoil = spoil

    def answer(self, m: Message) -> Message:
        client, kind = self.nodes.index(m.metadata.dst_node_id), m.metadata.message_type
        if kind == "query":
            info = ConfigRecord({"partition-id": client, "num-examples": SAMPLES, "input-shape": [1, 8, 8],
                                 "num-classes": 10})
            return Message(RecordDict({"info": info}), reply_to=m)
        if kind == "train":
            trained = {n: (p[0] + 0.01).numpy() for n, p in from_record(m.content["arrays"]).items()}
            content = {"arrays": trained, "metrics": {"partition-id": client, "num-examples": SAMPLES, "steps": 4,
                                                      "loss": 1.0}}
        else:
            content = {"metrics": {"partition-id": client, "own-accuracy": 0.5, "own-loss": 1.0,
                                   "clean-accuracy": 0.25, "clean-loss": 2.0}}
        content = self.spoil(client, kind, content)
        records = {"metrics": MetricRecord(content["metrics"])}
        if "arrays" in content:
            records["arrays"] = array_record(content["arrays"])
        return Message(RecordDict(records), reply_to=m)


@pytest.fixture
def task_identity(monkeypatch):
    """Flower's Message wants to know which run it belongs to, as inside a real ServerApp."""
    for key in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, key, 1)


def nan_weights_from_client_2(client, kind, content):
    if client == 1 and kind == "train":
        first = next(iter(content["arrays"]))
        content["arrays"][first][0, 0] = np.nan
    return content


def settings(out):
    out.mkdir()
    return Settings(CONFIGS / "seed.toml", TINY, 0, out, round_timeout=5.0, min_nodes=1, connect_timeout=5.0)


def test_a_bad_reply_is_left_out_and_the_round_goes_on(tmp_path, task_identity):
    exp, _ = load_experiment(CONFIGS / "seed.toml", TINY)
    left_out, none_left_out = [], []
    server_app.run(FakeGrid(nan_weights_from_client_2), exp, 0, settings(tmp_path / "bad"), left_out)
    server_app.run(FakeGrid(), exp, 0, settings(tmp_path / "good"), none_left_out)
    assert left_out == [{"round": 1, "step": "train", "client": 2,
                         "reason": "its reply was rejected: array '1.weight' has 1 NaN or infinite values"}]
    assert none_left_out == []
    [bad], [good] = channel.read_rounds(tmp_path / "bad", 0), channel.read_rounds(tmp_path / "good", 0)
    # both clients train the same +0.01, so client 1's weights alone are the average of both, without the NaN
    assert all(torch.equal(bad.state.params[n], good.state.params[n]) for n in good.state.params)
    assert {(r["client"], r["test_set"]) for r in bad.records} >= {(1, "own"), (2, "own")}  # both still evaluated


def test_below_min_nodes_a_bad_reply_stops_the_run_and_writes_no_round(tmp_path, task_identity):
    context = types.SimpleNamespace(run_config={
        "config": str(CONFIGS / "seed.toml"), "set": " ".join(TINY), "seed": 0, "out-dir": str(tmp_path),
        "round-timeout": 5.0, "min-nodes": 2, "connect-timeout": 5.0,
    })
    server_app.main(FakeGrid(nan_weights_from_client_2), context)
    end = channel.read_end(tmp_path)
    assert not end["ok"] and "round 1, train: only 1 of 2 nodes answered" in end["message"]
    assert "client 2 failed: its reply was rejected: array '1.weight'" in end["message"]
    assert end["left_out"][0]["client"] == 2
    assert channel.read_rounds(tmp_path, 0) == []


def test_a_client_inflating_its_sample_count_is_left_out(tmp_path, task_identity):
    def inflate(client, kind, content):
        if client == 1 and kind == "train":
            content["metrics"]["num-examples"] = 10**9
        return content

    exp, _ = load_experiment(CONFIGS / "seed.toml", TINY)
    left_out = []
    server_app.run(FakeGrid(inflate), exp, 0, settings(tmp_path / "out"), left_out)
    assert left_out[0]["reason"] == f"its reply was rejected: metric 'num-examples' = 1000000000, expected {SAMPLES}"


def test_min_nodes_above_the_clients_is_named_in_the_end(tmp_path, task_identity):
    context = types.SimpleNamespace(run_config={
        "config": str(CONFIGS / "seed.toml"), "set": " ".join(TINY), "seed": 0, "out-dir": str(tmp_path),
        "round-timeout": 5.0, "min-nodes": 3, "connect-timeout": 5.0,
    })
    server_app.main(FakeGrid(), context)
    assert channel.read_end(tmp_path)["message"] == "min-nodes 3 is more than the experiment's 2 clients; use at most 2"


# --- run config, flags and the clients left out --------------------------------------------------

RUN_CONFIG = {"config": "/abs/seed.toml", "seed": -1, "out-dir": "out", "round-timeout": 30.0, "min-nodes": 1,
              "connect-timeout": 60.0}


@pytest.mark.parametrize("change, problem", [
    ({"round-timeout": "abc"}, "run config round-timeout='abc' is not a number"),
    ({"min-nodes": 0}, "run config min-nodes 0 must be at least 1"),
    ({"min-nodes": 1.5}, "run config min-nodes=1.5 is not a whole number"),
    ({"min-nodes": math.nan}, "run config min-nodes=nan is not a whole number"),
    ({"connect-timeout": math.inf}, "run config connect-timeout inf must be a finite number of seconds >= 1"),
])
def test_bad_run_configs_are_named(change, problem):
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[")):
        Settings.from_run_config({**RUN_CONFIG, **change})


def test_an_unwritable_out_dir_is_named(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(ConfigError, match=f"out-dir {blocked / 'out'} cannot be created"):
        server_app.writable_out_dir(blocked / "out")


def test_limits():
    assert limits_problem(30, 1, 300) is None
    assert limits_problem(math.nan, 1, 300) == "round-timeout nan must be a finite number of seconds >= 1"
    assert limits_problem(0.5, 1, 300) == "round-timeout 0.5 must be a finite number of seconds >= 1"
    with pytest.raises(ConfigError, match="--round-timeout inf must be a finite number"):
        Faults(round_timeout=math.inf)


def test_left_out_clients_are_told_per_client():
    left_out = [
        {"seed": 0, "method": "fedavg", "round": 2, "step": "train", "client": 2, "reason": "no answer within 30 s"},
        {"seed": 0, "method": "fedavg", "round": 2, "step": "evaluate", "client": 2, "reason": "no answer within 30 s"},
    ]
    assert left_out_lines(left_out) == [
        "client 2 was left out of seed 0 fedavg round 2 (train: no answer within 30 s), "
        "round 2 (evaluate: no answer within 30 s); its results for those rounds are missing"]


def test_a_dead_supernode_fails_the_wait_for_the_nodes_at_once(tmp_path):
    dead = types.SimpleNamespace(poll=lambda: 3, returncode=3)  # what Popen says of an exited process
    superlink = types.SimpleNamespace(poll=lambda: None)  # still running
    running = Cluster("127.0.0.1:1", tmp_path, {}, superlink, [superlink, dead])
    with pytest.raises(FedbridgeError, match=r"SuperNode of client 2 \(partition-id=1\) exited \(code 3\)") as e:
        follow(running, 1, tmp_path, lambda r, records, diagnostics, state: None, patience=60)
    assert str(tmp_path / "supernode-1.log") in str(e.value)



def test_follow_hands_back_the_clients_the_run_left_out(tmp_path):
    """What the ServerApp wrote (connected, one round, then its end) is what `fedbridge deploy` reads
    back; client 2's node died after connecting, which only leaves it out of rounds."""
    missing = [{"round": 1, "step": "evaluate", "client": 2, "reason": "no answer within 30 s"}]
    channel.write_connected(tmp_path)
    channel.write_round(tmp_path, 1, [{"round": 1, "client": 1}], [], ServerState({"w": torch.ones(1, 2)}, {}))
    channel.write_end(tmp_path, True, "", missing)
    alive, dead = types.SimpleNamespace(poll=lambda: None), types.SimpleNamespace(poll=lambda: 1, returncode=1)
    seen = []
    params, left_out = follow(Cluster("127.0.0.1:1", tmp_path, {}, alive, [alive, dead]), 1, tmp_path,
                              lambda r, records, diagnostics, state: seen.append(r), patience=60)
    assert seen == [1] and torch.equal(params["w"], torch.ones(1, 2)) and left_out == missing


@pytest.mark.parametrize("kind", ["directory", "broken link"])
def test_a_node_data_folder_names_what_stands_where_a_file_should_be(tmp_path, kind):
    from fedbridge.engines.flower.client_app import FOLDER_FILES, folder_dataset
    from fedbridge.errors import DataError

    where = tmp_path / FOLDER_FILES[0]
    where.mkdir() if kind == "directory" else where.symlink_to(tmp_path / "nowhere")
    with pytest.raises(DataError, match=f"{FOLDER_FILES[0]} is a (directory|symbolic link)"):
        folder_dataset(tmp_path, "mnist")


def test_nodes_get_the_experiment_without_its_strategy(tmp_path, monkeypatch):
    # a custom rule's module lives with the server; a node validating the experiment must not need it
    (tmp_path / "server_only_rule.py").write_text("def rule(updates, weights):\n    return {n: u[:1] for n, u in updates.items()}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    exp, _ = load_experiment(CONFIGS / "seed.toml", ['strategy={name="custom", rule="server_only_rule:rule"}'])
    sent = server_app.node_experiment(exp)
    import sys
    monkeypatch.delitem(sys.modules, "server_only_rule")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    from fedbridge.experiment import Experiment

    node = Experiment.model_validate_json(sent)
    assert node.strategy.name == "fedavg" and node.train == exp.train and node.clients == exp.clients


def test_client_level_privacy_wraps_the_strategy_on_flower_too(tmp_path, task_identity):
    pytest.importorskip("dp_accounting")
    private = TINY + ['privacy={level = "client", noise_multiplier = 1.0, clip = 0.1}']
    exp, _ = load_experiment(CONFIGS / "seed.toml", private)
    (tmp_path / "dp").mkdir()
    server_app.run(FakeGrid(), exp, 0, Settings(CONFIGS / "seed.toml", private, 0, tmp_path / "dp", round_timeout=5.0,
                                                min_nodes=1, connect_timeout=5.0), [])
    [first] = channel.read_rounds(tmp_path / "dp", 0)
    assert first.state.extra["privacy"] == {"clip": 0.1, "round": 1}  # the DP-FedAvg wrapper's state
    assert all(r["epsilon"] > 0 for r in first.records)
