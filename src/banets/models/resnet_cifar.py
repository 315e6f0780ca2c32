"""The original CIFAR ResNets, ResNet-{6n+2} (He et al., 2016a, "Deep Residual Learning for Image Recognition",
Sec. 4.2).

A 3x3 stem of ``width`` channels with BN-ReLU, three stages of ``n`` post-activation basic blocks with
``width, 2*width, 4*width`` channels, global average pooling and the classifier. Shortcuts are option A of the
paper by default: identity, and where the shape changes a stride-2 subsampling padded with zero channels, so
they add no parameters (ResNet-20: 0.27M, ResNet-110: 1.7M, as published). Option B (a 1x1 convolution and
BatchNorm where the shape changes) is available with ``shortcut="B"``.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from banets.models.blocks import conv1x1, conv3x3, init_weights, pool_classify
from banets.models.registry import register_model


class ZeroPadShortcut(nn.Module):
    """Option A shortcut: keep every ``stride``-th pixel and pad the new channels with zeros (half on each side)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        extra = out_channels - in_channels
        self.stride, self.pad = stride, (0, 0, 0, 0, extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], self.pad)


class BasicBlock(nn.Module):
    """Post-activation basic block: ReLU(x' + BN(conv3x3(ReLU(BN(conv3x3(x)))))), He et al. (2016a)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: Literal["A", "B"]):
        super().__init__()
        self.branch = nn.Sequential(
            conv3x3(in_channels, out_channels, stride),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            conv3x3(out_channels, out_channels),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            if shortcut == "A":
                self.shortcut = ZeroPadShortcut(in_channels, out_channels, stride)
            else:
                self.shortcut = nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.branch(x) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-``6n+2`` for CIFAR with attributes ``conv1``, ``stages``, ``classifier`` (see ``blocks``)."""

    def __init__(self, depth: int, width: int = 16, num_classes: int = 10, shortcut: Literal["A", "B"] = "A"):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(3, width)
        self.stem = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages, channels = [], width
        for i, out in enumerate((width, 2 * width, 4 * width)):
            blocks = [BasicBlock(channels, out, 2 if i else 1, shortcut)]
            blocks += [BasicBlock(out, out, 1, shortcut) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = out
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def stage_channels(self) -> list[int]:
        """Output channels of each stage."""
        return [typing.cast(int, typing.cast(nn.Sequential, stage)[-1].out_channels) for stage in self.stages]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.conv1(x))
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_classify(self.forward_features(x), self.classifier)


@register_model
def resnet_cifar(
    depth: int = 20, width: int = 16, num_classes: int = 10, shortcut: Literal["A", "B"] = "A"
) -> ResNetCifar:
    """CIFAR ResNet family (He et al. 2016a); the defaults build ResNet-20.

    ``depth = 6n + 2`` and ``width`` base channels (16 in He et al.'s paper)."""
    return ResNetCifar(depth, width, num_classes, shortcut)


@register_model(family=resnet_cifar)
def resnet8(depth: int = 8, **options: Any) -> ResNetCifar:
    """ResNet-8: the model of the CPU quick preset (cifar10_quick); not in the paper."""
    return resnet_cifar(depth=depth, **options)


@register_model(family=resnet_cifar)
def resnet20(depth: int = 20, **options: Any) -> ResNetCifar:
    """ResNet-20 (0.27M in He et al. 2016a): a CIFAR baseline; not in the paper."""
    return resnet_cifar(depth=depth, **options)


@register_model(family=resnet_cifar)
def resnet56(depth: int = 56, **options: Any) -> ResNetCifar:
    """ResNet-56 (0.85M in He et al. 2016a): a CIFAR baseline; not in the paper."""
    return resnet_cifar(depth=depth, **options)


@register_model(family=resnet_cifar)
def resnet110(depth: int = 110, **options: Any) -> ResNetCifar:
    """ResNet-110 (1.7M in He et al. 2016a): a CIFAR baseline; not in the paper."""
    return resnet_cifar(depth=depth, **options)
