"""WebDataset tar shards (``banets shard``, the ``shards`` dataset): written from an image folder byte for byte,
readable by webdataset itself, read by index like an image folder, and refused in one line when a shard is missing
or changed."""

import json
import os
import sys

import numpy as np
import pytest
import torch
import webdataset

from banets.cli import main
from banets.config import DataConfig
from banets.data.registry import build_dataset
from banets.data.shards import SHUFFLE_SEED, write_shards
from test_stream import write_photos
from tiny import snapshot, tiny

RUN = ["run", "demo", "--set", "data={dataset: shards, image_size: 16, batch_size: 4, workers: 1}",
       "--set", "model={name: small_cnn, options: {width: 4}}", *tiny(width=None)]


@pytest.fixture
def folder(tmp_path):
    """An image folder with train/ (10 photos) and val/ (4), and its shards of 3 images each."""
    train = write_photos(tmp_path / "images" / "train")
    val = write_photos(tmp_path / "images" / "val", per_class=2, size=(50, 70))
    assert main(["shard", str(tmp_path / "images"), "--out", str(tmp_path / "shards"), "--shard-size", "3"]) == 0
    return {"train": train, "val": val, "shards": tmp_path / "shards"}


def edit_record(shards, change):
    record = json.loads((shards / "shards.json").read_text())
    change(record)
    (shards / "shards.json").write_text(json.dumps(record))


def edit_index(shards, field, value):
    index = np.load(shards / "val.index.npy")
    index[field][1] = value
    np.save(shards / "val.index.npy", index)


def written_order(files):
    """The source files in the order ``banets shard`` writes them (a seeded shuffle)."""
    return [files[i] for i in np.random.default_rng(SHUFFLE_SEED).permutation(len(files))]


def test_shards_hold_each_image_byte_for_byte_with_its_class_and_webdataset_reads_them(folder):
    shards = folder["shards"]
    assert sorted(p.name for p in shards.iterdir()) == [
        "shards.json", *(f"train-{i:06d}.tar" for i in range(4)), "train.index.npy", "val-000000.tar",
        "val-000001.tar", "val.index.npy"]
    assert json.loads((shards / "shards.json").read_text())["classes"] == ["ant", "bee"]
    samples = list(webdataset.WebDataset(sorted(str(p) for p in shards.glob("train-*.tar")), shardshuffle=False))
    expected = written_order(folder["train"])
    assert [s["jpg"] for s in samples] == [path.read_bytes() for path in expected]
    assert [int(s["cls"]) for s in samples] == [["ant", "bee"].index(path.parent.name) for path in expected]


def test_shards_give_the_batches_and_views_of_the_folder_they_were_written_from(folder, tmp_path):
    options = {"image_size": 16, "workers": 0, "val_size": 2}
    shards = build_dataset(DataConfig(dataset="shards", path=str(folder["shards"]), **options))
    images = build_dataset(DataConfig(dataset="imagefolder", path=str(tmp_path / "images"), **options))
    for split in ("val", "train_eval"):
        for (x, y), (x_folder, y_folder) in zip(getattr(shards, split), getattr(images, split)):
            assert torch.equal(x, x_folder) and torch.equal(y, y_folder)
    views, folder_views = shards.train.loader.dataset, images.train.loader.dataset  # augmented, keyed by example
    assert all(np.array_equal(views.view(123, i), folder_views.view(123, i)) for i in range(10))
    torch.manual_seed(0)
    batches = [torch.cat([x for x, _, _ in shards.train])]
    torch.manual_seed(0)
    assert torch.equal(batches[0], torch.cat([x for x, _, _ in images.train]))  # the same order and views


def test_a_run_on_shards_trains_and_a_changed_shard_is_refused_on_resume(folder, tmp_path, capsys):
    args = [*RUN, "--data-dir", str(folder["shards"]), "--out", str(tmp_path / "o")]
    assert main(args) == 0
    assert json.loads((tmp_path / "o" / "seed-0" / "shards.json").read_text())["classes"] == ["ant", "bee"]
    before = snapshot(tmp_path / "o")
    shard = folder["shards"] / "val-000001.tar"
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))  # rewritten, same size
    capsys.readouterr()
    assert main(["resume", str(tmp_path / "o"), "--set", "ban.ensembles={T+B: [teacher, BAN-1]}"]) == 1
    assert "(data.json differs)" in capsys.readouterr().err and snapshot(tmp_path / "o") == before


@pytest.mark.parametrize("damage, message", [
    (lambda shards: (shards / "train-000002.tar").unlink(), "train-000002.tar is missing; restore it, or write the "
                                                            "shards again with `banets shard`"),
    (lambda shards: os.truncate(shards / "val-000000.tar", 1024), "val-000000.tar has 1024 bytes, its index was "
                                                                 "written for"),
    (lambda shards: (shards / "train.index.npy").write_bytes(b"junk"), "train.index.npy is missing or unreadable"),
    (lambda shards: edit_record(shards, lambda r: r.update(splits=["train"])), "is not a banets-shards-1 record"),
    (lambda shards: edit_record(shards, lambda r: r["splits"]["val"][0].update(name="/etc/hostname")),
     "is not a banets-shards-1 record"),
    (lambda shards: edit_index(shards, "label", 7), "val.index.npy is not an index of val's 2 shard(s) and 2 classes"),
    (lambda shards: edit_index(shards, "size", 10**12), "val.index.npy is not an index of val's 2 shard(s)"),
    (lambda shards: (shards / "shards.json").unlink(), "has no readable shards.json; write shards with `banets shard"),
])
def test_a_missing_or_changed_shard_is_refused_before_training(folder, tmp_path, capsys, damage, message):
    damage(folder["shards"])
    capsys.readouterr()
    assert main([*RUN, "--data-dir", str(folder["shards"]), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_shards_are_never_written_over_and_a_bad_source_writes_nothing(folder, tmp_path, capsys):
    before = snapshot(folder["shards"])
    assert main(["shard", str(tmp_path / "images"), "--out", str(folder["shards"])]) == 1
    assert "exists; give --out a new folder (shards are never written over)" in capsys.readouterr().err
    assert snapshot(folder["shards"]) == before
    assert main(["shard", str(tmp_path / "images" / "train" / "ant"), "--out", str(tmp_path / "new")]) == 1
    assert "has no class sub-folders" in capsys.readouterr().err
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.partial").exists()
    (tmp_path / "mine.partial").mkdir()
    (tmp_path / "mine.partial" / "notes.txt").write_text("mine")
    assert main(["shard", str(tmp_path / "images"), "--out", str(tmp_path / "mine")]) == 1
    assert "mine.partial exists and was not left by banets shard" in capsys.readouterr().err
    assert (tmp_path / "mine.partial" / "notes.txt").read_text() == "mine"
    write_photos(tmp_path / "images" / "test", classes=("ant", "wasp"), per_class=1)
    assert main(["shard", str(tmp_path / "images"), "--out", str(tmp_path / "new")]) == 1
    assert "has other class sub-folders than" in capsys.readouterr().err


def test_shards_written_from_a_folder_without_val_carve_validation_like_the_folder(tmp_path):
    write_photos(tmp_path / "images", per_class=6)
    write_shards(tmp_path / "images", tmp_path / "shards", shard_size=5)
    data = build_dataset(DataConfig(dataset="shards", path=str(tmp_path / "shards"), val_size=4, image_size=16,
                                    workers=0, train_subset=5))
    assert (len(data.val.loader.dataset), len(data.train.loader.dataset)) == (4, 5)


def test_shards_without_a_folder_say_to_pass_one(tmp_path, capsys):
    assert main([*RUN, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err == "banets: error: shards: no folder given; pass --data-dir SHARDS, written by `banets shard`\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--shard-size", "0"], "--shard-size must be a positive number of images, got 0"),
    ([], "banets shard writes with webdataset: pip install 'banets[shards]'"),
])
def test_bad_shard_arguments_and_a_missing_webdataset_write_nothing(args, message, tmp_path, capsys, monkeypatch):
    write_photos(tmp_path / "images")
    if not args:
        monkeypatch.setitem(sys.modules, "webdataset", None)  # import webdataset raises ImportError
    assert main(["shard", str(tmp_path / "images"), "--out", str(tmp_path / "new"), *args]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]
