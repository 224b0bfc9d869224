"""SecAgg+ on the Flower deployment (engines/flower/secagg*.py), without Flower processes: the
ServerApp's round loop against a Grid whose three nodes are fedbridge's real ClientApp, called in
this process with a Context each (as a SuperNode keeps one per run). What the server receives is
recorded, and what each node sent before masking is recorded on the node's side."""

import copy

import numpy as np
import pytest
import torch

from conftest import invoke
from fake_grid import Grid

pytest.importorskip("flwr")  # the `flower` extra; `make test` installs it

from flwr.app import Context, Message, RecordDict  # noqa: E402
from flwr.common import bytes_to_ndarray, parameters_to_ndarrays  # noqa: E402
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage  # noqa: E402
from flwr.compat.common import recorddict_compat as compat  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedbridge.engines.flower import channel, client_app, secagg, server_app  # noqa: E402
from fedbridge.engines.flower.secagg import SecAgg  # noqa: E402
from fedbridge.engines.flower.server_app import Settings  # noqa: E402
from fedbridge.errors import ConfigError, FedbridgeError  # noqa: E402
from fedbridge.experiment import load_experiment  # noqa: E402

CONFIG = """
name = "secagg"
seed = 0
model = "mlp"
baselines = []
[data]
name = "digits"
[partition]
name = "sizes"
sizes = [SIZES]
[[clients]]
profile = "clean"
count = 3
[train]
rounds = 1
local_epochs = 1
batch_size = 32
lr = 0.05
"""
SIZES = [150, 150, 100]  # each keeps 80% for training: 120, 120 and 80 samples


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(CONFIG.replace("SIZES", ", ".join(map(str, SIZES))))
    return path


@pytest.fixture
def task_identity(monkeypatch):
    """Flower's Message wants to know which run it belongs to, as inside a real ServerApp."""
    for key in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, key, 1)


class NodesGrid(Grid):
    """Three nodes (or one per node config) running fedbridge's ClientApp in process; every reply the server gets is kept in
    `received`. `silent(node, message)` says whether a node drops a message (it crashed)."""

    def __init__(self, silent=lambda node, message: False, configs=None):
        configs = configs or [{"partition-id": i} for i in range(3)]  # each node's node config
        super().__init__([101 + i for i in range(len(configs))])
        self.contexts = {n: Context(1, n, c, RecordDict(), {}) for n, c in zip(self.nodes, configs)}
        self.received, self.silent = [], silent

    def answer(self, m):
        if self.silent(m.metadata.dst_node_id, m):
            return None
        # a copy, as the wire gives each node its own (the workflow sends one record to all)
        reply = client_app.app(copy.deepcopy(m), self.contexts[m.metadata.dst_node_id])
        self.received.append(reply)
        return reply


def stage(message: Message) -> str | None:
    configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
    return configs.get(Key.STAGE) if configs is not None else None


@pytest.fixture
def sent(monkeypatch):
    """What each node handed secaggplus_mod to mask: {client: (its start model, its update, weight)}."""
    kept = {}
    real = secagg._fit

    def recording(msg, context, train):
        start = parameters_to_ndarrays(compat.recorddict_to_fitins(msg.content, keep_input=True).parameters)
        reply = real(msg, context, train)
        fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
        kept[int(fitres.metrics["partition-id"])] = (start, parameters_to_ndarrays(fitres.parameters), fitres.num_examples)
        return reply

    monkeypatch.setattr(secagg, "_fit", recording)
    return kept


def run(config, out, grid, secure: SecAgg | None = SecAgg(), timeout: float = 5.0, left_out=None, overrides=()):
    exp, _ = load_experiment(config, list(overrides))
    out.mkdir()
    settings = Settings(config, [], 0, out, round_timeout=timeout, min_nodes=1, connect_timeout=5.0, secagg=secure)
    server_app.run(grid, exp, 0, settings, [] if left_out is None else left_out)
    return [r.state.params for r in channel.read_rounds(out, 0)][-1]


def weighted_mean(updates: dict[int, tuple], clients: list[int]) -> list[np.ndarray]:
    weights = np.array([updates[c][2] for c in clients], float)
    return [sum(w * updates[c][1][i] for w, c in zip(weights, clients)) / weights.sum()
            for i in range(len(updates[clients[0]][1]))]


def flat_difference(params, start: list[np.ndarray]) -> list[np.ndarray]:
    return [p[0].double().numpy() - s for p, s in zip(params.values(), start)]


def test_the_server_holds_only_the_sum(config, tmp_path, task_identity, sent):
    grid = NodesGrid()
    model = run(config, tmp_path / "out", grid)
    masked = [r for r in grid.received if RECORD_KEY_CONFIGS in r.content.config_records
              and Key.MASKED_PARAMETERS in r.content.config_records[RECORD_KEY_CONFIGS]]
    assert len(masked) == 3 and set(sent) == {0, 1, 2}
    step = 2 * SecAgg().clip / SecAgg().quantization
    for reply in masked:
        # no model arrays reach the server, only integers uniform modulo 2^32
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        client = int(reply.content.config_records["fitres.metrics"]["partition-id"])
        _, update, weight = sent[client]
        ratio = weight / max(w for _, _, w in sent.values())
        ints = [bytes_to_ndarray(b) for b in reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
        as_floats = [i.astype(float) * step - SecAgg().clip for i in ints[1:]]  # the entries as if unmasked
        gap = max(np.abs(f - ratio * u).max() for f, u in zip(as_floats, update))
        assert gap > 1.0, "a masked vector read as plain quantized values would give the client's update away"
    start = sent[0][0]
    expected = weighted_mean(sent, [0, 1, 2])
    bound = SecAgg().error_bound([w for _, _, w in sent.values()])
    assert bound == pytest.approx(step * 3 * 120 / 320)
    errors = [np.abs(d - e).max() for d, e in zip(flat_difference(model, start), expected)]
    assert max(errors) <= bound + 1e-6  # float32 model weights
    assert max(errors) > 0  # quantized: not the float mean


def test_the_round_equals_the_plain_deployment_within_the_bound(config, tmp_path, task_identity):
    secure = run(config, tmp_path / "secure", NodesGrid())
    plain = run(config, tmp_path / "plain", NodesGrid(), secure=None)
    bound = SecAgg().error_bound([120, 120, 80])
    gaps = [(a - b).abs().max().item() for a, b in zip(secure.values(), plain.values())]
    assert max(gaps) <= bound + 1e-6


def test_distributed_dp_fedavg_runs_on_the_nodes_under_secure_aggregation(config, tmp_path, task_identity):
    """Each node clips its update and adds its share of the noise before masking, from the stream the
    DP-FedAvg wrapper uses around the plain deployment's strategy: the same model within one step."""
    pytest.importorskip("dp_accounting")
    private = ['privacy={level = "client", noise_multiplier = 1.0, clip = 0.5, mode = "distributed"}']
    secure = run(config, tmp_path / "secure", NodesGrid(), overrides=private)
    plain = run(config, tmp_path / "plain", NodesGrid(), secure=None, overrides=private)
    start = run(config, tmp_path / "no-dp", NodesGrid(), secure=None)
    gaps = [(a - b).abs().max().item() for a, b in zip(secure.values(), plain.values())]
    assert max(gaps) <= SecAgg().error_bound([1, 1, 1]) + 1e-6
    assert max((a - b).abs().max().item() for a, b in zip(plain.values(), start.values())) > 0.01  # noised
    [first] = channel.read_rounds(tmp_path / "secure", 0)
    assert all(r["epsilon"] > 0 for r in first.records)  # the accountant's ε, as without --secagg


def test_the_same_seed_gives_the_same_model(config, tmp_path, task_identity):
    first = run(config, tmp_path / "a", NodesGrid())
    again = run(config, tmp_path / "b", NodesGrid())
    assert all(torch.equal(first[n], again[n]) for n in first)


def dropped_after_sharing_keys(node, message):
    """Node 103 (client 3) crashes once it has shared its keys: no masked vector, no unmasking."""
    return node == 103 and stage(message) in (Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK)


def test_a_node_dropping_out_mid_protocol_within_the_threshold_still_completes_the_round(
        config, tmp_path, task_identity, sent):
    left_out = []
    model = run(config, tmp_path / "out", NodesGrid(dropped_after_sharing_keys), timeout=1.0, left_out=left_out)
    assert [(e["client"], e["step"]) for e in left_out] == [(3, "train")]
    assert "dropped out of the secure aggregation" in left_out[0]["reason"]
    assert set(sent) == {0, 1}  # client 3 never trained; its pairwise masks were removed from the others' shares
    expected = weighted_mean(sent, [0, 1])
    errors = [np.abs(d - e).max() for d, e in zip(flat_difference(model, sent[0][0]), expected)]
    assert max(errors) <= SecAgg().error_bound([120, 120]) + 1e-6


def test_two_of_three_dropping_out_stops_the_run_naming_the_threshold(config, tmp_path, task_identity):
    def two_dropped(node, message):
        return node in (102, 103) and stage(message) in (Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK)

    with pytest.raises(FedbridgeError, match="halted, as some node had fewer than --secagg-threshold 2 answering neighbours"):
        run(config, tmp_path / "out", NodesGrid(two_dropped), timeout=1.0)


@pytest.mark.parametrize("overrides, secure, problem", [
    (["strategy.name=median"], SecAgg(), "needs each client's update"),
    (["strategy.name=fedavg", "strategy.noise_screen=fedns"], SecAgg(), "with noise_screen"),
    (["train.client_fraction=0.34"], SecAgg(), "at least 2 clients a round"),
    (['privacy={level = "client", noise_multiplier = 1.0, clip = 0.5}'], SecAgg(), 'needs privacy.mode = "distributed"'),
    ([], SecAgg(shares=3, threshold=3), "--secagg-threshold 3 must be at least 2, below --secagg-shares 3"),
    ([], SecAgg(shares=5, threshold=4), "at most the 3 clients of a round"),
    ([], SecAgg(clip=0.0), "--secagg-clip 0.0 must be > 0"),
    ([], SecAgg(quantization=2**31), "use at most 1431655764"),
])
def test_what_secure_aggregation_cannot_run_is_refused(config, overrides, secure, problem):
    exp, _ = load_experiment(config, overrides)
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace("+", r"\+")):
        secagg.check(exp, secure)


def test_the_cli_refuses_before_anything_starts(config, tmp_path):
    out = tmp_path / "run"
    result = invoke("deploy", str(config), "--secagg", "--set", "strategy.name=median", "--out", str(out))
    assert result.exit_code == 2
    assert "needs each client's update" in result.output
    assert not out.exists()


def test_a_secagg_key_without_secagg_is_refused(config, tmp_path):
    result = invoke("deploy", str(config), "--secagg-threshold", "3", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2 and "--secagg-threshold sets up secure aggregation; add --secagg" in result.output
    assert not (tmp_path / "run").exists()
