"""Mini-batches: straight from in-memory tensors, and whatever a user passes, normalised to ``(x, y)``.

Hand-written rather than a ``DataLoader`` because every dataset used here (digits, CIFAR as uint8, token
streams) fits in memory: indexing a shuffled permutation returns a whole batch in one gather, with no
per-sample ``__getitem__`` and collate. Shuffling draws from torch's global generator, like
``RandomSampler``, so the engine's per-epoch seeding makes the order reproducible.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast, overload

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from banets.data.registry import Batch, DataError

INPUT_KEYS = ("x", "input", "inputs", "image", "images", "pixel_values")
LABEL_KEYS = ("y", "label", "labels", "target", "targets")


class TensorBatches:
    """Iterate ``(x[idx], y[idx])`` over batches of ``batch_size`` rows of inputs ``x`` and labels ``y``."""

    def __init__(self, x: Tensor, y: Tensor, *, batch_size: int, shuffle: bool = False, drop_last: bool = False):
        if len(x) != len(y):
            raise ValueError("TensorBatches needs tensors with the same number of rows")
        self.tensors = (x, y)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self) -> int:
        rows = len(self.tensors[0])
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self.from_step(0)

    def from_step(self, step: int) -> Iterator[Batch]:
        """The epoch's batches from batch ``step`` on (the order drawn as for the whole epoch, on first use)."""
        rows = len(self.tensors[0])
        order = torch.randperm(rows) if self.shuffle else torch.arange(rows)
        for start in range(step * self.batch_size, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.tensors[0][index], self.tensors[1][index]


def as_tensor(value: Any) -> Any:
    """NumPy arrays as tensors, and floating tensors as float32 (the models' dtype); anything else as it is."""
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise DataError("an array of dtype object (Python objects, e.g. mixed types or ragged rows); convert it to "
                            "numbers of one shape, e.g. np.stack(rows).astype(np.float32)")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.float()
    return value


def to_batch(batch: Any) -> Batch:
    """``(x, y)`` tensors from a batch given as a tuple or list, a dict with recognisable keys, or NumPy arrays."""
    if isinstance(batch, dict):
        x_key = next((k for k in INPUT_KEYS if k in batch), None)
        y_key = next((k for k in LABEL_KEYS if k in batch), None)
        if x_key is None or y_key is None:
            raise DataError(f"a dict batch needs an input key ({'/'.join(INPUT_KEYS)}) and a label key "
                            f"({'/'.join(LABEL_KEYS)}); this one has {', '.join(map(str, batch)) or 'no keys'}")
        batch = (batch[x_key], batch[y_key])
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise DataError(f"a batch must be (inputs, labels), a dict with input and label keys, or NumPy arrays; got "
                        f"{type(batch).__name__}")
    x, y = as_tensor(batch[0]), as_tensor(batch[1])
    if isinstance(batch[1], (int, np.integer)) or (isinstance(y, Tensor) and y.dim() == 0):
        raise DataError(
            "a batch's labels are a single number: this looks like a list of single examples; pass an (x, y) "
            "pair of arrays, a Dataset or a DataLoader instead"
        )
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise DataError(
            f"a batch's inputs and labels must be tensors or NumPy arrays; got {type(x).__name__} and "
            f"{type(y).__name__}"
        )
    return x, y


class Batches:
    """Any iterable of batches (a DataLoader, a list...), each normalised by :func:`to_batch` as it comes."""

    def __init__(self, data: Iterable):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Batch]:
        return map(to_batch, self.data)


def is_pair(data: Any) -> bool:
    """Whether ``data`` is an ``(x, y)`` pair of whole arrays (rather than a list of batches)."""
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(part, (Tensor, np.ndarray)) for part in data)
    )


def are_class_labels(y: Tensor) -> bool:
    """Whether ``y`` holds integers of some width, as class labels must (not floats, complex numbers or booleans)."""
    return not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)


@overload
def as_batches(data: None, batch_size: int, shuffle: bool, what: str = ...) -> None: ...
@overload
def as_batches(data: Any, batch_size: int, shuffle: bool, what: str = ...) -> Iterable[Batch]: ...
def as_batches(data: Any, batch_size: int, shuffle: bool, what: str = "data") -> Iterable[Batch] | None:
    """Batches of ``(x, y)`` tensors from an ``(x, y)`` pair of tensors or NumPy arrays, a ``Dataset`` (an
    ``IterableDataset`` in its own order), a ``DataLoader`` or any iterable of batches (tuples, dicts with
    input/label keys, NumPy arrays); None stays None."""
    if data is None:
        return None
    if is_pair(data):
        if len(data[0]) != len(data[1]):
            raise DataError(f"{what}: x has {len(data[0])} rows but y has {len(data[1])}; give one label per example")
        x, y = map(as_tensor, data)
        labels = y.long() if are_class_labels(y) else y  # int8 to int64, as cross-entropy takes them
        return TensorBatches(x, labels, batch_size=batch_size, shuffle=shuffle)
    if isinstance(data, IterableDataset):  # it yields in its own order: torch refuses to shuffle one
        return Batches(DataLoader(data, batch_size=batch_size))
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        return Batches(DataLoader(data, batch_size=batch_size, shuffle=shuffle))
    if isinstance(data, (str, bytes, dict)) or not isinstance(data, Iterable):
        raise DataError(
            f"{what} is a {type(data).__name__}; pass an (x, y) pair of tensors or NumPy arrays, a Dataset, "
            f"a DataLoader or an iterable of (x, y) batches"
        )
    if iter(data) is data:
        raise DataError(
            f"{what} is a one-shot iterator ({type(data).__name__}): it would be empty after the first epoch; "
            f"pass a list of batches, a Dataset or a DataLoader"
        )
    return Batches(data)


def take_subset(pair: tuple[Any, Any], subset: int | None, what: str) -> tuple[Any, Any]:
    """The first ``subset`` rows of an ``(x, y)`` pair of tensors or lists (all of them for None); more than it has
    is an error."""
    if subset is None:
        return pair
    if subset > len(pair[1]):
        raise DataError(f"data.train_subset={subset} is more than the {len(pair[1])} {what}; lower it or remove it")
    return pair[0][:subset], pair[1][:subset]


def tensor_digest(*tensors: Tensor | None) -> str:
    """A sha256 of the tensors' shapes, dtypes and bytes: what a run records of its data, to refuse other data on
    resume."""
    digest = hashlib.sha256()
    for tensor in tensors:
        if tensor is not None:
            digest.update(f"{tuple(tensor.shape)} {tensor.dtype};".encode())
            digest.update(tensor.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def listing_digest(root: Path, files: list[Path]) -> str:
    """A sha256 of each file's path below ``root``, size and modification time: what a resume compares, read
    from the file system without opening the files."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def data_record(**splits: tuple[Tensor, ...] | None) -> dict[str, str]:
    """``Data.files`` entry ``data.json``: the digest of each split's tensors (inputs and labels, or a text's token
    ids), compared on resume."""
    digests = {name: tensor_digest(*pair) for name, pair in splits.items() if pair is not None}
    return {"data.json": json.dumps(digests, indent=1)}


def given_tensors_record(**splits: Iterable[Batch] | None) -> dict[str, str]:
    """``data.json`` of data given from Python: a digest of each split given as tensors, and of a Dataset (given
    as it is or in a DataLoader) its length and a few examples' labels and input shapes (not read through: that
    could take an epoch; not their pixels: random augmentation inside the Dataset would change them). A resume
    with other data is refused; a plain iterable of batches is trusted."""
    digests: dict[str, str] = {}
    for name, batches in splits.items():
        if isinstance(batches, TensorBatches):
            digests[name] = tensor_digest(*batches.tensors)
        elif isinstance(batches, Batches) and (dataset := dataset_of(batches.data)) is not None:
            digests[name] = dataset_fingerprint(dataset)
    return {"data.json": json.dumps(digests, indent=1)} if digests else {}


def dataset_of(data: Iterable) -> Dataset | None:
    """The map-style Dataset behind ``data`` (a DataLoader's), if it has a length and items by index."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    return cast(Dataset, dataset) if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__") else None


def example_parts(item: Any) -> tuple[Any, Any]:
    """An example's input and label, from a tuple or a dict with the keys a batch may use."""
    if isinstance(item, dict):
        x = next((item[k] for k in INPUT_KEYS if k in item), None)
        return x, next((item[k] for k in LABEL_KEYS if k in item), None)
    return item[0], item[1]


def dataset_fingerprint(dataset: Any, samples: int = 5) -> str:
    """A sha256 of the length of ``dataset`` and of ``samples`` examples spread over it: each one's label and the
    shape and dtype of its input."""
    count = len(dataset)
    digest = hashlib.sha256(f"{type(dataset).__qualname__} {count};".encode())
    for index in sorted({round(i * (count - 1) / max(samples - 1, 1)) for i in range(samples)} if count else []):
        x, y = map(as_tensor, example_parts(dataset[index]))
        shape = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        digest.update(f"{index}: {shape} {y.tolist() if isinstance(y, Tensor) else repr(y)};".encode())
    return digest.hexdigest()


def train_val_split(n: int, val_size: int = 5000, seed: int = 0, subset: int | None = None) -> tuple[Tensor, Tensor]:
    """Indices ``(train, val)`` of a seeded split of ``n`` training examples (45k / 5k for CIFAR by default).

    A numpy PCG64 permutation of ``range(n)`` seeded with ``seed``: its first ``val_size`` entries are the
    validation set, the rest the training set, in permuted order. ``subset`` keeps only the first ``subset``
    training indices (for short CPU runs); the validation set is unchanged. A pure function of its arguments, so
    a run's config records its split.
    """
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}), got {val_size}")
    if subset is not None and not 0 < subset <= n - val_size:
        raise ValueError(f"subset must be in [1, {n - val_size}], got {subset}")
    permutation = torch.from_numpy(np.random.default_rng(seed).permutation(n).astype(np.int64))
    train = permutation[val_size:] if subset is None else permutation[val_size : val_size + subset]
    return train.clone(), permutation[:val_size].clone()


def checked_split(n: int, val_size: int, seed: int, where: str) -> tuple[Tensor, Tensor]:
    """:func:`train_val_split` of ``n`` rows; a ``val_size`` that leaves either side empty is a :class:`DataError`
    naming ``where`` the rows come from."""
    if not 0 < val_size < n:
        raise DataError(
            f"data.val_size={val_size} must be between 1 and {n - 1} ({where} has {n}), or pass a separate "
            f"validation split"
        )
    return train_val_split(n, val_size, seed)


def carve_validation(
    pair: tuple[Tensor, Tensor], val_size: int, seed: int, where: str
) -> tuple[tuple[Tensor, Tensor], ...]:
    """``(train, val)`` pairs: ``val_size`` rows of ``pair`` for validation, the rest for training
    (:func:`checked_split`)."""
    train, val = checked_split(len(pair[1]), val_size, seed, where)
    return (pair[0][train], pair[1][train]), (pair[0][val], pair[1][val])
