import math

import pytest
import torch

from fedbridge import kernels, losses
from fedbridge.generic import stacked_forward
from fedbridge.local import Recipe, batch_schedule, client_generator, evaluate, local_update
from fedbridge.models import build_model, init_params


def test_batch_schedule_for_unequal_clients():
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    positions, weights = batch_schedule([5, 3], batch_size=2, epochs=2, generators=gens)
    # client 0: 3 batches per epoch (2, 2, 1); client 1: 2 (2, 1); 2 epochs
    assert positions.shape == (6, 2, 2)
    assert weights[:, 0].sum(1).tolist() == [2, 2, 1, 2, 2, 1]
    assert weights[:, 1].sum(1).tolist() == [2, 1, 2, 1, 0, 0]
    for k, (n, steps) in enumerate([(5, 3), (3, 2)]):
        seen = positions[:steps, k][weights[:steps, k] > 0]
        assert sorted(seen.tolist()) == list(range(n))  # each epoch visits every sample once


def test_client_generators_are_independent_streams():
    a = torch.rand(3, generator=client_generator(0, 12, 1, 0))
    assert torch.equal(a, torch.rand(3, generator=client_generator(0, 12, 1, 0)))
    assert not torch.equal(a, torch.rand(3, generator=client_generator(0, 12, 1, 1)))
    assert not torch.equal(a, torch.rand(3, generator=client_generator(1, 12, 1, 0)))


def _toy(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_clients_trained_together_equal_clients_trained_alone(optimizer):
    images, labels = _toy()
    model = build_model("mlp", (1, 4, 4), 3)
    init = {n: p.unsqueeze(0) for n, p in init_params(model, torch.Generator().manual_seed(0)).items()}
    rows = [torch.arange(0, 23), torch.arange(23, 30)]  # unequal: 23 and 7 samples
    recipe = Recipe(optimizer, lr=0.05, batch_size=4, local_epochs=2, momentum=0.5 if optimizer == "sgd" else 0.0)
    gens = lambda k: client_generator(0, 12, 1, k)  # noqa: E731
    both = local_update(model, {n: p.expand(2, *p.shape[1:]) for n, p in init.items()}, images, labels, rows, recipe, [gens(0), gens(1)])
    assert both.steps.tolist() == [12, 4]  # 2 epochs of ceil(23/4)=6 and ceil(7/4)=2 batches
    for k in range(2):
        alone = local_update(model, init, images, labels, [rows[k]], recipe, [gens(k)])
        assert torch.allclose(both.loss[k], alone.loss[0], atol=1e-6)
        for n in init:
            assert torch.allclose(both.params[n][k], alone.params[n][0], atol=1e-6), n


def test_evaluate_counts_correct_predictions():
    model = build_model("mlp", (1, 1, 2), 2)
    # one linear layer... the mlp has a hidden layer; set it to pass x through ReLU and pick the larger input
    params = {
        "1.weight": torch.eye(128, 2).unsqueeze(0), "1.bias": torch.zeros(1, 128),
        "3.weight": torch.eye(2, 128).unsqueeze(0), "3.bias": torch.zeros(1, 2),
    }
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.2, 0.9]]).view(4, 1, 1, 2)
    labels = torch.tensor([0, 1, 1, 1])
    acc, loss = evaluate(model, params, images, labels, chunk=3)
    assert acc.tolist() == [0.75]
    assert loss.shape == (1,)


def test_split_finds_the_mlp_head():
    assert kernels.split(build_model("mlp", (1, 4, 4), 3)) == (None, ["1", "3"])
    assert kernels.split(build_model("2nn", (1, 4, 4), 3)) == (None, ["1", "3", "5"])
    cnn = build_model("cnn", (1, 8, 8), 3)
    body, head = kernels.split(cnn)
    assert head == ["7", "9"] and [type(m) for m in body] == [type(m) for m in list(cnn)[:6]]
    conv_only = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Softmax(1))
    assert kernels.split(conv_only) == (conv_only, [])  # no Linear tail: all of it goes through autograd


def test_cross_entropy_of_uniform_logits_by_hand():
    logits = torch.zeros(1, 2, 4)  # one client, two samples, four classes: every p = 1/4
    labels = torch.tensor([[1, 3]])
    loss, grad = losses.weighted(logits, labels, torch.tensor([[1.0, 0.0]]))  # 2nd sample is padding
    assert loss.item() == pytest.approx(math.log(4))
    assert grad[0, 0].tolist() == pytest.approx([0.25, -0.75, 0.25, 0.25])
    assert grad[0, 1].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_hand_written_backward_equals_autograd():
    model = build_model("2nn", (1, 4, 4), 3)
    gen = torch.Generator().manual_seed(0)
    params = {n: torch.stack([p, p * 0.5]) for n, p in init_params(model, gen).items()}
    x, y = torch.rand(2, 5, 16, generator=gen), torch.randint(0, 3, (2, 5), generator=gen)
    weights = torch.tensor([[0.2] * 5, [0.5, 0.5, 0, 0, 0]])
    acts = kernels.forward(params, kernels.split(model)[1], x)
    loss, grad_logits = losses.weighted(acts.pop(), y, weights)
    grads = kernels.backward(params, kernels.split(model)[1], acts, grad_logits)
    leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    logits = stacked_forward(model, leaves, x)
    expected = (torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none") * weights).sum(1)
    assert torch.allclose(loss, expected.detach(), atol=1e-6)
    for n, g in zip(leaves, torch.autograd.grad(expected.sum(), list(leaves.values()))):
        assert torch.allclose(grads[n], g, atol=1e-6), n


@pytest.mark.parametrize("model_name", ["mlp", "2nn"])
def test_sgd_in_blocks_equals_sgd_step_by_step(model_name):
    """7 steps: a full block of 4 and a short one of 3; client 2 runs out after 5 steps."""
    model = build_model(model_name, (1, 4, 4), 3)
    layers = kernels.split(model)[1]
    gen = torch.Generator().manual_seed(0)
    params = {n: torch.stack([p, p * 0.5]) for n, p in init_params(model, gen).items()}
    images, labels = torch.rand(20, 16, generator=gen), torch.randint(0, 3, (20,), generator=gen)
    rows = torch.randint(0, 20, (7, 2, 3), generator=gen)
    weights = torch.full((7, 2, 3), 1 / 3)
    weights[5:, 1] = 0
    blocked = {n: p.clone() for n, p in params.items()}
    loss = kernels.sgd_steps(blocked, layers, images, rows, labels[rows], weights, lr=0.5)
    expected_loss = torch.zeros(2)
    for s in range(7):
        acts = kernels.forward(params, layers, images[rows[s]])
        step_loss, grad_logits = losses.weighted(acts.pop(), labels[rows[s]], weights[s])
        kernels.backward(params, layers, acts, grad_logits, sgd_lr=0.5)
        expected_loss += step_loss
    assert torch.allclose(loss, expected_loss, atol=1e-6)
    for n in params:
        assert (blocked[n] - params[n]).abs().max() <= 1e-6, n
