"""Every preset in configs/ runs as is: here each one runs end to end on the real data, cut to one
round and one seed so the suite stays fast (the full presets are what users run)."""

import json

import pytest
from click.testing import CliRunner

from conftest import CONFIGS
from fedbridge.cli import main


@pytest.mark.integration
@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_preset_runs(path, tmp_path, mnist_dir):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "run", str(path), "--set", "train.rounds=1", "--set", "seeds=1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["table"]
