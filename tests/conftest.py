import os
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CONFIGS = ROOT / "configs"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's real cache."""
    monkeypatch.setenv("FEDBRIDGE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def mnist_dir() -> Path:
    data = os.environ.get("FEDBRIDGE_DATA")
    if not data or not (Path(data) / "mnist").is_dir():
        pytest.skip("real MNIST not available: set FEDBRIDGE_DATA to a folder holding mnist/ (CI sets ../shared/data)")
    return Path(data)


def invoke(*args):
    """Run the `fedbridge` command in-process; whatever the outcome, never a traceback to the user."""
    from click.testing import CliRunner

    from fedbridge.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def stopping_after(method_name: str, round_: int):
    """The simulation's `train`, interrupted (as by Ctrl-C) once `method_name` has checkpointed `round_`."""
    from fedbridge.engines import simulation

    def train(method, federation, exp, seed, on_round, **more):
        def then_stop(r, records, diagnostics, state):
            on_round(r, records, diagnostics, state)
            if method.name == method_name and r == round_:
                raise KeyboardInterrupt
        return simulation.train(method, federation, exp, seed, then_stop, **more)

    return train


def through_a_checkpoint(state):
    """`state` after torch.save and a weights-only torch.load, as `fedbridge run --resume` reads it back."""
    import io

    import torch

    from fedbridge.strategies.api import ServerState

    saved = io.BytesIO()
    torch.save({"params": state.params, "extra": state.extra}, saved)
    saved.seek(0)
    checkpoint = torch.load(saved, weights_only=True)
    return ServerState(checkpoint["params"], checkpoint["extra"])
