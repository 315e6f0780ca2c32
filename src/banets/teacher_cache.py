"""The frozen teacher's outputs computed once and reused in every later epoch (language models).

A born-again student learns from a frozen teacher (Furlanello et al. 2018, Sec. 3.1). For a language model
the teacher's inputs repeat exactly from one epoch to the next: Zaremba et al.'s batches come in a fixed order
and nothing augments them (Sec. 4.2), so the teacher's logits for the i-th batch of an epoch are the same in
every epoch. :class:`CachedTeacher` wraps the teacher, stores its logits for each batch of the first epoch,
keyed by the batch's position in the epoch, and returns the stored copies afterwards: later epochs skip the
teacher's forward pass. It keeps each batch's input too and refuses a batch that differs from the stored one
(shuffled or augmented data), so a cache can never teach the wrong targets.

Memory: the logits of one epoch are ``tokens x vocabulary x bytes`` (PTB in bf16: 929k x 10k x 2 B = 18.6 GB).
When that estimate exceeds the budget (by default half the memory free on the device that holds the logits)
nothing is cached, with a warning, and the teacher runs every step as without a cache.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from banets.config import UserError

CACHE_DTYPES: dict[str, Optional[torch.dtype]] = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class CacheError(UserError, RuntimeError):
    """A batch that differs from the one stored at its position: the data are not the same every epoch."""


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: the GPU's free memory, or the host's ``MemAvailable`` (Linux; 0 if unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0


class CachedTeacher(nn.Module):
    """``teacher`` whose logits for the i-th batch of the first pass are returned again for the i-th batch of
    every later pass. A pass starts at ``reset_state()``, which the engine calls before every epoch.

    ``batches_per_pass`` sizes the memory estimate; ``dtype`` is the stored precision (``"auto"``: as the
    teacher computes them, e.g. bf16 under autocast, so cached and uncached training see the same targets);
    ``max_bytes`` is the budget (default: half the memory free where the logits live).
    """

    def __init__(self, teacher: nn.Module, batches_per_pass: int, dtype: str = "auto", max_bytes: Optional[int] = None):
        super().__init__()
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"unknown cache dtype {dtype!r}; choose one of {', '.join(CACHE_DTYPES)}")
        self.teacher = teacher
        self.batches_per_pass, self.dtype, self.max_bytes = batches_per_pass, CACHE_DTYPES[dtype], max_bytes
        self.inputs: list[Tensor] = []
        self.logits: list[Tensor] = []
        self.position = 0  # index of the next batch in the current pass
        self.complete = False  # a whole pass is stored: replay from now on
        self.enabled = True  # False once the estimate did not fit

    def forward(self, x: Tensor) -> Tensor:
        if self.complete:
            return self._replay(x)
        logits = self.teacher(x)
        if self.enabled and (self.position > 0 or self._fits(logits)):
            self.inputs.append(x.detach().clone())
            self.logits.append(logits.detach().to(self.dtype or logits.dtype))
            logits = self.logits[-1]  # the first pass sees the stored precision too
        self.position += 1
        return logits

    def reset_state(self) -> None:
        """Start a new pass; after the first whole pass every batch is replayed from the cache."""
        if self.enabled and self.position > 0:
            self.complete = True
        self.position = 0

    def _replay(self, x: Tensor) -> Tensor:
        i = self.position
        if i >= len(self.logits):
            raise CacheError(f"teacher cache: this epoch has more than the first epoch's {len(self.logits)} batches; "
                             "the cache needs the same batches every epoch (set ban.cache_teacher=null)")
        if self.inputs[i].shape != x.shape or not torch.equal(self.inputs[i], x):
            raise CacheError(f"teacher cache: batch {i} differs from the first epoch's batch {i}; the cache needs the same "
                             "batches in the same order every epoch, without shuffling or augmentation (set ban.cache_teacher=null)")
        self.position += 1
        return self.logits[i]

    def _fits(self, logits: Tensor) -> bool:
        """Whether a pass of batches like this one fits in the budget; if not, warn and cache nothing."""
        element_size = torch.empty((), dtype=self.dtype or logits.dtype).element_size()
        needed = self.batches_per_pass * logits.numel() * element_size
        budget = self.max_bytes if self.max_bytes is not None else free_memory(logits.device) // 2
        if needed > budget:
            self.enabled = False
            rows = logits.numel() // logits.shape[-1]
            warnings.warn(
                f"teacher cache off: {self.batches_per_pass} batches x {rows} tokens x {logits.shape[-1]} classes x "
                f"{element_size} B = {needed / 1e9:.2f} GB exceeds the {budget / 1e9:.2f} GB budget on {logits.device}; "
                f"the teacher runs every step (try ban.cache_teacher=bf16 or a smaller vocabulary)",
                stacklevel=2,
            )
        return self.enabled
