"""CIFAR loading from fake data in the official formats: layouts, checks, safe unpickling, archives, the split."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from banets.data import cifar
from banets.data.cifar import DataError, load_cifar, train_val_split
from banets.data.fake_cifar import fake_batch, write_fake_cifar10, write_pickle

MD5_DIFFERS = "differ from the official md5"


def make_cifar100(parent: Path) -> Path:
    """A fake ``cifar-100-python`` folder: train, test (fine and coarse labels) and meta."""
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in (("train", 30), ("test", 12)):
        batch = fake_batch(rng, n, 100, labels_key=b"fine_labels")
        batch[b"coarse_labels"] = [label // 5 for label in batch[b"fine_labels"]]
        write_pickle(folder / name, batch)
    meta = {b"fine_label_names": [f"class{i}".encode() for i in range(100)], b"coarse_label_names": []}
    write_pickle(folder / "meta", meta)
    return folder


def make_archive(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def load_quietly(name: str, root: Path, **kwargs) -> cifar.CifarData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_cifar(name, root, **kwargs)


def read_raw(path: Path) -> dict:
    return pickle.loads(path.read_bytes(), encoding="bytes")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_round_trip_of_pixels_and_labels(tmp_path, protocol):
    folder = write_fake_cifar10(tmp_path, protocol)
    with pytest.warns(UserWarning, match=MD5_DIFFERS):
        data = load_cifar("cifar10", folder)

    batches = [read_raw(folder / f"data_batch_{i}") for i in range(1, 6)]
    rows = np.concatenate([b[b"data"] for b in batches])
    assert data.train_x.shape == (40, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.train_x.is_contiguous() and data.test_x.is_contiguous()
    for n, c, h, w in [(0, 0, 0, 0), (3, 1, 5, 7), (17, 2, 31, 0), (39, 2, 31, 31), (22, 1, 0, 31)]:
        assert data.train_x[n, c, h, w].item() == rows[n, c * 1024 + h * 32 + w]
    assert torch.equal(data.train_x.reshape(40, -1), torch.from_numpy(rows))
    assert data.train_y.dtype == torch.int64
    assert data.train_y.tolist() == sum((b[b"labels"] for b in batches), [])
    test = read_raw(folder / "test_batch")
    assert torch.equal(data.test_x.reshape(10, -1), torch.from_numpy(test[b"data"]))
    assert data.test_y.tolist() == test[b"labels"]
    assert data.num_classes == 10 and data.classes[0] == "airplane" and len(data.classes) == 10


def test_cifar100_uses_fine_labels_and_meta_names(tmp_path):
    folder = make_cifar100(tmp_path)
    with pytest.warns(UserWarning, match=MD5_DIFFERS):
        data = load_cifar("cifar100", tmp_path)
    assert data.num_classes == 100 and data.classes[:2] == ("class0", "class1")
    assert data.train_x.shape == (30, 3, 32, 32) and data.test_x.shape == (12, 3, 32, 32)
    assert data.train_y.tolist() == read_raw(folder / "train")[b"fine_labels"]
    assert data.test_y.tolist() == read_raw(folder / "test")[b"fine_labels"]


def test_every_form_of_root_gives_the_same_data(tmp_path):
    folder = write_fake_cifar10(tmp_path / "extracted")
    archive_dir = tmp_path / "archive_only"
    archive_dir.mkdir()
    archive = make_archive(folder, archive_dir / "cifar-10-python.tar.gz")
    reference = load_quietly("cifar10", folder)
    for root in (tmp_path / "extracted", archive, str(archive_dir)):
        data = load_quietly("cifar10", root)
        assert torch.equal(data.train_x, reference.train_x) and torch.equal(data.test_y, reference.test_y)
    assert (archive_dir / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert not [p for p in archive_dir.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_missing_meta_gives_numbered_classes(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    (folder / "batches.meta").unlink()
    assert load_quietly("cifar10", folder).classes == tuple(str(i) for i in range(10))


def test_official_checksums_load_without_warning(tmp_path, monkeypatch):
    folder = write_fake_cifar10(tmp_path)
    spec = cifar._SPECS["cifar10"]

    def with_local_md5(files):
        return tuple((name, hashlib.md5((folder / name).read_bytes()).hexdigest()) for name, _ in files)

    local = dataclasses.replace(
        spec,
        train_files=with_local_md5(spec.train_files),
        test_files=with_local_md5(spec.test_files),
        meta_file=with_local_md5((spec.meta_file,))[0],
    )
    monkeypatch.setitem(cifar._SPECS, "cifar10", local)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_cifar("cifar10", folder)


def test_checksum_warning_is_one_line_naming_files_and_the_structural_check(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    with pytest.warns(UserWarning) as record:
        load_cifar("cifar10", folder)
    (warning,) = record
    message = str(warning.message)
    assert "\n" not in message and "data_batch_1" in message and "structural check passed" in message
    assert warning.filename == __file__


def corrupt(folder: Path, name: str, change) -> None:
    """Rewrite the batch ``name`` of ``folder`` after applying ``change`` to its dict."""
    batch = read_raw(folder / name)
    change(batch)
    write_pickle(folder / name, batch)


STRUCTURAL_DEFECTS = {
    "wrong row length": (
        lambda b: b.update({b"data": b[b"data"][:, :3000]}),
        r"data_batch_3 has images of shape \(8, 3000\), expected \(N, 3072\)",
    ),
    "wrong dtype": (
        lambda b: b.update({b"data": b[b"data"].astype(np.int16)}),
        "data_batch_3 has images of dtype int16, expected uint8",
    ),
    "label out of range": (
        lambda b: b[b"labels"].__setitem__(0, 10),
        r"data_batch_3 has labels in \[\d, 10\], outside \[0, 10\)",
    ),
    "negative label": (lambda b: b[b"labels"].__setitem__(0, -1), r"outside \[0, 10\)"),
    "count mismatch": (
        lambda b: b[b"labels"].pop(),
        "data_batch_3 has 7 labels for 8 images; the file is corrupt or not a CIFAR batch, re-download or re-extract",
    ),
    "labels missing": (lambda b: b.pop(b"labels"), "data_batch_3 lacks the keys 'data' and 'labels'"),
    "float labels": (lambda b: b.update({b"labels": [0.5] * 8}), "data_batch_3 has labels of shape"),
}


@pytest.mark.parametrize("defect", STRUCTURAL_DEFECTS)
def test_structural_defects_are_one_line_errors_naming_the_file(tmp_path, defect):
    change, message = STRUCTURAL_DEFECTS[defect]
    folder = write_fake_cifar10(tmp_path)
    corrupt(folder, "data_batch_3", change)
    with pytest.raises(DataError, match=message) as error:
        load_quietly("cifar10", folder)
    assert str(error.value).startswith("cifar10: ") and "\n" not in str(error.value)


def test_truncated_pickle_is_reported_as_corrupt(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    content = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(content[: len(content) // 2])
    with pytest.raises(DataError, match="test_batch is not a readable pickle .*truncated or corrupt, re-download"):
        load_quietly("cifar10", folder)


def test_a_pickle_that_is_not_a_dict_is_rejected(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    write_pickle(folder / "data_batch_2", [1, 2, 3])
    with pytest.raises(DataError, match="data_batch_2 holds a list, not a dict"):
        load_quietly("cifar10", folder)


def test_missing_file_names_the_file(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="cifar10: data_batch_4 is missing from .*re-extract or re-download"):
        load_quietly("cifar10", folder)


def test_nothing_at_root_points_to_data_dir(tmp_path):
    with pytest.raises(DataError, match="no cifar-100-python/ or cifar-100-python.tar.gz at .*--data-dir PATH"):
        load_cifar("cifar100", tmp_path)


class RunsShellCommand:
    """Pickles as a call to os.system: unpickling it with plain pickle would run the command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_pickle_naming_a_disallowed_global_is_refused_without_running_it(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    batch = read_raw(folder / "data_batch_1")
    batch[b"labels"] = RunsShellCommand(f"touch {marker}")
    write_pickle(folder / "data_batch_1", batch)
    with pytest.raises(DataError, match=r"data_batch_1 refers to (posix|os|nt)\.system.*refused to unpickle"):
        load_quietly("cifar10", folder)
    assert not marker.exists()


def test_legacy_numpy_module_names_of_official_files_are_allowed(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    path = folder / "data_batch_1"
    path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray\n_reconstruct" in path.read_bytes()
    assert load_quietly("cifar10", folder).train_x.shape[0] == 40


def tar_with_member(archive: Path, member: tarfile.TarInfo, content: bytes = b"") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(content) if member.isfile() else None)
    return archive


def test_archive_with_path_traversal_is_refused(tmp_path):
    member = tarfile.TarInfo("cifar-10-batches-py/../../escaped")
    member.size = 3
    archive = tar_with_member(tmp_path / "cifar-10-python.tar.gz", member, b"bad")
    with pytest.raises(DataError, match="unsafe member 'cifar-10-batches-py/../../escaped'"):
        load_cifar("cifar10", archive)
    assert not (tmp_path.parent / "escaped").exists()


def test_archive_with_symlink_is_refused(tmp_path):
    member = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = tar_with_member(tmp_path / "cifar-10-python.tar.gz", member)
    with pytest.raises(DataError, match="unsafe member"):
        load_cifar("cifar10", archive)


def test_a_planted_symlink_beside_the_archive_is_not_followed(tmp_path):
    (tmp_path / "data").mkdir()
    archive = make_archive(write_fake_cifar10(tmp_path / "source"), tmp_path / "data" / "cifar-10-python.tar.gz")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "data" / "cifar-10-batches-py").symlink_to(elsewhere)
    with pytest.raises(DataError, match="is a symbolic link; refused to extract into it"):
        load_cifar("cifar10", archive)
    assert list(elsewhere.iterdir()) == []  # nothing written through the link


def test_unreadable_archive_is_a_one_line_error(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"not a gzip file")
    with pytest.raises(DataError, match="is not a readable .tar.gz"):
        load_cifar("cifar10", tmp_path)


def test_failed_download_tells_the_user_to_pass_a_local_path(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(cifar, "urlopen", offline)
    with pytest.raises(DataError, match="could not download https://www.cs.toronto.edu/.*--data-dir PATH") as error:
        load_cifar("cifar10", tmp_path / "new", download=True)
    assert "\n" not in str(error.value)
    assert list((tmp_path / "new").iterdir()) == []


def serve(content: bytes):
    """A stand-in for urlopen that returns ``content``."""

    def fake_urlopen(url, timeout):
        return io.BytesIO(content)

    return fake_urlopen


def test_download_with_wrong_md5_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "urlopen", serve(b"something else"))
    with pytest.raises(DataError, match="has md5 .*expected c58f30108f718f92721af3b95e74349a"):
        load_cifar("cifar10", tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


def test_download_then_extract(tmp_path, monkeypatch):
    archive = make_archive(write_fake_cifar10(tmp_path / "source"), tmp_path / "served.tar.gz")
    content = archive.read_bytes()
    spec = dataclasses.replace(cifar._SPECS["cifar10"], archive_md5=hashlib.md5(content).hexdigest())
    monkeypatch.setitem(cifar._SPECS, "cifar10", spec)
    monkeypatch.setattr(cifar, "urlopen", serve(content))
    data = load_quietly("cifar10", tmp_path / "downloads", download=True)
    assert data.train_x.shape == (40, 3, 32, 32)
    assert (tmp_path / "downloads" / "cifar-10-python.tar.gz").is_file()


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown CIFAR variant"):
        load_cifar("cifar1000", ".")


def test_split_is_reproducible_disjoint_and_complete():
    train, val = train_val_split(50_000, 5000, seed=3)
    again_train, again_val = train_val_split(50_000, 5000, seed=3)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert len(train) == 45_000 and len(val) == 5000 and train.dtype == torch.int64
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(50_000))
    assert not torch.equal(train_val_split(50_000, 5000, seed=4)[1], val)


def test_split_subset_is_a_prefix_of_the_training_part():
    train, val = train_val_split(1000, 100, seed=0)
    small, same_val = train_val_split(1000, 100, seed=0, subset=50)
    assert torch.equal(small, train[:50]) and torch.equal(same_val, val)
    assert len(set(small.tolist()) & set(val.tolist())) == 0


def test_split_rejects_impossible_sizes():
    for kwargs in ({"val_size": 100}, {"val_size": -1}, {"val_size": 10, "subset": 91}, {"val_size": 10, "subset": 0}):
        with pytest.raises(ValueError):
            train_val_split(100, seed=0, **kwargs)
