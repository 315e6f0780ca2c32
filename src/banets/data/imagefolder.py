"""The ``imagefolder`` dataset: a folder of class sub-folders of images, read once with Pillow into memory.

``data.path`` holds either ``train/`` (and optionally ``val/`` and ``test/``) with one sub-folder per class,
or the class sub-folders themselves (then every image is a training image). Class names are the sub-folder
names in sorted order (``torchvision.datasets.ImageFolder``'s convention). Each image is converted to RGB,
resized so its shorter side is ``data.image_size`` and center-cropped to a square, and kept as uint8; the
batched pad-crop-flip of ``augment`` then runs on the training device, as for CIFAR. Without ``val/``,
``data.val_size`` images are carved from the training images by a seeded permutation (``data.split_seed``);
the class list and the validation files are recorded in each seed directory (``imagefolder.json``), so a
resumed run refuses a folder that changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from banets.config import DataConfig
from banets.data.augment import ImageTransform, Stats
from banets.data.batches import TensorBatches, checked_split, data_record, take_subset
from banets.data.registry import Data, DataError, register_dataset

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


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


def read_image(path: Path, size: int) -> np.ndarray:
    """``path`` as RGB uint8 ``(3, size, size)``: shorter side resized to ``size``, then center-cropped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as file:
            rgb = file.convert("RGB")
            scale = size / min(rgb.size)
            width, height = max(size, round(rgb.width * scale)), max(size, round(rgb.height * scale))
            rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
            left, top = (width - size) // 2, (height - size) // 2
            pixels = np.asarray(rgb.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except Image.DecompressionBombError:
        raise DataError(
            f"image {path} has more pixels than PIL.Image.MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS:,}) allows, "
            f"a guard against decompression bombs; shrink or remove it, or, if you trust it, raise "
            f"PIL.Image.MAX_IMAGE_PIXELS in a module you --import"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"cannot read image {path} ({type(error).__name__}); remove or replace the file") from None
    return pixels.transpose(2, 0, 1)


def read_split(root: Path, classes: list[str], size: int) -> tuple[tuple[Tensor, Tensor], list[Path]]:
    files, labels = image_files(root, classes)
    images = torch.from_numpy(np.stack([read_image(f, size) for f in files]))
    return (images, torch.tensor(labels, dtype=torch.long)), files


def check_same_classes(root: Path, split: str, classes: list[str]) -> None:
    if (root / split).is_dir() and class_folders(root / split) != classes:
        raise DataError(
            f"{root / split} has other class sub-folders than {root / 'train'}; give every split the same classes"
        )


def channel_stats(images: Tensor) -> tuple[Stats, Stats]:
    """The per-channel mean and std of RGB images ``(N, 3, H, W)``, pixels scaled to [0, 1]."""
    pixels = images.float().div(255.0).transpose(0, 1).reshape(3, -1)
    (r, g, b), (r_sd, g_sd, b_sd) = pixels.mean(1).tolist(), pixels.std(1).tolist()
    return (r, g, b), (r_sd, g_sd, b_sd)


@register_dataset(
    "imagefolder", options={"path", "val_size", "split_seed", "train_subset", "augment", "normalize", "image_size"}
)
def imagefolder_data(cfg: DataConfig) -> Data:
    """Your images: a folder of class sub-folders (or train/, val/, test/ of them), resized and center-cropped."""
    if cfg.path is None:
        raise DataError("imagefolder: no folder given; pass --data-dir DIR holding class sub-folders")
    if not Path(cfg.path).is_dir():
        raise DataError(f"imagefolder: {cfg.path} is not a folder; pass --data-dir DIR holding class sub-folders")
    root = Path(cfg.path)
    train_root = root / "train" if (root / "train").is_dir() else root  # else every image is a training image
    classes = class_folders(train_root)
    for split in SPLITS[1:]:
        check_same_classes(root, split, classes)
    train, train_files = read_split(train_root, classes, cfg.image_size)
    if (root / "val").is_dir():
        val, val_files = read_split(root / "val", classes, cfg.image_size)
    else:
        train_idx, val_idx = checked_split(len(train[1]), cfg.val_size, cfg.split_seed, str(train_root))
        val, val_files = (train[0][val_idx], train[1][val_idx]), [train_files[i] for i in val_idx.tolist()]
        train = (train[0][train_idx], train[1][train_idx])
    test = read_split(root / "test", classes, cfg.image_size)[0] if (root / "test").is_dir() else None
    train = take_subset(train, cfg.train_subset, "training images")
    mean, std = channel_stats(train[0])
    record = {"classes": classes, "val_files": [str(f.relative_to(root)) for f in val_files]}
    return Data(
        train=TensorBatches(*train, batch_size=cfg.batch_size, shuffle=True),
        val=TensorBatches(*val, batch_size=cfg.eval_batch_size),
        test=TensorBatches(*test, batch_size=cfg.eval_batch_size) if test is not None else None,
        train_eval=TensorBatches(*train, batch_size=cfg.eval_batch_size),
        transform=ImageTransform(augment=cfg.augment, normalize=cfg.normalize, mean=mean, std=std),
        model_options={"num_classes": len(classes), "in_channels": 3},
        files={"imagefolder.json": json.dumps(record, indent=1), **data_record(train=train, val=val, test=test)},
    )
