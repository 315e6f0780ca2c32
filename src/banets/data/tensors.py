"""The ``tensors`` dataset: your own arrays in a ``.pt`` or ``.npz`` file holding ``x`` (inputs) and ``y`` (labels).

``data.path`` is the training file; ``data.val_path`` and ``data.test_path`` are optional files of the same
layout. Without a validation file, ``data.val_size`` examples are carved from the training file by a seeded
permutation (``data.split_seed``), as for CIFAR. ``.pt`` files are read with ``torch.load(weights_only=True)``
(tensors and plain containers only: loading never runs code); ``.npz`` files with ``allow_pickle=False``.
Floating inputs are used as float32, uint8 inputs are scaled to [0, 1] on the device.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from banets.config import DataConfig
from banets.data.batches import TensorBatches, are_class_labels, as_tensor, carve_validation, data_record, take_subset
from banets.data.registry import Data, DataError, register_dataset

Pair = tuple[Tensor, Tensor]


def read_pair(path: str | Path, key: str) -> Pair:
    """``(x, y)`` from a ``.pt`` or ``.npz`` file, checked: both present, as many rows, integer labels."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.{key}: no file {path}; pass a .pt or .npz file holding x and y")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                values = {k: arrays[k] for k in arrays.files}
        elif path.suffix == ".pt":
            values = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise DataError(
                f"data.{key}: {path.name} is neither .pt nor .npz; save x and y with torch.save or np.savez"
            )
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(
            f"data.{key}: cannot read {path} ({type(error).__name__}); is it a complete .pt or .npz file "
            f"holding plain tensors x and y?"
        ) from None
    if not isinstance(values, dict) or not {"x", "y"} <= set(values):
        found = ", ".join(map(str, values)) if isinstance(values, dict) else type(values).__name__
        raise DataError(
            f"data.{key}: {path} must hold x and y (found {found}); save it as torch.save({{'x': x, 'y': y}}, ...)"
        )
    x, y = as_tensor(values["x"]), as_tensor(values["y"])
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or len(x) != len(y):
        raise DataError(f"data.{key}: x and y in {path} must be arrays with as many rows ({_rows(x)} vs {_rows(y)})")
    if len(y) == 0:
        raise DataError(f"data.{key}: {path} holds no rows; save the examples in x and y")
    if not are_class_labels(y):
        raise DataError(f"data.{key}: labels y in {path} are {y.dtype}; class labels must be integers")
    return x, y.long()


def class_count(labels: Tensor, examples: int) -> int:
    """The number of classes the labels of every split name (the largest label + 1), refused when it exceeds the
    ``examples`` and most classes are empty, and warned about when some classes below it have no example: a stray
    large label would otherwise build a model with thousands of empty classes."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise DataError(
            f"the labels include {low}; class labels are 0 .. classes - 1, so relabel them (e.g. y - y.min())"
        )
    used = int(torch.unique(labels).numel())
    if high + 1 > examples and high + 1 > 2 * used:  # mostly empty classes, more than the examples could fill
        raise DataError(
            f"the largest label is {high}, so {high + 1} classes, more than the {examples} "
            f"examples ({high + 1 - used} classes would have none); relabel the {used} classes used as 0 .. {used - 1}"
        )
    if used < high + 1:
        warnings.warn(
            f"the labels run 0 .. {high} but {high + 1 - used} of those {high + 1} classes have no example; the "
            f"model gets {high + 1} outputs (relabel the {used} classes used as 0 .. {used - 1} if the others "
            f"are not real classes)",
            stacklevel=2,
        )
    return high + 1


def _rows(value: object) -> str:
    return str(len(value)) if hasattr(value, "__len__") else "?"


def scale_uint8(x: Tensor, generator: torch.Generator | None, train: bool) -> Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


@register_dataset("tensors", options={"path", "val_path", "test_path", "val_size", "split_seed", "train_subset"})
def tensors_data(cfg: DataConfig) -> Data:
    """Your arrays: a .pt or .npz file of x and y, with optional validation and test files."""
    if cfg.path is None:
        raise DataError("tensors: no file; pass --data-dir FILE (a .pt or .npz holding x and y)")
    pair = read_pair(cfg.path, "path")
    train, val = (
        (pair, read_pair(cfg.val_path, "val_path"))
        if cfg.val_path
        else carve_validation(pair, cfg.val_size, cfg.split_seed, f"the training file {cfg.path}")
    )
    test = read_pair(cfg.test_path, "test_path") if cfg.test_path else None
    train = take_subset(train, cfg.train_subset, "training rows")
    splits = [p for p in (train, val, test) if p is not None]
    if any(p[0].shape[1:] != train[0].shape[1:] for p in splits):
        raise DataError(
            f"inputs differ in shape between the files: {', '.join(str(tuple(p[0].shape[1:])) for p in splits)}"
        )
    x = train[0]
    options = {
        "num_classes": class_count(torch.cat([p[1] for p in splits]), sum(len(p[1]) for p in splits)),
        "in_features": int(x[0].numel()),
    }
    if x.dim() == 4:
        options["in_channels"] = x.shape[1]
    return Data(
        train=TensorBatches(*train, batch_size=cfg.batch_size, shuffle=True),
        val=TensorBatches(*val, batch_size=cfg.eval_batch_size),
        test=TensorBatches(*test, batch_size=cfg.eval_batch_size) if test is not None else None,
        train_eval=TensorBatches(*train, batch_size=cfg.eval_batch_size),
        transform=scale_uint8 if x.dtype == torch.uint8 else None,
        model_options=options,
        files=data_record(train=train, val=val, test=test),
    )
