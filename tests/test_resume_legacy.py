"""A run of local-only, FedPer, FedRep or Ditto interrupted before client_state.py existed kept every
client's own model in the checkpointed state's params [n, ...]; resumed today, its rows move into the
store and the run ends exactly as an uninterrupted one."""

import pytest
import torch
from rich.console import Console

from conftest import CONFIGS, invoke as run, stopping_after
from fedbridge import results
from fedbridge.experiment import load_experiment
from fedbridge.study import run_study

SMALL = ["data.name=digits", "partition.sizes=[200,200]", "train.rounds=3", "train.batch_size=16",
         'baselines=["local"]', "clients.1.profile.sigma=0.5"]


def old_layout(checkpoint: dict, kind: str) -> dict:
    """The checkpoint as fedbridge wrote it before the store: own models [n, ...] in params (FedPer's
    body repeated in every row), Ditto's global model in extra["global"]."""
    extra = dict(checkpoint["extra"])
    own = extra.pop("own")["rows"]
    n = next(iter(own.values())).shape[0]
    params = {k: own[k] if k in own else p.expand(n, *p.shape[1:]).clone() for k, p in checkpoint["params"].items()}
    if kind == "ditto":
        extra["global"] = checkpoint["params"]
    return {**checkpoint, "params": params, "extra": extra}


def interrupted(tmp_path, kind: str, stop: str):
    exp, _ = load_experiment(CONFIGS / "seed.toml", SMALL + [f"strategy.name={kind}"])
    reference, old = tmp_path / "reference", tmp_path / "old"
    run_study(exp, reference, None, Console(quiet=True), quiet=True)
    with pytest.raises(KeyboardInterrupt):
        run_study(exp, old, None, Console(quiet=True), stopping_after(stop, 2), quiet=True)
    return reference, old


# local-only rides along with FedPer; FedRep's state is FedPer's (fedrep.py), so it stands for both
@pytest.mark.parametrize("kind, stop", [("fedper", "local"), ("fedrep", "fedrep"), ("ditto", "ditto")])
def test_an_old_checkpoint_of_own_models_resumes_to_the_same_result(tmp_path, kind, stop):
    reference, old = interrupted(tmp_path, kind, stop)
    checkpoint = results.load_checkpoint(old)
    assert checkpoint["method"] == stop and "own" in checkpoint["extra"]
    results.save_checkpoint(old, old_layout(checkpoint, kind))

    assert run("run", "--resume", old, "--quiet").exit_code == 0
    assert (old / results.METRICS).read_bytes() == (reference / results.METRICS).read_bytes()
    for method in ("local", kind):
        mine, theirs = results.load_weights(old, 0, method), results.load_weights(reference, 0, method)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_an_old_ditto_checkpoint_without_its_global_model_is_refused_naming_the_fix(tmp_path):
    _, old = interrupted(tmp_path, "ditto", "ditto")
    checkpoint = old_layout(results.load_checkpoint(old), "ditto")
    del checkpoint["extra"]["global"]
    results.save_checkpoint(old, checkpoint)
    before = (old / results.METRICS).read_bytes()

    refused = run("run", "--resume", old, "--quiet")
    assert refused.exit_code == 1
    assert "checkpoint.pt was made before per-client state had a store" in refused.output
    assert "no global model" in refused.output and "delete it" in refused.output
    assert (old / results.METRICS).read_bytes() == before
