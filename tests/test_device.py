"""train.device: the CPU by default, a GPU when asked for (or "auto" finds one), refused when there is none."""

import pytest
import torch

from conftest import CONFIGS
from fedbridge.local import local_update, resolve_device
from test_cli import run
from test_generic_model import FLOAT32, MIXED
from test_reference import fedavg_rounds

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


@no_gpu
def test_cuda_without_a_gpu_is_refused_before_the_run_directory(tmp_path):
    out = tmp_path / "run"
    result = run("run", CONFIGS / "seed.toml", "--set", "data.name=digits", "--set", "train.device=cuda", "--out", out)
    assert result.exit_code == 2 and "train.device = 'cuda'" in result.output and "finds no CUDA GPU" in result.output
    assert not out.exists()


@no_gpu
def test_auto_is_the_cpu_without_a_gpu():
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"


def test_an_unknown_device_is_refused(tmp_path):
    result = run("run", CONFIGS / "seed.toml", "--set", "train.device=tpu", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "train.device" in result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model", ["mlp", "cnn", MIXED])
def test_training_on_the_gpu_equals_the_cpu(model):
    recipe = FLOAT32["sgd"]
    cpu = fedavg_rounds(local_update, model, recipe)
    gpu = fedavg_rounds(local_update, model, type(recipe)(**{**recipe.__dict__, "device": "cuda"}))
    for n in cpu:
        assert gpu[n].device.type == "cpu" and (gpu[n] - cpu[n]).abs().max() <= 1e-4, n
