"""Model factories for the tests, named in configs as "custom_models:NAME" (pytest puts tests/ on sys.path)."""

import math

import torch
from torch import nn


class Mixed(nn.Module):
    """Every kind of state the generic path must carry per client: an Embedding over a token made
    from the input, BatchNorm (batch statistics, running buffers), LayerNorm and Dropout."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.embed = nn.Embedding(4, 3)
        self.fc = nn.Linear(math.prod(input_shape), 8, bias=False)  # BatchNorm follows: a bias would cancel
        self.bn = nn.BatchNorm1d(8)
        self.norm = nn.LayerNorm(8)
        self.drop = nn.Dropout(0.25)
        self.out = nn.Linear(8 + 3, num_classes)

    def forward(self, x):
        x = x.flatten(1)
        token = (x[:, 0] > 0.5).long() + 2 * (x[:, 1] > 0.5).long()
        h = self.drop(self.norm(torch.relu(self.bn(self.fc(x)))))
        return self.out(torch.cat([h, self.embed(token)], 1))


def mixed(input_shape, num_classes):
    return Mixed(input_shape, num_classes)


def batch_normed(input_shape, num_classes):
    """A Linear layer, then BatchNorm, then the head: FedBN's case."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 4), nn.BatchNorm1d(4), nn.Linear(4, num_classes))


def raises(input_shape, num_classes):
    raise RuntimeError("no weights here")


def not_a_module(input_shape, num_classes):
    return "a string"


def wrong_output(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes + 1))


NOT_CALLABLE = 3


class Normed(nn.Module):
    """No batch statistics and no chance: an Embedding and a LayerNorm, which train under vmap."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.embed = nn.Embedding(4, 3)
        self.fc = nn.Linear(math.prod(input_shape), 8)
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(8 + 3, num_classes)

    def forward(self, x):
        x = x.flatten(1)
        token = (x[:, 0] > 0.5).long() + 2 * (x[:, 1] > 0.5).long()
        return self.out(torch.cat([torch.relu(self.norm(self.fc(x))), self.embed(token)], 1))


def normed(input_shape, num_classes):
    return Normed(input_shape, num_classes)
