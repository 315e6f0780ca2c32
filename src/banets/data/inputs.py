"""A batch's inputs: one tensor, given to the model as its argument, or named tensors (a dict), given as keyword
arguments, the way Hugging Face models take ``input_ids`` and ``attention_mask``.

Everything that moves, splits or compares a batch's inputs (the engine, data parallelism, the teacher cache, the
checks before training) does it through these functions, so named inputs go wherever a tensor goes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Inputs = Tensor | dict[str, Tensor]


def each(inputs: Inputs, change: Callable[[Tensor], Tensor]) -> Inputs:
    """``change`` applied to the tensor, or to every named tensor."""
    if isinstance(inputs, dict):
        return {name: change(tensor) for name, tensor in inputs.items()}
    return change(inputs)


def tensors(inputs: Inputs) -> list[Tensor]:
    return list(inputs.values()) if isinstance(inputs, dict) else [inputs]


def to_device(inputs: Inputs, device: torch.device) -> Inputs:
    return each(inputs, lambda tensor: tensor.to(device, non_blocking=True))


def rows(inputs: Inputs, index: slice | Tensor) -> Inputs:
    """The rows ``index`` of every tensor (named tensors are row-aligned: one row per example)."""
    return each(inputs, lambda tensor: tensor[index])


def shapes(inputs: Inputs) -> str:
    """The shape, or each name and shape, as an error message names them."""
    if isinstance(inputs, dict):
        return ", ".join(f"{name} {tuple(tensor.shape)}" for name, tensor in inputs.items())
    return str(tuple(inputs.shape))


def equal(first: Inputs, second: Inputs) -> bool:
    """The same names, shapes and values."""
    if isinstance(first, dict) != isinstance(second, dict):
        return False
    if isinstance(first, dict) and isinstance(second, dict) and list(first) != list(second):
        return False
    return all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(tensors(first), tensors(second)))


def call(model: Callable[..., object], inputs: Inputs) -> object:
    """``model(inputs)``, or ``model(**inputs)`` for named inputs; what the model returns, as it returns it."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)
