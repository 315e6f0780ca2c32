"""Students of another shape than their DenseNet teacher (Furlanello et al., 2018) and the layers they share.

- Section 3.4 and Table 5, "DenseNets born again as ResNets": every dense block of the teacher is replaced by
  ``units`` residual units (``blocks.PreActUnit``, wide basic or bottleneck) whose width is ``ratio`` times that
  block's output after its 1x1 transition convolution (Section 4.1). The teacher's transitions are kept
  (BN-ReLU-conv1x1 back to the teacher's channels, then 2x2 average pooling), so every stage of the student
  outputs the same shape as the teacher's stage, and the teacher's first convolution and classifier fit.
- Section 3.3 and Table 4: DenseNets with the teacher's stage outputs but other depth (the growth rate is derived
  from the layer count) or compression (see ``densenet_variant_kwargs``).
- Section 4.1 and Table 5: the students share the teacher's first and last layers, copied and frozen
  (``share_frozen``; ``ban.share_layers`` in a config).

docs/models.md lists the parameter counts of every student next to the paper's.
"""

from __future__ import annotations

import typing
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn

from banets.models.blocks import PreActUnit, Staged, StagedNetwork, bn_relu, conv3x3, init_weights
from banets.models.densenet import DenseLayer, DenseNet, Transition, densenet_bc
from banets.models.registry import create_model, register_model

#: The teacher of Tables 4 and 5: DenseNet-90-60 with a final 1x1 transition, whose parameter count matches the
#: paper's 16.1M (docs/models.md); its stages output 480, 660 and 750 channels.
PAPER_TEACHER = "densenet_bc_90_60"
PAPER_TEACHER_OPTIONS = {"final_transition": True}


@dataclass(frozen=True)
class DenseShape:
    """What a student must match of a DenseNet teacher: its stem width and, per stage, the dense block's layer
    count and output channels and the stage's output channels (after the transition's 1x1 convolution)."""

    stem: int
    block_layers: list[int]
    block_channels: list[int]
    stage_channels: list[int]
    final_transition: bool
    bottleneck: bool

    @property
    def stage_inputs(self) -> list[int]:
        return [self.stem, *self.stage_channels[:-1]]

    @property
    def compression(self) -> float:
        """The fraction of channels a transition keeps (0.5 for DenseNet-BC)."""
        return self.stage_channels[0] / self.block_channels[0]


def dense_shape(teacher: str = PAPER_TEACHER, teacher_options: dict | None = None) -> DenseShape:
    """The stage shapes of DenseNet ``teacher`` built with ``teacher_options`` (on the meta device: no weights)."""
    with torch.device("meta"):
        model = create_model(teacher, **(teacher_options or {}))
    if not isinstance(model, DenseNet):
        raise ValueError(
            f"{teacher!r} is a {type(model).__name__}; the students of Tables 4 and 5 need a DenseNet teacher"
        )
    blocks = model.blocks()
    first_layer = typing.cast(DenseLayer, blocks[0].layers[0])
    return DenseShape(
        stem=typing.cast(nn.Conv2d, model.conv1).out_channels,
        block_layers=[len(block.layers) for block in blocks],
        block_channels=[block.out_channels for block in blocks],
        stage_channels=model.stage_channels(),
        final_transition=hasattr(model.stages[-1], "transition"),
        bottleneck=not isinstance(first_layer.conv1, nn.Identity),
    )


def check_stage_shapes(student: Staged, shape: DenseShape) -> None:
    if student.stage_channels() != shape.stage_channels:
        raise ValueError(f"student stages output {student.stage_channels()} channels, teacher's {shape.stage_channels}")


# -- residual students (Section 3.4, Table 5) --------------------------------------------------------------


class DenseShapedResNet(StagedNetwork):
    """A pre-activation ResNet with a DenseNet teacher's stage shapes: ``conv1`` (the teacher's stem width), then per
    stage ``units`` residual units of ``ratio`` x the stage's channels and the teacher's transition back to them,
    then BN-ReLU, global average pooling and ``classifier`` (the teacher's input size)."""

    def __init__(
        self, shape: DenseShape, units: int, ratio: float, bottleneck: bool, num_classes: int = 10, dropout: float = 0.0
    ):
        super().__init__()
        if units < 1 or ratio <= 0:
            raise ValueError(f"need units >= 1 and ratio > 0, got units={units} ratio={ratio}")
        self.conv1 = conv3x3(3, shape.stem)
        stages = []
        for i, (width_in, out) in enumerate(zip(shape.stage_inputs, shape.stage_channels)):
            width = round(ratio * out)
            residual = [PreActUnit(width_in if j == 0 else width, width, 1, bottleneck, dropout) for j in range(units)]
            transition = Transition(width, out, pool=i < len(shape.stage_channels) - 1)
            stages.append(nn.Sequential(OrderedDict(units=nn.Sequential(*residual), transition=transition)))
        self.stages = nn.ModuleList(stages)
        self.norm = bn_relu(shape.stage_channels[-1])
        self.classifier = nn.Linear(shape.stage_channels[-1], num_classes)
        init_weights(self)


@register_model
def dense_shaped_resnet(
    teacher: str = PAPER_TEACHER,
    teacher_options: dict | None = None,
    units: int = 4,
    ratio: float = 1.0,
    unit: Literal["wide", "bottleneck"] = "wide",
    dropout: float = 0.0,
    num_classes: int = 10,
) -> DenseShapedResNet:
    """Residual students of a DenseNet teacher's stage shapes (Sec. 3.4, Table 5).

    ``units`` wide (Wide-ResNet basic) or bottleneck (Pre-ResNet) units per dense block, ``ratio`` x the block's
    output channels wide (Table 5: "{family}-{units}-{ratio}")."""
    if unit not in ("wide", "bottleneck"):
        raise ValueError(f"unit must be 'wide' or 'bottleneck', got {unit!r}")
    shape = dense_shape(teacher, teacher_options)
    student = DenseShapedResNet(shape, units, ratio, unit == "bottleneck", num_classes, dropout)
    check_stage_shapes(student, shape)
    return student


# Table 5's students of DenseNet-90-60 with its final transition, "{family}-{units per block}-{width ratio}" (a
# ratio of 0.5 is written _0_5: banets 0.2 named two of them _0.5, registry.RENAMED).


@register_model(family=dense_shaped_resnet)
def dense_shaped_preresnet_14_0_5(
    teacher_options: dict | None = PAPER_TEACHER_OPTIONS,
    units: int = 14,
    ratio: float = 0.5,
    unit: Literal["wide", "bottleneck"] = "bottleneck",
    **options: Any,
) -> DenseShapedResNet:
    """Table 5 row BAN-Pre-ResNet-14-0.5 (7.3M): a residual student of DenseNet-90-60."""
    return dense_shaped_resnet(teacher_options=teacher_options, units=units, ratio=ratio, unit=unit, **options)


@register_model(family=dense_shaped_resnet)
def dense_shaped_preresnet_14_1(
    teacher_options: dict | None = PAPER_TEACHER_OPTIONS,
    units: int = 14,
    ratio: float = 1.0,
    unit: Literal["wide", "bottleneck"] = "bottleneck",
    **options: Any,
) -> DenseShapedResNet:
    """Table 5 row BAN-Pre-ResNet-14-1 (17.7M): a residual student of DenseNet-90-60."""
    return dense_shaped_resnet(teacher_options=teacher_options, units=units, ratio=ratio, unit=unit, **options)


@register_model(family=dense_shaped_resnet)
def dense_shaped_wrn_1_1(
    teacher_options: dict | None = PAPER_TEACHER_OPTIONS,
    units: int = 1,
    ratio: float = 1.0,
    unit: Literal["wide", "bottleneck"] = "wide",
    **options: Any,
) -> DenseShapedResNet:
    """Table 5 row BAN-Wide-ResNet-1-1 (20.9M): a residual student of DenseNet-90-60."""
    return dense_shaped_resnet(teacher_options=teacher_options, units=units, ratio=ratio, unit=unit, **options)


@register_model(family=dense_shaped_resnet)
def dense_shaped_match_wrn_2_1(
    teacher_options: dict | None = PAPER_TEACHER_OPTIONS,
    units: int = 2,
    ratio: float = 1.0,
    unit: Literal["wide", "bottleneck"] = "wide",
    **options: Any,
) -> DenseShapedResNet:
    """Table 5 row BAN-Match-Wide-ResNet-2-1 (43.1M): the plain 2-unit wide student."""
    return dense_shaped_resnet(teacher_options=teacher_options, units=units, ratio=ratio, unit=unit, **options)


@register_model(family=dense_shaped_resnet)
def dense_shaped_wrn_4_0_5(
    teacher_options: dict | None = PAPER_TEACHER_OPTIONS,
    units: int = 4,
    ratio: float = 0.5,
    unit: Literal["wide", "bottleneck"] = "wide",
    **options: Any,
) -> DenseShapedResNet:
    """Table 5 row BAN-Wide-ResNet-4-0.5 (24.3M): a residual student of DenseNet-90-60."""
    return dense_shaped_resnet(teacher_options=teacher_options, units=units, ratio=ratio, unit=unit, **options)


@register_model(family=dense_shaped_resnet)
def dense_shaped_wrn_4_1(
    teacher_options: dict | None = PAPER_TEACHER_OPTIONS,
    units: int = 4,
    ratio: float = 1.0,
    unit: Literal["wide", "bottleneck"] = "wide",
    **options: Any,
) -> DenseShapedResNet:
    """Table 5 row BAN-Wide-ResNet-4-1 (87.3M): a residual student of DenseNet-90-60."""
    return dense_shaped_resnet(teacher_options=teacher_options, units=units, ratio=ratio, unit=unit, **options)


# -- DenseNet students of other depth or compression (Section 3.3, Table 4) -------------------------------------


def densenet_variant_kwargs(shape: DenseShape, depth_factor: float = 1.0, compression_factor: float = 1.0) -> dict:
    """``densenet_bc`` keyword arguments for a DenseNet with the teacher's stage outputs and stem, ``depth_factor`` x
    its layers per block and ``compression_factor`` x its compression.

    Following Section 3.3, the stage outputs stay the teacher's and the growth rate of each block follows from
    them: a block must add ``stage output / kept fraction - stage input`` channels over its layers. We read the
    paper's "compression factor" as the fraction a transition removes (0.5 for DenseNet-BC), so 0.5x, 0.75x and 1.5x
    keep 75%, 62.5% and 25% of a block's output: lowering it lowers the growth rate, as the paper says, and the
    parameter counts move the way Table 4's do (docs/models.md). A last stage without a transition keeps its
    output as is.
    """
    kept = 1 - (1 - shape.compression) * compression_factor
    if not 0 < kept <= 1:
        raise ValueError(f"compression_factor {compression_factor} removes {1 - kept:.0%} of the channels")
    layers = [max(1, round(n * depth_factor)) for n in shape.block_layers]
    transitions = len(layers) - 1 + shape.final_transition
    growths = []
    for i, (n, width_in, out) in enumerate(zip(layers, shape.stage_inputs, shape.stage_channels)):
        block_out = out / kept if i < transitions else out
        growths.append(max(1, round((block_out - width_in) / n)))
    return dict(
        block_layers=layers,
        growth_rate=growths,
        stem_channels=shape.stem,
        bottleneck=shape.bottleneck,
        final_transition=shape.final_transition,
        transition_channels=shape.stage_channels[:transitions],
    )


@register_model
def densenet_variant(
    teacher: str = PAPER_TEACHER,
    teacher_options: dict | None = None,
    depth_factor: float = 1.0,
    compression_factor: float = 1.0,
    drop_rate: float = 0.0,
    memory_efficient: bool = False,
    num_classes: int = 10,
) -> DenseNet:
    """DenseNet students of another depth or compression (Sec. 3.3, Table 4).

    Table 4's "k*Depth" and "k*Compr" columns; see ``densenet_variant_kwargs``."""
    shape = dense_shape(teacher, teacher_options)
    kwargs = densenet_variant_kwargs(shape, depth_factor, compression_factor)
    student = densenet_bc(num_classes=num_classes, drop_rate=drop_rate, memory_efficient=memory_efficient, **kwargs)
    check_stage_shapes(student, shape)
    return student


# -- shared first and last layers (Section 4.1) ------------------------------------------------------------------


def share_frozen(student: nn.Module, teacher: nn.Module, paths: Sequence[str] = ("conv1", "classifier")) -> nn.Module:
    """Copy the teacher's modules at ``paths`` (e.g. its first convolution and classifier) into the student and
    freeze them (``requires_grad=False``: the optimiser skips them, so no weight decay), as the Table 5 students
    do. Raises ``ValueError`` naming the module when a path is missing or its shapes differ. (BatchNorm running
    statistics inside a shared module would still update in training mode; the paper shares a convolution and a
    linear layer, which have none.)"""
    for path in paths:
        try:
            mine, theirs = student.get_submodule(path), teacher.get_submodule(path)
        except AttributeError:
            raise ValueError(f"cannot share {path!r}: student or teacher has no such module") from None
        shapes = {k: tuple(v.shape) for k, v in mine.state_dict().items()}
        their_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
        if shapes != their_shapes:
            raise ValueError(f"cannot share {path!r}: teacher's is {their_shapes}, student's is {shapes}")
        with torch.no_grad():
            mine.load_state_dict(theirs.state_dict())
        mine.requires_grad_(False)
    return student
