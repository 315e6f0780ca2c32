"""Small models for the offline demo, tests and tabular data: an MLP and a three-layer CNN."""

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


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Sequential):
    """Three 3x3 conv-BN-ReLU layers (width, 2x, 4x; pooling after the second), global pooling, a classifier."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__(
            *conv_bn_relu(in_channels, width),
            *conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            *conv_bn_relu(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, num_classes),
        )


@register_model
def mlp(
    in_features: int = 64, num_classes: int = 10, hidden: tuple[int, ...] = (256, 256), dropout: float = 0.0
) -> nn.Module:
    """MLP for tabular or flattened inputs: a config's default model."""
    return MLP(in_features, num_classes, tuple(hidden), dropout)


@register_model
def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 32) -> nn.Module:
    """Three-layer CNN for small images: the offline demo's model (preset demo)."""
    return SmallCNN(in_channels, num_classes, width)
