"""The batched engine against the per-client reference loop: same seed, same global weights."""

import pytest
import torch

from fedbridge import local
from fedbridge.local import Recipe, client_generator, local_update
from fedbridge.models import build_model, init_params
from fedbridge.reference import reference_update
from fedbridge.strategies.aggregate import weighted_mean

SHAPE = (1, 12, 12)
SIZES = [23, 7, 16]  # unequal: clients run out of batches at different steps
RECIPES = {
    "sgd": Recipe("sgd", lr=0.1, batch_size=4, local_epochs=2),
    "momentum": Recipe("sgd", lr=0.05, batch_size=4, local_epochs=2, momentum=0.9),
    "adam": Recipe("adam", lr=0.01, batch_size=4, local_epochs=2),
}
# float32 tolerance (max abs) after 2 rounds, measured on AMD EPYC. Every model's head (its Linear
# layers) goes through the engine's kernels (batched matmuls, hand-written cross-entropy) and the
# loop's through autograd, so gradients agree to float32 rounding: with SGD and momentum the weights
# differ by at most 3e-8. Adam divides each gradient by its own running RMS, which lifts rounding
# to a visible size where a gradient nearly cancels over a batch: up to 4.6e-6 for the MLPs, and
# 9.8e-5 for the CNN, whose conv weights' gradients are sums of many such terms (1% of its lr,
# 0.01). That it is rounding and not a different computation: in float64 the CNN agrees to 4e-13
# (test below).
TOLERANCE = 1e-5
TOLERANCE_CNN_ADAM = 3e-4


def _data():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(sum(SIZES), *SHAPE, generator=g)
    labels = torch.randint(0, 10, (sum(SIZES),), generator=g)
    rows = list(torch.arange(sum(SIZES)).split(SIZES))
    return images, labels, rows


def fedavg_rounds(update, model_name: str, recipe: Recipe, rounds: int = 2) -> dict[str, torch.Tensor]:
    """Global weights after `rounds` rounds of FedAvg over all clients, local training by `update`."""
    images, labels, rows = _data()
    model = build_model(model_name, SHAPE, 10)
    params = {n: p.unsqueeze(0) for n, p in init_params(model, client_generator(0, 10)).items()}
    weights = torch.tensor([float(n) for n in SIZES])
    for r in range(1, rounds + 1):
        start = {n: p.expand(len(SIZES), *p.shape[1:]).clone() for n, p in params.items()}
        generators = [client_generator(0, 12, r, k) for k in range(len(SIZES))]
        result = update(model, start, images, labels, rows, recipe, generators)
        params = weighted_mean(result.params, weights)
    return params


@pytest.mark.parametrize("model_name", ["mlp", "2nn", "cnn"])
@pytest.mark.parametrize("optimizer", list(RECIPES))
def test_batched_engine_equals_reference_loop(model_name, optimizer):
    batched = fedavg_rounds(local_update, model_name, RECIPES[optimizer])
    loop = fedavg_rounds(reference_update, model_name, RECIPES[optimizer])
    start = fedavg_rounds(local_update, model_name, RECIPES[optimizer], rounds=0)
    for n in batched:
        assert (batched[n] - start[n]).abs().max() > 1e-3, f"{n} did not train"
        tolerance = TOLERANCE_CNN_ADAM if (model_name, optimizer) == ("cnn", "adam") else TOLERANCE
        assert (batched[n] - loop[n]).abs().max() <= tolerance, n


def test_cnn_with_adam_equals_reference_loop_in_float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # data, parameters and both optimizers' state
    try:
        batched = fedavg_rounds(local_update, "cnn", RECIPES["adam"])
        loop = fedavg_rounds(reference_update, "cnn", RECIPES["adam"])
    finally:
        torch.set_default_dtype(before)
    for n in batched:
        assert batched[n].dtype == torch.float64
        assert (batched[n] - loop[n]).abs().max() <= 1e-10, n


class _ConvOnly(torch.nn.Module):
    """A model with no Linear head for the kernels: all of it goes through autograd."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 10, 12)  # 12x12 images -> one logit per class

    def forward(self, x):
        return self.conv(x).flatten(1)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_model_without_linear_head_trains_through_autograd_alone(optimizer):
    images, labels, rows = _data()
    model = _ConvOnly()
    params = {n: p.detach().unsqueeze(0).expand(len(SIZES), *p.shape).clone() for n, p in model.named_parameters()}
    generators = lambda: [client_generator(0, 12, 1, k) for k in range(len(SIZES))]  # noqa: E731
    batched = local_update(model, params, images, labels, rows, RECIPES[optimizer], generators())
    loop = reference_update(model, params, images, labels, rows, RECIPES[optimizer], generators())
    for n in params:
        assert (batched.params[n] - params[n]).abs().max() > 1e-3, f"{n} did not train"
        assert (batched.params[n] - loop.params[n]).abs().max() <= TOLERANCE, n
    assert torch.allclose(batched.loss, loop.loss, atol=1e-6)


def test_cnn_clients_with_a_gradient_hook_train_all_at_once_as_alone():
    # a hook sees all clients at once, so the CNN's convolutions run under vmap over the clients
    images, labels, rows = _data()
    model = build_model("cnn", SHAPE, 10)
    init = {n: p.unsqueeze(0) for n, p in init_params(model, client_generator(0, 10)).items()}
    params = {n: p.expand(len(SIZES), *p.shape[1:]).clone() for n, p in init.items()}
    generators = lambda: [client_generator(0, 12, 1, k) for k in range(len(SIZES))]  # noqa: E731
    seen = []

    def hook(p, grads):
        seen.append(next(iter(grads.values())).shape[0])
        return grads

    together = local_update(model, params, images, labels, rows, RECIPES["sgd"], generators(), adjust=hook)
    alone = local_update(model, params, images, labels, rows, RECIPES["sgd"], generators())
    assert set(seen) == {len(SIZES)}
    for n in params:
        assert (together.params[n] - alone.params[n]).abs().max() <= TOLERANCE, n


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_clients_in_chunks_equal_clients_all_at_once(optimizer, monkeypatch):
    whole = fedavg_rounds(local_update, "2nn", RECIPES[optimizer], rounds=1)
    monkeypatch.setattr(local, "MEMORY_BUDGET", 1)  # one client per chunk
    chunked = fedavg_rounds(local_update, "2nn", RECIPES[optimizer], rounds=1)
    # a chunk of 1 and one of 3 take different batched-matmul kernels, so the gradients differ in
    # the last float bit; Adam divides each gradient by its own magnitude, which lifts that noise to
    # 1.7e-6 where a gradient is near 0 (measured on AMD EPYC; 2e-8 with SGD)
    tolerance = 1e-5 if optimizer == "adam" else 1e-6
    for n in whole:
        assert (whole[n] - chunked[n]).abs().max() <= tolerance, n


def test_memory_budget_sets_the_chunk():
    model = build_model("2nn", (1, 28, 28), 10)
    params = {n: p.unsqueeze(0) for n, p in init_params(model, client_generator(0, 10)).items()}
    budget = 512 * 2**20
    sgd = local.clients_per_chunk(model, params, (1, 28, 28), RECIPES["sgd"], 600, budget)
    adam = local.clients_per_chunk(model, params, (1, 28, 28), RECIPES["adam"], 600, budget)
    # 199,210 floats a model, 3 copies for SGD and 5 for Adam, within 512 MiB
    assert 200 < sgd < budget // (3 * 4 * 199_210) + 1
    assert adam < sgd
    assert local.clients_per_chunk(build_model("cnn", (1, 28, 28), 10), params, (1, 28, 28), RECIPES["sgd"], 600, budget) == 1
