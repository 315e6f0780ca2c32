"""DenseNet-BC for CIFAR (Huang et al., 2017, "Densely Connected Convolutional Networks"), the born-again
paper's main teachers and students: DenseNet-{depth}-{growth} in Tables 1, 2 and 4 (Furlanello et al., 2018).

Layout: ``conv1`` (3x3, ``2 * growth_rate`` channels for BC) - ``stages[0..2]`` - ``norm`` (BN-ReLU) - global
average pooling - ``classifier``. Stage ``i`` is a dense block (``stages[i].block``) followed, except for the
last, by a transition (``stages[i].transition``: BN-ReLU-conv1x1 to ``floor(compression * C)`` channels, 2x2
average pooling). With bottlenecks a dense layer is BN-ReLU-conv1x1 (``4 * growth_rate``) - BN-ReLU-conv3x3
(``growth_rate``), and its output is concatenated to its input.

Layers per block: ``(depth - 4) // 6`` with bottlenecks, ``(depth - 4) // 3`` without (the rule of the
reference implementations, rounding down), so "DenseNet-90" has 14 layers per block (an effective depth of 88)
and "DenseNet-80" has 12 (depth 76). ``block_layers`` overrides the rule, e.g. for the depth variations of
Table 4. See docs/models.md for the parameter counts against the paper's.
"""

from __future__ import annotations

import contextlib
import typing
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from banets.models.blocks import StagedNetwork, bn_relu, conv1x1, conv3x3, init_weights
from banets.models.registry import register_model


@contextlib.contextmanager
def _keep_running_stats(norm: nn.BatchNorm2d) -> Iterator[None]:
    """Undo the second running-statistics update that a checkpoint recomputation makes in training mode."""
    saved = [b.clone() for b in norm.buffers()] if norm.training else []
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(norm.buffers(), saved):
                buffer.copy_(value)


class DenseLayer(nn.Module):
    """One dense layer: takes the list of all previous feature maps, returns ``growth_rate`` new channels.

    ``memory_efficient=True`` recomputes the concat-BN-ReLU-conv1x1 in the backward pass
    (``torch.utils.checkpoint``) instead of storing the concatenation, as in Pleiss et al. (2017), "Memory-Efficient
    Implementation of DenseNets"; outputs, gradients and BatchNorm running statistics are identical.
    """

    def __init__(
        self, in_channels: int, growth_rate: int, bottleneck: bool, drop_rate: float, memory_efficient: bool
    ):
        super().__init__()
        inner = 4 * growth_rate if bottleneck else in_channels
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, inner) if bottleneck else nn.Identity()
        conv = conv3x3(inner, growth_rate)
        self.conv2 = nn.Sequential(bn_relu(inner), conv) if bottleneck else conv
        self.dropout = nn.Dropout(drop_rate)
        self.memory_efficient = memory_efficient

    def _bottleneck(self, *features: torch.Tensor) -> torch.Tensor:
        return self.conv1(F.relu(self.norm1(torch.cat(features, 1)), inplace=True))

    def _recompute_contexts(self) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        return contextlib.nullcontext(), _keep_running_stats(self.norm1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if not (self.memory_efficient and torch.is_grad_enabled()):
            out = self._bottleneck(*features)
        elif torch.compiler.is_compiling():
            # The compiled graph is functional: recomputation never re-applies the running-statistics update.
            out = checkpoint(self._bottleneck, *features, use_reentrant=False)
        else:
            out = checkpoint(self._bottleneck, *features, use_reentrant=False, context_fn=self._recompute_contexts)
        return self.dropout(self.conv2(out))


class DenseBlock(nn.Module):
    """``num_layers`` dense layers; the output concatenates the input and every layer's ``growth_rate`` channels."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        bottleneck: bool,
        drop_rate: float,
        memory_efficient: bool,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, bottleneck, drop_rate, memory_efficient)
            for i in range(num_layers)
        )
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1x1 to ``out_channels``, then 2x2 average pooling (unless ``pool=False``)."""

    def __init__(self, in_channels: int, out_channels: int, pool: bool = True):
        pooling = nn.AvgPool2d(2) if pool else nn.Identity()
        super().__init__(bn_relu(in_channels), conv1x1(in_channels, out_channels), pooling)
        self.out_channels = out_channels


class DenseNet(StagedNetwork):
    """DenseNet(-BC) for 32x32 inputs with one stage (dense block + transition) per entry of ``block_layers``.

    ``final_transition=True`` also compresses the last block's output with BN-ReLU-conv1x1 (no pooling) before the
    final BN-ReLU. Huang et al. have no such layer, but it reproduces the born-again paper's Table 1 parameter
    counts for DenseNet-90-60, 80-80 and 80-120 to within 0.5% (docs/models.md), and Sec. 4.1 speaks of "the dense
    block output after the 1x1 convolution" for every block.

    ``growth_rate`` may differ per block and ``transition_channels`` may set each transition's output size instead
    of ``compression``: the depth and compression variants of Table 4 keep the teacher's stage outputs that way
    (``models/students.py``).
    """

    def __init__(
        self,
        block_layers: Sequence[int],
        growth_rate: int | Sequence[int],
        num_classes: int = 10,
        compression: float = 0.5,
        bottleneck: bool = True,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
        stem_channels: int | None = None,
        final_transition: bool = False,
        transition_channels: Sequence[int] | None = None,
    ):
        super().__init__()
        growths = [growth_rate] * len(block_layers) if isinstance(growth_rate, int) else list(growth_rate)
        outs = list(transition_channels or [])
        if (not block_layers or min(block_layers) < 1 or len(growths) != len(block_layers) or min(growths) < 1
                or not 0 < compression <= 1 or (outs and len(outs) != len(block_layers) - 1 + final_transition)):
            raise ValueError(
                f"invalid DenseNet: {block_layers=}, {growth_rate=}, {compression=}, {transition_channels=}"
            )
        channels = stem_channels or (2 * growths[0] if bottleneck else 16)
        self.conv1 = conv3x3(3, channels)
        stages = []
        for i, (n, growth) in enumerate(zip(block_layers, growths)):
            block = DenseBlock(n, channels, growth, bottleneck, drop_rate, memory_efficient)
            parts: list[tuple[str, nn.Module]] = [("block", block)]
            channels = block.out_channels
            last = i == len(block_layers) - 1
            if not last or final_transition:
                out = outs[i] if outs else int(compression * channels)
                parts.append(("transition", Transition(channels, out, pool=not last)))
                channels = out
            stages.append(nn.Sequential(OrderedDict(parts)))
        self.stages = nn.ModuleList(stages)
        self.norm = bn_relu(channels)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def blocks(self) -> list[DenseBlock]:
        """The dense block of each stage (before its transition)."""
        return [typing.cast(DenseBlock, stage.block) for stage in self.stages]


@register_model
def densenet_bc(
    depth: int = 100,
    growth_rate: int | Sequence[int] = 12,
    num_classes: int = 10,
    compression: float = 0.5,
    bottleneck: bool = True,
    drop_rate: float = 0.0,
    memory_efficient: bool = False,
    block_layers: Sequence[int] | None = None,
    stem_channels: int | None = None,
    final_transition: bool = False,
    transition_channels: Sequence[int] | None = None,
) -> DenseNet:
    """DenseNet-BC family (Huang et al. 2017); the defaults build DenseNet-BC-100-12.

    Three dense blocks of ``(depth - 4) // 6`` layers (``// 3`` without bottlenecks); ``block_layers`` overrides
    the rule."""
    if block_layers is None:
        n = (depth - 4) // (6 if bottleneck else 3)
        if n < 1:
            raise ValueError(f"DenseNet depth {depth} is too small for three blocks")
        block_layers = (n, n, n)
    return DenseNet(
        block_layers,
        growth_rate,
        num_classes,
        compression,
        bottleneck,
        drop_rate,
        memory_efficient,
        stem_channels,
        final_transition,
        transition_channels,
    )


# The paper's configurations, DenseNet-{depth}-{growth} (Tables 1 and 2). Its counts of the last three need
# final_transition=True, as their presets set (docs/models.md).


@register_model(family=densenet_bc)
def densenet_bc_112_33(depth: int = 112, growth_rate: int | Sequence[int] = 33, **options: Any) -> DenseNet:
    """Tables 1-2 row DenseNet-112-33 (paper: 6.3M, see docs/models.md)."""
    return densenet_bc(depth=depth, growth_rate=growth_rate, **options)


@register_model(family=densenet_bc)
def densenet_bc_90_60(depth: int = 90, growth_rate: int | Sequence[int] = 60, **options: Any) -> DenseNet:
    """Tables 1-2 row DenseNet-90-60 (16.1M with final_transition=True); Tables 3-5."""
    return densenet_bc(depth=depth, growth_rate=growth_rate, **options)


@register_model(family=densenet_bc)
def densenet_bc_80_80(depth: int = 80, growth_rate: int | Sequence[int] = 80, **options: Any) -> DenseNet:
    """Tables 1-2 row DenseNet-80-80 (22.4M with final_transition=True)."""
    return densenet_bc(depth=depth, growth_rate=growth_rate, **options)


@register_model(family=densenet_bc)
def densenet_bc_80_120(depth: int = 80, growth_rate: int | Sequence[int] = 120, **options: Any) -> DenseNet:
    """Tables 1-2 row DenseNet-80-120 (50.4M with final_transition=True)."""
    return densenet_bc(depth=depth, growth_rate=growth_rate, **options)
