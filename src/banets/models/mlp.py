"""A small multilayer perceptron: the offline demo's model and a baseline for tabular or flat inputs."""

from __future__ import annotations

import torch.nn as nn

from banets.models.registry import register_model


class MLP(nn.Sequential):
    """Flatten, then ``len(hidden)`` blocks of Linear-ReLU-Dropout, then a linear classifier."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (256, 256), dropout: float = 0.0):
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


@register_model("mlp")
def mlp(in_features: int = 64, num_classes: int = 10, hidden: tuple[int, ...] = (256, 256), dropout: float = 0.0) -> nn.Module:
    return MLP(in_features, num_classes, tuple(hidden), dropout)


