"""The teacher: the one frozen copy a student learns from, and a teacher trained elsewhere.

:class:`FrozenTeacher` is how every teacher reaches the engine, whether banets trained it (the teacher, or
generation k-1 teaching generation k), it was given from Python (``born_again(teacher=...)``) or loaded from
``model.teacher_checkpoint``: a copy of the trained model, in evaluation mode whatever the student's training
switches, without gradients, and optionally replaying its outputs of the first epoch (``teacher_cache``).

A teacher checkpoint is read without running code (``torch.load(weights_only=True)``, or safetensors) and must fit
the teacher's architecture exactly: a missing, unexpected or differently shaped tensor is a one-line error naming it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn

from banets.config import UserError
from banets.data.inputs import Inputs
from banets.models.outputs import model_logits
from banets.teacher_cache import CachedTeacher


class FrozenTeacher(nn.Module):
    """A frozen copy of ``model`` that teaches a student (Sec. 3.1): evaluation mode (dropout off, batch-norm
    statistics fixed) that ``train()`` does not undo, no gradients; ``cache`` (a dtype name of
    ``teacher_cache.CACHE_DTYPES``) replays the first pass's outputs over ``batches_per_pass`` batches."""

    def __init__(self, model: nn.Module, cache: str | None = None, batches_per_pass: int = 0):
        super().__init__()
        if cache and batches_per_pass < 1:
            raise ValueError("a cached teacher needs the number of batches of a pass (batches_per_pass)")
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
        self.model = CachedTeacher(frozen, batches_per_pass, cache) if cache else frozen
        self.eval()

    @property
    def cached(self) -> bool:
        """Whether it replays stored outputs (which a new process no longer has)."""
        return isinstance(self.model, CachedTeacher)

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)

    def forward(self, x: Inputs) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x) if self.cached else model_logits(self.model, x)


class TeacherError(UserError, ValueError):
    """A teacher checkpoint that cannot be read or does not fit the teacher's architecture."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of ``path``: ``.safetensors``, a banets checkpoint (``{"model": ...}``) or a plain state dict."""
    path = Path(path)
    if not path.is_file():
        raise TeacherError(f"model.teacher_checkpoint: no file {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many types for damaged or unsafe files
        raise TeacherError(
            f"model.teacher_checkpoint: cannot read {path} safely ({type(error).__name__}); pass a banets "
            f"checkpoint, a state dict saved with torch.save(model.state_dict(), ...) or a .safetensors file"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a banets checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TeacherError(f"model.teacher_checkpoint: {path} holds no state dict of tensors")
    return state


def load_teacher_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load ``path`` into ``model``, checked tensor by tensor; tied weights stored once (safetensors) are accepted."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not _tied_elsewhere(model, k, state)]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    kind = [
        f"{k} {state[k].dtype} vs {v.dtype}"
        for k, v in expected.items()
        if k in state and state[k].is_floating_point() != v.is_floating_point()
    ]  # integers where weights go, or back
    problems = [
        f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
        f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
        f"{len(wrong)} of another shape (e.g. {wrong[0]})" if wrong else "",
        f"{len(kind)} of another kind of number (e.g. {kind[0]})" if kind else "",
    ]
    if any(problems):
        raise TeacherError(
            f"model.teacher_checkpoint {path} does not fit the teacher {type(model).__name__}: "
            f"{'; '.join(p for p in problems if p)} tensors; set model.name/options (or model.teacher_name) "
            f"to the architecture it was trained as"
        )
    model.load_state_dict(state, strict=False)
    return model


def _tied_elsewhere(model: nn.Module, key: str, state: dict) -> bool:
    """Whether ``key`` is the same tensor as another entry of ``model`` that ``state`` holds (e.g. a tied decoder)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    if key not in params:
        return False
    return any(other in state and params[other] is params[key] for other in params if other != key)
