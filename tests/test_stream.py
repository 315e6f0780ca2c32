"""Images streamed from disk (``banets.data.stream``): views keyed by example, each process's own rows, JPEGs decoded
at a reduced scale, a corrupt file named in one line mid-run, changed files refused on resume from their listing."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from banets import distributed
from banets.cli import main
from banets.config import DataConfig
from banets.data.registry import DataError, build_dataset
from banets.data.stream import (
    EpochOrder,
    ImageFiles,
    ImageViews,
    StreamBatches,
    center_box,
    decode,
    pad_crop_flip_one,
    resized_crop_box,
    view_rng,
)
from banets.runs import SeedDirectory
from tiny import snapshot, tiny


def write_photos(root: Path, classes=("ant", "bee"), per_class: int = 5, size=(96, 64)) -> list[Path]:
    """Smooth JPEG "photos" (gradients with a class-dependent tint) in class sub-folders."""
    files = []
    rows, cols = np.mgrid[0 : size[1], 0 : size[0]]
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.stack([(rows * 3 + i * 20) % 256, (cols * 2 + c * 90) % 256, (rows + cols) % 256], -1)
            files.append(root / name / f"{i}.jpg")
            Image.fromarray(pixels.astype(np.uint8)).save(files[-1], quality=95)
    return files


@pytest.fixture
def photos(tmp_path) -> ImageViews:
    files = write_photos(tmp_path / "photos")
    return ImageViews(ImageFiles(files, [i // 5 for i in range(10)]), size=48, train=True, augment=True)


def test_a_view_is_a_function_of_the_epochs_key_and_the_example_alone(photos):
    assert np.array_equal(photos.view(7, 3), photos.view(7, 3))
    assert not np.array_equal(photos.view(7, 3), photos.view(8, 3))  # another epoch, another crop
    assert not np.array_equal(photos.view(7, 3), photos.view(7, 4)[..., :])  # another example
    loaded = {}
    for workers in (0, 2):  # batches are the same whatever the number of workers
        torch.manual_seed(0)
        loaded[workers] = list(StreamBatches(photos, 4, shuffle=True, workers=workers))
    assert [len(batch[1]) for batch in loaded[0]] == [4, 4, 2]
    for (x0, y0, rows0), (x2, y2, rows2) in zip(loaded[0], loaded[2]):
        assert torch.equal(x0, x2) and torch.equal(y0, y2) and rows0 == rows2


def test_evaluation_views_are_the_center_square_and_not_augmented(tmp_path):
    files = write_photos(tmp_path / "photos")
    images = ImageViews(ImageFiles(files, [0] * 10), size=32, train=False, augment=True)
    x, y = next(iter(StreamBatches(images, 10, shuffle=False, workers=0)))
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.uint8 and torch.equal(x[3], torch.from_numpy(
        np.ascontiguousarray(decode(files[3], 32, center_box).transpose(2, 0, 1))))


def test_each_process_reads_only_its_rows_and_the_union_is_the_global_batch(monkeypatch):
    torch.manual_seed(0)
    whole = list(EpochOrder(10, 4, shuffle=True, shard=True))
    parts = {}
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        torch.manual_seed(0)
        parts[rank] = list(EpochOrder(10, 4, shuffle=True, shard=True))
    for batch, mine, theirs in zip(whole, parts[0], parts[1]):
        assert [key[1] for key in mine + theirs] == [key[1] for key in batch]  # the same order, split in two
        assert {key[2] for key in mine + theirs} == {len(batch)}  # each carries the global batch's rows
        assert {key[0] for key in mine + theirs} == {batch[0][0]}  # and the same view key


def test_a_process_weighs_its_rows_by_their_share_of_the_global_batch(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    x, y = torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)
    assert distributed.split_batch(x, y, global_rows=5)[2] == pytest.approx(2 * 3 / 5)


def test_the_resized_crop_stays_inside_with_the_scale_and_ratio_asked():
    rng = np.random.default_rng(0)
    for width, height in [(96, 64), (500, 375), (40, 400), (1000, 10)]:
        for _ in range(200):
            left, top, w, h = resized_crop_box(width, height, rng)
            assert 0 <= left and 0 <= top and left + w <= width + 1e-9 and top + h <= height + 1e-9
            if max(width, height) / min(width, height) < 4:  # else the fallback, the center crop
                assert 0.08 * width * height * 0.9 <= w * h <= width * height
                assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_close_to_a_full_decode(tmp_path, monkeypatch):
    path = write_photos(tmp_path / "big", per_class=1, size=(1024, 768))[0]
    drafted = decode(path, 64, center_box)
    seen = []
    original_draft = JpegImageFile.draft
    monkeypatch.setattr(JpegImageFile, "draft", lambda self, mode, size: seen.append(size) or original_draft(self, mode, size))
    assert np.array_equal(decode(path, 64, center_box), drafted)
    assert seen == [(math.ceil(1024 / 12), 64)]  # 768 / 64 = 12: the file is decoded at 1/8 scale
    with Image.open(path) as file:
        full = np.asarray(file.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR, box=(128, 0, 896, 768)))
    assert np.abs(drafted.astype(int) - full.astype(int)).mean() < 6


def test_small_images_get_cifars_pad_crop_flip_keyed_by_example(tmp_path):
    files = write_photos(tmp_path / "small", per_class=1, size=(16, 16))
    images = ImageViews(ImageFiles(files, [0, 1]), size=16, train=True, augment=True)
    center = decode(files[1], 16, center_box)
    assert np.array_equal(images.view(5, 1), pad_crop_flip_one(center, view_rng(5, 1)))


def test_a_corrupt_image_met_mid_run_is_one_line_naming_it(tmp_path, capsys):
    write_photos(tmp_path / "set" / "train")
    write_photos(tmp_path / "set" / "val", per_class=2)
    (tmp_path / "set" / "train" / "bee" / "9.jpg").write_bytes(b"\xff\xd8 truncated")  # sorted last: not the first batch
    args = ["run", "demo", "--set", "data={dataset: imagefolder, image_size: 16, batch_size: 4, workers: 1}",
            "--set", "data.augment=false", "--set", "model={name: small_cnn, options: {width: 4}}", "--data-dir", str(tmp_path / "set"), *tiny(width=None), "--out", str(tmp_path / "o")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "cannot read image" in err and "bee/9.jpg" in err and "remove or replace the file" in err
    assert "or set data.skip_unreadable=true to skip and count such images" in err


def test_with_skip_unreadable_a_corrupt_image_is_left_out_and_named_in_the_report(tmp_path, capsys):
    write_photos(tmp_path / "set" / "train")
    write_photos(tmp_path / "set" / "val", per_class=2)
    for broken in ("train/bee/9.jpg", "val/ant/0.jpg"):  # an extra file, and one of the photos
        (tmp_path / "set" / broken).write_bytes(b"\xff\xd8 truncated")
    args = ["run", "demo", "--set", "data={dataset: imagefolder, image_size: 16, batch_size: 4, workers: 1, "
            "skip_unreadable: true}", "--set", "model={name: small_cnn, options: {width: 4}}", "--data-dir",
            str(tmp_path / "set"), *tiny(width=None), "--out", str(tmp_path / "o")]
    assert main(args) == 0, capsys.readouterr().err
    seed_dir = SeedDirectory(tmp_path / "o" / "seed-0")
    names = [str(tmp_path / "set" / name) for name in ("train/bee/9.jpg", "val/ant/0.jpg")]
    assert seed_dir.unreadable == {"count": 2, "names": names}
    assert len(seed_dir.load_predictions("val")["teacher"].labels) == 3  # 4 validation images, one unreadable
    assert len(seed_dir.load_predictions("train")["teacher"].labels) == 10  # 10 photos and one unreadable extra
    report = (tmp_path / "o" / "report" / "report.md").read_text()
    assert "2 unreadable example(s) left out of training and scoring (data.skip_unreadable)" in report
    assert f"`{names[0]}`" in report


def test_a_batch_of_only_unreadable_images_stops_the_run_even_when_skipping(tmp_path):
    files = write_photos(tmp_path / "set", per_class=1)
    for path in files:
        path.write_bytes(b"not an image")
    batches = StreamBatches(ImageViews(ImageFiles(files, [0, 1]), size=16, train=False, augment=False), 2,
                            shuffle=False, workers=0, skip_unreadable=True)
    with pytest.raises(DataError, match=r"no image of its batch of 2 is readable, which data.skip_unreadable does "
                                        r"not skip: check the data"):
        next(iter(batches))


def test_a_changed_image_is_refused_on_resume_without_reading_the_images(tmp_path, capsys):
    write_photos(tmp_path / "set", per_class=6)
    args = ["run", "demo", "--set", "data={dataset: imagefolder, image_size: 16, batch_size: 4, val_size: 4}",
            "--set", "model={name: small_cnn, options: {width: 4}}", "--data-dir", str(tmp_path / "set"), *tiny(width=None), "--out", str(tmp_path / "o")]
    assert main(args) == 0
    before = snapshot(tmp_path / "o")
    write_photos(tmp_path / "other", per_class=6, size=(90, 60))
    (tmp_path / "set" / "ant" / "2.jpg").write_bytes((tmp_path / "other" / "ant" / "2.jpg").read_bytes())
    capsys.readouterr()
    assert main(["resume", str(tmp_path / "o"), "--set", "ban.ensembles={T+B: [teacher, BAN-1]}"]) == 1
    assert "(data.json differs)" in capsys.readouterr().err and snapshot(tmp_path / "o") == before


def test_normalisation_statistics_come_from_a_sample_of_center_views_and_are_recorded(tmp_path):
    write_photos(tmp_path / "set")
    data = build_dataset(DataConfig(dataset="imagefolder", path=str(tmp_path / "set"), val_size=2, image_size=16,
                                    normalize=True, workers=0))
    import json
    record = json.loads(data.files["imagefolder.json"])
    assert data.transform.mean == tuple(record["mean"]) and len(record["std"]) == 3
    assert all(0 < m < 1 for m in record["mean"]) and record["views"].startswith("philox-v1")


def test_a_negative_number_of_workers_is_refused_before_anything_is_written(tmp_path, capsys):
    write_photos(tmp_path / "set")
    assert main(["run", "demo", "--set", "data={dataset: imagefolder, workers: -1}", "--data-dir", str(tmp_path / "set"),
                 *tiny(width=None), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err == "banets: error: data.workers must be 0 or more, or null, got -1\n" and not (tmp_path / "o").exists()
