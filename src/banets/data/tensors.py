"""Mini-batches straight from in-memory tensors.

Hand-written rather than a ``DataLoader`` because every dataset used here (digits, CIFAR as uint8, token
streams) fits in memory: indexing a shuffled permutation returns a whole batch in one gather, with no
per-sample ``__getitem__`` and collate. Shuffling draws from torch's global generator, like
``RandomSampler``, so the engine's per-epoch seeding makes the order reproducible.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor


class TensorBatches:
    """Iterate ``(x[idx], y[idx], ...)`` over batches of ``batch_size`` rows of the given tensors."""

    def __init__(self, *tensors: Tensor, batch_size: int, shuffle: bool = False, drop_last: bool = False):
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("TensorBatches needs tensors with the same number of rows")
        self.tensors = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self) -> int:
        rows = len(self.tensors[0])
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        rows = len(self.tensors[0])
        order = torch.randperm(rows) if self.shuffle else torch.arange(rows)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            yield tuple(t[index] for t in self.tensors)
