"""Wide residual networks, WRN-{depth}-{widen_factor} (Zagoruyko & Komodakis, 2016, "Wide Residual Networks").

Three stages of ``(depth - 4) / 6`` basic pre-activation units with ``16k, 32k, 64k`` channels after a 16-channel
3x3 stem; dropout sits between the two convolutions of each unit. The born-again paper uses WRN-28-{1,2,5,10}
as teachers and students (Tables 1 and 3) and wide blocks for the DenseNet-shaped students (Table 5).
"""

from __future__ import annotations

from typing import Any

from banets.models.blocks import PreActResNet
from banets.models.registry import register_model


@register_model
def wide_resnet(depth: int = 28, widen_factor: int = 10, dropout: float = 0.0, num_classes: int = 10) -> PreActResNet:
    """Wide-ResNet family (Zagoruyko & Komodakis 2016); the defaults build WRN-28-10.

    ``depth`` must be ``6n + 4``. WRN-28-10 has 36,479,194 parameters."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"Wide-ResNet depth must be 6n+4 with n >= 1, got {depth}")
    n = (depth - 4) // 6
    channels = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    return PreActResNet(channels, [n] * 3, num_classes, stem_channels=16, bottleneck=False, dropout=dropout)


@register_model(family=wide_resnet)
def wrn_28_1(depth: int = 28, widen_factor: int = 1, **options: Any) -> PreActResNet:
    """Tables 1 and 3 row Wide-ResNet-28-1 (0.38M): teacher and BAN, CIFAR-10/100."""
    return wide_resnet(depth=depth, widen_factor=widen_factor, **options)


@register_model(family=wide_resnet)
def wrn_28_2(depth: int = 28, widen_factor: int = 2, **options: Any) -> PreActResNet:
    """Tables 1 and 3 row Wide-ResNet-28-2 (1.48M): teacher and BAN, CIFAR-10/100."""
    return wide_resnet(depth=depth, widen_factor=widen_factor, **options)


@register_model(family=wide_resnet)
def wrn_28_5(depth: int = 28, widen_factor: int = 5, **options: Any) -> PreActResNet:
    """Tables 1 and 3 row Wide-ResNet-28-5 (9.16M): teacher and BAN, CIFAR-10/100."""
    return wide_resnet(depth=depth, widen_factor=widen_factor, **options)


@register_model(family=wide_resnet)
def wrn_28_10(depth: int = 28, widen_factor: int = 10, **options: Any) -> PreActResNet:
    """Tables 1 and 3 row Wide-ResNet-28-10 (36M): teacher and BAN, CIFAR-10/100."""
    return wide_resnet(depth=depth, widen_factor=widen_factor, **options)
