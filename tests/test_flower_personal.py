"""Strategies whose clients keep state (SCAFFOLD, FedPer, FedRep, Ditto, fine-tuning, FedBN), deployed:
the ServerApp's loop against an in-process Grid whose nodes are fedbridge's own ClientApp functions,
so the message protocol and the nodes' state are the real ones without Flower's processes (the
same strategies on a real cluster: test_flower_strategies.py). 2 unequal MNIST clients, 2 rounds of
plain SGD; deployment and simulation must give the same global weights and the same per-client
accuracies (1e-5)."""

import shutil

import pytest

from conftest import CONFIGS
from fake_grid import Grid

pytest.importorskip("flwr")

from flwr.app import Context, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedbridge.data.datasets import load_dataset  # noqa: E402
from fedbridge.engines import simulation  # noqa: E402
from fedbridge.engines.flower import channel, client_app, node_state, server_app  # noqa: E402
from fedbridge.engines.flower.server_app import Settings  # noqa: E402
from fedbridge.errors import ConfigError  # noqa: E402
from fedbridge.experiment import load_experiment  # noqa: E402
from fedbridge.federation import build_federation  # noqa: E402

pytestmark = pytest.mark.integration

SMALL = ["partition.sizes=[400,700]", "train.rounds=2", "baselines=[]", 'train.optimizer="sgd"', "train.lr=0.05",
         "train.batch_size=32"]
ANSWER = {"query": client_app.describe, "train": client_app.train, "evaluate": client_app.evaluate_model}


class NodesHere(Grid):
    """A Grid whose nodes answer at once, each by the ClientApp's functions with its own partition-id;
    `drops(message)`, which a test may replace, says whether the node leaves a message unanswered."""

    def __init__(self, data_dir, n: int = 2, run: int = 1):
        super().__init__([100 + i for i in range(n)])
        self.contexts = {node: Context(run, node, {"partition-id": i, "data-dir": str(data_dir)}, RecordDict(), {})
                         for i, node in enumerate(self.nodes)}
        self.answers, self.drops = [], lambda m: False

    def answer(self, m):
        if self.drops(m):
            return None
        reply = ANSWER[m.metadata.message_type](m, self.contexts[m.metadata.dst_node_id])
        self.answers.append((m.metadata.message_type, reply))
        return reply


def round_2_training(m, node: int) -> dict | None:
    """The config of `m` if it is round 2's training message to `node`, else None."""
    config = m.content.config_records.get("config", {})
    if m.metadata.message_type == "train" and config.get("round") == 2 and m.metadata.dst_node_id == node:
        return config
    return None


@pytest.fixture
def run_identity(monkeypatch):
    """Flower's Message wants to know which run it belongs to, as inside a real ServerApp."""
    for key in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, key, 1)


def deploy_here(grid, overrides, out, resume=None):
    exp, _ = load_experiment(CONFIGS / "seed.toml", [*SMALL, *overrides])
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings(CONFIGS / "seed.toml", [*SMALL, *overrides], exp.seed, out, round_timeout=5.0, min_nodes=1,
                        connect_timeout=5.0, resume=resume)
    server_app.run(grid, exp, exp.seed, settings, [])
    return exp, channel.read_rounds(out, 0)


def simulated(exp, mnist):
    records, states = [], []
    federation = build_federation(mnist, exp, exp.seed)

    def on_round(r, metrics, diagnostics, state):
        records.extend(metrics)
        states.append(state)

    simulation.train(exp.method(exp.strategy.name), federation, exp, exp.seed, on_round)
    return records, states[-1]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[n] - b[n]).abs().max().item() for n in a)


def accuracies(records, own_models=False):
    """By (round, client, test set); a client's own model is not scored on another node's data (it
    never leaves its node), so the simulation's cross-client scores have no deployed counterpart."""
    return {(r["round"], r["client"], r["test_set"]): r["accuracy"] for r in records
            if not (own_models and r["test_set"].startswith("client:"))}


@pytest.mark.parametrize("strategy", [
    '{name="scaffold"}', '{name="fedrep", head_epochs=1}', '{name="ditto", lam=0.5}', '{name="finetune"}',
])
def test_deployed_with_state_on_the_nodes_gives_the_simulations_weights_and_accuracies(
        tmp_path, mnist_dir, run_identity, strategy):
    grid = NodesHere(mnist_dir)
    exp, rounds = deploy_here(grid, [f"strategy={strategy}"], tmp_path / "out")
    records, state = simulated(exp, load_dataset("mnist", mnist_dir))
    assert [r.number for r in rounds] == [1, 2]
    assert max_difference(rounds[-1].state.params, state.params) <= 1e-5
    own = "scaffold" not in strategy
    deployed, expected = accuracies([x for r in rounds for x in r.records]), accuracies(records, own)
    assert deployed.keys() == expected.keys()
    assert max(abs(deployed[k] - expected[k]) for k in expected) <= 1e-5


def test_fedbn_with_heads_keeps_both_on_the_nodes(tmp_path, mnist_dir, run_identity):
    """FedPer with keep_local = ["bn"] on a model with BatchNorm (layer 2) and a head (layer 3)."""
    grid = NodesHere(mnist_dir)
    exp, rounds = deploy_here(grid, ['model="custom_models:batch_normed"', 'strategy={name="fedper", keep_local=["bn"]}'],
                              tmp_path / "out")
    records, state = simulated(exp, load_dataset("mnist", mnist_dir))
    assert max_difference(rounds[-1].state.params, state.params) <= 1e-5
    deployed, expected = accuracies([x for r in rounds for x in r.records]), accuracies(records, True)
    assert deployed.keys() == expected.keys() and max(abs(deployed[k] - expected[k]) for k in expected) <= 1e-5
    sent = {name for kind, reply in grid.answers if kind == "train" for name in reply.content["arrays"]}
    assert sent == {"1.weight", "1.bias"}  # neither the BatchNorm layer nor the head left a node


def test_client_level_privacy_with_parameters_kept_on_nodes_is_refused():
    exp, _ = load_experiment(CONFIGS / "seed.toml", [*SMALL, 'model="custom_models:batch_normed"',
                                                       'strategy={name="fedavg", keep_local=["bn"]}',
                                                       'privacy={level = "client", noise_multiplier = 1.0, clip = 0.1}'])
    with pytest.raises(ConfigError, match="keeps part of the model on each node"):
        server_app.deployable(exp)


@pytest.mark.slow  # four deployments of 3 rounds
def test_resume_continues_each_nodes_state_and_a_lost_one_starts_again(tmp_path, mnist_dir, run_identity, monkeypatch,
                                                                       caplog):
    """Ditto, 3 rounds: a run resumed after round 2 on a new Flower run (the nodes drop the round 3
    they had trained for the abandoned one) ends as the uninterrupted run; a node whose state is
    wiped before round 2 starts its personal model again, and the server says so."""
    overrides = ['strategy={name="ditto", lam=0.5}', "train.rounds=3"]
    _, whole = deploy_here(NodesHere(mnist_dir), overrides, tmp_path / "whole")
    monkeypatch.setattr(TaskIdentity, "_run_id", 2)
    _, abandoned = deploy_here(NodesHere(mnist_dir), overrides, tmp_path / "abandoned")
    (tmp_path / "resumed").mkdir()
    channel.write_resume(tmp_path / "resumed", 2, abandoned[1].state)
    monkeypatch.setattr(TaskIdentity, "_run_id", 3)
    _, resumed = deploy_here(NodesHere(mnist_dir), overrides, tmp_path / "resumed", tmp_path / "resumed" / channel.RESUME)
    assert [r.number for r in resumed] == [3]
    assert max_difference(resumed[0].state.params, whole[-1].state.params) <= 1e-5
    assert accuracies(resumed[0].records) == pytest.approx(accuracies(whole[-1].records), abs=1e-5)

    wiping = NodesHere(mnist_dir)

    def wipe_client_1_before_round_2(m):
        if config := round_2_training(m, node=100):
            shutil.rmtree(node_state.store(config["experiment"], int(config["seed"]), 0).folder)
        return False  # the node answers, from what is left of its state

    wiping.drops = wipe_client_1_before_round_2
    monkeypatch.setattr(TaskIdentity, "_run_id", 4)
    _, lost = deploy_here(wiping, overrides, tmp_path / "lost")
    assert [r.number for r in lost] == [1, 2, 3]
    assert "client 1's node has lost its state after round 1 and continues from round 0's" in caplog.text
    own = {k: v for k, v in accuracies(lost[-1].records).items() if k[1] == 1 and k[2] == "own"}
    assert own != {k: v for k, v in accuracies(whole[-1].records).items() if k[1] == 1 and k[2] == "own"}


@pytest.mark.parametrize("strategy", ['{name="fedrep"}', '{name="ditto"}'])
def test_a_node_silent_in_a_round_is_left_out_and_its_state_waits(tmp_path, mnist_dir, run_identity, strategy):
    """Client 2's node does not answer round 2's training: the round goes on with client 1 (FedRep's
    head phase and Ditto's personal model read the answers of the one message), and client 2 is
    scored with the state it had after round 1."""
    grid = NodesHere(mnist_dir)
    grid.drops = lambda m: round_2_training(m, node=101) is not None
    exp, _ = load_experiment(CONFIGS / "seed.toml", [*SMALL, f"strategy={strategy}"])
    out = tmp_path / "out"
    out.mkdir()
    left_out = []
    server_app.run(grid, exp, exp.seed, Settings(CONFIGS / "seed.toml", [*SMALL, f"strategy={strategy}"], exp.seed, out,
                                                 round_timeout=1.0, min_nodes=1, connect_timeout=5.0), left_out)
    assert [(x["round"], x["step"], x["client"]) for x in left_out] == [(2, "train", 2)]
    rounds = channel.read_rounds(out, 0)
    before, after = accuracies(rounds[0].records, True), accuracies(rounds[1].records, True)
    assert (2, 2, "own") in after
    if exp.strategy.name == "ditto":  # client 2 is scored with its personal model, untrained since round 1
        assert after[(2, 2, "own")] == before[(1, 2, "own")]
