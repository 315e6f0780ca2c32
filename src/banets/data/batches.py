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
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast, overload

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from banets.data import inputs
from banets.data.inputs import Inputs
from banets.data.registry import Batch, DataError

# A dict batch's labels are under ``label_key`` (by default the first of LABEL_KEYS it has); the rest are the model's
# named inputs, or its one input when that is a single key of INPUT_KEYS.
INPUT_KEYS = ("x", "input", "inputs", "image", "images", "pixel_values")
LABEL_KEYS = ("labels", "label", "y", "target", "targets")


class TensorBatches:
    """Iterate ``(x[idx], y[idx])`` over batches of ``batch_size`` rows of inputs ``x`` (a tensor, or named tensors)
    and labels ``y``."""

    def __init__(self, x: Inputs, y: Tensor, *, batch_size: int, shuffle: bool = False, drop_last: bool = False):
        if any(len(tensor) != len(y) for tensor in inputs.tensors(x)):
            raise ValueError("TensorBatches needs tensors with the same number of rows")
        self.tensors = (x, y)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self) -> int:
        rows = len(self.tensors[1])
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self.from_step(0)

    def from_step(self, step: int) -> Iterator[Batch]:
        """The epoch's batches from batch ``step`` on (the order drawn as for the whole epoch, on first use)."""
        rows = len(self.tensors[1])
        order = torch.randperm(rows) if self.shuffle else torch.arange(rows)
        for start in range(step * self.batch_size, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            yield inputs.rows(self.tensors[0], index), self.tensors[1][index]


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


def as_inputs(value: Any) -> Any:
    """A batch's inputs: :func:`as_tensor`, or a mapping (a dict, a Hugging Face ``BatchEncoding``) as a dict of
    them."""
    if isinstance(value, Mapping):
        return {name: as_tensor(part) for name, part in value.items()}
    return as_tensor(value)


def named_parts(batch: Mapping, label_key: str | None = None) -> tuple[Any, Any]:
    """A dict batch (or example) as its inputs and its label: the labels are under ``label_key`` (by default the first
    of ``LABEL_KEYS`` present), the rest are the named inputs, or the one input when only a key of ``INPUT_KEYS``
    is left (given to the model as its argument, as a tuple's would be)."""
    key = label_key or next((k for k in LABEL_KEYS if k in batch), None)
    if key is None or key not in batch:
        wanted = repr(label_key) if label_key else "/".join(LABEL_KEYS)
        raise DataError(f"a dict batch needs its labels under {wanted}; this one has "
                        f"{', '.join(map(str, batch)) or 'no keys'}{'' if label_key else ' (name it with label_key=)'}")
    rest = {str(name): value for name, value in batch.items() if name != key}
    if not rest:
        raise DataError(f"a dict batch holds only its labels ({key!r}); add the inputs under their names")
    if len(rest) == 1 and next(iter(rest)) in INPUT_KEYS:
        return next(iter(rest.values())), batch[key]
    return rest, batch[key]


def to_batch(batch: Any, label_key: str | None = None) -> Batch:
    """``(x, y)`` from a batch given as a tuple or list, a dict (named inputs and labels, see :func:`named_parts`),
    or NumPy arrays; ``x`` is a tensor or a dict of named tensors."""
    if isinstance(batch, Mapping):
        batch = named_parts(batch, label_key)
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise DataError(f"a batch must be (inputs, labels), a dict of named inputs and labels, or NumPy arrays; got "
                        f"{type(batch).__name__}")
    x, y = as_inputs(batch[0]), as_tensor(batch[1])
    if isinstance(batch[1], (int, np.integer)) or (isinstance(y, Tensor) and y.dim() == 0):
        raise DataError(
            "a batch's labels are a single number: this looks like a list of single examples; pass an (x, y) "
            "pair of arrays, a Dataset or a DataLoader instead"
        )
    parts = {**(x if isinstance(x, dict) else {"inputs": x}), "labels": y}
    wrong = next((f"{name} ({type(part).__name__})" for name, part in parts.items() if not isinstance(part, Tensor)),
                 None)
    if wrong:
        raise DataError(
            f"a batch's inputs and labels must be tensors or NumPy arrays; its {wrong} is not (drop what the model "
            f"does not take, e.g. raw text, in the collate_fn)"
        )
    return x, y


class Batches:
    """Any iterable of batches (a DataLoader, a list...), each normalised by :func:`to_batch` as it comes."""

    def __init__(self, data: Iterable, label_key: str | None = None):
        self.data = data
        self.label_key = label_key

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Batch]:
        return (to_batch(batch, self.label_key) for batch in self.data)


def is_pair(data: Any) -> bool:
    """Whether ``data`` is an ``(x, y)`` pair of whole arrays (rather than a list of batches); ``x`` may be named
    arrays (a dict, or the ``BatchEncoding`` a Hugging Face tokenizer returns)."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        return False
    x = list(data[0].values()) if isinstance(data[0], Mapping) else [data[0]]
    return bool(x) and all(isinstance(part, (Tensor, np.ndarray)) for part in [*x, data[1]])


def are_class_labels(y: Tensor) -> bool:
    """Whether ``y`` holds integers of some width, as class labels must (not floats, complex numbers or booleans)."""
    return not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)


@overload
def as_batches(data: None, batch_size: int, shuffle: bool, what: str = ..., label_key: str | None = ...) -> None: ...
@overload
def as_batches(data: Any, batch_size: int, shuffle: bool, what: str = ...,
               label_key: str | None = ...) -> Iterable[Batch]: ...
def as_batches(data: Any, batch_size: int, shuffle: bool, what: str = "data",
               label_key: str | None = None) -> Iterable[Batch] | None:
    """Batches of ``(x, y)`` tensors from an ``(x, y)`` pair of tensors or NumPy arrays (``x`` may be named), a
    ``Dataset`` (an ``IterableDataset`` in its own order), a ``DataLoader`` or any iterable of batches (tuples,
    dicts of named inputs and labels under ``label_key``, NumPy arrays); None stays None."""
    if data is None:
        return None
    if is_pair(data):
        x, y = as_inputs(data[0]), as_tensor(data[1])
        if (rows := next((len(t) for t in inputs.tensors(x) if len(t) != len(y)), None)) is not None:
            raise DataError(f"{what}: x has {rows} rows but y has {len(y)}; give one label per example")
        labels = y.long() if are_class_labels(y) else y  # int8 to int64, as cross-entropy takes them
        return TensorBatches(x, labels, batch_size=batch_size, shuffle=shuffle)
    if isinstance(data, IterableDataset):  # it yields in its own order: torch refuses to shuffle one
        return Batches(DataLoader(data, batch_size=batch_size), label_key)
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        return Batches(DataLoader(data, batch_size=batch_size, shuffle=shuffle), label_key)
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
    return Batches(data, label_key)


def take_subset(pair: tuple[Any, Any], subset: int | None, what: str) -> tuple[Any, Any]:
    """The first ``subset`` rows of an ``(x, y)`` pair of tensors or lists (all of them for None); more than it has
    is an error."""
    if subset is None:
        return pair
    if subset > len(pair[1]):
        raise DataError(f"data.train_subset={subset} is more than the {len(pair[1])} {what}; lower it or remove it")
    return pair[0][:subset], pair[1][:subset]


def tensor_digest(*parts: Inputs | None) -> str:
    """A sha256 of the tensors' (and named tensors') names, shapes, dtypes and bytes: what a run records of its data,
    to refuse other data on resume."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, dict):
            digest.update(f"{sorted(part)};".encode())
        for tensor in inputs.tensors(part) if part is not None else []:
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
    digests = {name: tensor_digest(*pair) for name, pair in splits.items() if pair is not None}  # type: ignore[arg-type]
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
            digests[name] = dataset_fingerprint(dataset, batches.label_key)
    return {"data.json": json.dumps(digests, indent=1)} if digests else {}


def dataset_of(data: Iterable) -> Dataset | None:
    """The map-style Dataset behind ``data`` (a DataLoader's), if it has a length and items by index."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    return cast(Dataset, dataset) if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__") else None


def dataset_fingerprint(dataset: Any, label_key: str | None = None, samples: int = 5) -> str:
    """A sha256 of the length of ``dataset`` and of ``samples`` examples spread over it: each one's label and the
    shape and dtype of its input (or of each named input)."""
    count = len(dataset)
    digest = hashlib.sha256(f"{type(dataset).__qualname__} {count};".encode())
    for index in sorted({round(i * (count - 1) / max(samples - 1, 1)) for i in range(samples)} if count else []):
        item = dataset[index]
        x, y = named_parts(item, label_key) if isinstance(item, Mapping) else (item[0], item[1])
        x, y = as_inputs(x), as_tensor(y)
        shape = " ".join(f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
                         for t in (x.values() if isinstance(x, dict) else [x]))
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


def check_two_classes(labels: Tensor, fix: str, names: list[str] | None = None) -> None:
    """Training labels (padding left out) of one class, or of none, leave nothing to learn: every model would score
    no error, and every comparison would be a null. ``names`` are the classes' names, when they have them."""
    classes = labels.unique()
    if len(classes) < 2:
        found = repr(names[int(classes[0])] if names else int(classes[0])) if len(classes) else "padding"
        raise DataError(f"every training label is {found}, so there is nothing to tell apart; {fix} (a classifier "
                        f"needs two or more classes)")


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
