"""The frozen teacher's outputs computed once and reused in every later epoch (language models).

A born-again student learns from a frozen teacher (Furlanello et al. 2018, Sec. 3.1). For a language model
the teacher's inputs repeat exactly from one epoch to the next: Zaremba et al.'s batches come in a fixed order
and nothing augments them (Sec. 4.2), so the teacher's logits for the i-th batch of an epoch are the same in
every epoch. :class:`CachedTeacher` wraps the teacher, stores its logits for each batch of the first epoch,
keyed by the batch's position in the epoch, and returns the stored copies afterwards: later epochs skip the
teacher's forward pass.

What it checks, so that it does not teach the wrong targets: every replayed batch must have the shape of the
stored batch at its position (free: shapes live on the host), the first batch of every pass must equal the
first epoch's first batch element for element, and every other batch must have the first epoch's checksum at
its position (a position-weighted sum of its inputs, computed on the device; a changed or reordered batch
almost never keeps it). The checksums are compared at the end of each pass, so the host waits for the device
once per epoch, not at every step: data whose later batches change (an iterator that draws its batches anew
but starts the same way) train one epoch on replayed targets and are then refused, naming the first batch
that differed.

Memory: the logits of one epoch are ``tokens x vocabulary x bytes`` (PTB in bf16: 929k x 10k x 2 B = 18.6 GB).
They are stored at most at the precision the teacher computes them in: under bf16 or fp16 autocast,
``cache_teacher: fp32`` stores the 16-bit logits as they are (an fp32 copy would hold the same values in twice
the memory). When the estimate exceeds the budget (by default half the memory free on the device that holds the
logits) nothing is cached, with a warning, and the teacher runs every step as without a cache.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
from torch import Tensor

from banets.config import UserError
from banets.data import inputs
from banets.data.inputs import Inputs
from banets.models.outputs import model_logits

CACHE_DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


class CacheError(UserError, RuntimeError):
    """A batch that differs from the one stored at its position: the data are not the same every epoch."""


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: on a GPU what the driver reports free plus what PyTorch's caching allocator
    reserved but does not use (``mem_get_info`` counts that as used, though PyTorch hands it out first); else
    the host's ``MemAvailable`` (Linux; 0 if unknown)."""
    if device.type == "cuda":
        reserved_unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + reserved_unused
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0


def checksum(x: Tensor) -> Tensor:
    """A position-weighted sum of ``x``, on its device: the same batch gives the same sum (exactly, on one device),
    a changed or reordered batch almost never does."""
    flat = x.detach().flatten()
    dtype = torch.int64 if not flat.is_floating_point() else torch.float32
    weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=dtype)
    return (flat.to(dtype) * weights).sum()


def checksums(x: Inputs) -> list[Tensor]:
    """The :func:`checksum` of each of the inputs' tensors."""
    return [checksum(tensor) for tensor in inputs.tensors(x)]


class CachedTeacher(nn.Module):
    """``teacher`` whose logits for the i-th batch of the first pass are returned again for the i-th batch of
    every later pass. A pass starts at ``reset_state()``, which the engine calls before every epoch.

    ``batches_per_pass`` sizes the memory estimate; ``dtype`` is the stored precision, never wider than the
    teacher's output (``"auto"``: as the teacher computes them, e.g. bf16 under autocast, so cached and uncached
    training see the same targets; ``"fp32"`` under bf16 autocast also stores bf16); ``max_bytes`` is the budget
    (default: half the memory free where the logits live).
    """

    def __init__(self, teacher: nn.Module, batches_per_pass: int, dtype: str = "auto", max_bytes: int | None = None):
        super().__init__()
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"unknown cache dtype {dtype!r}; choose one of {', '.join(CACHE_DTYPES)}")
        self.teacher = teacher
        self.batches_per_pass, self.dtype, self.max_bytes = batches_per_pass, CACHE_DTYPES[dtype], max_bytes
        self.first_input: Inputs | None = None  # the first pass's first batch, compared at every pass's start
        self.input_shapes: list[str] = []
        self.checksums: list[list[Tensor]] = []  # of each stored batch's inputs, on the device
        self.differs: list[Tensor] = []  # this pass: whether each replayed batch's checksum differs, on the device
        self.logits: list[Tensor] = []
        self.position = 0  # index of the next batch in the current pass
        self.complete = False  # a whole pass is stored: replay from now on
        self.enabled = True  # False once the estimate did not fit

    def forward(self, x: Inputs) -> Tensor:
        if self.complete:
            return self._replay(x)
        logits = model_logits(self.teacher, x)
        if self.enabled and (self.position > 0 or self._fits(logits)):
            if self.position == 0:
                self.first_input = inputs.each(x, lambda tensor: tensor.detach().clone())
            self.input_shapes.append(inputs.shapes(x))
            self.checksums.append(checksums(x))
            self.logits.append(logits.detach().to(self.stored_dtype(logits.dtype)))
            logits = self.logits[-1]  # the first pass sees the stored precision too
        self.position += 1
        return logits

    def reset_state(self) -> None:
        """End the pass (its replayed batches are checked) and start a new one; after the first whole pass every
        batch is replayed from the cache."""
        differs, self.differs = self.differs, []
        if differs and bool(torch.stack(differs).any()):
            first = int(torch.stack(differs).nonzero()[0])
            raise CacheError(
                f"teacher cache: batch {first} of the last epoch differs from the first epoch's batch {first} "
                "(another checksum); the cache needs the same batches in the same order every epoch "
                "(set ban.cache_teacher=null)"
            )
        if self.enabled and self.position > 0:
            self.complete = True
        self.position = 0

    def stored_dtype(self, computed: torch.dtype) -> torch.dtype:
        """The requested dtype, but never wider than ``computed``, the teacher's: wider adds memory, not information."""
        if self.dtype is None or self.dtype.itemsize > computed.itemsize:
            return computed
        return self.dtype

    def _replay(self, x: Inputs) -> Tensor:
        i = self.position
        if i >= len(self.logits):
            raise CacheError(
                f"teacher cache: this epoch has more than the first epoch's {len(self.logits)} batches; "
                "the cache needs the same batches every epoch (set ban.cache_teacher=null)"
            )
        first_changed = i == 0 and self.first_input is not None and not inputs.equal(self.first_input, x)
        if self.input_shapes[i] != inputs.shapes(x) or first_changed:
            raise CacheError(
                f"teacher cache: batch {i} differs from the first epoch's batch {i}; the cache needs the same "
                "batches in the same order every epoch, without shuffling or augmentation (set ban.cache_teacher=null)"
            )
        self.differs.append(torch.stack([new != old for new, old in zip(checksums(x), self.checksums[i])]).any())
        self.position += 1
        return self.logits[i]

    def _fits(self, logits: Tensor) -> bool:
        """Whether a pass of batches like this one fits in the budget; if not, warn and cache nothing."""
        element_size = self.stored_dtype(logits.dtype).itemsize
        needed = self.batches_per_pass * logits.numel() * element_size
        budget = self.max_bytes if self.max_bytes is not None else free_memory(logits.device) // 2
        if needed > budget:
            self.enabled = False
            rows = logits.numel() // logits.shape[-1]
            warnings.warn(
                f"teacher cache off: {self.batches_per_pass} batches x {rows} tokens x {logits.shape[-1]} classes x "
                f"{element_size} B = {needed / 1e9:.2f} GB exceeds the {budget / 1e9:.2f} GB budget on "
                f"{logits.device}; "
                f"the teacher runs every step (try ban.cache_teacher=bf16 or a smaller vocabulary)",
                stacklevel=2,
            )
        return self.enabled
