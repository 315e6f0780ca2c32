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
from pathlib import Path

import numpy as np
import torch

from banets.config import DataConfig
from banets.data.augment import ImageTransform, Stats
from banets.data.batches import checked_split, listing_digest, take_subset
from banets.data.registry import Data, DataError, register_dataset
from banets.data.stream import VIEWS, ImageFiles, StreamBatches, default_workers

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
Examples = tuple[list[Path], list[int]]  # image files and their class indices
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


def image_files(root: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Every image below ``root/<class>/`` and its class index, in sorted order."""
    files, labels = [], []
    for index, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if is_image(p))
        files += found
        labels += [index] * len(found)
    if not files:
        raise DataError(f"{root} holds no images ({', '.join(sorted(EXTENSIONS))}) in its class sub-folders")
    return files, labels


def check_same_classes(root: Path, split: str, classes: list[str]) -> None:
    if (root / split).is_dir() and class_folders(root / split) != classes:
        raise DataError(
            f"{root / split} has other class sub-folders than {root / 'train'}; give every split the same classes"
        )


def channel_stats(images: ImageFiles) -> tuple[Stats, Stats]:
    """The per-channel mean and std, pixels scaled to [0, 1], of the center views of up to ``STATS_SAMPLE``
    training images spread evenly over the list."""
    picks = np.linspace(0, len(images) - 1, min(STATS_SAMPLE, len(images))).round().astype(int)
    pixels = torch.from_numpy(np.stack([images.view(0, int(i)) for i in picks])).float().div(255.0)
    channels = pixels.reshape(-1, 3)
    (r, g, b), (r_sd, g_sd, b_sd) = channels.mean(0).tolist(), channels.std(0).tolist()
    return (r, g, b), (r_sd, g_sd, b_sd)


def pick(files: list[Path], labels: list[int], rows: list[int]) -> Examples:
    return [files[i] for i in rows], [labels[i] for i in rows]


def split_files(root: Path, train_root: Path, classes: list[str], cfg: DataConfig) -> dict[str, Examples]:
    """Each split's files and labels: ``val/`` and ``test/`` when present, else validation carved from training."""
    train_files, train_labels = image_files(train_root, classes)
    splits = {}
    if (root / "val").is_dir():
        splits["val"] = image_files(root / "val", classes)
    else:
        train_idx, val_idx = checked_split(len(train_files), cfg.val_size, cfg.split_seed, str(train_root))
        splits["val"] = pick(train_files, train_labels, val_idx.tolist())
        train_files, train_labels = pick(train_files, train_labels, train_idx.tolist())
    splits["train"] = take_subset((train_files, train_labels), cfg.train_subset, "training images")
    if (root / "test").is_dir():
        splits["test"] = image_files(root / "test", classes)
    return splits


@register_dataset("imagefolder", options={"path", "val_size", "split_seed", "train_subset", "augment", "normalize",
                                          "image_size", "workers"})
def imagefolder_data(cfg: DataConfig) -> Data:
    """Your images: a folder of class sub-folders (or train/, val/, test/ of them), streamed from disk."""
    if cfg.path is None:
        raise DataError("imagefolder: no folder given; pass --data-dir DIR holding class sub-folders")
    if not Path(cfg.path).is_dir():
        raise DataError(f"imagefolder: {cfg.path} is not a folder; pass --data-dir DIR holding class sub-folders")
    root = Path(cfg.path)
    train_root = root / "train" if (root / "train").is_dir() else root  # else every image is a training image
    classes = class_folders(train_root)
    for split in SPLITS[1:]:
        check_same_classes(root, split, classes)
    splits = split_files(root, train_root, classes, cfg)
    workers = default_workers() if cfg.workers is None else cfg.workers

    def batches(split: str, train: bool, batch_size: int) -> StreamBatches:
        images = ImageFiles(*splits[split], size=cfg.image_size, train=train, augment=cfg.augment)
        return StreamBatches(images, batch_size, shuffle=train, workers=workers)

    record: dict = {"classes": classes, "val_files": [str(f.relative_to(root)) for f in splits["val"][0]],
                    "views": VIEWS}
    mean = std = None
    if cfg.normalize:
        mean, std = channel_stats(ImageFiles(*splits["train"], size=cfg.image_size, train=False, augment=False))
        record.update(mean=mean, std=std)
    listing = {split: listing_digest(root, files) for split, (files, _) in splits.items()}
    return Data(
        train=batches("train", True, cfg.batch_size),
        val=batches("val", False, cfg.eval_batch_size),
        test=batches("test", False, cfg.eval_batch_size) if "test" in splits else None,
        train_eval=batches("train", False, cfg.eval_batch_size),
        transform=ImageTransform(augment=False, normalize=cfg.normalize, mean=mean, std=std),
        model_options={"num_classes": len(classes), "in_channels": 3},
        files={"imagefolder.json": json.dumps(record, indent=1), "data.json": json.dumps(listing, indent=1)},
    )
