"""The offline demo's data: scikit-learn's handwritten digits (1,797 8x8 images, shipped with the package)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from banets.config import DataConfig
from banets.data.augment import pad_crop_flip
from banets.data.batches import TensorBatches, take_subset
from banets.data.registry import Data, DataError, register_dataset

DIGITS = 1797


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

    if val_size < 1:
        raise DataError(
            f"data.val_size={val_size}: digits needs a validation split; set data.val_size to 1 or more, e.g. 360"
        )
    if val_size + test_size >= DIGITS:
        raise DataError(
            f"data.val_size={val_size} leaves no training images: digits has {DIGITS}, {test_size} of them "
            f"for testing; set data.val_size below {DIGITS - test_size}, e.g. 360"
        )

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


def shift_digits(x: Tensor, generator: torch.Generator | None, train: bool) -> Tensor:
    """Digits must not be mirrored: a random shift of up to one pixel in training only."""
    return pad_crop_flip(x, 1, generator, flip=False) if train else x


@register_dataset("digits", options={"val_size", "split_seed", "train_subset", "augment"})
def digits(cfg: DataConfig) -> Data:
    """scikit-learn's handwritten digits, 8x8, 10 classes, offline (the demo's data)."""
    splits = load_digits_splits(val_size=cfg.val_size, split_seed=cfg.split_seed)
    train = take_subset(splits.train, cfg.train_subset, "digits training images")
    return Data(
        train=TensorBatches(*train, batch_size=cfg.batch_size, shuffle=True),
        val=TensorBatches(*splits.val, batch_size=cfg.eval_batch_size),
        test=TensorBatches(*splits.test, batch_size=cfg.eval_batch_size),
        train_eval=TensorBatches(*train, batch_size=cfg.eval_batch_size),
        transform=shift_digits if cfg.augment else None,
        model_options={"num_classes": splits.num_classes, "in_channels": 1, "in_features": 64},
    )
