"""Random CIFAR-10-shaped data written in the official python pickle layout (``cifar-10-batches-py``).

For checks that should go through the real loader and the real run path without the real data: the tests of
``banets.data.cifar`` and ``bench/gpu_check.py``, which trains a Table 1 preset end to end on it. The pixels and
labels are uniform random draws, so nothing can be learnt from them; their md5 differs from the official files',
which the loader accepts with a warning.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
TRAIN_BATCHES = 5  # data_batch_1 .. data_batch_5


def write_pickle(path: Path, obj: object, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def fake_batch(rng: np.random.Generator, n: int, num_classes: int, labels_key: bytes = b"labels") -> dict:
    """A batch dict like the official ones: uint8 rows of 3072 channel-major pixels and a list of labels."""
    return {
        b"batch_label": b"fake batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        labels_key: rng.integers(0, num_classes, n).tolist(),
    }


def write_fake_cifar10(parent: Path, protocol: int = 2, per_batch: int = 8, test: int = 10, seed: int = 0) -> Path:
    """A fake ``cifar-10-batches-py`` folder under ``parent``: five training batches of ``per_batch`` images (the
    official ones hold 10,000), a test batch of ``test`` images and the meta file; returns the folder."""
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(1, TRAIN_BATCHES + 1):
        write_pickle(folder / f"data_batch_{i}", fake_batch(rng, per_batch, 10), protocol)
    write_pickle(folder / "test_batch", fake_batch(rng, test, 10), protocol)
    write_pickle(folder / "batches.meta", {b"label_names": CIFAR10_NAMES, b"num_vis": 3072}, protocol)
    return folder
