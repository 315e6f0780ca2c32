"""Pre-activation ResNets for CIFAR (He et al., 2016b, "Identity Mappings in Deep Residual Networks").

With bottleneck units (the default) the depth is ``9n + 2``: a 16-channel 3x3 stem, three stages of ``n`` units
with ``64, 128, 256`` output channels (``16, 32, 64`` inside the bottleneck), then BN-ReLU, pooling and the
classifier. Pre-ResNet-164 has n = 18 and Pre-ResNet-1001 (Table 5's baseline, 10.2M parameters for
CIFAR-100) has n = 111. With ``bottleneck=False`` the depth is ``6n + 2`` with basic units of ``16, 32, 64``
channels.
"""

from __future__ import annotations

from typing import Any

from banets.models.blocks import PreActResNet
from banets.models.registry import register_model


@register_model
def preresnet(depth: int = 164, num_classes: int = 10, bottleneck: bool = True) -> PreActResNet:
    """Pre-ResNet family (He et al. 2016b); the defaults build Pre-ResNet-164.

    ``depth = 9n + 2`` with bottleneck units, ``6n + 2`` with basic units."""
    per_unit, widths = (9, [64, 128, 256]) if bottleneck else (6, [16, 32, 64])
    if depth < per_unit + 2 or (depth - 2) % per_unit:
        raise ValueError(f"Pre-ResNet depth must be {per_unit}n+2 with n >= 1 (bottleneck={bottleneck}), got {depth}")
    n = (depth - 2) // per_unit
    return PreActResNet(widths, [n] * 3, num_classes, stem_channels=16, bottleneck=bottleneck)


@register_model(family=preresnet)
def preresnet_29(depth: int = 29, **options: Any) -> PreActResNet:
    """Pre-ResNet-29 (3 x 3 bottleneck units): a small Pre-ResNet; not in the paper."""
    return preresnet(depth=depth, **options)


@register_model(family=preresnet)
def preresnet_164(depth: int = 164, **options: Any) -> PreActResNet:
    """Pre-ResNet-164 (1.7M in He et al. 2016b): a standard baseline; not in the paper."""
    return preresnet(depth=depth, **options)


@register_model(family=preresnet)
def preresnet_1001(depth: int = 1001, **options: Any) -> PreActResNet:
    """Table 5 row Pre-activation ResNet-1001 (10.2M): the baseline, CIFAR-100."""
    return preresnet(depth=depth, **options)
