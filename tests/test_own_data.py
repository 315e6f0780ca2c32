"""Your own data, models, losses and teachers on the command line; trained weights out of a run.

The CLI on a tiny ``imagefolder`` and a tiny ``tensors`` file made here, ``--import`` of a module written here
(its model, dataset and loss used by name), ``timm:<name>``, ``model.teacher_checkpoint``, the safetensors
weights and ``banets.load``, and ``examples/own_model.py`` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import banets
from banets.cli import main
from banets.config import DataConfig, UserError
from banets.data.registry import DataError, build_dataset
from banets.runs import SeedDirectory
from tiny import tiny

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = tiny(width=None, extra_losses=True, controls=True)


def write_images(root: Path, classes=("cat", "dog", "owl"), per_class: int = 6, size=(20, 14)) -> Path:
    """Class sub-folders of small images in several formats and modes (RGB PNG, grayscale JPEG)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((size[1], size[0], 3)) * 80 + 80 * c).astype(np.uint8)
            image = Image.fromarray(pixels)
            if i % 2:
                image.convert("L").save(root / name / f"{i}.jpg")
            else:
                image.save(root / name / f"{i}.png")
    return root


def write_config(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_imagefolder_runs_through_the_cli_and_records_its_split(tmp_path, capsys):
    write_images(tmp_path / "pets")
    config = write_config(tmp_path / "pets.yaml", """\
        name: pets
        data: {dataset: imagefolder, val_size: 5, image_size: 12, batch_size: 4, eval_batch_size: 8}
        model: {name: small_cnn, options: {width: 4}}
        """)
    assert main(["run", str(config), "--data-dir", str(tmp_path / "pets"), "--out", str(tmp_path / "out"), *QUICK]) == 0
    assert "pets (small_cnn), val split" in capsys.readouterr().out
    seed_dir = tmp_path / "out" / "seed-0"
    recorded = json.loads((seed_dir / "imagefolder.json").read_text())
    assert recorded["classes"] == ["cat", "dog", "owl"] and len(recorded["val_files"]) == 5
    assert SeedDirectory(seed_dir).manifest["model_options"] == {"num_classes": 3, "in_channels": 3}
    data = build_dataset(DataConfig(dataset="imagefolder", path=str(tmp_path / "pets"), val_size=5, image_size=12))
    x, y, rows = next(iter(data.train))  # a streamed training batch: this process's rows and the global batch's
    assert x.dtype == torch.uint8 and x.shape[1:] == (3, 12, 12) and set(y.tolist()) <= {0, 1, 2} and rows == len(y)
    (tmp_path / "pets" / "owl" / "new.png").write_bytes((tmp_path / "pets" / "owl" / "0.png").read_bytes())
    assert main(["resume", str(tmp_path / "out")]) == 0  # finished: the folder is not read again
    (tmp_path / "pets" / "cat" / "broken.jpg").write_bytes(b"not an image")
    streamed = build_dataset(DataConfig(dataset="imagefolder", path=str(tmp_path / "pets"), val_size=5, workers=1))
    with pytest.raises(DataError, match=r"cannot read image .*broken.jpg \(UnidentifiedImageError\); remove or replace"):
        list(streamed.train_eval), list(streamed.val)  # read in a worker, raised here


def test_imagefolder_with_train_val_test_folders(tmp_path):
    for split in ("train", "val", "test"):
        write_images(tmp_path / "set" / split, per_class=2)
    data = build_dataset(DataConfig(dataset="imagefolder", path=str(tmp_path / "set"), image_size=8))
    assert [len(list(iter(d))[0][1]) for d in (data.train, data.val, data.test)] == [6, 6, 6]
    (tmp_path / "set" / "val" / "eel").mkdir()
    with pytest.raises(DataError, match="has other class sub-folders than"):
        build_dataset(DataConfig(dataset="imagefolder", path=str(tmp_path / "set")))


def test_an_imagefolder_one_level_too_high_or_too_low_or_of_one_class_is_refused_with_the_folder_to_give(tmp_path):
    for split in ("train", "val"):
        write_images(tmp_path / "datasets" / "pets" / split, per_class=2)
    write_images(tmp_path / "datasets" / "birds", classes=("owl", "eel"), per_class=2)
    build = lambda path: build_dataset(DataConfig(dataset="imagefolder", path=str(path)))
    with pytest.raises(DataError, match=r"pets holds a dataset's split folders .* give --data-dir .*datasets/pets$"):
        build(tmp_path / "datasets")
    with pytest.raises(DataError, match=r"train/cat has no class sub-folders; .*holds images itself: give its parent .*pets/train$"):
        build(tmp_path / "datasets" / "pets" / "train" / "cat")
    flat = tmp_path / "flat" / "train"
    flat.mkdir(parents=True)
    (tmp_path / "datasets" / "pets" / "train" / "cat" / "0.png").rename(flat / "0.png")
    with pytest.raises(DataError, match=r"flat/train has no class sub-folders; .*put each class's images in a sub-folder$"):
        build(tmp_path / "flat")
    (tmp_path / "datasets" / "birds" / "eel").rename(tmp_path / "eel")
    with pytest.raises(DataError, match=r"birds has one class sub-folder \(owl\); a classifier needs two or more"):
        build(tmp_path / "datasets" / "birds")


def test_a_relative_data_dir_is_recorded_absolute_so_resume_works_from_elsewhere(tmp_path, monkeypatch, capsys):
    gen = torch.Generator().manual_seed(0)
    torch.save({"x": torch.randn(40, 3, generator=gen), "y": torch.randint(0, 2, (40,), generator=gen)}, tmp_path / "d.pt")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "demo", "--set", "data={dataset: tensors, val_size: 10}", "--set", "model={name: mlp}",
                 "--data-dir", "d.pt", "--out", "o", *QUICK]) == 0
    assert SeedDirectory(tmp_path / "o" / "seed-0").config()["data"]["path"] == str(tmp_path / "d.pt")
    monkeypatch.chdir(tmp_path.parent)
    assert main(["resume", str(tmp_path / "o"), "--set", "ban.ensembles={T+B: [teacher, BAN-1]}"]) == 0
    torch.save({"x": torch.randn(40, 3, generator=gen), "y": torch.randint(0, 2, (40,), generator=gen)}, tmp_path / "e.pt")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "o").rglob("*"))
    assert main(["run", "demo", "--set", "data={dataset: tensors, val_size: 10}", "--set", "model={name: mlp}",
                 "--data-dir", str(tmp_path / "e.pt"), "--out", str(tmp_path / "o"), *tiny(width=None, extra_losses=True, controls=True, seeds="1")]) == 1
    err = capsys.readouterr().err
    assert "holds seed-0 of another data (data.json differs); a new seed must repeat its experiment" in err
    assert len(err.splitlines()) == 1 and sorted(p.relative_to(tmp_path) for p in (tmp_path / "o").rglob("*")) == before


def test_tensors_files_pt_and_npz_with_separate_validation(tmp_path, capsys):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(80, 6, generator=gen), torch.randint(0, 3, (80,), generator=gen)
    torch.save({"x": x[:60], "y": y[:60]}, tmp_path / "train.pt")
    np.savez(tmp_path / "val.npz", x=x[60:].numpy(), y=y[60:].numpy())
    config = write_config(tmp_path / "mine.yaml", """\
        data: {dataset: tensors, batch_size: 16}
        model: {name: mlp, options: {hidden: [8]}}
        """)
    args = ["run", str(config), "--data-dir", str(tmp_path / "train.pt"), "--set", f"data.val_path={tmp_path / 'val.npz'}",
            "--out", str(tmp_path / "out"), *QUICK]
    assert main(args) == 0
    predictions = torch.load(tmp_path / "out" / "seed-0" / "predictions" / "val.pt", weights_only=True)["teacher"]
    assert torch.equal(predictions["labels"], y[60:])  # the separate file is the validation split, in order
    manifest = SeedDirectory(tmp_path / "out" / "seed-0").manifest
    assert manifest["model_options"] == {"num_classes": 3, "in_features": 6}
    carved = build_dataset(DataConfig(dataset="tensors", path=str(tmp_path / "train.pt"), val_size=10))
    assert sum(len(b[1]) for b in carved.val) == 10 and sum(len(b[1]) for b in carved.train) == 50 and carved.test is None


@pytest.mark.parametrize("content, message", [
    ({"inputs": torch.zeros(3, 2), "y": torch.zeros(3)}, "must hold x and y (found inputs, y)"),
    ({"x": torch.zeros(3, 2), "y": torch.zeros(4, dtype=torch.long)}, "must be arrays with as many rows (3 vs 4)"),
    ({"x": torch.zeros(3, 2), "y": torch.zeros(3)}, "are torch.float32; class labels must be integers"),
    (b"garbage", "cannot read"),
])
def test_a_bad_tensors_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_dataset(DataConfig(dataset="tensors", path=str(path), val_size=1))


def test_options_a_dataset_does_not_use_are_refused():
    with pytest.raises(DataError, match=r"dataset 'digits' does not use data.max_vocab; remove it"):
        build_dataset(DataConfig(dataset="digits", val_size=360, max_vocab=50))
    with pytest.raises(DataError, match=r"dataset 'tensors' does not use data.augment, data.image_size; remove them"):
        build_dataset(DataConfig(dataset="tensors", path="x.pt", augment=False, image_size=8))
    with pytest.raises(DataError, match="unknown dataset 'imagefolders'; did you mean 'imagefolder'?"):
        build_dataset(DataConfig(dataset="imagefolders"))


def test_train_subset_keeps_the_first_examples_of_digits():
    data = build_dataset(DataConfig(dataset="digits", val_size=360, train_subset=100, batch_size=1000))
    assert len(next(iter(data.train))[1]) == 100
    with pytest.raises(DataError, match="data.train_subset=5000 is more than the 1077 digits training images"):
        build_dataset(DataConfig(dataset="digits", val_size=360, train_subset=5000))


USER_MODULE = '''
import torch
import torch.nn as nn
import torch.nn.functional as F

from banets import losses, register_model
from banets.config import DataConfig
from banets.data.batches import TensorBatches
from banets.data.registry import Data, register_dataset


@register_model("two_layer")
def two_layer(in_features: int = 4, num_classes: int = 2, width: int = 8) -> nn.Module:
    """A two-layer perceptron of the user's."""
    return nn.Sequential(nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, num_classes))


@register_dataset("xor", options={"train_subset"})
def xor(cfg: DataConfig) -> Data:
    """Noisy XOR in four dimensions."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.train_subset or 200, 4, generator=gen)
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()
    return Data(train=TensorBatches(x[:150], y[:150], batch_size=cfg.batch_size, shuffle=True),
                val=TensorBatches(x[150:], y[150:], batch_size=cfg.eval_batch_size),
                model_options={"in_features": 4, "num_classes": 2})


@losses.register("hinge_ban")
def hinge_ban(student_logits, teacher_logits, labels, margin: float = 1.0):
    """BAN plus a multi-class hinge on the labels."""
    return losses.ban(student_logits, teacher_logits, labels) + F.multi_margin_loss(student_logits.float(), labels, margin=margin)
'''


def test_import_makes_a_users_model_dataset_and_loss_usable_by_name(tmp_path):
    (tmp_path / "mine.py").write_text(USER_MODULE)
    command = [sys.executable, "-m", "banets", "run", "demo", "--import", "mine", "--set", "data={dataset: xor}",
               "--set", "model={name: two_layer, options: {width: 16}}", "--set", "ban.loss=hinge_ban",
               "--set", "ban.loss_options={margin: 0.5}", "--set", "ban.extra_losses=[]", "--set", "ban.controls={}",
               "--out", "out", *QUICK]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "\nHINGE_BAN-1  gen 1, hinge_ban, mar" in done.stdout  # the summary table names it in full
    config = SeedDirectory(tmp_path / "out" / "seed-0").config()
    assert config["model"]["name"] == "two_layer" and config["ban"]["loss"] == "hinge_ban"
    assert json.loads((tmp_path / "out" / "seed-0" / "manifest.json").read_text())["models"]["HINGE_BAN-1"]["status"] == "done"
    listed = subprocess.run([sys.executable, "-m", "banets", "models", "two*", "--import", "mine"], cwd=tmp_path,
                            capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert "two_layer" in listed.stdout and "A two-layer perceptron of the user's." in listed.stdout
    (tmp_path / "xor.yaml").write_text("imports: [mine]\ndata: {dataset: xor}\nmodel: {name: two_layer}\n"
                                       "optim: {epochs: 1, progress: none}\nban: {generations: 1}\n")
    by_config = subprocess.run([sys.executable, "-m", "banets", "run", "xor.yaml", "--out", "o3"], cwd=tmp_path,
                               capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert by_config.returncode == 0, by_config.stderr[-2000:]  # the config's imports: key does what --import does
    missing = subprocess.run([sys.executable, "-m", "banets", "run", "demo", "--import", "nothere", "--out", "o2"], cwd=tmp_path,
                             capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert missing.returncode == 1 and "cannot import 'nothere'" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "o2").exists()


def test_timm_models_by_name_when_timm_is_there(monkeypatch):
    built = {}

    def create_model(name, **kwargs):
        built.update(name=name, **kwargs)
        return torch.nn.Linear(kwargs["in_chans"], kwargs["num_classes"])

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    model = banets.experiment.model_factory("timm:resnet18", {"drop_rate": 0.1}, {"num_classes": 10, "in_channels": 3,
                                                                                   "in_features": 3072})()
    assert built == {"name": "resnet18", "num_classes": 10, "in_chans": 3, "drop_rate": 0.1}  # in_features not passed
    assert isinstance(model, torch.nn.Linear)


def test_timm_missing_is_one_line_naming_the_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    assert main(["run", "demo", "--set", "model={name: 'timm:resnet18'}", "--out", str(tmp_path / "o"), *QUICK]) == 1
    err = capsys.readouterr().err
    assert "model 'timm:resnet18' needs timm" in err and "pip install timm" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_a_timm_that_fails_at_import_is_one_line_naming_torchvision(monkeypatch, tmp_path, capsys):
    """What these machines show: torchvision built for another torch fails when timm imports it."""
    (tmp_path / "site" / "timm").mkdir(parents=True)
    (tmp_path / "site" / "timm" / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "timm", raising=False)
    assert main(["run", "demo", "--set", "model={name: 'timm:resnet18'}", "--out", str(tmp_path / "o"), *QUICK]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and not (tmp_path / "o").exists()
    assert "timm is installed but fails at import (operator torchvision::nms does not exist)" in err
    assert "torchvision built for this torch" in err


def test_a_real_timm_model_trains_when_timm_is_installed(tmp_path):
    pytest.importorskip("timm")
    assert main(["run", "demo", "--set", "model={name: 'timm:resnet10t'}", "--set", "data.batch_size=32",
                 "--out", str(tmp_path / "o"), *QUICK, "--set", "ban.extra_losses=[]", "--set", "ban.controls={}"]) == 0


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    torch.set_num_threads(1)
    assert main(["run", "demo", "--set", "model.options.width=4", "--set", "ban.extra_losses=[]", "--set", "ban.controls={}",
                 "--out", str(out), *QUICK]) == 0
    return out


def test_weights_come_out_as_safetensors_and_load_rebuilds_the_model(digits_run):
    from safetensors.torch import load_file

    seed_dir = digits_run / "seed-0"
    for name in ("teacher", "BAN-1"):
        weights = load_file(str(seed_dir / "weights" / f"{name}.safetensors"))
        checkpoint = torch.load(seed_dir / "checkpoints" / f"{name}.pt", weights_only=True)["model"]
        assert weights.keys() == checkpoint.keys() and all(torch.equal(weights[k], checkpoint[k]) for k in weights)
    model = banets.load(digits_run, "BAN-1")
    assert type(model).__name__ == "SmallCNN" and not model.training
    assert all(torch.equal(v, checkpoint[k]) for k, v in model.state_dict().items())
    with pytest.raises(UserError, match="has no finished model 'BAN-9'; its finished models are teacher, BAN-1"):
        banets.load(digits_run, "BAN-9")


def test_load_refuses_a_damaged_checkpoint_or_an_edited_config_naming_the_fix(digits_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    path = run / "seed-0" / "checkpoints" / "BAN-1.pt"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match=r"does not match its recorded sha256 .*trains BAN-1 again from its recorded seed"):
        banets.load(run, "BAN-1")
    config = run / "seed-0" / "config.yaml"
    config.write_text(config.read_text().replace("width: 4", "width: 8"))
    with pytest.raises(UserError, match=r"config.yaml is not the one the run wrote \(edited or damaged\)"):
        banets.load(run, "teacher")


@pytest.mark.parametrize("form", ["safetensors", "checkpoint", "state_dict"])
def test_a_trained_teacher_replaces_training_the_teacher(digits_run, tmp_path, form):
    seed_dir = digits_run / "seed-0"
    path = {"safetensors": seed_dir / "weights" / "teacher.safetensors", "checkpoint": seed_dir / "checkpoints" / "teacher.pt",
            "state_dict": tmp_path / "teacher.pt"}[form]
    if form == "state_dict":
        torch.save(banets.load(digits_run, "teacher").state_dict(), path)
    out = tmp_path / "student"
    assert main(["run", "demo", "--set", "model.options.width=4", "--set", "ban.extra_losses=[]", "--set", "ban.controls={}",
                 "--set", f"model.teacher_checkpoint={path}", "--out", str(out), *QUICK]) == 0
    entry = SeedDirectory(out / "seed-0").manifest["models"]["teacher"]
    assert entry["epoch"] == 0 and not [line for line in (out / "seed-0" / "metrics.jsonl").read_text().splitlines()
                                         if '"teacher"' in line]  # not trained
    given, original = banets.load(out, "teacher").state_dict(), banets.load(digits_run, "teacher").state_dict()
    assert all(torch.equal(given[k], original[k]) for k in original)


def test_a_teacher_checkpoint_is_recorded_absolute_and_may_move_for_every_seed_but_not_change_on_resume(digits_run, tmp_path, monkeypatch, capsys):
    torch.save(banets.load(digits_run, "teacher").state_dict(), tmp_path / "t.pt")
    torch.save(banets.load(digits_run, "BAN-1").state_dict(), tmp_path / "other.pt")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "demo", "--set", "model.options.width=4", "--set", "ban.extra_losses=[]", "--set", "ban.controls={}",
                 "--set", "model.teacher_checkpoint=t.pt", "--out", "student", *tiny(width=None, extra_losses=True, controls=True, seeds="0,1")]) == 0
    out = tmp_path / "student"
    assert SeedDirectory(out / "seed-0").config()["model"]["teacher_checkpoint"] == str(tmp_path / "t.pt")
    (tmp_path / "t.pt").rename(tmp_path / "moved.pt")
    monkeypatch.chdir(tmp_path.parent)
    ensembles = ["--set", "ban.ensembles={T+B: [teacher, BAN-1]}"]
    assert main(["resume", str(out), *ensembles]) == 1 and f"no file {tmp_path / 't.pt'}" in capsys.readouterr().err
    assert main(["resume", str(out), *ensembles, "--set", f"model.teacher_checkpoint={tmp_path / 'other.pt'}"]) == 1
    assert "differs from the one this run was started with" in capsys.readouterr().err
    assert main(["resume", str(out), *ensembles, "--set", f"model.teacher_checkpoint={tmp_path / 'moved.pt'}"]) == 0
    assert main(["run", "demo", "--set", "model.options.width=4", "--set", "ban.extra_losses=[]", "--set", "ban.controls={}",
                 "--set", f"model.teacher_checkpoint={tmp_path / 'other.pt'}", "--out", str(out), *tiny(width=None, extra_losses=True, controls=True, seeds="2")]) == 1
    assert "holds seed-0 of another config (differs in model.teacher_checkpoint" in capsys.readouterr().err  # a new seed
    assert main(["resume", str(digits_run), "--set", f"model.teacher_checkpoint={tmp_path / 'moved.pt'}"]) == 1
    assert "differs in model.teacher_checkpoint: model.teacher_checkpoint was None" in capsys.readouterr().err


def test_a_teacher_checkpoint_of_integer_weights_is_refused(digits_run, tmp_path, capsys):
    weights = banets.load(digits_run, "teacher").state_dict()
    torch.save({k: v.round().long() if v.is_floating_point() else v for k, v in weights.items()}, tmp_path / "ints.pt")
    assert main(["run", "demo", "--set", "model.options.width=4", "--set", f"model.teacher_checkpoint={tmp_path / 'ints.pt'}",
                 "--out", str(tmp_path / "o"), *QUICK]) == 1
    assert "of another kind of number (e.g. 0.weight torch.int64 vs torch.float32)" in capsys.readouterr().err


def test_a_teacher_checkpoint_of_another_architecture_is_refused_before_training(digits_run, tmp_path, capsys):
    path = digits_run / "seed-0" / "weights" / "teacher.safetensors"
    assert main(["run", "demo", "--set", "model.options.width=8", "--set", f"model.teacher_checkpoint={path}",
                 "--out", str(tmp_path / "o"), *QUICK]) == 1
    err = capsys.readouterr().err
    assert "does not fit the teacher SmallCNN" in err and "of another shape (e.g. 0.weight (4, 1, 3, 3) vs (8, 1, 3, 3))" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


def test_the_own_model_example_runs_end_to_end(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "own_model.py"), "--out", str(tmp_path / "own"),
                           "--epochs", "1", "--rows", "200"], capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "custom (python:ResidualMLP), val split, mean ± SD over 2 seeds" in done.stdout and "Verdict:" in done.stdout
    assert main(["report", str(tmp_path / "own")]) == 0
