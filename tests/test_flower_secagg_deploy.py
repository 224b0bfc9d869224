"""`fedbridge deploy --secagg` with real Flower processes: a SuperLink and three SuperNodes on
loopback, one FedAvg round through SecAgg+, against the simulation engine's round (which the plain
deployment gives within 1e-5, test_flower.py)."""

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("flwr")

from fedbridge.cli import main  # noqa: E402
from fedbridge.data.datasets import load_dataset  # noqa: E402
from fedbridge.engines import simulation  # noqa: E402
from fedbridge.engines.flower.secagg import SecAgg  # noqa: E402
from fedbridge.experiment import load_experiment  # noqa: E402
from fedbridge.federation import build_federation  # noqa: E402

from test_flower_secagg import CONFIG, SIZES  # noqa: E402

pytestmark = pytest.mark.flower


def test_a_secure_round_gives_the_simulations_model_within_the_quantization_bound(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG.replace("SIZES", ", ".join(map(str, SIZES))))
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["deploy", str(config), "--secagg", "--round-timeout", "120", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output

    exp, _ = load_experiment(config, [])
    expected = simulation.train(exp.method("fedavg"), build_federation(load_dataset("digits"), exp, exp.seed), exp, 0)
    deployed = torch.load(out / "weights" / "seed0-fedavg.pt", weights_only=True)
    gap = max((deployed[n] - expected[n]).abs().max().item() for n in expected)
    # the deployment's float32 rounding (1e-5 without SecAgg+) plus the quantization's bound
    assert gap <= SecAgg().error_bound([120, 120, 80]) + 1e-5
