"""CIFAR-10 and CIFAR-100 from the official python archives or extracted folders, checked, as uint8 tensors.

``load_cifar`` accepts the extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``), a directory holding
it, the official ``.tar.gz`` or a directory holding that, and downloads the archive on request. Files whose md5
differs from the official archive's are accepted with a warning when a structural check passes (shapes, dtype,
label range, counts); anything else wrong is one ``DataError`` line naming the file, the problem and the fix.
Pickles are read with an unpickler that only resolves the numpy names a CIFAR batch needs.

``train_val_split`` carves the validation set (45k / 5k by default) out of the training set, as a pure
function of its arguments so a run record can reproduce it.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib
import os
import pickle
import tarfile
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.request import urlopen

import numpy as np
import torch
from torch import Tensor

from banets.config import DataConfig
from banets.data.augment import cifar_transform
from banets.data.batches import TensorBatches, data_record, train_val_split
from banets.data.registry import Data, DataError, register_dataset

__all__ = ["CifarData", "DataError", "cifar_data", "load_cifar", "train_val_split"]

IMAGE_SIZE = 32
ROW_LENGTH = 3 * IMAGE_SIZE * IMAGE_SIZE
DATA_DIR_HINT = "pass the location of a local copy with --data-dir PATH (the extracted folder or the .tar.gz)"


@dataclass(frozen=True)
class _CifarSpec:
    """Where a CIFAR variant lives and what its official files look like."""

    title: str
    folder: str
    archive: str
    archive_md5: str
    train_files: tuple[tuple[str, str], ...]  # (file name, official md5)
    test_files: tuple[tuple[str, str], ...]
    meta_file: tuple[str, str]
    names_key: str
    labels_key: str
    num_classes: int
    full_train: int
    full_test: int

    @property
    def url(self) -> str:
        return f"https://www.cs.toronto.edu/~kriz/{self.archive}"

    @property
    def data_files(self) -> tuple[tuple[str, str], ...]:
        return self.train_files + self.test_files


_SPECS: dict[str, _CifarSpec] = {
    "cifar10": _CifarSpec(
        title="cifar10",
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
        train_files=(
            ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            ("data_batch_4", "634d18415352ddfa80567beed471001a"),
            ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
        ),
        test_files=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
        meta_file=("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
        names_key="label_names",
        labels_key="labels",
        num_classes=10,
        full_train=50_000,
        full_test=10_000,
    ),
    "cifar100": _CifarSpec(
        title="cifar100",
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
        test_files=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
        meta_file=("meta", "7973b15100ade9c7d40fb424638fde48"),
        names_key="fine_label_names",
        labels_key="fine_labels",
        num_classes=100,
        full_train=50_000,
        full_test=10_000,
    ),
}


@dataclass(frozen=True)
class CifarData:
    """A CIFAR dataset in memory: images uint8 ``(N, 3, 32, 32)`` contiguous, labels int64 ``(N,)``."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    classes: tuple[str, ...]


# ----------------------------------------------------------------------------------------------- safe unpickling


def _numpy_attr(module_candidates: tuple[str, ...], name: str) -> Any:
    """``name`` from the first importable module among ``module_candidates`` (numpy 2 renamed core to _core)."""
    for module in module_candidates:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy provides none of {module_candidates} with {name}")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle may name: numpy array, dtype and scalar reconstruction, plain builtins."""
    multiarray = ("numpy._core.multiarray", "numpy.core.multiarray")
    numeric = ("numpy._core.numeric", "numpy.core.numeric")
    reconstruct = _numpy_attr(multiarray, "_reconstruct")
    scalar = _numpy_attr(multiarray, "scalar")
    frombuffer = _numpy_attr(numeric, "_frombuffer")
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in multiarray:
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    for module in numeric:
        allowed[(module, "_frombuffer")] = frombuffer
    allowed[("_codecs", "encode")] = codecs.encode  # bytes pickled by Python 3 at protocol 2
    for builtins_module in ("builtins", "__builtin__"):
        for plain_type in (list, dict, tuple, bytes, bytearray, str, int):
            allowed[(builtins_module, plain_type.__name__)] = plain_type
    return allowed


class _ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list (it was not resolved, so nothing ran)."""


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``_allowed_globals`` and refuses everything else."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


def _unpickle(path: Path, title: str) -> Any:
    """The object pickled in ``path`` (bytes-encoded, as the official files need), with one-line errors."""
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="bytes").load()
    except _ForbiddenGlobal as forbidden:
        raise DataError(
            f"{title}: {path.name} refers to {forbidden}, which a CIFAR file never needs; refused to unpickle it "
            f"(nothing was executed) - replace {path} with a genuine copy"
        ) from None
    except FileNotFoundError:
        raise DataError(f"{title}: {path.name} is missing from {path.parent}; re-extract or re-download it") from None
    except Exception as error:  # truncated or garbled pickles fail in many ways, all meaning "corrupt file"
        raise DataError(
            f"{title}: {path.name} is not a readable pickle ({type(error).__name__}: {error}); "
            "the file is truncated or corrupt, re-download or re-extract it"
        ) from None


# ------------------------------------------------------------------------------------------- structural checks


def _field(entry: dict, key: str) -> Any:
    """``entry[key]`` under a bytes key (official files) or a str key (re-pickled copies), else None."""
    return entry.get(key.encode(), entry.get(key))


def _read_batch(path: Path, spec: _CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3072)`` uint8 and labels ``(N,)`` int64 of one batch file, after a structural check."""
    title, name = spec.title, path.name
    fix = "the file is corrupt or not a CIFAR batch, re-download or re-extract it"
    entry = _unpickle(path, title)
    if not isinstance(entry, dict):
        raise DataError(f"{title}: {name} holds a {type(entry).__name__}, not a dict of data and labels; {fix}")
    images, labels = _field(entry, "data"), _field(entry, spec.labels_key)
    if images is None or labels is None:
        raise DataError(f"{title}: {name} lacks the keys 'data' and {spec.labels_key!r}; {fix}")
    if not isinstance(images, np.ndarray) or images.ndim != 2 or images.shape[1] != ROW_LENGTH:
        shape = getattr(images, "shape", type(images).__name__)
        raise DataError(f"{title}: {name} has images of shape {shape}, expected (N, {ROW_LENGTH}); {fix}")
    if images.dtype != np.uint8:
        raise DataError(f"{title}: {name} has images of dtype {images.dtype}, expected uint8; {fix}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{title}: {name} has labels of shape {labels.shape} and dtype {labels.dtype}; {fix}")
    if len(labels) != len(images):
        raise DataError(f"{title}: {name} has {len(labels)} labels for {len(images)} images; {fix}")
    if len(images) == 0:
        raise DataError(f"{title}: {name} holds no images; {fix}")
    if labels.min() < 0 or labels.max() >= spec.num_classes:
        raise DataError(
            f"{title}: {name} has labels in [{labels.min()}, {labels.max()}], outside [0, {spec.num_classes}); {fix}"
        )
    return images, labels.astype(np.int64)


def _read_class_names(folder: Path, spec: _CifarSpec) -> tuple[str, ...]:
    """Class names from the meta file, or the label numbers as strings when the file is absent."""
    path = folder / spec.meta_file[0]
    if not path.exists():
        return tuple(str(label) for label in range(spec.num_classes))
    entry = _unpickle(path, spec.title)
    names = _field(entry, spec.names_key) if isinstance(entry, dict) else None
    if not isinstance(names, (list, tuple)) or len(names) != spec.num_classes:
        raise DataError(
            f"{spec.title}: {path.name} does not list {spec.num_classes} {spec.names_key!r}; "
            "the file is corrupt, re-extract it or delete it to use numbered classes"
        )
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _md5(path: Path) -> str:
    """Hex md5 of a file."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _stack(batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[Tensor, Tensor]:
    """Concatenate batches into images ``(N, 3, 32, 32)`` (rows are channel-major) and labels ``(N,)``."""
    images = np.concatenate([b[0] for b in batches]).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
    labels = np.concatenate([b[1] for b in batches])
    return torch.from_numpy(images), torch.from_numpy(labels)


def _read_folder(folder: Path, spec: _CifarSpec) -> CifarData:
    """Load and check every file of an extracted folder; warn once about files whose md5 is not official."""
    for name, _ in spec.data_files:
        if not (folder / name).is_file():
            raise DataError(f"{spec.title}: {name} is missing from {folder}; re-extract or re-download the archive")
    train = [_read_batch(folder / name, spec) for name, _ in spec.train_files]
    test = [_read_batch(folder / name, spec) for name, _ in spec.test_files]
    classes = _read_class_names(folder, spec)
    train_x, train_y = _stack(train)
    test_x, test_y = _stack(test)
    checked = [f for f in spec.data_files + (spec.meta_file,) if (folder / f[0]).exists()]
    unofficial = [name for name, md5 in checked if _md5(folder / name) != md5]
    if unofficial:
        warnings.warn(
            f"{spec.title}: {', '.join(unofficial)} in {folder} differ from the official md5 sums; accepted because "
            f"the structural check passed ({len(train_y)} train / {len(test_y)} test images, uint8 N x {ROW_LENGTH}, "
            f"labels in [0, {spec.num_classes}))",
            stacklevel=3,
        )
    return CifarData(train_x, train_y, test_x, test_y, spec.num_classes, classes)


# ---------------------------------------------------------------------------------------- archives and download


def _safe_member_name(member: tarfile.TarInfo, spec: _CifarSpec, archive: Path) -> str | None:
    """The file name of a member of ``spec.folder`` worth extracting, None to skip it; unsafe members raise."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or not (member.isfile() or member.isdir()):
        raise DataError(
            f"{spec.title}: {archive.name} contains an unsafe member {member.name!r} (absolute path, '..', link or "
            "device); refused to extract it - download the official archive again"
        )
    wanted = {name for name, _ in spec.data_files + (spec.meta_file,)}
    if member.isfile() and path.parent == PurePosixPath(spec.folder) and path.name in wanted:
        return path.name
    return None


def _extraction_parent(archive: Path) -> Path:
    """The directory beside the archive when writable, else a per-user cache directory."""
    if os.access(archive.parent, os.W_OK):
        return archive.parent
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "banets"
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def _extract(archive: Path, spec: _CifarSpec) -> Path:
    """Extract the CIFAR files of ``archive`` (checked member by member) and return the extracted folder.

    Only the expected regular files are written, each first into a staging folder and then moved into place, so
    an interrupted run leaves no half-written file. An existing complete folder is reused.
    """
    parent = _extraction_parent(archive)
    folder = parent / spec.folder
    if folder.is_symlink() or any((folder / name).is_symlink() for name, _ in spec.data_files + (spec.meta_file,)):
        raise DataError(
            f"{spec.title}: {folder} (or a file in it) is a symbolic link; refused to extract into it - remove "
            f"the link, or pass the folder it points to with --data-dir"
        )
    if all((folder / name).is_file() for name, _ in spec.data_files):
        return folder
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.folder}-", dir=parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = _safe_member_name(member, spec, archive)
                if name is not None:
                    _copy_stream(tar.extractfile(member), staging / name)
    except (tarfile.TarError, EOFError, OSError) as error:
        _remove_tree(staging)
        raise DataError(
            f"{spec.title}: {archive} is not a readable .tar.gz ({error}); download the official archive again"
        ) from None
    except DataError:
        _remove_tree(staging)
        raise
    folder.mkdir(exist_ok=True)
    for staged in staging.iterdir():
        staged.replace(folder / staged.name)
    staging.rmdir()
    return folder


def _copy_stream(source: IO[bytes] | None, destination: Path) -> None:
    """Write the bytes of an open tar member to ``destination``."""
    assert source is not None, "regular tar members always have a stream"
    with source, open(destination, "wb") as out:
        while chunk := source.read(1 << 20):
            out.write(chunk)


def _remove_tree(folder: Path) -> None:
    """Delete a staging folder of ``_extract`` (flat: it only ever holds extracted files)."""
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()


def _download(spec: _CifarSpec, directory: Path) -> Path:
    """Download the official archive into ``directory`` and verify its md5; one-line errors on any failure."""
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / spec.archive
    partial = archive.with_name(archive.name + ".part")
    digest = hashlib.md5()
    try:
        with urlopen(spec.url, timeout=60) as response, open(partial, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except Exception as error:  # URLError, timeouts, resets: all mean "no usable network copy"
        partial.unlink(missing_ok=True)
        raise DataError(f"{spec.title}: could not download {spec.url} ({error}); {DATA_DIR_HINT}") from None
    if digest.hexdigest() != spec.archive_md5:
        partial.unlink()
        raise DataError(
            f"{spec.title}: the download of {spec.url} has md5 {digest.hexdigest()}, expected {spec.archive_md5}; "
            f"retry, or {DATA_DIR_HINT}"
        )
    partial.replace(archive)
    return archive


def _locate_folder(spec: _CifarSpec, root: Path, download: bool) -> Path:
    """The extracted folder for ``root`` (folder, its parent, archive or its parent), extracting or downloading."""
    if root.is_file():
        return _extract(root, spec)
    if (root / spec.train_files[0][0]).is_file() or (root.is_dir() and root.name == spec.folder):
        return root
    if (root / spec.folder).is_dir():
        return root / spec.folder
    if (root / spec.archive).is_file():
        return _extract(root / spec.archive, spec)
    if download:
        return _extract(_download(spec, root), spec)
    raise DataError(
        f"{spec.title}: no {spec.folder}/ or {spec.archive} at {root}; {DATA_DIR_HINT}, or --set data.download=true"
    )


def load_cifar(name: str, root: str | Path, download: bool = False) -> CifarData:
    """Load CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels) from ``root``.

    ``root`` is the extracted folder, a directory containing it, the official ``.tar.gz``, or a directory
    containing that. With ``download`` and nothing found, the official archive is fetched into ``root``.
    Raises ``DataError`` (one line) for missing, corrupt, unsafe or malformed files; warns when the files pass
    the structural check but differ from the official md5 sums.
    """
    if name not in _SPECS:
        raise ValueError(f"unknown CIFAR variant {name!r}; expected one of {sorted(_SPECS)}")
    spec = _SPECS[name]
    return _read_folder(_locate_folder(spec, Path(root).expanduser(), download), spec)


TRAIN_EVAL_ROWS = 10_000  # training examples evaluated at the end, for the training error (does the teacher fit?)
DEFAULT_ROOT = Path.home() / ".cache" / "banets"


def cifar_data(cfg: DataConfig) -> Data:
    """CIFAR-10 or CIFAR-100 (``cfg.dataset``) with the seeded validation split carved from the training set."""
    if cfg.path is None and not cfg.download:
        raise DataError(
            f"{cfg.dataset}: no data path; pass --data-dir PATH (a cifar folder or archive) or --set data.download=true"
        )
    data = load_cifar(cfg.dataset, cfg.path or DEFAULT_ROOT, download=cfg.download)
    n = len(data.train_y)
    if cfg.val_size >= n or (cfg.train_subset or 0) > n - cfg.val_size:
        raise DataError(
            f"{cfg.dataset} has {n} training images: data.val_size={cfg.val_size} plus data.train_subset="
            f"{cfg.train_subset} do not fit; lower them"
        )
    train_idx, val_idx = train_val_split(n, cfg.val_size, cfg.split_seed, cfg.train_subset)
    x, y = data.train_x, data.train_y
    return Data(
        train=TensorBatches(x[train_idx], y[train_idx], batch_size=cfg.batch_size, shuffle=True, drop_last=True),
        val=TensorBatches(x[val_idx], y[val_idx], batch_size=cfg.eval_batch_size),
        test=TensorBatches(data.test_x, data.test_y, batch_size=cfg.eval_batch_size),
        train_eval=TensorBatches(
            x[train_idx[:TRAIN_EVAL_ROWS]], y[train_idx[:TRAIN_EVAL_ROWS]], batch_size=cfg.eval_batch_size
        ),
        transform=cifar_transform(cfg.dataset, augment=cfg.augment, normalize=cfg.normalize),
        model_options={"num_classes": data.num_classes, "in_channels": 3},
        files=data_record(train=(x, y), test=(data.test_x, data.test_y)),  # the split is a function of the config
    )


for _name in _SPECS:
    register_dataset(
        _name,
        options={"path", "download", "val_size", "split_seed", "train_subset", "augment", "normalize"},
        summary=f"{_SPECS[_name].title}: official python archive or folder, 32x32 RGB",
    )(cifar_data)
