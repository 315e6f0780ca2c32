"""Where a training epoch stands, so that a checkpoint written inside it (``optim.checkpoint_every``) resumes at the
next step, on a CPU bitwise as if never interrupted.

A position holds what the steps so far changed and the next steps read: the step, torch's generators (the global
one, which dropout and DKPP draw from, and the augmentation generator), the epoch's partial sums, and the state
that modules carry from batch to batch (a language model's hidden state; a cached teacher is run again over the
epoch's first steps instead, see ``Trainer._teach_again``). The data order
needs nothing: it is drawn at the epoch's start from ``(seed, epoch)``, and the batches already trained on are
skipped without being read where the data allow it (in-memory tensors, text streams, image files: their
``from_step``); any other iterable is read through to the step.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn

from banets import distributed
from banets.config import checkpoint_interval
from banets.data.registry import Batch

TIME_CHECK_STEPS = 25  # a clock in minutes is read every this many steps, agreed on by every process


@runtime_checkable
class Carried(Protocol):
    """A module whose state from one batch to the next must survive a mid-epoch checkpoint."""

    def carried_state(self) -> Any: ...

    def load_carried_state(self, state: Any) -> None: ...


def carried_states(*models: nn.Module | None) -> dict[str, Any]:
    """What every :class:`Carried` module of ``models`` carries, keyed by model and module name."""
    return {f"{i}.{name}": module.carried_state() for i, model in enumerate(models) if model is not None
            for name, module in model.named_modules() if isinstance(module, Carried)}


def load_carried_states(states: dict[str, Any], *models: nn.Module | None) -> None:
    for i, model in enumerate(models):
        if model is not None:
            for name, module in model.named_modules():
                if isinstance(module, Carried):
                    module.load_carried_state(states.get(f"{i}.{name}"))


def generator_states(augment: torch.Generator) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "augment": augment.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def load_generator_states(per_process: list[dict[str, Any]] | dict[str, Any], augment: torch.Generator) -> None:
    """This process's generators as a checkpoint inside an epoch saved them (one state per process: each draws its
    own dropout masks; a resume with another number of processes takes them in turn; one state, not a list: a
    checkpoint written before they were kept per process)."""
    per_process = per_process if isinstance(per_process, list) else [per_process]
    states = per_process[distributed.rank() % len(per_process)]
    torch.set_rng_state(states["torch"])
    augment.set_state(states["augment"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


def batches_from(data: Iterable[Batch], step: int) -> Iterable[Batch]:
    """The epoch's batches from ``step`` on: ``data.from_step(step)`` where the data skip without reading."""
    if step == 0:
        return data
    from_step = getattr(data, "from_step", None)
    return from_step(step) if from_step is not None else itertools.islice(data, step, None)


class CheckpointClock:
    """When ``optim.checkpoint_every`` asks for a checkpoint inside an epoch: every N steps, or once N minutes
    passed (read every ``TIME_CHECK_STEPS`` steps, so that every process decides alike)."""

    def __init__(self, every: int | str | None):
        self.interval = checkpoint_interval(every) if every is not None else None
        self.last = time.monotonic()

    def due(self, steps_done: int) -> bool:
        """Whether to write a checkpoint after ``steps_done`` steps of this epoch (a resumed epoch counts the steps
        before its checkpoint too, so it writes at the same steps as an uninterrupted one)."""
        if self.interval is None:
            return False
        kind, amount = self.interval
        if kind == "steps":
            return steps_done % int(amount) == 0
        if steps_done % TIME_CHECK_STEPS or not distributed.any_process(time.monotonic() - self.last >= amount):
            return False
        self.last = time.monotonic()
        return True
