"""Run directories: files, checkpoints, resume after a crash, refusals."""

import json

import pytest
import torch

from banets.config import load_config
from banets.engine import DivergedError
from banets.experiment import resume_experiment, run_experiment
from banets.runs import RunDirectory, RunError, load_checkpoint, save_checkpoint, sha256_of

QUICK = ["optim.epochs=3", "ban.generations=2", "ban.extra_losses=[]", "model.options.width=4", "optim.progress=none"]


def quick_config(*extra):
    return load_config("demo", [*QUICK, *extra])


def weights(run_dir, name):
    entry = RunDirectory(run_dir).manifest["models"][name]
    return load_checkpoint(run_dir / entry["checkpoint"], entry["sha256"])["model"]


def test_a_run_writes_config_manifest_metrics_checkpoints_and_results(tmp_path):
    run_experiment(quick_config(), tmp_path)
    seed_dir = tmp_path / "seed-0"
    manifest = json.loads((seed_dir / "manifest.json").read_text())
    assert set(manifest["models"]) == {"teacher", "BAN-1", "BAN-2"}
    for name, entry in manifest["models"].items():
        assert entry["status"] == "done"
        assert sha256_of(seed_dir / entry["checkpoint"]) == entry["sha256"]
    assert manifest["models"]["BAN-2"]["teacher"] == "BAN-1"
    assert len({e["seed"] for e in manifest["models"].values()}) == 3
    lines = [json.loads(line) for line in (seed_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["model"], r["epoch"]) for r in lines][:3] == [("teacher", 1), ("teacher", 2), ("teacher", 3)]
    assert len(lines) == 9
    results = json.loads((seed_dir / "results.json").read_text())
    assert {r["model"] for r in results["val"]} == {"teacher", "BAN-1", "BAN-2", "Ens*2"}
    assert set(results) == {"val", "test", "train"}
    assert not list((seed_dir / "checkpoints").glob("*.epoch*.pt"))  # epoch checkpoints go when a model is done


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    run_experiment(quick_config(), tmp_path / "straight")

    calls = {"n": 0}
    original = RunDirectory.on_epoch_end

    def crash_on_fifth_epoch(self, spec, trainer, record):
        original(self, spec, trainer, record)
        calls["n"] += 1
        if calls["n"] == 5:  # BAN-1, epoch 2 of 3
            raise KeyboardInterrupt

    monkeypatch.setattr(RunDirectory, "on_epoch_end", crash_on_fifth_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(quick_config(), tmp_path / "crashed")
    monkeypatch.setattr(RunDirectory, "on_epoch_end", original)
    manifest = RunDirectory(tmp_path / "crashed" / "seed-0").manifest["models"]
    assert manifest["teacher"]["status"] == "done" and manifest["BAN-1"]["status"] == "running"

    resume_experiment(tmp_path / "crashed")
    for name in ("teacher", "BAN-1", "BAN-2"):
        a, b = weights(tmp_path / "straight" / "seed-0", name), weights(tmp_path / "crashed" / "seed-0", name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    straight = json.loads((tmp_path / "straight" / "seed-0" / "results.json").read_text())
    resumed = json.loads((tmp_path / "crashed" / "seed-0" / "results.json").read_text())
    assert straight == resumed


def test_corrupt_checkpoint_is_detected_and_the_previous_one_used(tmp_path):
    good = save_checkpoint(tmp_path / "a.pt", {"epoch": 1, "w": torch.ones(3)})
    path = tmp_path / "a.pt"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(RunError, match="sha256"):
        load_checkpoint(path, good)


def test_progress_skips_a_truncated_newest_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = RunDirectory.on_epoch_end

    def crash_on_second_epoch(self, spec, trainer, record):
        original(self, spec, trainer, record)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunDirectory, "on_epoch_end", crash_on_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(quick_config(), tmp_path)
    seed_dir = tmp_path / "seed-0"
    run = RunDirectory(seed_dir)
    newest = run.manifest["models"]["teacher"]["epoch_checkpoints"][-1]
    (seed_dir / newest["path"]).write_bytes(b"garbage")
    spec = type("Spec", (), {"name": "teacher"})()
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        state = run.progress(spec)
    assert state["epoch"] == 1


def test_refuses_to_overwrite_or_to_resume_with_another_config(tmp_path):
    run_experiment(quick_config(), tmp_path)
    with pytest.raises(RunError, match="already holds a run"):
        run_experiment(quick_config(), tmp_path)
    with pytest.raises(RunError, match="another config .*optim.lr"):
        run_experiment(quick_config("optim.lr=0.5"), tmp_path, resume=True)


def test_divergence_marks_the_model_failed_in_the_manifest(tmp_path):
    config = quick_config("optim.lr=.inf")
    with pytest.raises(DivergedError):
        run_experiment(config, tmp_path)
    entry = RunDirectory(tmp_path / "seed-0").manifest["models"]["teacher"]
    assert entry["status"] == "failed" and "lower the learning rate" in entry["error"]
