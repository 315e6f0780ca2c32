"""Building blocks shared by the CIFAR families: convolutions, initialisation, the pre-activation residual unit
and the pre-activation ResNet skeleton that Wide-ResNet, Pre-ResNet and (later) the DenseNet-shaped students
are built from.

Every CIFAR model here exposes the same names: ``conv1`` (the first convolution), ``stages`` (an
``nn.ModuleList``, one entry per spatial resolution), ``norm`` (the final BatchNorm, when the family has one),
``classifier`` (the final ``nn.Linear``) and ``stage_channels()`` (output channels of each stage).
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn as nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm always follows or precedes it)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def bn_relu(channels: int) -> nn.Sequential:
    """BatchNorm followed by ReLU: the pre-activation of He et al. (2016b)."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def init_weights(model: nn.Module) -> None:
    """He (Kaiming) normal init for convolutions (fan-out, as in the DenseNet and Wide-ResNet reference code),
    BatchNorm to the identity, zero bias for the classifier; Linear weights keep PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def pool_classify(features: torch.Tensor, classifier: nn.Linear) -> torch.Tensor:
    """Global average pooling then the linear classifier: ``(N, C, H, W) -> (N, num_classes)``."""
    return classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))


class Staged(Protocol):
    """The contract the students of Tables 4 and 5 rely on in a model (Sections 3.3, 3.4 and 4.1): a stem
    ``conv1``, ``stages`` whose output channels ``stage_channels`` lists, the features ``forward_features`` gives
    before global pooling, and the ``classifier``; ``ban.share_layers`` copies the stem and classifier."""

    conv1: nn.Module
    stages: nn.ModuleList
    classifier: nn.Linear

    def stage_channels(self) -> list[int]: ...

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...


class StagedNetwork(nn.Module):
    """The layout the pre-activation families share: ``conv1``, ``stages`` (each ending in a module with
    ``out_channels``), a final BN-ReLU ``norm``, global average pooling and ``classifier``. Subclasses build them."""

    conv1: nn.Module
    stages: nn.ModuleList
    norm: nn.Module
    classifier: nn.Linear

    def stage_channels(self) -> list[int]:
        """Output channels of each stage; the last entry is the classifier's input."""
        return [typing.cast(int, typing.cast(nn.Sequential, stage)[-1].out_channels) for stage in self.stages]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map after the final BN-ReLU, ``(N, C, H/4, W/4)`` for three stages."""
        x = self.conv1(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_classify(self.forward_features(x), self.classifier)


class PreActUnit(nn.Module):
    """Pre-activation residual unit, ``x + F(BN-ReLU(x))`` (He et al., 2016b, "Identity Mappings in Deep
    Residual Networks").

    Basic form (Wide-ResNet, Zagoruyko & Komodakis 2016): conv3x3 - BN-ReLU - dropout - conv3x3.
    Bottleneck form (Pre-ResNet-164/1001): conv1x1 - BN-ReLU - conv3x3 - BN-ReLU - dropout - conv1x1, with
    ``out_channels // 4`` inner channels. The stride sits on the first 3x3 convolution. When the shape changes the
    shortcut is a strided 1x1 convolution applied to the pre-activated input (as in the Wide-ResNet reference
    code and He's "both_preact" first unit), otherwise it is the identity.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, bottleneck: bool = False, dropout: float = 0.0
    ):
        super().__init__()
        self.preact = bn_relu(in_channels)
        if bottleneck:
            mid = out_channels // 4
            self.branch = nn.Sequential(
                conv1x1(in_channels, mid),
                bn_relu(mid),
                conv3x3(mid, mid, stride),
                bn_relu(mid),
                nn.Dropout(dropout),
                conv1x1(mid, out_channels),
            )
        else:
            self.branch = nn.Sequential(
                conv3x3(in_channels, out_channels, stride),
                bn_relu(out_channels),
                nn.Dropout(dropout),
                conv3x3(out_channels, out_channels),
            )
        reshape = stride != 1 or in_channels != out_channels
        self.shortcut = conv1x1(in_channels, out_channels, stride) if reshape else None
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.preact(x)
        skip = x if self.shortcut is None else self.shortcut(pre)
        return skip + self.branch(pre)


class PreActResNet(StagedNetwork):
    """A pre-activation ResNet for 32x32 inputs: ``conv1`` (3x3, ``stem_channels``), then one stage per entry of
    ``channels``/``units`` (the first unit of every stage but the first halves the resolution), then BN-ReLU,
    global average pooling and ``classifier``.

    Wide-ResNet (Zagoruyko & Komodakis, 2016) and Pre-ResNet (He et al., 2016b) are configurations of it; the
    residual students of Table 5 (Furlanello et al., 2018) can be built with a teacher's ``stage_channels()``.
    """

    def __init__(
        self,
        channels: Sequence[int],
        units: Sequence[int],
        num_classes: int = 10,
        stem_channels: int = 16,
        bottleneck: bool = False,
        dropout: float = 0.0,
        in_channels: int = 3,
    ):
        super().__init__()
        if len(channels) != len(units) or min(units) < 1:
            raise ValueError(f"need one unit count >= 1 per stage, got channels={channels} units={units}")
        self.conv1 = conv3x3(in_channels, stem_channels)
        stages: list[nn.Module] = []
        width = stem_channels
        for i, (out, n) in enumerate(zip(channels, units)):
            stride = 1 if i == 0 else 2
            stage = [PreActUnit(width, out, stride, bottleneck, dropout)]
            stage += [PreActUnit(out, out, 1, bottleneck, dropout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
            width = out
        self.stages = nn.ModuleList(stages)
        self.norm = bn_relu(width)
        self.classifier = nn.Linear(width, num_classes)
        init_weights(self)
