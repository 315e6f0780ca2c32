"""The ``imagefolder`` dataset: a folder of class sub-folders of images, streamed from disk.

``data.path`` holds either ``train/`` (and optionally ``val/`` and ``test/``) with one sub-folder per class,
or the class sub-folders themselves (then every image is a training image). Class names are the sub-folder
names in sorted order (``torchvision.datasets.ImageFolder``'s convention). Files are listed at start-up and read,
decoded and augmented batch by batch in ``data.workers`` DataLoader workers (:mod:`banets.data.stream`): only
batches live in memory. Without ``val/``, ``data.val_size`` images are carved from the training images by a
seeded permutation (``data.split_seed``). What a resume compares, recorded in each seed directory, is read from
the file system, not the images: the class list, the validation files, and per split a digest of every file's
path, size and modification time (``data.json``), so a folder that changed is refused without reading it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from banets.config import DataConfig
from banets.data.augment import ImageTransform, Stats
from banets.data.batches import checked_split, listing_digest
from banets.data.registry import Data, DataError, register_dataset
from banets.data.stream import VIEWS, ImageFiles, ImageSource, ImageViews, StreamBatches, default_workers

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
STATS_SAMPLE = 256  # images whose center views estimate the channel statistics, with data.normalize


SPLITS = ("train", "val", "test")


def class_folders(root: Path) -> list[str]:
    """The class sub-folders of ``root``; a folder one level too low (images, no classes) or too high (a folder
    holding a dataset's ``train/``, or a single class) is refused with the folder to give instead."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        images = any(is_image(p) for p in root.iterdir())
        hint = ("" if not images else "; it holds images itself: put each class's images in a sub-folder"
                if root.name in SPLITS else f"; it holds images itself: give its parent {root.parent}")
        raise DataError(f"{root} has no class sub-folders; lay images out as {root}/<class>/<image>.jpg{hint}")
    for name in classes:
        if any((root / name / split).is_dir() for split in SPLITS):
            raise DataError(
                f"{root / name} holds a dataset's split folders (train/, val/ or test/), not the images of one "
                f"class: give --data-dir {root / name}"
            )
    if len(classes) == 1:
        raise DataError(
            f"{root} has one class sub-folder ({classes[0]}); a classifier needs two or more: give the folder "
            f"whose sub-folders are the classes"
        )
    return classes


def is_image(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS and path.is_file()


def image_files(root: Path, classes: list[str]) -> ImageFiles:
    """Every image below ``root/<class>/`` and its class index, in sorted order."""
    files, labels = [], []
    for index, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if is_image(p))
        files += found
        labels += [index] * len(found)
    if not files:
        raise DataError(f"{root} holds no images ({', '.join(sorted(EXTENSIONS))}) in its class sub-folders")
    return ImageFiles(files, labels)


def check_same_classes(root: Path, split: str, classes: list[str]) -> None:
    if (root / split).is_dir() and class_folders(root / split) != classes:
        raise DataError(
            f"{root / split} has other class sub-folders than {root / 'train'}; give every split the same classes"
        )


def train_root(root: Path) -> Path:
    """Where the training images' class sub-folders are: ``root/train``, else ``root`` (every image is a training
    image)."""
    return root / "train" if (root / "train").is_dir() else root


def folder_splits(root: Path) -> tuple[list[str], dict[str, ImageFiles]]:
    """The classes of an image folder and its splits: ``train``, and ``val`` and ``test`` when present, each split
    with the same class sub-folders."""
    classes = class_folders(train_root(root))
    for split in SPLITS[1:]:
        check_same_classes(root, split, classes)
    found = {split: image_files(root / split, classes) for split in SPLITS[1:] if (root / split).is_dir()}
    return classes, {"train": image_files(train_root(root), classes), **found}


def channel_stats(images: ImageViews) -> tuple[Stats, Stats]:
    """The per-channel mean and std, pixels scaled to [0, 1], of the center views of up to ``STATS_SAMPLE``
    training images spread evenly over the list."""
    picks = np.linspace(0, len(images) - 1, min(STATS_SAMPLE, len(images))).round().astype(int)
    pixels = torch.from_numpy(np.stack([images.view(0, int(i)) for i in picks])).float().div(255.0)
    channels = pixels.reshape(-1, 3)
    (r, g, b), (r_sd, g_sd, b_sd) = channels.mean(0).tolist(), channels.std(0).tolist()
    return (r, g, b), (r_sd, g_sd, b_sd)


Source = TypeVar("Source", bound=ImageSource)


def with_validation(splits: dict[str, Source], cfg: DataConfig, where: str) -> dict[str, Source]:
    """The splits with ``val`` carved from ``train`` when there is none (``data.val_size`` images, seeded by
    ``data.split_seed``), and ``train`` cut to ``data.train_subset``."""
    splits = dict(splits)
    if "val" not in splits:
        train_rows, val_rows = checked_split(len(splits["train"]), cfg.val_size, cfg.split_seed, where)
        splits["val"] = splits["train"].subset(val_rows.numpy())
        splits["train"] = splits["train"].subset(train_rows.numpy())
    if cfg.train_subset is not None:
        if cfg.train_subset > len(splits["train"]):
            raise DataError(f"data.train_subset={cfg.train_subset} is more than the {len(splits['train'])} "
                            f"training images; lower it or remove it")
        splits["train"] = splits["train"].subset(np.arange(cfg.train_subset))
    return splits


def streamed_images(splits: Mapping[str, ImageSource], classes: list[str], cfg: DataConfig, record: dict,
                    listing: dict[str, str]) -> Data:
    """The :class:`Data` of labelled images read from disk batch by batch: ``record`` (what identifies the
    images) gains the view scheme and the channel statistics, and goes with ``listing`` into the seed directory."""
    workers = default_workers() if cfg.workers is None else cfg.workers

    def batches(split: str, train: bool, batch_size: int) -> StreamBatches:
        views = ImageViews(splits[split], size=cfg.image_size, train=train, augment=cfg.augment)
        return StreamBatches(views, batch_size, shuffle=train, workers=workers, skip_unreadable=cfg.skip_unreadable)

    record = {"classes": classes, **record, "views": VIEWS}
    mean = std = None
    if cfg.normalize:
        mean, std = channel_stats(ImageViews(splits["train"], size=cfg.image_size, train=False, augment=False))
        record.update(mean=mean, std=std)
    train, val = batches("train", True, cfg.batch_size), batches("val", False, cfg.eval_batch_size)
    train_eval = batches("train", False, cfg.eval_batch_size)
    test = batches("test", False, cfg.eval_batch_size) if "test" in splits else None
    loaders = [loader for loader in (train, val, train_eval, test) if loader is not None]
    return Data(
        train=train,
        val=val,
        test=test,
        train_eval=train_eval,
        transform=ImageTransform(augment=False, normalize=cfg.normalize, mean=mean, std=std),
        model_options={"num_classes": len(classes), "in_channels": 3},
        files={f"{cfg.dataset}.json": json.dumps(record, indent=1), "data.json": json.dumps(listing, indent=1)},
        unreadable=lambda: sorted(set().union(*(loader.skipped for loader in loaders))),
    )


STREAMED_OPTIONS = {"path", "val_size", "split_seed", "train_subset", "augment", "normalize", "image_size", "workers",
                    "skip_unreadable"}  # the data options of the datasets streamed by streamed_images


def given_folder(cfg: DataConfig, folder: str) -> Path:
    """``data.path``, a folder; none or another file is an error saying to pass ``--data-dir`` with ``folder``."""
    if cfg.path is None:
        raise DataError(f"{cfg.dataset}: no folder given; pass --data-dir {folder}")
    if not Path(cfg.path).is_dir():
        raise DataError(f"{cfg.dataset}: {cfg.path} is not a folder; pass --data-dir {folder}")
    return Path(cfg.path)


@register_dataset("imagefolder", options=STREAMED_OPTIONS)
def imagefolder_data(cfg: DataConfig) -> Data:
    """Your images: a folder of class sub-folders (or train/, val/, test/ of them), streamed from disk."""
    root = given_folder(cfg, "DIR holding class sub-folders")
    classes, found = folder_splits(root)
    splits = with_validation(found, cfg, str(train_root(root)))
    files = {split: [splits[split].image(i) for i in range(len(splits[split]))] for split in SPLITS if split in splits}
    record = {"val_files": [str(path.relative_to(root)) for path in files["val"]]}
    listing = {split: listing_digest(root, files[split]) for split in ["val", "train", "test"] if split in files}
    return streamed_images(splits, classes, cfg, record, listing)
