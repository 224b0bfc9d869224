"""DP-SGD for any model (fedbridge.per_sample): per-example gradients against a loop over examples,
the clip and the noise measured, what cannot be done refused, and a CNN run end to end."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import CONFIGS, invoke as run
from custom_models import normed
from fedbridge import losses, per_sample
from fedbridge.local import DpSgd, Recipe, client_generator, local_update

pytest.importorskip("dp_accounting")


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2, 1),
                         nn.Flatten(), nn.Linear(3 * 2 * 2, 5), nn.ReLU(), nn.Linear(5, 4))


def stacked(model: nn.Module, k: int = 1) -> dict:
    return {n: torch.stack([p.detach() * (1 + i / 10) for i in range(k)]) for n, p in model.state_dict().items()}


def looped_clipped_sum(model: nn.Module, params: dict, x: torch.Tensor, y: torch.Tensor, clip: float) -> dict:
    """Client 0's clipped sum the slow way: autograd on one example at a time."""
    total = {n: torch.zeros_like(p[0]) for n, p in params.items()}
    for i in range(len(x[0])):
        leaves = {n: p[0].clone().requires_grad_(True) for n, p in params.items()}
        out = torch.func.functional_call(model, leaves, (x[0, i : i + 1],))
        grads = torch.autograd.grad(losses.per_sample(out, y[0, i : i + 1]).sum(), list(leaves.values()))
        norm = torch.sqrt(sum(g.square().sum() for g in grads))
        for n, g in zip(leaves, grads):
            total[n] += g * min(1.0, clip / norm.item())
    return total


@pytest.mark.parametrize("build, shape", [(tiny_cnn, (1, 6, 6)), (lambda: normed((1, 4, 4), 4), (1, 4, 4))])
def test_the_clipped_sum_equals_a_loop_over_examples(build, shape):
    # the CNN takes the layer formulas (unfolded patches), the Embedding + LayerNorm model torch.func's vmap
    model = build()
    params = stacked(model, 2)
    x, y = torch.rand(2, 7, *shape), torch.randint(0, 4, (2, 7))
    real = torch.ones(2, 7)
    real[1, 5:] = 0  # client 2's last two slots are padding
    _, summed = per_sample.clipped_sum(model, params, x, y, real, clip=0.05)
    expected = looped_clipped_sum(model, params, x, y, clip=0.05)
    for n in expected:
        assert torch.allclose(summed[n][0], expected[n], atol=1e-6), n
    padded = looped_clipped_sum(model, {n: p[1:] for n, p in params.items()}, x[1:, :5], y[1:, :5], clip=0.05)
    assert all(torch.allclose(summed[n][1], padded[n], atol=1e-6) for n in padded)


def test_the_layer_formulas_and_vmap_give_the_same_per_example_gradients():
    model = tiny_cnn()
    params = stacked(model, 2)
    x, y = torch.rand(2, 5, 1, 6, 6), torch.randint(0, 4, (2, 5))
    assert per_sample.layered(model) and not per_sample.layered(normed((1, 4, 4), 4))
    fast, fast_loss = per_sample.per_example_grads(model, params, x, y)
    slow, slow_loss = per_sample._by_vmap(model, params, x, y, losses.CE)
    assert all(torch.allclose(fast[n], slow[n], atol=1e-6) for n in slow) and torch.allclose(fast_loss, slow_loss)


@settings(max_examples=25, deadline=None)
@given(clip=st.floats(1e-3, 10.0), scale=st.floats(0.1, 100.0))
def test_every_examples_clipped_gradient_is_within_the_clip(clip, scale):
    model = tiny_cnn()
    grads, _ = per_sample.per_example_grads(model, stacked(model), torch.rand(1, 6, 1, 6, 6) * scale,
                                            torch.arange(6).remainder(4).unsqueeze(0))
    weight = per_sample.clip_scale(grads, clip)
    norms = torch.sqrt(sum((g * weight.view(*weight.shape, *[1] * (g.dim() - 2))).flatten(2).square().sum(-1)
                           for g in grads.values()))
    assert (norms <= clip * (1 + 1e-5)).all()


def test_the_noised_sums_std_is_sigma_times_the_clip():
    # 400 seeds of one step's noise on 6 examples: every coordinate of (noised mean - clipped mean) * B
    # is N(0, (σC)²); over 400 x 119 draws the sample std is within 1% of σC with overwhelming odds
    model, sigma, clip, batch = tiny_cnn(), 1.3, 0.5, 6
    x, y = torch.rand(1, batch, 1, 6, 6), torch.randint(0, 4, (1, batch))
    _, summed = per_sample.clipped_sum(model, stacked(model), x, y, torch.ones(1, batch), clip)
    noise = torch.cat([torch.cat([(g - summed[n] / batch).flatten() * batch for n, g in per_sample.noised_mean(
        summed, clip, sigma, batch, [client_generator(seed, 5)]).items()]) for seed in range(400)])
    assert abs(noise.std().item() / (sigma * clip) - 1) < 0.05


def test_dp_sgd_on_a_cnn_is_the_same_for_the_same_seed_and_moves_finished_clients_not_at_all():
    model = tiny_cnn()
    params = stacked(model, 2)
    images, labels = torch.rand(30, 1, 6, 6), torch.randint(0, 4, (30,))
    recipe = Recipe("sgd", 0.1, 4, 1, dp=DpSgd(clip=1.0, noise_multiplier=1.0))
    rows = [torch.arange(10), torch.arange(10, 30)]

    def trained():
        return local_update(model, params, images, labels, rows, recipe, [client_generator(0, k) for k in range(2)])

    first, second = trained(), trained()
    assert all(torch.equal(first.params[n], second.params[n]) for n in params)
    assert first.steps.tolist() == [3, 5]


@pytest.mark.parametrize("model, message", [
    ("custom_models:batch_normed", "BatchNorm1d normalises each example with its batch's statistics"),
    ("custom_models:mixed", "BatchNorm1d"),
])
def test_what_dp_sgd_cannot_clip_is_refused_before_the_run_directory(tmp_path, model, message):
    out = tmp_path / "run"
    result = run("run", CONFIGS / "seed.toml", "--set", "data.name=digits", "--set", f"model={model}",
                 "--set", 'privacy.level="sample"', "--set", "privacy.clip=1.0", "--set", "privacy.noise_multiplier=1.0",
                 "--out", out)
    assert result.exit_code == 2 and message in result.output and "GroupNorm" in result.output, result.output
    assert not out.exists()


def test_dropout_is_refused_at_sample_level():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    assert "Dropout" in per_sample.refusal(model, (1, 2, 2))


def test_a_cnn_trains_with_dp_sgd_end_to_end_and_reports_epsilon(tmp_path):
    config = tmp_path / "cnn.toml"
    config.write_text('''
model = "cnn"
data = { name = "digits" }
clients = [{ count = 2 }]
baselines = []
partition = { name = "sizes", sizes = [100, 200] }
train = { lr = 0.5, batch_size = 25, rounds = 1 }
privacy = { level = "sample", noise_multiplier = 1.0, clip = 1.0 }
''')
    out = tmp_path / "run"
    assert run("run", config, "--out", out, "--quiet").exit_code == 0
    summary = json.loads((out / "summary.json").read_text())["privacy"]
    assert summary["level"] == "sample" and summary["clients"]["1"] > summary["clients"]["2"] > 0
