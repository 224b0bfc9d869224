"""The models of the study, as plain nn.Modules; the engine trains stacked copies of them.

Parameter counts (28x28 input, 10 classes): mlp 101,770 (the origin demo's 784-128-10);
2nn 199,210 and cnn 1,663,370 (McMahan et al. 2017). Input size comes from the dataset,
so the same names work on the 8x8 digits fallback. cifar-cnn is LeNet-5 (LeCun et al. 1998, with
ReLU and max pooling, as it is usually trained on CIFAR-10 in FL papers): 62,006 parameters on
32x32x3, 25x fewer than McMahan's CIFAR model, so a round fits a 2-core machine. dp-cnn is the
CNN of the DP-SGD tutorials (TF Privacy's MNIST tutorial, Opacus's MNIST example): 26,010 parameters
on 28x28, the model their published ε/accuracy anchors were measured with.

`model` may also be "package.module:function", `function(input_shape, num_classes)` returning any
nn.Module; it is imported when the config is validated and called and checked (a Module, logits of
the right shape) before anything is written.
"""

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from fedbridge.errors import ConfigError
from fedbridge.imports import resolve

MODEL_NAMES = ("mlp", "2nn", "cnn", "tabular", "cifar-cnn", "dp-cnn")

# dropout that draws from the global RNG cannot be seeded per client (generic.seeded_dropout)
UNSEEDABLE = (nn.AlphaDropout, nn.FeatureAlphaDropout)

FACTORY_FORM = '"package.module:function", a function(input_shape, num_classes) returning a torch.nn.Module'


def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


def _cnn(channels: int, height: int, width: int, num_classes: int) -> nn.Sequential:
    # "same" padding keeps 28x28 -> 14x14 -> 7x7 after the two 2x2 pools, as in McMahan et al.
    flat = 64 * (height // 4) * (width // 4)
    return nn.Sequential(
        nn.Conv2d(channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(flat, 512), nn.ReLU(), nn.Linear(512, num_classes),
    )


def _lenet5(channels: int, height: int, width: int, num_classes: int) -> nn.Sequential:
    # two unpadded 5x5 convolutions, each followed by a 2x2 pool: 32 -> 28 -> 14 -> 10 -> 5
    flat = 16 * (((height - 4) // 2 - 4) // 2) * (((width - 4) // 2 - 4) // 2)
    return nn.Sequential(
        nn.Conv2d(channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(flat, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
    )


def _dp_cnn(channels: int, height: int, width: int, num_classes: int) -> nn.Sequential:
    # conv 16 8x8 stride 2 (padding 3), a 2x2 pool of stride 1, conv 32 4x4 stride 2, the same pool:
    # 28 -> 14 -> 13 -> 5 -> 4, then fc 32 (Opacus's SampleConvNet; TF Privacy's tutorial has the same)
    def side(n: int) -> int:
        return (n // 2 - 1 - 4) // 2 + 1 - 1

    return nn.Sequential(
        nn.Conv2d(channels, 16, 8, stride=2, padding=3), nn.ReLU(), nn.MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(), nn.MaxPool2d(2, 1),
        nn.Flatten(), nn.Linear(32 * side(height) * side(width), 32), nn.ReLU(), nn.Linear(32, num_classes),
    )


def tabular_width(features: int) -> int:
    """The tabular model's hidden width: twice the features, within [32, 256], so a table of 30
    measurements gets a 60-unit layer and a wide one does not get a huge model."""
    return min(256, max(32, 2 * features))


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A model for inputs of shape (channels, height, width) for images or (features,) for tables."""
    features = math.prod(input_shape)
    if name == "mlp":
        return _mlp([features, 128, num_classes])
    if name == "2nn":
        return _mlp([features, 200, 200, num_classes])
    if name == "tabular":
        return _mlp([features, tabular_width(features), num_classes])
    if name == "cnn":
        if len(input_shape) != 3:
            raise ConfigError(f"model = 'cnn' takes images (channels, height, width), not inputs of shape {input_shape}; "
                              "use model = 'tabular' or 'mlp' for a table")
        return _cnn(*input_shape, num_classes)
    if name == "cifar-cnn":
        if len(input_shape) != 3 or min(input_shape[1:]) < 14:
            raise ConfigError(f"model = 'cifar-cnn' (LeNet-5) takes images (channels, height, width) of at least 14x14, "
                              f"not inputs of shape {input_shape}; use model = 'cnn', 'mlp' or 'tabular'")
        return _lenet5(*input_shape, num_classes)
    if name == "dp-cnn":
        if len(input_shape) != 3 or min(input_shape[1:]) < 14:
            raise ConfigError(f"model = 'dp-cnn' takes images (channels, height, width) of at least 14x14, not inputs "
                              f"of shape {input_shape}; use model = 'cnn', 'mlp' or 'tabular'")
        return _dp_cnn(*input_shape, num_classes)
    if ":" in name:
        return _from_factory(name, tuple(input_shape), num_classes)
    raise ConfigError(f"model = {name!r} is not a model; choose one of {', '.join(MODEL_NAMES)} or {FACTORY_FORM}")


def check_name(name: str) -> str:
    """`name` if it is a built-in or an importable factory; ValueError saying what to fix otherwise
    (the config shows it under `model`)."""
    if name not in MODEL_NAMES:
        if ":" not in name:
            raise ValueError(f"{name!r} is neither a built-in model ({', '.join(MODEL_NAMES)}) nor {FACTORY_FORM}")
        factory_of(name)
    return name


def factory_of(name: str) -> Callable[..., nn.Module]:
    found = resolve(name, "function")
    if not callable(found):
        raise ValueError(f"{name} is of type {type(found).__name__}, not {FACTORY_FORM}")
    return found


def _from_factory(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The factory's module for this data, checked on a batch of zeros; the global RNG is left as
    it was, and what the module draws when it is built is the same at every call."""
    said = f"model = {name!r}: {name.partition(':')[2]}({input_shape}, {num_classes})"
    try:
        factory = factory_of(name)
    except ValueError as e:
        raise ConfigError(f"model = {name!r}: {e}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            module = factory(input_shape, num_classes)
        except Exception as e:  # the user's code
            raise ConfigError(f"{said} raised {type(e).__name__}: {e}; fix the factory, or choose a built-in model") from None
        if not isinstance(module, nn.Module):
            raise ConfigError(f"{said} returned an object of type {type(module).__name__}, not a torch.nn.Module")
        _check_module(said, module, input_shape, num_classes)
    return module


def _check_module(said: str, module: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> None:
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    if not any(p.requires_grad for p in module.parameters()):
        raise ConfigError(f"{said} returned a module without trainable parameters; there is nothing to train")
    dtype = torch.get_default_dtype()  # float32 unless a caller chose otherwise
    if odd := [n for n, p in tensors.items() if p.is_floating_point() and p.dtype != dtype]:
        raise ConfigError(f"{said} returned a module with {', '.join(odd)} not in {dtype}, which the engine trains "
                          "in; build it in torch's default float32")
    if odd := [type(m).__name__ for m in module.modules() if isinstance(m, UNSEEDABLE)]:
        raise ConfigError(f"{said} returned a module with {', '.join(odd)}, which cannot be seeded per client; "
                          "use nn.Dropout")
    was_training = module.training
    try:
        with torch.no_grad():
            out = module.eval()(torch.zeros(2, *input_shape))
    except Exception as e:  # the user's code
        raise ConfigError(f"{said} returned a module that fails on a batch of inputs of shape [2, "
                          f"{', '.join(map(str, input_shape))}] (the data's): {type(e).__name__}: {e}") from None
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{said} returned a module whose output for a batch of 2 inputs is {got}; it must be "
                          f"logits [batch, {num_classes}], one per class of the data")


def init_params(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A fresh model state (parameters and buffers, as float32: what the engine stacks per client),
    seeded by an explicit generator, never the global RNG.

    A model of Linear and Conv2d layers only draws U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights
    and biases alike, PyTorch's default distribution for them, from `generator` itself (the draws
    every earlier run of the built-ins made); any other model is initialised the module's own way,
    each submodule's `reset_parameters()`, under the global RNG forked and seeded from `generator`.
    """
    plain = (nn.Linear, nn.Conv2d, nn.Sequential, nn.Flatten, nn.ReLU, nn.MaxPool2d)
    if not all(isinstance(m, plain) for m in model.modules()):
        return _reset(model, generator)
    params = {}
    for prefix, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            for kind in ("weight", "bias"):
                shape = getattr(module, kind).shape
                params[f"{prefix}.{kind}"] = (torch.rand(shape, generator=generator) * 2 - 1) * bound
    return params


def _reset(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        for module in fresh.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
    # integer buffers (BatchNorm's num_batches_tracked) as floats, so they stack and average like the rest
    return {n: t.detach() if t.is_floating_point() else t.to(torch.get_default_dtype()) for n, t in fresh.state_dict().items()}


def norm_state(model: nn.Module) -> set[str]:
    """The state entries (parameters and buffers) of the model's normalisation layers: what
    `strategy.keep_local = ["bn"]` keeps out of aggregation."""
    norms = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm, nn.GroupNorm,
             nn.RMSNorm)
    return {f"{prefix}.{name}" if prefix else name
            for prefix, module in model.named_modules() if isinstance(module, norms)
            for name in module.state_dict()}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_size(model: nn.Module) -> int:
    """Floats of one client's state: its parameters and buffers (BatchNorm's running statistics)."""
    return sum(t.numel() for t in model.state_dict().values())
