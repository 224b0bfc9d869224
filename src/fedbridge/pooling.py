"""2-D max pooling through ATen's channels-last kernel, with the same values and gradients as
nn.MaxPool2d.

ATen's CPU max pool vectorises across channels only in channels-last layout; on NCHW tensors it
walks one window at a time. On the McMahan CNN's shapes (10 x 32 x 28 x 28 and 10 x 64 x 14 x 14,
one thread, AVX-512 EPYC) its two pools took 1.5 ms of a 12 ms training step; copying the input to
channels-last, pooling there and copying the output back took 0.30 and 0.17 ms against 1.28 and
0.64 ms, with identical outputs and indices (a window's index is its row-major position in the
plane either way). The gradient goes through ATen's NCHW backward with those indices, as autograd's
would, so training is bit-identical to the plain module.
"""

import torch
from torch import nn
from torch.nn.modules.utils import _pair


class _ChannelsLastMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, args: tuple) -> torch.Tensor:
        y, indices = torch.ops.aten.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last), *args)
        ctx.save_for_backward(x, indices)
        ctx.args = args
        return y.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, indices = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(grad.contiguous(), x, *ctx.args, indices.contiguous()), None


class ChannelsLastMaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d whose batched 4-D calls pool in channels-last layout (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or self.return_indices or not x.is_contiguous():
            return super().forward(x)
        args = (_pair(self.kernel_size), _pair(self.stride or self.kernel_size), _pair(self.padding), _pair(self.dilation), self.ceil_mode)
        return _ChannelsLastMaxPool.apply(x, args)


def with_fast_pools(model: nn.Module) -> nn.Module:
    """`model` with every nn.MaxPool2d replaced by a ChannelsLastMaxPool2d, in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.MaxPool2d:
                setattr(parent, name, ChannelsLastMaxPool2d(
                    child.kernel_size, child.stride, child.padding, child.dilation, child.return_indices, child.ceil_mode
                ))
    return model
