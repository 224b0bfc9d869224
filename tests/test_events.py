"""[log] tensorboard = true: event files per client and test set, read back; refused without the package."""

import importlib.util
import json

import pytest

from conftest import CONFIGS
from fedbridge import events
from test_cli import TINY, run


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="needs the tensorboard extra")
def test_event_files_hold_every_metric_of_every_client_and_test_set(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = run("run", CONFIGS / "seed.toml", *TINY, "--set", "log.tensorboard=true", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for (seed, method, client, test_set) in {(r["seed"], r["method"], r["client"], r["test_set"]) for r in metrics}:
        mine = sorted((r for r in metrics if (r["seed"], r["method"], r["client"], r["test_set"]) == (seed, method, client, test_set)),
                      key=lambda r: r["round"])
        read = EventAccumulator(str(events.folder(out, seed, method, client, test_set))).Reload()
        for tag in ("accuracy", "loss"):
            scalars = read.Scalars(tag)
            assert [s.step for s in scalars] == [r["round"] for r in mine]
            assert [s.value for s in scalars] == pytest.approx([r[tag] for r in mine], rel=1e-6)
    assert (out / "tensorboard" / "seed0" / "local" / "client1" / "client-2").is_dir()


def test_tensorboard_asked_for_without_the_package_is_refused_before_the_run_directory(tmp_path, monkeypatch):
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else found(name, *a))
    out = tmp_path / "run"
    result = run("run", CONFIGS / "seed.toml", *TINY, "--set", "log.tensorboard=true", "--out", out)
    assert result.exit_code == 2 and "pip install 'fedbridge[tensorboard]'" in result.output
    assert not out.exists()
