"""Image files read batch by batch in DataLoader workers: only batches live in memory.

Order and augmentation are keyed by example, not by process or worker:

- The epoch's order is a permutation drawn from torch's global generator, which the engine seeds from (the
  model's seed, the epoch) before each epoch, as it does for in-memory data; so is the epoch's *view key*, one
  more draw.
- Example ``i``'s view (its random crop and flip) is drawn from a counter-based generator, NumPy's Philox keyed by
  the epoch's view key with ``i`` in its counter (:func:`view_rng`). It is the same whatever the number of
  workers or data-parallel processes, each process reads and augments only its own rows of a global batch, and
  a resume needs no random state beyond the epoch. ``(view key, example index)`` is the key a later cache of
  teacher outputs for augmented data will be indexed by; :data:`VIEWS` names the scheme in the run's record.

Views: for training, the standard random-resized crop (scale 0.08-1, aspect 3/4-4/3, Szegedy et al. 2015) and a
horizontal flip, or, for images of 32 pixels or less, the CIFAR pad-by-4 crop and flip; for evaluation, the
shorter side resized to ``size`` and the center square. JPEGs are decoded at the smallest DCT scale that still
covers the crop (Pillow's ``Image.draft``), which is what makes decoding large photos cheap.

An unreadable image is a one-line :class:`DataError` naming the file, raised in the main process (never a
worker's traceback).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol, Self, cast

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from banets import distributed
from banets.data.registry import Batch, DataError

VIEWS = "philox-v1: key = the epoch's view key, counter = example index; random-resized crop + flip (pad-4 crop + " \
        "flip at 32 px or less); eval: shorter side to size, center crop"
SMALL_IMAGE = 32  # at or below this size, CIFAR's pad-crop-flip; above it, the random-resized crop
RESIZED_CROP_SCALE = (0.08, 1.0)
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)

FILE_FIX = "remove or replace the file"  # what an error about an unreadable image file says to do
Box = tuple[float, float, float, float]  # left, top, width, height, in the original image's pixels


def view_rng(view_key: int, index: int) -> np.random.Generator:
    """The generator of example ``index``'s view in an epoch whose view key is ``view_key``: Philox, a
    counter-based generator, with the index in the counter's top word (its draws advance the bottom one)."""
    return np.random.Generator(np.random.Philox(key=view_key, counter=[0, 0, 0, index]))


def resized_crop_box(width: int, height: int, rng: np.random.Generator) -> Box:
    """A random crop of 8-100% of the image's area with an aspect ratio in [3/4, 4/3] (log-uniform), tried ten
    times as torchvision's ``RandomResizedCrop`` does, else the center crop of the nearest ratio in range."""
    area = width * height
    log_ratio = (math.log(RESIZED_CROP_RATIO[0]), math.log(RESIZED_CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*RESIZED_CROP_SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return float(rng.integers(0, width - w + 1)), float(rng.integers(0, height - h + 1)), float(w), float(h)
    ratio = min(max(width / height, RESIZED_CROP_RATIO[0]), RESIZED_CROP_RATIO[1])
    crop_width, crop_height = (width, width / ratio) if width / height < ratio else (height * ratio, height)
    return (width - crop_width) / 2, (height - crop_height) / 2, float(crop_width), float(crop_height)


def center_box(width: int, height: int) -> Box:
    """The center square of the image, its side the shorter side."""
    side = min(width, height)
    return (width - side) / 2, (height - side) / 2, float(side), float(side)


def decode(image: Path | BinaryIO, size: int, box_of, name: str | None = None, fix: str = FILE_FIX) -> np.ndarray:
    """The crop ``box_of(width, height)`` of ``image`` (a file, or its bytes as a stream) resized to
    ``size x size``, RGB uint8 ``(H, W, 3)``; a JPEG is decoded at the coarsest scale that keeps the crop at least
    ``size`` pixels wide and high. ``name`` is what an error calls the image (the path by default), ``fix`` what it
    says to do."""
    from PIL import Image, UnidentifiedImageError

    name = name or str(image)
    try:
        with Image.open(image) as file:
            width, height = file.size
            left, top, w, h = box_of(width, height)
            reduce = max(1.0, min(w, h) / size)
            file.draft("RGB", (math.ceil(width / reduce), math.ceil(height / reduce)))
            scale = file.size[0] / width  # what draft chose (1, 1/2, 1/4 or 1/8 for a JPEG)
            box = (left * scale, top * scale, (left + w) * scale, (top + h) * scale)
            rgb = file.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, box=box)
            return np.asarray(rgb, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise DataError(
            f"image {name} has more pixels than PIL.Image.MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS:,}) allows, "
            f"a guard against decompression bombs; shrink or remove it, or, if you trust it, raise "
            f"PIL.Image.MAX_IMAGE_PIXELS in a module you --import"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"cannot read image {name} ({type(error).__name__}); {fix}") from None


def pad_crop_flip_one(pixels: np.ndarray, rng: np.random.Generator, padding: int = 4) -> np.ndarray:
    """CIFAR's augmentation of one ``(H, W, 3)`` image: zero-pad by ``padding``, crop back at a random offset,
    mirror with probability 1/2."""
    height, width = pixels.shape[:2]
    top, left = rng.integers(0, 2 * padding + 1, size=2)
    padded = np.pad(pixels, ((padding, padding), (padding, padding), (0, 0)))
    crop = padded[top : top + height, left : left + width]
    return crop[:, ::-1] if rng.integers(0, 2) else crop


@dataclass(frozen=True)
class Unreadable:
    """What a worker returns for an image it cannot read: the one-line error and the image's name."""

    message: str
    name: str


class ImageSource(Protocol):
    """Where labelled images are: example ``index``'s image (a path, or a stream of its bytes) and a name for
    messages; :meth:`subset` is the sources' ``rows`` in that order."""

    labels: np.ndarray  # int64, one per example
    fix: str  # what an error about an unreadable image says to do

    def __len__(self) -> int: ...

    def image(self, index: int) -> Path | BinaryIO: ...

    def name(self, index: int) -> str: ...

    def subset(self, rows: np.ndarray) -> Self: ...


class ImageFiles:
    """Image files, one per example, and their labels (an :class:`ImageSource`)."""

    fix = FILE_FIX

    def __init__(self, files: Sequence[Path] | np.ndarray, labels: Sequence[int] | np.ndarray):
        # NumPy arrays, not lists: a worker reading a list's items touches their reference counts, which copies the
        # pages a fork shared (memory growing with every worker, as PyTorch's DataLoader notes warn)
        self.files = files if isinstance(files, np.ndarray) else np.array([os.fsencode(path) for path in files])
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Path:
        return Path(os.fsdecode(self.files[index]))

    def name(self, index: int) -> str:
        return os.fsdecode(self.files[index])

    def subset(self, rows: np.ndarray) -> ImageFiles:
        return ImageFiles(self.files[rows], self.labels[rows])


class ImageViews(Dataset):
    """A source's images as training or evaluation shows them; item ``(view_key, index, rows)`` is example
    ``index``'s view as uint8 ``(3, size, size)``, its label and ``rows`` (the global batch's size, passed
    through), or :class:`Unreadable`."""

    def __init__(self, source: ImageSource, size: int, train: bool, augment: bool):
        self.source, self.size, self.augment = source, size, train and augment

    def __len__(self) -> int:
        return len(self.source)

    def view(self, view_key: int, index: int) -> np.ndarray:
        """Example ``index``'s pixels as the epoch with ``view_key`` shows them."""
        image, name, fix = self.source.image(index), self.source.name(index), self.source.fix
        if not self.augment:
            return decode(image, self.size, center_box, name, fix)
        rng = view_rng(view_key, index)
        if self.size <= SMALL_IMAGE:
            return pad_crop_flip_one(decode(image, self.size, center_box, name, fix), rng)
        pixels = decode(image, self.size, lambda width, height: resized_crop_box(width, height, rng), name, fix)
        return pixels[:, ::-1] if rng.integers(0, 2) else pixels

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[Tensor, int, int] | Unreadable:
        view_key, index, rows = key
        try:
            pixels = self.view(view_key, index)
        except DataError as error:
            return Unreadable(str(error), self.source.name(index))
        label = int(self.source.labels[index])
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))), label, rows


class Loaded(NamedTuple):
    """A batch from a worker: inputs, labels, the global batch's rows, and the images it skipped as unreadable
    (a named tuple, which the DataLoader's ``pin_memory`` pins, unlike other objects)."""

    x: Tensor
    y: Tensor
    rows: int
    skipped: list[str]


def collate(items: list, skip_unreadable: bool = False) -> Loaded | Unreadable:
    """One batch from a worker; an unreadable image is its error, or, with ``skip_unreadable``, left out of the batch
    (an error still when no image of the batch is readable)."""
    unreadable = [item for item in items if isinstance(item, Unreadable)]
    readable = [item for item in items if not isinstance(item, Unreadable)]
    if unreadable and not skip_unreadable:
        first = unreadable[0]
        hint = ", or set data.skip_unreadable=true to skip and count such images"
        return Unreadable(first.message + hint, first.name)
    if not readable:
        return Unreadable(f"{unreadable[0].message}; no image of its batch of {len(items)} is readable, which "
                          f"data.skip_unreadable does not skip: check the data", unreadable[0].name)
    x, y = torch.stack([x for x, _, _ in readable]), torch.tensor([y for _, y, _ in readable])
    return Loaded(x, y, readable[0][2], [item.name for item in unreadable])


class EpochOrder(Sampler):
    """Batches of keys ``(view_key, index, global rows)``: a permutation per epoch when ``shuffle`` (and a view key),
    drawn from torch's global generator; under data parallelism, with ``shard``, each process's rows only."""

    def __init__(self, examples: int, batch_size: int, shuffle: bool, shard: bool):
        self.examples, self.batch_size, self.shuffle, self.shard = examples, batch_size, shuffle, shard
        self.skip = 0  # batches the next pass leaves out (a resumed epoch), with the order drawn as for all

    def __len__(self) -> int:
        return math.ceil(self.examples / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        order = torch.randperm(self.examples) if self.shuffle else torch.arange(self.examples)
        view_key = int(torch.randint(0, 2**62, ()).item()) if self.shuffle else 0
        skip, self.skip = self.skip, 0
        for start in range(skip * self.batch_size, self.examples, self.batch_size):
            rows = order[start : start + self.batch_size].tolist()
            mine = rows[distributed.shard(len(rows))] if self.shard else rows
            yield [(view_key, index, len(rows)) for index in mine]


def default_workers() -> int:
    """Worker processes per training process: the cores this process may use, shared by the processes on the
    machine, less one for the training process itself; at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(8, cores // distributed.local_world_size() - 1))


class StreamBatches:
    """A split of :class:`ImageViews` in batches read by ``workers`` DataLoader workers. Training batches are
    ``(x, y, global rows)``, this process's rows of a global batch; evaluation batches ``(x, y)``, whole. With
    ``skip_unreadable``, images that cannot be read are left out of their batches and named in :attr:`skipped`."""

    def __init__(self, images: ImageViews, batch_size: int, *, shuffle: bool, workers: int,
                 skip_unreadable: bool = False):
        self.train = shuffle
        self.skipped: set[str] = set()  # every image this process left out, over all passes
        self.loader = DataLoader(
            images,
            batch_sampler=EpochOrder(len(images), batch_size, shuffle, shard=shuffle),
            num_workers=workers,
            collate_fn=functools.partial(collate, skip_unreadable=skip_unreadable),
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def from_step(self, step: int) -> Iterator[Batch]:
        """The epoch's batches from ``step`` on; the earlier ones are neither read nor decoded."""
        cast(EpochOrder, self.loader.batch_sampler).skip = step
        return iter(self)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            if isinstance(batch, Unreadable):
                raise DataError(batch.message)
            self.skipped.update(batch.skipped)
            # a training batch's third element: see ``Batch``
            yield cast(Batch, (batch.x, batch.y, batch.rows)) if self.train else (batch.x, batch.y)
