"""Run directories: files, checkpoints, TensorBoard, resume after a crash, refusals of bad input."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import banets
from banets.cli import main
from banets.config import load_config
from banets.engine import DivergedError
from banets.experiment import resume_experiment, run_experiment
from banets.generations import ModelSpec
from banets.runs import SeedDirectory, RunError, TensorBoardLog, load_checkpoint, save_checkpoint, sha256_of
from tiny import as_cli, tiny_settings

QUICK = tiny_settings(epochs=3, generations=2, controls=True)
CLI_QUICK = as_cli(QUICK, seeds=None)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only spins on shared cores


def quick_config(*extra, controls=False):
    config = load_config("demo", [*QUICK, *extra])
    if not controls:
        config.ban.controls = {}
    return config


def checkpoint(run_dir, name):
    entry = SeedDirectory(run_dir).manifest["models"][name]
    return load_checkpoint(run_dir / entry["checkpoint"], entry["sha256"])


def weights(run_dir, name):
    return checkpoint(run_dir, name)["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def crash_after_epochs(monkeypatch, epochs):
    """Make the ``epochs``-th end of epoch of the run raise, as a crash right after its checkpoint would."""
    calls = {"n": 0}
    original = SeedDirectory.on_epoch_end

    def on_epoch_end(self, spec, trainer, record):
        original(self, spec, trainer, record)
        calls["n"] += 1
        if calls["n"] == epochs:
            raise KeyboardInterrupt

    monkeypatch.setattr(SeedDirectory, "on_epoch_end", on_epoch_end)
    return original


def test_a_run_writes_config_manifest_metrics_checkpoints_and_results(tmp_path):
    run_experiment(quick_config(controls=True), tmp_path)
    seed_dir = tmp_path / "seed-0"
    manifest = json.loads((seed_dir / "manifest.json").read_text())
    assert list(manifest["models"]) == ["teacher", "BAN-1", "BAN-2", "LS", "CE"]
    for name, entry in manifest["models"].items():
        assert entry["status"] == "done"
        assert sha256_of(seed_dir / entry["checkpoint"]) == entry["sha256"]
    assert manifest["models"]["BAN-2"]["teacher"] == "BAN-1"
    assert manifest["models"]["LS"]["role"] == "control" and manifest["models"]["LS"]["teacher"] is None
    assert manifest["models"]["LS"]["loss_options"] == {"label_smoothing": 0.1}
    assert len({e["seed"] for e in manifest["models"].values()}) == 5
    lines = [json.loads(line) for line in (seed_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["model"], r["epoch"]) for r in lines][:3] == [("teacher", 1), ("teacher", 2), ("teacher", 3)]
    assert len(lines) == 15
    results = json.loads((seed_dir / "results.json").read_text())
    assert [r["model"] for r in results["val"]] == ["teacher", "BAN-1", "BAN-2", "LS", "CE", "Ens*2", "T+CE"]
    assert set(results) == {"val", "test", "train"}
    assert not list((seed_dir / "checkpoints").glob("*.epoch*.pt"))  # epoch checkpoints go when a model is done


def test_tensorboard_event_files_hold_the_per_epoch_scalars(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run_experiment(quick_config("ban.generations=1"), tmp_path)
    for model in ("teacher", "BAN-1"):
        log_dir = tmp_path / "seed-0" / "tensorboard" / model
        assert list(log_dir.glob("events.out.tfevents.*"))
        events = accumulator.EventAccumulator(str(log_dir))
        events.Reload()
        assert {"train/loss", "train/error", "val/error", "val/nll", "lr"} <= set(events.Tags()["scalars"])
        loss = events.Scalars("train/loss")
        assert [e.step for e in loss] == [1, 2, 3]
        history = checkpoint(tmp_path / "seed-0", model)["history"]
        assert [e.value for e in loss] == pytest.approx([h["train_loss"] for h in history])


def test_tensorboard_shows_each_term_of_a_loss_by_name(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run_experiment(quick_config("ban.generations=1", "ban.loss=ban+l"), tmp_path)
    events = accumulator.EventAccumulator(str(tmp_path / "seed-0" / "tensorboard" / "BAN+L-1"))
    events.Reload()
    assert {"train/loss", "train/loss_teacher", "train/loss_label"} <= set(events.Tags()["scalars"])


def test_without_tensorboard_nothing_is_logged_and_nothing_said(tmp_path, monkeypatch, recwarn, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    log = TensorBoardLog(tmp_path / "tensorboard")
    log.log("teacher", {"epoch": 1, "lr": 0.1, "train_loss": 2.3})
    log.close("teacher")
    assert not (tmp_path / "tensorboard").exists() and not recwarn and capsys.readouterr() == ("", "")


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    run_experiment(quick_config(), tmp_path / "straight")
    original = crash_after_epochs(monkeypatch, 5)  # BAN-1, epoch 2 of 3
    with pytest.raises(KeyboardInterrupt):
        run_experiment(quick_config(), tmp_path / "crashed")
    monkeypatch.setattr(SeedDirectory, "on_epoch_end", original)
    manifest = SeedDirectory(tmp_path / "crashed" / "seed-0").manifest["models"]
    assert manifest["teacher"]["status"] == "done" and manifest["BAN-1"]["status"] == "running"

    resume_experiment(tmp_path / "crashed")
    for name in ("teacher", "BAN-1", "BAN-2"):
        assert same_weights(weights(tmp_path / "straight" / "seed-0", name), weights(tmp_path / "crashed" / "seed-0", name)), name
    untimed = lambda rows: {split: [{k: v for k, v in r.items() if not k.startswith("minutes")} for r in rows[split]]  # noqa: E731
                            for split in rows}
    straight = json.loads((tmp_path / "straight" / "seed-0" / "results.json").read_text())
    resumed = json.loads((tmp_path / "crashed" / "seed-0" / "results.json").read_text())
    assert untimed(straight) == untimed(resumed) and "minutes" in straight["val"][0]


def test_corrupt_checkpoint_is_detected_by_its_sha256(tmp_path):
    good = save_checkpoint(tmp_path / "a.pt", {"epoch": 1, "w": torch.ones(3)})
    path = tmp_path / "a.pt"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(RunError, match="sha256"):
        load_checkpoint(path, good)


def test_progress_skips_a_truncated_newest_checkpoint(tmp_path, monkeypatch):
    crash_after_epochs(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(quick_config(), tmp_path)
    seed_dir = tmp_path / "seed-0"
    run = SeedDirectory(seed_dir)
    newest = run.manifest["models"]["teacher"]["epoch_checkpoints"][-1]
    (seed_dir / newest["path"]).write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        state = run.progress(ModelSpec("teacher", "teacher"))
    assert state["epoch"] == 1


def test_a_corrupt_final_checkpoint_is_retrained_to_the_same_weights(tmp_path):
    run_experiment(quick_config(), tmp_path)
    seed_dir = tmp_path / "seed-0"
    before = {name: weights(seed_dir, name) for name in ("teacher", "BAN-1", "BAN-2")}
    ban2_sha = SeedDirectory(seed_dir).manifest["models"]["BAN-2"]["sha256"]
    path = seed_dir / "checkpoints" / "BAN-1.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(UserWarning, match="BAN-1: .*sha256.*training BAN-1 again from its seed"):
        resume_experiment(tmp_path)
    entry = SeedDirectory(seed_dir).manifest["models"]["BAN-1"]
    assert entry["status"] == "done" and sha256_of(path) == entry["sha256"]
    assert all(same_weights(before[name], weights(seed_dir, name)) for name in before)
    assert SeedDirectory(seed_dir).manifest["models"]["BAN-2"]["sha256"] == ban2_sha  # the model it taught is kept


def test_a_damaged_or_missing_weights_file_is_written_again_from_its_checkpoint_on_resume(tmp_path):
    from safetensors.torch import load_file

    run_experiment(quick_config(), tmp_path)
    seed_dir = tmp_path / "seed-0"
    teacher, ban1 = seed_dir / "weights" / "teacher.safetensors", seed_dir / "weights" / "BAN-1.safetensors"
    good = teacher.read_bytes()
    teacher.write_bytes(good[: len(good) // 2])
    ban1.unlink()
    checkpoints = {p.name: p.stat().st_mtime_ns for p in (seed_dir / "checkpoints").iterdir()}
    with pytest.warns(UserWarning, match="teacher: .*teacher.safetensors is missing or does not match"):
        resume_experiment(tmp_path)
    assert teacher.read_bytes() == good
    assert same_weights(load_file(ban1), weights(seed_dir, "BAN-1"))
    assert {p.name: p.stat().st_mtime_ns for p in (seed_dir / "checkpoints").iterdir()} == checkpoints  # nothing retrained
    manifest = SeedDirectory(seed_dir).manifest["models"]
    assert all(manifest[m]["weights_sha256"] == sha256_of(seed_dir / "weights" / f"{m}.safetensors") for m in manifest)


def test_a_seed_added_beside_others_must_repeat_their_experiment(tmp_path, capsys):
    run_experiment(quick_config("seeds=[0]"), tmp_path)
    with pytest.raises(RunError, match=r"holds seed-0 of another config \(differs in model.options.width, optim.lr\); a new "
                                       r"seed must repeat its experiment exactly, so choose another --out"):
        run_experiment(quick_config("optim.lr=0.5", "model.options.width=6", "seeds=[1]"), tmp_path)
    assert not (tmp_path / "seed-1").exists()
    assert main(["run", "demo", *CLI_QUICK, "--set", "ban.controls={}", "--seeds", "1", "--set", "optim.progress=epoch",
                 "--out", str(tmp_path)]) == 0
    assert "mean ± SD over 2 seeds" in capsys.readouterr().out  # runtime keys may differ


def test_a_run_made_before_weights_and_predictions_were_digested_is_still_finished(tmp_path):
    run_experiment(quick_config("seeds=[0]"), tmp_path)
    run = SeedDirectory(tmp_path / "seed-0")
    del run.manifest["predictions"]
    for entry in run.manifest["models"].values():
        del entry["weights_sha256"]
    run.manifest["format_version"] = 1  # as banets 0.2 or an earlier release wrote it
    run._write_manifest()
    assert resume_experiment(tmp_path) == []  # nothing to do, as before


def test_config_differences_name_nested_option_keys_of_any_type(tmp_path):
    run_experiment(quick_config("seeds=[0]"), tmp_path)
    run = SeedDirectory(tmp_path / "seed-0")
    changed = {**run.config(), "ban": {**run.config()["ban"], "loss_options": {"class_weights": {0: 1.0, 1: 2.0}}}}
    assert list(run.config_differences(changed)) == ["ban.loss_options.class_weights.0", "ban.loss_options.class_weights.1"]


def test_refuses_to_overwrite_or_to_resume_with_another_config_or_format(tmp_path, capsys):
    run_experiment(quick_config(), tmp_path)
    with pytest.raises(RunError, match="already holds seed 0; continue it with `banets resume"):
        run_experiment(quick_config(), tmp_path)
    with pytest.raises(RunError, match="another config .*optim.lr.*start a new run"):
        run_experiment(quick_config("optim.lr=0.5"), tmp_path, resume=True)
    assert main(["resume", str(tmp_path), "--set", "optim.lr=0.5"]) == 1
    assert "differs in optim.lr" in capsys.readouterr().err
    assert main(["resume", str(tmp_path), "--set", "optim.progress=model"]) == 0  # runtime keys may change
    manifest = tmp_path / "seed-0" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"format_version": 2', '"format_version": 0'))
    with pytest.raises(RunError, match="run format 0, this banets reads formats 1 and 2"):
        resume_experiment(tmp_path)


def nan_after(calls: int):
    """A loss for BAN-1 that becomes NaN after ``calls`` steps (epoch 2: an epoch has 17 steps)."""
    original = ModelSpec.make_loss
    count = {"n": 0}

    def make_loss(spec):
        loss = original(spec)
        if spec.name != "BAN-1":
            return loss

        def diverging(*args):
            count["n"] += 1
            return loss(*args) * (float("nan") if count["n"] > calls else 1.0)

        return diverging

    return make_loss


def test_divergence_marks_the_model_failed_and_keeps_the_good_checkpoints(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ModelSpec, "make_loss", nan_after(20))
    with pytest.raises(DivergedError, match="BAN-1: loss became nan at epoch 2"):
        run_experiment(quick_config(), tmp_path)
    monkeypatch.undo()
    seed_dir = tmp_path / "seed-0"
    models = SeedDirectory(seed_dir).manifest["models"]
    assert models["BAN-1"]["status"] == "failed" and "lower the learning rate" in models["BAN-1"]["error"]
    (kept,) = models["BAN-1"]["epoch_checkpoints"]  # the last good epoch
    assert kept["epoch"] == 1 and sha256_of(seed_dir / kept["path"]) == kept["sha256"]
    teacher = models["teacher"]
    assert teacher["status"] == "done" and sha256_of(seed_dir / teacher["checkpoint"]) == teacher["sha256"]
    # Resuming the same recipe would diverge again: refused, with the way out.
    assert main(["resume", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "BAN-1 failed" in err and "start a new run with the fix" in err and "--set optim.lr=" in err
    assert main(["run", "demo", *CLI_QUICK, "--set", "ban.controls={}", "--out", str(tmp_path)]) == 1  # not "resume it"
    assert "BAN-1 failed" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 1
    assert "BAN-1 failed" in capsys.readouterr().err and not (tmp_path / "report").exists()


def test_damaged_predictions_are_reported_skipped_and_evaluated_again_on_resume(tmp_path, capsys):
    run_experiment(quick_config("seeds=[0, 1]"), tmp_path)
    predictions = tmp_path / "seed-1" / "predictions" / "val.pt"
    good = predictions.read_bytes()
    predictions.write_bytes(good[:100])
    with pytest.warns(UserWarning, match=r"skipped .*seed-1/predictions/val.pt is damaged .*`banets resume .*` evaluates"):
        assert main(["report", str(tmp_path)]) == 0
    assert "n=1 seed" in capsys.readouterr().out
    assert resume_experiment(tmp_path) == [1]
    assert predictions.read_bytes() == good  # the same models evaluated again: the same bytes
    assert main(["report", str(tmp_path)]) == 0 and "over 2 seeds" in capsys.readouterr().out


def test_a_run_saved_before_a_config_key_existed_still_resumes(tmp_path):
    import yaml

    run_experiment(quick_config(), tmp_path)
    config_path = tmp_path / "seed-0" / "config.yaml"
    saved = yaml.safe_load(config_path.read_text())
    del saved["ban"]["share_layers"]  # as written by a banets that did not know the key yet (nor config digests)
    config_path.write_text(yaml.safe_dump(saved))
    run = SeedDirectory(tmp_path / "seed-0")
    del run.manifest["config_sha256"]
    run.manifest["format_version"] = 1
    run._write_manifest()
    run_experiment(quick_config(), tmp_path, resume=True)
    with pytest.raises(RunError, match="ban.share_layers"):
        run_experiment(quick_config("ban.share_layers=['0']"), tmp_path, resume=True)  # small_cnn's first layer


def test_resuming_a_finished_run_with_new_ensembles_evaluates_them_without_training(tmp_path, capsys):
    run_experiment(quick_config(controls=True), tmp_path)
    seed_dir = tmp_path / "seed-0"
    before = {p.name: sha256_of(p) for p in (seed_dir / "checkpoints").iterdir()}
    epochs = (seed_dir / "metrics.jsonl").read_text()
    assert main(["resume", str(tmp_path), "--set", "ban.ensembles={T+LS: [teacher, LS]}"]) == 0
    results = json.loads((seed_dir / "results.json").read_text())
    rows = {r["model"]: r for r in results["val"]}
    assert rows["T+LS"]["loss"] == "ensemble" and {"teacher", "CE", "Ens*2", "T+CE"} <= set(rows)
    assert SeedDirectory(seed_dir).config()["ban"]["ensembles"] == {"T+LS": ["teacher", "LS"]}  # the run records it
    assert {p.name: sha256_of(p) for p in (seed_dir / "checkpoints").iterdir()} == before  # nothing retrained
    assert (seed_dir / "metrics.jsonl").read_text() == epochs
    assert "\nT+LS      mean of teacher, LS" in capsys.readouterr().out
    assert main(["resume", str(tmp_path), "--set", "ban.ensembles={T+X: [teacher, X]}"]) == 1  # a typo: refused,
    assert "ensemble 'T+X' names X" in capsys.readouterr().err
    assert SeedDirectory(seed_dir).config()["ban"]["ensembles"] == {"T+LS": ["teacher", "LS"]}  # and not recorded


FIXTURES = Path(__file__).parent / "fixtures"


def test_a_run_directory_written_by_banets_0_2_reports_and_resumes(tmp_path, capsys):
    """tests/fixtures/run-banets-0.2: the demo (1 epoch, BAN-1, width 4, seed 0) as banets 0.2 wrote it."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "run-banets-0.2", run)
    assert main(["report", str(run)]) == 0
    assert "BAN-1" in (run / "report" / "report.md").read_text()
    assert main(["resume", str(run)]) == 0  # finished: nothing to train, the report again
    assert "every seed is finished" in capsys.readouterr().out
    assert main(["resume", str(run), "--set", "ban.ensembles={T+B: [teacher, BAN-1]}"]) == 0  # evaluated, not trained
    assert "T+B" in SeedDirectory(run / "seed-0").manifest["ensembles"]
    assert banets.load(run, "BAN-1")(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
