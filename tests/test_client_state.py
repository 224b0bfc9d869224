"""The per-client state store: rows in memory or in files, read and written by client, and
checkpointed so that a crash at any point resumes from exactly the checkpoint's rows."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from conftest import CONFIGS, invoke, stopping_after
from fedbridge import client_state, results
from fedbridge.experiment import load_experiment
from fedbridge.study import run_study


def _default():
    return {"w": torch.zeros(1, 2), "b": torch.ones(1, 1)}


@pytest.fixture
def on_disk(monkeypatch):
    monkeypatch.setattr(client_state, "MEMORY_BUDGET", 0)


def test_rows_in_memory_while_they_fit():
    state = client_state.create("own", _default(), 4)  # 4 clients x 12 bytes, far under the budget
    assert state.rows is not None and state.rows["w"].shape == (4, 2)


def test_rows_in_files_beyond_the_budget_read_as_written(on_disk, tmp_path):
    with client_state.files_in(tmp_path):
        state = client_state.create("own", _default(), 5)
    assert state.rows is None and (tmp_path / "own" / "w").stat().st_size == 2 * 5 * 2 * 4  # two slots a client
    later = state.put(torch.tensor([1, 3]), {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.zeros(2, 1)})
    rows = later.take(torch.tensor([0, 1, 3]))
    assert rows["w"].tolist() == [[0.0, 0.0], [1.0, 2.0], [3.0, 4.0]]  # client 0 was never written: the default
    assert rows["b"].flatten().tolist() == [1.0, 0.0, 0.0]
    assert state.take(torch.tensor([1]))["w"].tolist() == [[0.0, 0.0]]  # the state before the put is unchanged


def _saved(extra, round_, run):
    out = {}
    client_state.checkpointed(extra, round_, run, lambda plain: out.update(plain))
    return out


def test_a_checkpoint_reopens_to_its_rows_after_a_crash_at_any_point(on_disk, tmp_path):
    with client_state.files_in(tmp_path / client_state.FOLDER):
        state = client_state.create("own", _default(), 3)
    one = {"w": torch.tensor([[5.0, 6.0]]), "b": torch.tensor([[7.0]])}
    state = state.put(torch.tensor([2]), one)
    at_1 = _saved({"own": state}, 1, tmp_path)
    assert at_1["own"]["folder"] == f"{client_state.FOLDER}/own"
    state = state.put(torch.tensor([0]), {"w": torch.tensor([[9.0, 9.0]]), "b": torch.tensor([[9.0]])})

    def crash_before_saving(plain):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # round 2's rows written and synced, its checkpoint never saved
        client_state.checkpointed({"own": state}, 2, tmp_path, crash_before_saving)
    reopened = client_state.reopened(at_1, tmp_path)["own"]
    assert reopened.take(torch.tensor([0, 2]))["w"].tolist() == [[0.0, 0.0], [5.0, 6.0]]

    at_2 = {}

    def crash_after_saving(plain):
        at_2.update(plain)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # round 2's checkpoint saved, and the run stopped right after
        client_state.checkpointed({"own": state}, 2, tmp_path, crash_after_saving)
    reopened = client_state.reopened(at_2, tmp_path)["own"]
    assert reopened.take(torch.tensor([0, 2]))["w"].tolist() == [[9.0, 9.0], [5.0, 6.0]]
    # a later round's put goes to the other slot: the checkpoint's rows stay on disk
    reopened.put(torch.tensor([0]), {"w": torch.tensor([[1.0, 1.0]]), "b": torch.tensor([[1.0]])})
    assert client_state.reopened(at_2, tmp_path)["own"].take(torch.tensor([0]))["w"].tolist() == [[9.0, 9.0]]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sets(st.integers(0, 5), min_size=1), st.floats(-1e3, 1e3, width=32)), max_size=6),
       st.booleans())
def test_files_and_memory_hold_the_same_rows(tmp_path_factory, puts, checkpoint_between):
    run = tmp_path_factory.mktemp("run")
    with client_state.files_in(run):
        memory = client_state.create("s", _default(), 6)
        budget, client_state.MEMORY_BUDGET = client_state.MEMORY_BUDGET, 0
        try:
            files = client_state.create("s", _default(), 6)
        finally:
            client_state.MEMORY_BUDGET = budget
    for r, (ids, value) in enumerate(puts, start=1):
        ids = torch.tensor(sorted(ids))
        rows = {"w": torch.full((len(ids), 2), value), "b": torch.full((len(ids), 1), -value)}
        memory, files = memory.put(ids, rows), files.put(ids, rows)
        if checkpoint_between:
            files = client_state.reopened(_saved({"s": files}, r, run), run)["s"]
    everyone = torch.arange(6)
    assert all(torch.equal(memory.take(everyone)[n], files.take(everyone)[n]) for n in ("w", "b"))


@pytest.mark.parametrize("strategy", ["ditto", "fedper", "scaffold"])
def test_a_run_stopped_with_its_state_in_files_resumes_to_the_same_results(tmp_path, on_disk, strategy):
    small = ["data.name=digits", "partition.sizes=[300,300,300]", "clients=[{count=3}]", "train.rounds=3",
             "train.batch_size=16", "baselines=[\"local\"]", f"strategy={{name=\"{strategy}\"}}", "train.optimizer=\"sgd\"",
             "train.lr=0.05", "train.client_fraction=0.67"]
    reference, out = tmp_path / "reference", tmp_path / "stopped"
    assert invoke("run", CONFIGS / "seed.toml", *[a for s in small for a in ("--set", s)], "--out", reference,
                  "--quiet").exit_code == 0
    exp, _ = load_experiment(CONFIGS / "seed.toml", small)
    with pytest.raises(KeyboardInterrupt):
        run_study(exp, out, None, Console(quiet=True), stopping_after(strategy, 2), quiet=True)
    assert (out / client_state.FOLDER / f"seed0-{strategy}").is_dir()
    assert invoke("run", "--resume", out, "--quiet").exit_code == 0
    assert (out / results.METRICS).read_bytes() == (reference / results.METRICS).read_bytes()
    ours, theirs = results.load_weights(out, 0, strategy), results.load_weights(reference, 0, strategy)
    assert all(torch.equal(ours[n], theirs[n]) for n in theirs)
