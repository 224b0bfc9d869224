"""A Flower node's own data in the format [data] names, and a custom model on the nodes: scikit-
learn's breast-cancer table split in two CSV files, one per node, with a `module:function` model."""

import sys

import pytest
from sklearn.datasets import load_breast_cancer

pytest.importorskip("flwr")

from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedbridge.deploy import Faults, flower_train  # noqa: E402
from fedbridge.engines.flower import client_app, server_app  # noqa: E402
from fedbridge.engines.flower.server_app import Settings  # noqa: E402
from fedbridge.engines.flower.processes import cluster  # noqa: E402
from fedbridge.errors import ConfigError, FedbridgeError  # noqa: E402
from fedbridge.experiment import load_experiment  # noqa: E402
from fedbridge.federation import build_federation, load_data  # noqa: E402

from test_flower_secagg import NodesGrid  # noqa: E402

FACTORY = """
import torch

def small(input_shape, num_classes):
    return torch.nn.Sequential(torch.nn.Linear(input_shape[0], 16), torch.nn.ReLU(), torch.nn.Linear(16, num_classes))
"""

CONFIG = """
name = "hospitals-deployed"
seed = 0
model = "{module}:small"
baselines = []
[data]
format = "csv"
path = "{path}"
label = "target"
[partition]
name = "iid"
[[clients]]
profile = "clean"
count = 2
[train]
rounds = 2
local_epochs = 2
batch_size = 16
lr = 0.05
"""


@pytest.fixture
def task_identity(monkeypatch):
    """Flower's Message wants to know which run it belongs to, as inside a real ServerApp."""
    for key in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, key, 1)


@pytest.fixture
def hospitals(tmp_path, monkeypatch):
    """Two CSV files (rows 0-284 and 285-568 of breast-cancer) and the experiment's config, with
    the model's module importable from tmp_path (the nodes inherit PYTHONPATH)."""
    table = load_breast_cancer(as_frame=True).frame
    paths = []
    for i, rows in enumerate((slice(0, 285), slice(285, None))):
        paths.append(tmp_path / f"hospital-{i}.csv")
        table.iloc[rows].to_csv(paths[-1], index=False)
    module = f"factory_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    config = tmp_path / "hospitals.toml"
    config.write_text(CONFIG.format(module=module, path=paths[0]))
    return config, paths, module


def test_a_node_reads_its_csv_holding_out_its_part_of_the_common_test(hospitals):
    config, paths, _ = hospitals
    exp, _ = load_experiment(config, [])
    own = client_app.build_own(exp, 0, 1, None, str(paths[1]))
    # 284 rows: 20% held out (stratified, 56) as its part of the common test set, then 20% of the 228 left
    # (46) as its own test
    assert (len(own.clean_test_labels), len(own.train_labels), len(own.clients[0].test_labels)) == (56, 182, 46)
    assert own.input_shape == (30,) and own.num_classes == 2 and own.clients[0].index == 1
    # standardised with the node's own training rows
    assert own.train_images.mean(0).abs().max() < 1e-4


def test_a_node_that_cannot_import_the_model_says_so_naming_the_module_and_the_fix(hospitals, monkeypatch):
    config, _, module = hospitals
    text = load_experiment(config, [])[0].model_dump_json()
    monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(config.parent)])
    with pytest.raises(ConfigError, match=f"cannot import module '{module}'.*install its module there, or start the "
                                          "SuperNode with it on PYTHONPATH"):
        client_app.node_experiment(text)


def test_the_server_refuses_nodes_whose_classes_differ(hospitals, tmp_path, task_identity):
    """Classes are numbered in the sorted order of each node's labels: "0"/"1" on one node and
    "benign"/"malignant" on the other would silently mean other things."""
    config, paths, _ = hospitals
    named = tmp_path / "named.csv"
    table = load_breast_cancer(as_frame=True).frame.iloc[285:]
    table.assign(target=table["target"].map({0: "malignant", 1: "benign"})).to_csv(named, index=False)
    exp, _ = load_experiment(config, [])
    grid = NodesGrid(configs=[{"partition-id": 0, "data-path": str(paths[0])}, {"partition-id": 1, "data-path": str(named)}])
    (tmp_path / "out").mkdir()
    settings = Settings(config, [], 0, tmp_path / "out", round_timeout=5.0, min_nodes=1, connect_timeout=5.0)
    with pytest.raises(FedbridgeError, match=r"differ in input shape or classes \(input \(30,\), 2 classes \(0, 1\); "
                                             r"input \(30,\), 2 classes \(benign, malignant\)\)"):
        server_app.run(grid, exp, 0, settings, [])


def test_a_node_refuses_its_own_data_for_a_bundled_table(hospitals):
    config, paths, _ = hospitals
    bundled = config.with_name("bundled.toml")
    text = config.read_text()
    bundled.write_text(text[:text.index("[data]")] + '[data]\nname = "breast-cancer"\n' + text[text.index("[partition]"):])
    exp, _ = load_experiment(bundled, [])
    with pytest.raises(ConfigError, match="set data.format"):
        client_app.own_dataset(exp, paths[0])


@pytest.mark.flower
def test_two_nodes_each_holding_a_csv_train_a_custom_model(hospitals, tmp_path):
    config, paths, _ = hospitals
    exp, _ = load_experiment(config, [])
    federation = build_federation(load_data(exp, None), exp, exp.seed)  # the server's: unused by the nodes
    records = []
    (tmp_path / "cluster").mkdir()
    with cluster(2, tmp_path / "cluster", data_folders=paths) as running:
        train = flower_train(running, Faults(round_timeout=120))
        train(exp.method("fedavg"), federation, exp, exp.seed, lambda r, got, diagnostics, state: records.extend(got))
    last = [r for r in records if r["round"] == 2]
    assert {(r["client"], r["test_set"]) for r in last} >= {(1, "own"), (2, "own"), (1, "clean"), (2, "clean")}
    # each node's own test rows: 46 (of 228 and 229 rows that are not held out as the common test)
    sizes = {1: 46, 2: 46}
    for r in last:
        if r["test_set"] == "own":
            assert r["accuracy"] * sizes[r["client"]] == pytest.approx(round(r["accuracy"] * sizes[r["client"]]), abs=1e-4)
    assert all(r["accuracy"] > 0.85 for r in last if r["test_set"] in ("own", "clean"))
