"""The offline demo's data: scikit-learn's handwritten digits (1,797 8x8 images, shipped with the package)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Splits:
    """Train / validation / test tensors of one dataset; validation selects and compares, test is seen once."""

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    num_classes: int


def load_digits_splits(val_size: int = 360, test_size: int = 360, split_seed: int = 0) -> Splits:
    """Digits as float images ``(N, 1, 8, 8)`` scaled to [0, 1], split by a seeded permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    test, val, train = order[:test_size], order[test_size : test_size + val_size], order[test_size + val_size :]
    return Splits(
        train=(images[train], labels[train]),
        val=(images[val], labels[val]),
        test=(images[test], labels[test]),
        num_classes=10,
    )
