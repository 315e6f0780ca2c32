"""Wide residual networks, WRN-{depth}-{widen_factor} (Zagoruyko & Komodakis, 2016, "Wide Residual Networks").

Three stages of ``(depth - 4) / 6`` basic pre-activation units with ``16k, 32k, 64k`` channels after a 16-channel
3x3 stem; dropout sits between the two convolutions of each unit. The born-again paper uses WRN-28-{1,2,5,10}
as teachers and students (Tables 1 and 3) and wide blocks for the DenseNet-shaped students (Table 5).
"""

from __future__ import annotations

import functools

from banets.models.blocks import PreActResNet
from banets.models.registry import register_model


@register_model("wide_resnet")
def wide_resnet(depth: int = 28, widen_factor: int = 10, dropout: float = 0.0, num_classes: int = 10) -> PreActResNet:
    """WRN-``depth``-``widen_factor``; ``depth`` must be ``6n + 4``. WRN-28-10 has 36,479,194 parameters."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"Wide-ResNet depth must be 6n+4 with n >= 1, got {depth}")
    n = (depth - 4) // 6
    channels = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    return PreActResNet(channels, [n] * 3, num_classes, stem_channels=16, bottleneck=False, dropout=dropout)


for _width in (1, 2, 5, 10):
    register_model(f"wrn_28_{_width}", functools.partial(wide_resnet, depth=28, widen_factor=_width))
