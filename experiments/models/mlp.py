"""The fully connected network of the MNIST experiment."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp(
    input_size: int = 784,
    hidden_sizes: Sequence[int] = (100, 100),
    num_classes: int = 10,
    bias: bool = True,
) -> nn.Sequential:
    """Flatten, then Linear + ReLU per hidden layer, then a linear output layer (784-100-100-10 default)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = input_size
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden, bias=bias), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes, bias=bias))
    return nn.Sequential(*layers)
