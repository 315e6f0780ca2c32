"""What a model returns, as logits: a tensor, a tuple whose first element is the logits (``return_dict=False``),
or an object with ``.logits`` (a Hugging Face ``ModelOutput``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from banets.data.inputs import Inputs, call


def logits_of(output: object) -> Tensor:
    """The logits in ``output``; anything else is a ``TypeError`` saying what a model may return."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"returned {type(output).__name__}; a model must return its logits: a tensor, a tuple whose first element "
        f"is one, or an object with .logits"
    )


def model_logits(model: Callable[..., object], inputs: Inputs) -> Tensor:
    """The logits of ``model`` on a batch's inputs (one tensor, or named tensors given as keyword arguments)."""
    return logits_of(call(model, inputs))
