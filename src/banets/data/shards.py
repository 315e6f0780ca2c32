"""The ``shards`` dataset: labelled images in WebDataset tar shards, read by an index, streamed like an image folder.

``banets shard FOLDER --out SHARDS`` writes each split of an image folder (``imagefolder``'s layout) as tar
shards in WebDataset's layout, with webdataset's ``ShardWriter``: per example a member ``<key>.<ext>`` holding the
image's bytes as they were and ``<key>.cls`` its class index, examples in a seeded shuffled order. Beside the
shards it writes ``<split>.index.npy``, per example its shard, the byte offset and size of its image and its label,
and ``shards.json``: the classes and, per split, its shards with their sizes.

Training reads an example's bytes with one ``pread`` at its recorded offset. So the epoch's order, each example's
view, each data-parallel process's rows and a resume inside an epoch are exactly those of an image folder
(:mod:`banets.data.stream`), and start-up reads the index (28 bytes per example, memory-mapped), not the
shards. Why not webdataset's own reader: it streams shards in sequence through a shuffle buffer, so the order
depends on the number of workers and processes and a resume inside an epoch must re-read its shards from the
start; random access by index keeps banets' promises (the same weights whatever the workers or processes, a
resume bitwise the same as no interruption). The shards stay ordinary WebDataset shards for other tools.

A missing shard, or one whose size differs from what its index was written for, is refused before training;
what a run records to refuse changed data on resume is each shard's and index's name, size and modification time.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from banets.config import DataConfig
from banets.data.batches import listing_digest
from banets.data.imagefolder import SPLITS, class_folders, image_files, streamed_images, with_validation
from banets.data.registry import Data, DataError, register_dataset
from banets.data.stream import ImageFiles

RECORD = "shards.json"
FORMAT = "banets-shards-1"  # the record's layout; the shards themselves are plain WebDataset tar files
INDEX = np.dtype([("shard", "<i4"), ("offset", "<i8"), ("size", "<i8"), ("label", "<i8")])
SHUFFLE_SEED = 0  # the order examples are written in: shuffled, so that reading a shard in sequence mixes classes
OPEN_SHARDS = 64  # file descriptors a reading process keeps open (the oldest is closed beyond)


# -- writing -------------------------------------------------------------------------------------------------


def write_shards(folder: Path, out: Path, shard_size: int = 1000) -> dict:
    """Write the image folder ``folder`` as shards into ``out`` (a new folder; written under a temporary name and
    renamed when complete); return the record written as ``shards.json``."""
    try:
        import webdataset
    except ImportError:
        raise DataError("banets shard writes with webdataset: pip install 'banets[shards]'") from None
    if out.exists():
        raise DataError(f"{out} exists; give --out a new folder (shards are never written over)")
    if shard_size < 1:
        raise DataError(f"--shard-size must be a positive number of images, got {shard_size}")
    splits = source_splits(folder)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # a conversion killed before; it was never renamed into place
    partial.mkdir(parents=True)
    record: dict = {"format": FORMAT, "classes": class_folders(train_root(folder)), "splits": {}}
    for split, images in splits.items():
        order = np.random.default_rng(SHUFFLE_SEED).permutation(len(images))
        pattern = str(partial / f"{split}-%06d.tar")
        with webdataset.ShardWriter(pattern, maxcount=shard_size, verbose=0) as writer:
            for position, row in enumerate(order):
                path = images.image(int(row))
                writer.write({"__key__": f"{position:09d}", path.suffix.lower().lstrip("."): path.read_bytes(),
                              "cls": int(images.labels[row])})
        shards = sorted(partial.glob(f"{split}-*.tar"))
        index = np.concatenate([index_shard(shard, i) for i, shard in enumerate(shards)])
        np.save(partial / f"{split}.index.npy", index)
        record["splits"][split] = [{"name": shard.name, "bytes": shard.stat().st_size} for shard in shards]
    (partial / RECORD).write_text(json.dumps(record, indent=1))
    partial.rename(out)
    return record


def train_root(folder: Path) -> Path:
    return folder / "train" if (folder / "train").is_dir() else folder


def source_splits(folder: Path) -> dict[str, ImageFiles]:
    """The splits of an image folder: ``train`` (its class sub-folders, or the folder's own), ``val`` and ``test``
    when present."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; give a folder of class sub-folders (or of train/, val/, test/)")
    classes = class_folders(train_root(folder))
    found = {split: image_files(folder / split, classes) for split in SPLITS[1:] if (folder / split).is_dir()}
    return {"train": image_files(train_root(folder), classes), **found}


def index_shard(path: Path, shard: int) -> np.ndarray:
    """The image members of one WebDataset shard: their offset, size and the label of their ``.cls`` member."""
    images: dict[str, tuple[int, int]] = {}
    labels: dict[str, int] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, extension = member.name.partition(".")
            if extension == "cls":
                labels[key] = int(tar.extractfile(member).read())  # type: ignore[union-attr]
            elif member.isfile():
                images[key] = (member.offset_data, member.size)
    rows = [(shard, offset, size, labels[key]) for key, (offset, size) in images.items()]
    return np.array(rows, dtype=INDEX)


# -- reading -------------------------------------------------------------------------------------------------


class ShardMembers:
    """Images stored in tar shards (an :class:`~banets.data.stream.ImageSource`): an example's bytes are read with
    one ``pread`` at the offset its index row records."""

    def __init__(self, folder: Path, shards: list[str], index: np.ndarray):
        self.folder, self.shards, self.index = folder, np.array(shards), index
        self.labels = index["label"]
        self._open: dict[int, int] = {}  # shard -> descriptor, in the process that reads

    def __len__(self) -> int:
        return len(self.index)

    def image(self, index: int) -> BinaryIO:
        row = self.index[index]
        shard, offset, size = int(row["shard"]), int(row["offset"]), int(row["size"])
        try:
            data = os.pread(self._descriptor(shard), size, offset)
        except OSError as error:
            raise DataError(f"cannot read {self.name(index)} ({error.strerror}); check the shard") from None
        return io.BytesIO(data)

    def name(self, index: int) -> str:
        row = self.index[index]
        return f"{self.folder / str(self.shards[row['shard']])} (image at byte {row['offset']})"

    def subset(self, rows: np.ndarray) -> ShardMembers:
        return ShardMembers(self.folder, self.shards.tolist(), self.index[rows])

    def _descriptor(self, shard: int) -> int:
        if shard not in self._open:
            if len(self._open) >= OPEN_SHARDS:
                os.close(self._open.pop(next(iter(self._open))))
            self._open[shard] = os.open(self.folder / str(self.shards[shard]), os.O_RDONLY)
        return self._open[shard]

    def __getstate__(self) -> dict:  # a copy (a worker process) opens its own descriptors
        return {**self.__dict__, "_open": {}}


def read_record(folder: Path) -> dict:
    """``shards.json``, after checking that every shard it names is there with the size it was indexed at."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        raise DataError(f"{folder} has no readable {RECORD}; write shards with `banets shard IMAGES --out "
                        f"{folder}`") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or "train" not in record.get("splits", {}):
        raise DataError(f"{folder / RECORD} is not a {FORMAT} record with a train split; write the shards again "
                        f"with `banets shard`")
    for shards in record["splits"].values():
        for shard in shards:
            path = folder / shard["name"]
            if not path.is_file():
                raise DataError(f"shard {path} is missing; restore it, or write the shards again with `banets shard`")
            if path.stat().st_size != shard["bytes"]:
                raise DataError(f"shard {path} has {path.stat().st_size} bytes, its index was written for "
                                f"{shard['bytes']}: it changed; restore it, or write the shards again with "
                                f"`banets shard`")
    return record


def split_members(folder: Path, split: str, shards: list[dict]) -> ShardMembers:
    path = folder / f"{split}.index.npy"
    try:
        index = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        raise DataError(f"{path} is missing or unreadable; write the shards again with `banets shard`") from None
    if index.dtype != INDEX or index.ndim != 1 or len(index) and not 0 <= index["shard"].max() < len(shards):
        raise DataError(f"{path} is not a shard index of {split}'s {len(shards)} shard(s); write the shards again "
                        f"with `banets shard`")
    return ShardMembers(folder, [shard["name"] for shard in shards], index)


@register_dataset("shards", options={"path", "val_size", "split_seed", "train_subset", "augment", "normalize",
                                     "image_size", "workers", "skip_unreadable"})
def shards_data(cfg: DataConfig) -> Data:
    """Your images as WebDataset tar shards written by `banets shard`, read by index, streamed from disk."""
    if cfg.path is None or not Path(cfg.path).is_dir():
        raise DataError(f"shards: {cfg.path} is not a folder; pass --data-dir SHARDS, written by `banets shard`")
    folder = Path(cfg.path)
    record = read_record(folder)
    found = {split: split_members(folder, split, shards) for split, shards in record["splits"].items()}
    splits = with_validation(found, cfg, str(folder / "train-*.tar"))
    listing = {
        split: listing_digest(folder, [folder / f"{split}.index.npy", *(folder / s["name"] for s in shards)])
        for split, shards in record["splits"].items()
    }
    return streamed_images(splits, record["classes"], cfg, {}, listing)
