"""The models of the study, as plain nn.Modules; the engine trains stacked copies of them.

Parameter counts (28x28 input, 10 classes): mlp 101,770 (the origin demo's 784-128-10);
2nn 199,210 and cnn 1,663,370 (McMahan et al. 2017). Input size comes from the dataset,
so the same names work on the 8x8 digits fallback.
"""

import math

import torch
from torch import nn

from fedbridge.errors import ConfigError

MODEL_NAMES = ("mlp", "2nn", "cnn", "tabular")


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
    raise ConfigError(f"model = {name!r} is not a model; choose one of {', '.join(MODEL_NAMES)}")


def init_params(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Fresh parameters from an explicit generator, never the global RNG.

    Same distribution as PyTorch's default for Linear and Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    for weights and biases alike.
    """
    params = {}
    for prefix, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            for kind in ("weight", "bias"):
                shape = getattr(module, kind).shape
                params[f"{prefix}.{kind}"] = (torch.rand(shape, generator=generator) * 2 - 1) * bound
    return params


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
