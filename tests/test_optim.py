import pytest
import torch

from fedbridge import optim


def _torch_reference(opt_cls, kwargs, p0, grads):
    p = torch.nn.Parameter(p0.clone())
    opt = opt_cls([p], **kwargs)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


@pytest.mark.parametrize(
    "name, cls, kwargs",
    [
        ("sgd", torch.optim.SGD, {"lr": 0.1}),
        ("sgd", torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
        ("adam", torch.optim.Adam, {"lr": 0.01}),
    ],
)
def test_stacked_step_matches_torch_optim_and_masked_client_is_frozen(name, cls, kwargs):
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(2, 3, generator=gen)
    grads = [torch.randn(2, 3, generator=gen) for _ in range(3)]
    params = {"w": p0.clone()}
    state = optim.init_state(params, name)
    for i, g in enumerate(grads):
        # client 1 runs out of data after the first step
        active = torch.tensor([True, i == 0])
        optim.step(params, {"w": g}, state, active, optimizer=name, lr=kwargs["lr"], momentum=kwargs.get("momentum", 0.0))
    expected_0 = _torch_reference(cls, kwargs, p0[0], [g[0] for g in grads])
    expected_1 = _torch_reference(cls, kwargs, p0[1], [grads[0][1]])
    assert torch.allclose(params["w"][0], expected_0, atol=1e-6)
    assert torch.allclose(params["w"][1], expected_1, atol=1e-6)


def test_first_sgd_step_by_hand():
    params = {"w": torch.tensor([[1.0, 2.0]])}
    state = optim.init_state(params, "sgd")
    optim.step(params, {"w": torch.tensor([[0.5, -1.0]])}, state, torch.tensor([True]), optimizer="sgd", lr=0.1)
    assert params["w"].flatten().tolist() == pytest.approx([0.95, 2.1])
