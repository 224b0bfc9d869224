import pytest
import torch
from torch import nn

from fedbridge.pooling import ChannelsLastMaxPool2d, with_fast_pools


@pytest.mark.parametrize(
    "kernel, stride, padding, ceil_mode", [(2, None, 0, False), (3, 2, 1, False), (2, 2, 0, True), ((2, 3), (1, 2), 0, False)]
)
def test_channels_last_pool_equals_max_pool2d_with_its_gradient(kernel, stride, padding, ceil_mode):
    g = torch.Generator().manual_seed(0)
    # small integers after a ReLU: windows with tied maxima, zero and positive, where only the
    # first maximum may receive the gradient
    x = torch.randint(-2, 3, (3, 4, 9, 11), generator=g).float().relu()
    grad = torch.randn(nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode)(x).shape, generator=g)
    results = []
    for pool in (nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode), ChannelsLastMaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode)):
        leaf = x.clone().requires_grad_(True)
        y = pool(leaf)
        y.backward(grad)
        results.append((y, leaf.grad))
    (y_ref, grad_ref), (y, grad_x) = results
    assert y.is_contiguous() and torch.equal(y, y_ref)
    assert torch.equal(grad_x, grad_ref)


def test_with_fast_pools_swaps_only_max_pools():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Sequential(nn.MaxPool2d(2)), nn.AvgPool2d(1))
    x = torch.rand(2, 1, 12, 12)
    before = model(x)
    with_fast_pools(model)
    assert [type(m).__name__ for m in model.modules()].count("ChannelsLastMaxPool2d") == 2
    assert isinstance(model[4], nn.AvgPool2d)
    assert torch.equal(model(x), before)
    assert torch.equal(model[2](x[0, :, :4, :4]), nn.MaxPool2d(2)(x[0, :, :4, :4]))  # unbatched input: the plain path
