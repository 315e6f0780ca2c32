"""A run directory is data: what someone else wrote into one (a crafted config, a manifest, links, planted modules)
makes banets run no code and touch no file outside the run; a kill during the report write is no dead end; and
the checks see every batch, label and run they claim to. Each attack asserts the one-line message, the exit
status, that nothing ran and that nothing outside changed."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import banets
from banets.cli import main
from banets.runs import SeedDirectory, sha256_of
from tiny import LM, TINY, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")
PAYLOAD = "from pathlib import Path\nPath({marker!r}).write_text('ran')\n\ndef loss(s, t, y):\n    return s.sum()\n"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("finished")
    assert main(["run", "demo", *TINY, "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture
def run(finished, tmp_path, monkeypatch) -> Path:
    """A copy of the finished run in the current folder, its evaluation undone, so that a resume has work to do
    (it builds the data and models, evaluates, writes predictions, results and the report)."""
    shutil.copytree(finished, tmp_path / "run")
    (tmp_path / "run" / "seed-0" / "results.json").unlink()
    monkeypatch.chdir(tmp_path)
    return tmp_path / "run"


def rewrite(seed_dir: Path, config_edit=None, manifest_edit=None) -> None:
    """Edit a run as an attacker would: config.yaml and the digest the manifest keeps of it, or the manifest."""
    manifest = json.loads((seed_dir / "manifest.json").read_text())
    if config_edit is not None:
        config = yaml.safe_load((seed_dir / "config.yaml").read_text())
        config_edit(config)
        text = yaml.safe_dump(config, sort_keys=False)
        (seed_dir / "config.yaml").write_text(text)
        manifest["config_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    if manifest_edit is not None:
        manifest_edit(manifest)
    (seed_dir / "manifest.json").write_text(json.dumps(manifest))


def one_line_error(capsys, *parts: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("banets: error: ") and "\n" not in err and "Traceback" not in err, err
    for part in parts:
        assert part in err, err
    return err


# -- code named by a run directory -------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["inside the run", "the current folder on the import path", "a namespace in the run"])
def test_resume_imports_no_module_the_run_names(run, tmp_path, monkeypatch, capsys, where):
    marker = tmp_path / "marker"
    if where == "inside the run":
        (run / "payload.py").write_text(PAYLOAD.format(marker=str(marker)))
        monkeypatch.syspath_prepend(str(run))  # even found on the path, a module inside the run is refused
        name = "payload"
    elif where == "the current folder on the import path":
        (tmp_path / "payload.py").write_text(PAYLOAD.format(marker=str(marker)))
        monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m banets` puts it
        name = "payload"
    else:
        (run / "seed-0" / "payload.py").write_text(PAYLOAD.format(marker=str(marker)))
        monkeypatch.syspath_prepend(str(tmp_path))
        name = "run.seed-0.payload"
    rewrite(run / "seed-0", config_edit=lambda c: c.update(imports=[name]))
    before = snapshot(run)
    assert main(["resume", str(run)]) == 1
    one_line_error(capsys, f"records the module {name!r}; banets imports no code that an output folder names: if you "
                           f"trust it, give it again with --import {name}, or pass --trust-imports")
    assert not marker.exists() and name not in sys.modules
    assert snapshot(run) == before


def test_a_module_function_loss_the_run_names_is_not_imported(run, tmp_path, capsys):
    marker = tmp_path / "marker"
    (run / "evil_loss.py").write_text(PAYLOAD.format(marker=str(marker)))
    rewrite(run / "seed-0", config_edit=lambda c: c["ban"].update(loss="evil_loss:loss"))
    assert main(["resume", str(run)]) == 1
    one_line_error(capsys, "records the module 'evil_loss'; banets imports no code")
    assert not marker.exists()


@pytest.mark.parametrize("edit, module", [
    (lambda c: c.update(imports=["this"]), "this"),  # installed, and acts when imported: installed is no vouching
    (lambda c: c["model"].update(name="timm:resnet18", options={"pretrained": True}), "timm"),  # timm reads weights
])
def test_an_installed_module_the_run_names_is_not_imported_either(run, capsys, edit, module):
    rewrite(run / "seed-0", config_edit=edit)
    assert main(["resume", str(run)]) == 1
    one_line_error(capsys, f"records the module {module!r}; banets imports no code", f"--import {module}")
    assert "this" not in sys.modules


def test_a_run_claiming_to_be_made_from_python_imports_nothing(run, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "marker"
    (tmp_path / "evil.py").write_text(PAYLOAD.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    rewrite(run / "seed-0", config_edit=lambda c: (c.update(imports=["evil"]), c["data"].update(dataset="python")))
    assert main(["resume", str(run), "--trust-imports"]) == 1
    one_line_error(capsys, "this run was made from Python with its own model and data")
    assert not marker.exists()


def test_a_recorded_download_fetches_nothing_on_resume(run):
    rewrite(run / "seed-0", config_edit=lambda c: c["data"].update(download=True))  # digits would refuse the option
    assert main(["resume", str(run)]) == 0


def test_a_recorded_module_runs_when_the_user_says_so(run, tmp_path, monkeypatch, capsys):
    (tmp_path / "helper_registers.py").write_text(f"from pathlib import Path\nPath({str(tmp_path / 'm')!r}).write_text('x')\n")
    rewrite(run / "seed-0", config_edit=lambda c: c.update(imports=["helper_registers"]))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "helper_registers", raising=False)
    assert main(["resume", str(run), "--import", "helper_registers"]) == 0  # given again: the user's word
    assert (tmp_path / "m").read_text() == "x" and sys.path[-1] == os.getcwd()  # the current folder searched last
    (run / "seed-0" / "results.json").unlink()
    monkeypatch.delitem(sys.modules, "helper_registers")
    (tmp_path / "m").unlink()
    assert main(["resume", str(run), "--trust-imports"]) == 0  # trusted: found on the path as it is
    assert (tmp_path / "m").exists()


def test_load_imports_no_module_the_run_names_unless_trusted(run, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    (tmp_path / "payload_load.py").write_text(PAYLOAD.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    rewrite(run / "seed-0", config_edit=lambda c: c.update(imports=["payload_load"]))
    with pytest.raises(banets.config.UserError, match=r"records the module 'payload_load'; .* if you trust it, import "
                                                      r"payload_load yourself before calling load, or pass trust_code=True"):
        banets.load(run, "teacher")
    assert not marker.exists()
    monkeypatch.delitem(sys.modules, "payload_load", raising=False)
    assert isinstance(banets.load(run, "teacher", trust_code=True), torch.nn.Module) and marker.exists()
    with pytest.raises(banets.config.UserError, match=r"load takes one model name such as 'teacher'.*not \['teacher'\]"):
        banets.load(run, ["teacher"])


def test_modules_in_the_current_folder_do_not_shadow_installed_packages(finished, tmp_path):
    """The console script, as a user runs it: a matplotlib.py and a safetensors.py in the current folder stay
    unimported, while a module given with --import is still found there."""
    shutil.copytree(finished, tmp_path / "run")
    (tmp_path / "run" / "seed-0" / "results.json").unlink()
    for name in ("matplotlib", "safetensors", "yaml"):
        (tmp_path / f"{name}.py").write_text(f"open({str(tmp_path / ('shadowed-' + name))!r}, 'w').write('ran')\n")
    (tmp_path / "mine.py").write_text(f"open({str(tmp_path / 'mine-ran')!r}, 'w').write('ran')\n")
    script = Path(sys.executable).parent / "banets"
    command = [str(script)] if script.exists() else [sys.executable, "-c", "import sys; from banets.cli import main; sys.exit(main())"]
    result = subprocess.run([*command, "resume", "run", "--import", "mine"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mine-ran").exists() and not list(tmp_path.glob("shadowed-*"))
    assert (tmp_path / "run" / "report" / "report.md").is_file()


# -- paths that leave the run --------------------------------------------------------------------------------


RECORDED_CHECKPOINTS = {  # what a manifest records of a model's checkpoints, and how the refusal names it
    "epoch": (lambda path: {"epoch_checkpoints": [{"path": path, "sha256": "0" * 64, "epoch": 1}]},
              "teacher's epoch checkpoint is recorded as"),
    # removed by a resume once its epoch ends, so the name it removes must stay inside
    "inside an epoch": (lambda path: {"step_checkpoint": {"path": path, "sha256": "0" * 64, "epoch": 0, "step": 3}},
                        "teacher's checkpoint inside an epoch is recorded as"),
}


@pytest.mark.parametrize("kind", list(RECORDED_CHECKPOINTS))
@pytest.mark.parametrize("path", ["../../victim/important.txt", "/ABS/important.txt", "checkpoints/../../../victim/important.txt"])
def test_recorded_paths_that_leave_the_run_are_refused_and_nothing_outside_is_deleted(run, tmp_path, capsys, path, kind):
    victim = tmp_path / "victim" / "important.txt"
    victim.parent.mkdir()
    victim.write_text("keep me")
    path = path.replace("/ABS", str(tmp_path / "victim"))
    record, named = RECORDED_CHECKPOINTS[kind]
    rewrite(run / "seed-0", manifest_edit=lambda m: m["models"]["teacher"].update(status="running", **record(path)))
    before = snapshot(run)
    assert main(["resume", str(run)]) == 1
    one_line_error(capsys, "is not a banets manifest", named, "outside its seed directory")
    assert victim.read_text() == "keep me" and snapshot(run) == before


def test_prediction_splits_that_leave_the_run_are_refused(run, capsys):
    rewrite(run / "seed-0", manifest_edit=lambda m: m.update(predictions={"../../../outside": "0" * 64}))
    assert main(["resume", str(run)]) == 1
    one_line_error(capsys, "its predictions name splits ['../../../outside'], not plain names")


def test_a_report_folder_keeps_temporary_files_it_did_not_write(finished, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / ".notes.tmp").write_text("my notes")
    assert main(["report", str(finished), "--out", str(tmp_path / "mine")]) == 1
    one_line_error(capsys, "holds files a banets report did not write (.notes.tmp)")
    assert (tmp_path / "mine" / ".notes.tmp").read_text() == "my notes"


def test_options_in_files_outside_the_run_are_not_read_by_load(run, tmp_path):
    (tmp_path / "secret.json").write_text('{"words": ["a"]}')
    rewrite(run / "seed-0", manifest_edit=lambda m: m.update(options_in_files={"words": "../../secret.json"}))
    with pytest.raises(banets.config.UserError, match=r"options_in_files is recorded as '../../secret.json', a path outside"):
        banets.load(run, "teacher")


@pytest.mark.parametrize("entry", ["checkpoints", "metrics.jsonl", "predictions", "weights", "tensorboard", "manifest.json",
                                   "seed", "report", "report/report.md"])
def test_links_in_a_run_are_refused_and_nothing_outside_is_written(run, tmp_path, capsys, entry):
    outside = tmp_path / "outside"
    target = run / "seed-0" if entry == "seed" else run / entry if entry.startswith("report") else run / "seed-0" / entry
    shutil.move(str(target), str(outside))
    target.symlink_to(outside, target_is_directory=outside.is_dir())
    before = snapshot(outside) if outside.is_dir() else sha256_of(outside)
    assert main(["report" if entry.startswith("report") else "resume", str(run)]) == 1
    one_line_error(capsys, "is a symbolic link")
    assert (snapshot(outside) if outside.is_dir() else sha256_of(outside)) == before


# -- a kill while the report is written ----------------------------------------------------------------------


KILLER = """
import os, signal, sys
import matplotlib.figure
import banets.runs
from banets.cli import main
mode, n = sys.argv[1], int(sys.argv[2])
calls = [0]
def kill_on_nth(original):
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            if mode == "savefig":
                open(args[1], "wb").write(b"\\x89PNG half")
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    return wrapped
if mode == "fsync":
    banets.runs.os.fsync = kill_on_nth(os.fsync)
else:
    matplotlib.figure.Figure.savefig = kill_on_nth(matplotlib.figure.Figure.savefig)
sys.exit(main(["report", sys.argv[3]]))
"""


@pytest.mark.parametrize("fresh, mode, n", [(True, "fsync", 2), (True, "fsync", 5), (False, "fsync", 3), (True, "savefig", 2)])
def test_a_report_killed_while_writing_is_written_again_by_the_next_command(finished, tmp_path, capsys, fresh, mode, n):
    shutil.copytree(finished, tmp_path / "run")
    if fresh:  # the first report into the folder, else one replacing the run's report
        shutil.rmtree(tmp_path / "run" / "report")
    killed = subprocess.run([sys.executable, "-c", KILLER, mode, str(n), str(tmp_path / "run")], capture_output=True,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert main(["report", str(tmp_path / "run")]) == 0
    assert main(["resume", str(tmp_path / "run")]) == 0
    report = tmp_path / "run" / "report"
    assert not [p for p in report.iterdir() if p.name.endswith(".tmp")]
    assert set(json.loads((report / ".banets-report").read_text())) == {p.name for p in report.iterdir()} - {".banets-report"}
    assert "Verdict" in (report / "report.md").read_text()


# -- checks that see everything --------------------------------------------------------------------------------


def test_nan_in_a_later_validation_batch_is_an_error_naming_the_split_and_batch(blobs, mlp_fn, tiny_config):
    (x, y), val, _ = blobs
    batches = [(val[0][i:i + 32].clone(), val[1][i:i + 32]) for i in range(0, 128, 32)]
    batches[2][0][5, 3] = float("nan")
    with pytest.raises(banets.config.UserError, match=r"batch 2 of the validation data gives NaN or \+inf outputs"):
        banets.born_again(mlp_fn, (x, y), batches, optim=tiny_config, ban=banets.BornAgainConfig(generations=1))


def test_minus_inf_logits_that_mask_a_class_are_not_taken_for_nan(tiny_config):
    from banets.engine import evaluate

    class Masked(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x[:, :3], torch.full((len(x), 1), float("-inf"))], dim=1)

    predictions = evaluate(Masked(), [(torch.randn(8, 4), torch.randint(0, 3, (8,)))], torch.device("cpu"), tiny_config)
    assert torch.isfinite(predictions.nll).all()


def test_the_teacher_cache_checks_every_batch_it_replays():
    from banets.teacher_cache import CachedTeacher, CacheError

    cached = CachedTeacher(torch.nn.Embedding(50, 7), batches_per_pass=3)
    batches = [torch.randint(0, 50, (4, 5), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for batch in batches:
        cached(batch)
    cached.reset_state()
    for batch in batches:
        cached(batch)
    cached.reset_state()  # the same batches: replayed and accepted
    for batch in (batches[0], batches[2].flip(0), batches[1]):  # later batches reordered, shapes kept
        cached(batch)
    with pytest.raises(CacheError, match=r"batch 1 of the last epoch differs from the first epoch's batch 1"):
        cached.reset_state()


def test_a_stray_large_label_and_a_negative_label_are_named(tmp_path, capsys):
    x, y = torch.randn(60, 5), torch.randint(0, 3, (60,))
    y[7] = 2000
    torch.save({"x": x, "y": y}, tmp_path / "big.pt")
    assert main(["run", "demo", *TINY, "--set", "data.dataset=tensors", "--set", "model.name=mlp",
                 "--set", "model.options={}", "--set", "data.val_size=10", "--data-dir", str(tmp_path / "big.pt"), "--out", str(tmp_path / "o")]) == 1
    one_line_error(capsys, "the largest label is 2000, so 2001 classes, more than the 60 examples", "(1997 classes would have none)",
                   "relabel the 4 classes used as 0 .. 3")
    y[7] = 5
    torch.save({"x": x, "y": y}, tmp_path / "gap.pt")
    with pytest.warns(UserWarning, match=r"the labels run 0 .. 5 but 2 of those 6 classes have no example"):
        from banets.config import DataConfig
        from banets.data.registry import build_dataset
        build_dataset(DataConfig(dataset="tensors", path=str(tmp_path / "gap.pt"), val_size=10))
    from banets.data.tensors import class_count
    assert class_count(torch.arange(100), 60) == 100  # a small subset of many classes, each used: no refusal
    y[7] = -1
    torch.save({"x": x, "y": y}, tmp_path / "neg.pt")
    assert main(["run", "demo", *TINY, "--set", "data.dataset=tensors", "--set", "model.name=mlp",
                 "--set", "model.options={}", "--set", "data.val_size=10", "--data-dir", str(tmp_path / "neg.pt"), "--out", str(tmp_path / "o")]) == 1
    one_line_error(capsys, "the labels include -1; class labels are 0 .. classes - 1, so relabel them")
    assert not (tmp_path / "o").exists()


def test_reports_average_only_runs_of_one_config_and_data(finished, tmp_path, capsys):
    shutil.copytree(finished, tmp_path / "a")
    assert main(["run", "demo", *TINY, "--set", "optim.epochs=2", "--set", "data.val_size=200",
                 "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    with pytest.warns(UserWarning, match=r"demo \(2\) .* differs from demo .* in data.val_size, optim.epochs; "
                                         r"reported as a separate experiment"):
        assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "r")]) == 0
    report = (tmp_path / "r" / "report.md").read_text()
    assert "demo (2)" in report and "separate experiment" in report and "over 2 seeds" not in report


# -- errors that used to be tracebacks, and messages that named the wrong cause --------------------------------


def test_a_full_disk_names_the_folder_and_the_bytes_and_a_resume_after_freeing_space_finishes(tmp_path, monkeypatch, capsys):
    fsync, calls = os.fsync, [0]

    def full_at_the_tenth(fd):
        calls[0] += 1
        if calls[0] == 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full_at_the_tenth)
    assert main(["run", "demo", *TINY, "--out", str(tmp_path / "o")]) == 1
    one_line_error(capsys, "no space left on the device holding", "bytes needed); free space there")
    monkeypatch.setattr(os, "fsync", fsync)
    assert main(["resume", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "seed-0" / "results.json").is_file()


@pytest.mark.parametrize("code, words", [(errno.EROFS, "copy the run or report folder to a place you can write"),
                                         (errno.EACCES, "copy the run or report folder to a place you can write")])
def test_a_read_only_run_or_report_folder_is_one_line(finished, tmp_path, monkeypatch, capsys, code, words):
    shutil.copytree(finished, tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "report")

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    assert main(["report", str(tmp_path / "run")]) == 1
    one_line_error(capsys, words)


def test_a_name_too_long_is_one_line(tmp_path, capsys):
    assert main(["run", "demo", *TINY, "--out", str(tmp_path / ("x" * 300))]) == 1
    one_line_error(capsys, "is too long for the file system; choose a shorter --out")


def test_weights_replaced_by_a_file_is_one_line(run, capsys):
    (run / "seed-0" / "results.json").write_text("{}")
    shutil.rmtree(run / "seed-0" / "weights")
    (run / "seed-0" / "weights").write_text("not a folder")
    assert main(["resume", str(run)]) == 1
    one_line_error(capsys, "weights", "a file stands where banets keeps a folder")


def test_a_module_that_exits_at_import_is_named(tmp_path, monkeypatch, capsys):
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert main(["models", "--import", "exits_at_import"]) == 1
    one_line_error(capsys, "importing 'exits_at_import' called sys.exit(3) at", "exits_at_import.py:2")


def test_a_dataset_builder_returning_none_is_named(tmp_path, capsys):
    from banets.config import DataConfig
    from banets.data.registry import DataError, build_dataset, list_datasets, register_dataset

    register_dataset("returns_none_here", options=set())(lambda cfg: None)
    try:
        with pytest.raises(DataError, match=r"dataset 'returns_none_here' returned NoneType, not banets.data.Data"):
            build_dataset(DataConfig(dataset="returns_none_here"))
    finally:
        list_datasets().pop("returns_none_here", None)


def test_a_decompression_bomb_names_the_file_and_the_limit(tmp_path, monkeypatch):
    from PIL import Image

    from banets.data.stream import center_box, decode
    from banets.data.registry import DataError

    Image.new("RGB", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: more than twice the limit
    with pytest.raises(DataError, match=r"bomb.png has more pixels than PIL.Image.MAX_IMAGE_PIXELS \(1,000\)"):
        decode(tmp_path / "bomb.png", 32, center_box)


def test_a_damaged_vocabulary_is_named_as_damaged_not_as_other_data(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "valid", "test"):
        (corpus / f"c.{split}.txt").write_text(" ".join(f"w{i % 37}" for i in range(300)) + "\n")
    assert main(["run", "wap_quick", *LM, "--data-dir", str(corpus), "--out", str(tmp_path / "o")]) == 0
    vocab = tmp_path / "o" / "seed-0" / "vocab.json"
    vocab.write_text(vocab.read_text().replace("w1", "w9"))
    (tmp_path / "o" / "seed-0" / "results.json").unlink()
    capsys.readouterr()
    assert main(["resume", str(tmp_path / "o")]) == 1
    one_line_error(capsys, "vocab.json is damaged or edited", "restore it from a copy of the run")


def test_resuming_a_seed_folder_names_the_run_folder(finished, capsys):
    assert main(["resume", str(finished / "seed-0")]) == 1
    one_line_error(capsys, "is one seed of a run; pass the run's folder", str(finished.absolute()))


def test_a_file_system_error_without_a_file_name_names_no_folder():
    from banets.runs import os_error_message

    assert os_error_message(OSError(errno.ENOSPC, "No space left on device")).startswith("no space left on a device;")


def test_tensorboard_that_cannot_write_is_turned_off_with_a_warning_not_the_run(tmp_path):
    from banets.runs import TensorBoardLog

    (tmp_path / "tensorboard").write_text("a file where the folder goes")
    log = TensorBoardLog(tmp_path / "tensorboard")
    with pytest.warns(UserWarning, match=r"tensorboard logging off: cannot use .*tensorboard"):
        log.log("teacher", {"epoch": 0, "train_loss": 1.0})
    assert log.off
    log.log("teacher", {"epoch": 1, "train_loss": 1.0})  # silent from now on


def test_a_plain_module_given_to_the_engine_as_teacher_is_frozen_like_any(blobs, mlp_fn):
    from banets import losses
    from banets.engine import TrainConfig, Trainer
    from banets.teacher import FrozenTeacher

    teacher = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 4))
    before = teacher[1].running_mean.clone()
    trainer = Trainer(mlp_fn(), losses.get("ban"), TrainConfig(epochs=1, progress="none"), seed=0,
                      device=torch.device("cpu"), teacher=teacher)
    trainer.fit([blobs[0]])
    assert isinstance(trainer.teacher, FrozenTeacher) and not trainer.teacher.training
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    assert torch.equal(teacher[1].running_mean, before)  # the given module is untouched: the teacher is a copy
    with pytest.raises(banets.config.UserError, match="a loss returned no terms"):
        losses.total({})


def test_a_negative_label_given_from_python_is_named_as_such(blobs, mlp_fn, tiny_config):
    (x, y), val, _ = blobs
    y = y.clone()
    y[3] = -1
    with pytest.raises(banets.config.UserError, match=r"the labels include -1; class labels are 0 .. classes - 1"):
        banets.born_again(mlp_fn, (x, y), val, optim=tiny_config, ban=banets.BornAgainConfig(generations=1))


def test_a_cached_teacher_on_a_stream_of_batches_is_refused_before_training(blobs, mlp_fn, tiny_config, tmp_path):
    (x, y), val, _ = blobs

    class Stream:  # batches that can be read again, but of no known number
        def __iter__(self):
            return iter([(x[:128], y[:128]), (x[128:], y[128:])])

    with pytest.raises(banets.config.UserError, match=r"ban.cache_teacher needs training data of a known number"):
        banets.born_again(mlp_fn, Stream(), val, optim=tiny_config, out=tmp_path / "o",
                          ban=banets.BornAgainConfig(generations=1, cache_teacher="fp32"))
    assert not (tmp_path / "o").exists()


def test_an_old_format_run_names_no_file_outside_itself_either(run, tmp_path, capsys):
    """Format 1 runs are upgraded from their files: what the upgrade reads comes from the run, so it is checked too."""
    outside = tmp_path / "outside.pt"
    outside.write_bytes(b"not the run's")

    def as_format_1(manifest):
        manifest.update(format_version=1)
        del manifest["predictions"]

    rewrite(run / "seed-0", manifest_edit=as_format_1)
    (run / "seed-0" / "results.json").write_text(json.dumps({"../../outside": {}, "val": {}}))
    directory = SeedDirectory(run / "seed-0")
    assert list(directory.manifest["predictions"]) == ["val"]  # the split naming a file outside is not read
    rewrite(run / "seed-0", manifest_edit=lambda m: m.update(models={"../../outside": {"status": "done"}}))
    assert main(["resume", str(run)]) == 1
    one_line_error(capsys, "its models are named ['../../outside'], not as banets names them")
