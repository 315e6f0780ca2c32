"""The ``shards`` dataset: labelled images in WebDataset tar shards, read by an index, streamed like an image folder.

``banets shard FOLDER --out SHARDS`` writes each split of an image folder (``imagefolder``'s layout) as tar
shards in WebDataset's layout, with webdataset's ``ShardWriter``: per example a member ``<key>.<ext>`` holding the
image's bytes as they were and ``<key>.cls`` its class index, examples in a seeded shuffled order. Beside the
shards it writes ``<split>.index.npy``, per example its shard, the byte offset and size of its image and its label,
and ``shards.json``: the classes and, per split, its shards with their sizes.

Training reads an example's bytes with one ``pread`` at its recorded offset. So the epoch's order, each example's
view, each data-parallel process's rows and a resume inside an epoch are exactly those of an image folder
(:mod:`banets.data.stream`), and start-up reads the index (32 bytes per example, memory-mapped), not the
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
import re
import resource
import shutil
import tarfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from banets.config import DataConfig
from banets.data.batches import listing_digest
from banets.data.imagefolder import (
    SPLITS,
    STREAMED_OPTIONS,
    folder_splits,
    given_folder,
    streamed_images,
    with_validation,
)
from banets.data.registry import Data, DataError, register_dataset
from banets.data.stream import ImageFiles

RECORD = "shards.json"
FORMAT = "banets-shards-1"  # the record's layout; the shards themselves are plain WebDataset tar files
INDEX = np.dtype([("shard", "<i4"), ("key", "<i4"), ("offset", "<i8"), ("size", "<i8"), ("label", "<i8")])
SHUFFLE_SEED = 0  # the order examples are written in: shuffled, so that reading a shard in sequence mixes classes
PARTIAL_MARK = ".banets-shard-partial"  # in a folder banets shard is writing, which a later one may remove


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
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; give a folder of class sub-folders (or of train/, val/, test/)")
    classes, splits = folder_splits(folder)
    partial = out.with_name(out.name + ".partial")
    if partial.exists() and not (partial / PARTIAL_MARK).exists():
        raise DataError(f"{partial} exists and was not left by banets shard; move it away or give another --out")
    shutil.rmtree(partial, ignore_errors=True)  # a conversion killed before; it was never renamed into place
    partial.mkdir(parents=True)
    (partial / PARTIAL_MARK).touch()
    record: dict = {"format": FORMAT, "classes": classes, "splits": {}}
    for split, images in splits.items():
        record["splits"][split] = write_split(webdataset, images, partial, split, shard_size)
    (partial / RECORD).write_text(json.dumps(record, indent=1))
    (partial / PARTIAL_MARK).unlink()
    partial.rename(out)
    return record


def write_split(webdataset, images: ImageFiles, folder: Path, split: str, shard_size: int) -> list[dict]:
    """One split's shards, its images in a seeded shuffled order, and its index in the source folder's order (so
    that example ``i`` is the folder's example ``i``: the same split, subset and views)."""
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(images))
    with webdataset.ShardWriter(str(folder / f"{split}-%06d.tar"), maxcount=shard_size, verbose=0) as writer:
        for position, row in enumerate(order):
            path = images.image(int(row))
            writer.write({"__key__": f"{position:09d}", path.suffix.lower().lstrip("."): path.read_bytes(),
                          "cls": int(images.labels[row])})
    shards = sorted(folder.glob(f"{split}-*.tar"))
    written = np.concatenate([index_shard(shard, i) for i, shard in enumerate(shards)])  # in the written order
    np.save(folder / f"{split}.index.npy", written[np.argsort(order)])
    return [{"name": shard.name, "bytes": shard.stat().st_size} for shard in shards]


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
    rows = [(shard, int(key), offset, size, labels[key]) for key, (offset, size) in images.items()]
    return np.array(rows, dtype=INDEX)


# -- reading -------------------------------------------------------------------------------------------------


class ShardMembers:
    """Images stored in tar shards (an :class:`~banets.data.stream.ImageSource`): an example's bytes are read with
    one ``pread`` at the offset its index row records. Each reading process keeps up to half its file-descriptor
    limit of shards open, the least recently read closed first."""

    fix = "replace the image in the source folder and write the shards again with `banets shard`"

    def __init__(self, folder: Path, shards: list[str], index: np.ndarray):
        self.folder, self.shards, self.index = folder, np.array(shards), index
        self.labels = index["label"]
        self._open: OrderedDict[int, int] = OrderedDict()  # shard -> descriptor, in the process that reads

    def __len__(self) -> int:
        return len(self.index)

    def image(self, index: int) -> BinaryIO:
        row = self.index[index]
        shard, offset, size = int(row["shard"]), int(row["offset"]), int(row["size"])
        try:
            return io.BytesIO(os.pread(self._descriptor(shard), size, offset))
        except OSError as error:
            raise DataError(f"cannot read {self.name(index)} ({error.strerror}); {self.fix}") from None

    def name(self, index: int) -> str:
        row = self.index[index]
        return f"member {int(row['key']):09d} of {self.folder / str(self.shards[row['shard']])}"

    def subset(self, rows: np.ndarray) -> ShardMembers:
        return ShardMembers(self.folder, self.shards.tolist(), self.index[rows])

    def _descriptor(self, shard: int) -> int:
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        if len(self._open) >= max(16, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2):
            os.close(self._open.popitem(last=False)[1])
        self._open[shard] = os.open(self.folder / str(self.shards[shard]), os.O_RDONLY)
        return self._open[shard]

    def __getstate__(self) -> dict:  # a copy (a spawned worker) opens its own descriptors
        return {**self.__dict__, "_open": OrderedDict()}

    def __del__(self) -> None:
        for descriptor in self._open.values():
            os.close(descriptor)


def read_record(folder: Path) -> dict:
    """``shards.json``, after checking its layout and that every shard it names is in ``folder`` with the size it
    was indexed at."""
    again = "write the shards again with `banets shard`"
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        raise DataError(f"{folder} has no readable {RECORD}; write shards with `banets shard IMAGES --out "
                        f"{folder}`") from None
    if not is_record(record):
        raise DataError(f"{folder / RECORD} is not a {FORMAT} record of named shards in train/val/test splits; "
                        f"{again}")
    for shards in record["splits"].values():
        for shard in shards:
            path = folder / shard["name"]
            if not path.is_file():
                raise DataError(f"shard {path} is missing; restore it, or {again}")
            if path.stat().st_size != shard["bytes"]:
                raise DataError(f"shard {path} has {path.stat().st_size} bytes, its index was written for "
                                f"{shard['bytes']}: it changed; restore it, or {again}")
    return record


def is_record(record: Any) -> bool:
    """Whether ``record`` is laid out as :func:`write_shards` writes it, every shard named ``<split>-NNNNNN.tar``
    (so that no name leads outside the folder)."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return False
    classes, splits = record.get("classes"), record.get("splits")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        return False
    if not isinstance(splits, dict) or "train" not in splits or not set(splits) <= set(SPLITS):
        return False
    return all(
        isinstance(shards, list) and shards and all(
            isinstance(shard, dict) and isinstance(shard.get("name"), str) and isinstance(shard.get("bytes"), int)
            and re.fullmatch(rf"{split}-\d{{6}}\.tar", shard["name"]) for shard in shards)
        for split, shards in splits.items()
    )


def split_members(folder: Path, split: str, shards: list[dict], classes: int) -> ShardMembers:
    """A split's shards read through its index, after checking that every row points inside its shard and holds a
    label of the classes."""
    path = folder / f"{split}.index.npy"
    try:
        index = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        raise DataError(f"{path} is missing or unreadable; write the shards again with `banets shard`") from None
    if index.dtype != INDEX or index.ndim != 1 or not len(index) or not rows_inside(index, shards, classes):
        raise DataError(f"{path} is not an index of {split}'s {len(shards)} shard(s) and {classes} classes; write the "
                        f"shards again with `banets shard`")
    return ShardMembers(folder, [shard["name"] for shard in shards], index)


def rows_inside(index: np.ndarray, shards: list[dict], classes: int) -> bool:
    if not 0 <= index["shard"].min() <= index["shard"].max() < len(shards):
        return False
    ends = np.array([shard["bytes"] for shard in shards])[index["shard"]]
    return bool((index["offset"] >= 0).all() and (index["size"] >= 0).all()
                and (index["offset"] + index["size"] <= ends).all()
                and (index["label"] >= 0).all() and (index["label"] < classes).all())


@register_dataset("shards", options=STREAMED_OPTIONS)
def shards_data(cfg: DataConfig) -> Data:
    """Your images as WebDataset tar shards written by `banets shard`, read by index, streamed from disk."""
    folder = given_folder(cfg, "SHARDS, written by `banets shard`")
    record = read_record(folder)
    classes = len(record["classes"])
    found = {split: split_members(folder, split, shards, classes) for split, shards in record["splits"].items()}
    splits = with_validation(found, cfg, str(folder / "train-*.tar"))
    listing = {
        split: listing_digest(folder, [folder / f"{split}.index.npy", *(folder / s["name"] for s in shards)])
        for split, shards in record["splits"].items()
    }
    return streamed_images(splits, record["classes"], cfg, {}, listing)
