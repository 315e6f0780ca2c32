"""Nothing lost, nothing silent: every bad input is one line and a non-zero exit, and the run directory it touches
keeps its files byte for byte. Then the cases that need more than one command: user files next to a run, seeds
switched on resume, a stale vocabulary, dead ends after a failed start, a kill just after the final checkpoint,
bitwise-identical checkpoints, permissions and an interrupt."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from banets.cli import main
from banets.runs import SeedDirectory, save_checkpoint, sha256_of
from tiny import LM, TINY, snapshot, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def write_corpus(folder: Path, words: int = 400, encoding: str = "utf-8", text: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    body = text or " ".join(f"w{i % 37}" for i in range(words)) + "\n"
    for split in ("train", "valid", "test"):
        (folder / f"c.{split}.txt").write_bytes(body.encode(encoding))
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A finished tiny run ``run/``, a corpus, a bad YAML file, a folder of a user's files, and a file."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("world")
    assert main(["run", "demo", *TINY, "--out", str(root / "run")]) == 0
    write_corpus(root / "corpus")
    write_corpus(root / "latin1", text="caf\u00e9 na\u00efve r\u00e9sum\u00e9 " * 40 + "\n", encoding="latin-1")
    (root / "bad.yaml").write_text("optim: {lr: [0.1\n")
    (root / "list.yaml").write_text("- optim\n- data\n")
    (root / "extends-list.yaml").write_text("extends: [demo]\n")
    (root / "broken_module_here.py").write_text("import json\n\nsettings = json.loads('')\n")  # fails in a library call
    (root / "needs_a_package_here.py").write_text("import no_such_package_anywhere\n")
    (root / "registers_badly_here.py").write_text("from banets.data.registry import register_dataset\n"
                                                  "register_dataset('mine', options={'nonsense'})(lambda cfg: None)\n")
    (root / "user").mkdir()
    (root / "user" / "report.md").write_text("my draft\n")
    (root / "a-file").write_text("not a folder\n")
    return root


def copy_run(world: Path, tmp_path: Path) -> Path:
    shutil.copytree(world / "run", tmp_path / "run")
    return tmp_path / "run"


def edit_config(run: Path) -> None:
    path = run / "seed-0" / "config.yaml"
    path.write_text(path.read_text().replace("lr: 0.05", "lr: 0.5"))


def edit_manifest(run: Path, edit) -> None:
    path = run / "seed-0" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def truncate_older_config(run: Path) -> None:
    """A run made before manifests recorded the config's digest, whose config.yaml lost its end."""
    edit_manifest(run, lambda m: (m.pop("config_sha256"), m.update(format_version=1)))
    (run / "seed-0" / "config.yaml").write_text("name: demo\nseeds: [0]\n")


def truncate_manifest(run: Path) -> None:
    path = run / "seed-0" / "manifest.json"
    path.write_text(path.read_text()[:40])


def foreign_checkpoint(run: Path) -> None:
    """BAN-1's checkpoint replaced by one of another width, with its sha256 recorded (someone copied runs around)."""
    from banets.models import create_model

    seed_dir = run / "seed-0"
    path = seed_dir / "checkpoints" / "BAN-1.pt"
    state = {"model": create_model("small_cnn", in_channels=1, width=8).state_dict(), "history": [{}]}
    run_dir = SeedDirectory(seed_dir)
    run_dir.manifest["models"]["BAN-1"]["sha256"] = save_checkpoint(path, state)
    run_dir._write_manifest()


def tampered_checkpoint(run: Path) -> None:
    """BAN-1's checkpoint replaced by a pickle that would run code, with its sha256 recorded."""
    import pickle

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/banets-pwned",))

    seed_dir = run / "seed-0"
    path = seed_dir / "checkpoints" / "BAN-1.pt"
    torch.save({"model": Exploit()}, path, pickle_module=pickle)
    run_dir = SeedDirectory(seed_dir)
    run_dir.manifest["models"]["BAN-1"]["sha256"] = sha256_of(path)
    run_dir._write_manifest()


# (arguments, expected message, the run directory that must stay unchanged or None, how to damage a copy first)
CASES = {
    "unknown key": (["run", "demo", "--set", "optim.lrr=0.1"], "unknown config key 'optim.lrr'; did you mean optim.lr", None, None),
    "unknown preset": (["run", "no-such-preset"], "no preset 'no-such-preset'", None, None),
    "missing config file": (["run", "mine.yml"], "no file mine.yml; give a YAML config file that exists, or a preset name", None, None),
    "extends a list": (["run", "{world}/extends-list.yaml"], "extends: takes one preset name or YAML file, got ['demo']", None, None),
    "no model matches": (["models", "nosuch"], "no registered model matches 'nosuch'", None, None),
    "imagefolder without a folder": (["run", "demo", "--set", "data={dataset: imagefolder}"], "imagefolder: no folder given; pass --data-dir",
                                     None, None),
    "unknown model": (["run", "demo", "--set", "model.name=resnet9000"], "unknown model 'resnet9000'", None, None),
    "empty seeds": (["run", "demo", "--seeds", ","], "--seeds takes comma-separated integers", None, None),
    "unused data option": (["run", "demo", "--set", "data.max_vocab=50"], "dataset 'digits' does not use data.max_vocab", None, None),
    "val larger than data": (["run", "demo", "--set", "data.val_size=100000"], "data.val_size=100000 leaves no training images", None, None),
    "negative width": (["run", "demo", "--set", "model.options.width=-4"], "failed to build the model", None, None),
    "kd temperature as text": (["run", "demo", *TINY, "--set", "ban.loss=kd", "--set", "ban.loss_options={temperature: hot}"],
                               "KD-1's loss kd with options {'temperature': 'hot'}: loss 'kd' takes numbers for its options", None, None),
    "init from a teacher of another architecture": (["run", "demo", *TINY, "--set", "model.teacher_name=mlp",
                                                     "--set", "ban.init_from_teacher=true"],
                                                    "ban.init_from_teacher needs a teacher of the students' architecture", None, None),
    "cuda without a GPU": (["run", "demo", "--set", "device=cuda"], "finds no cuda device here; use --set device=cpu", None, None),
    "glued colon": (["run", "demo", "--set", "ban.controls={LS: {label_smoothing:0.1}}"], "YAML needs a space after the colon", None, None),
    "bad YAML in --set": (["run", "demo", "--set", "optim.lr=[0.1"], "the value is not valid YAML", None, None),
    "bad YAML file": (["run", "{world}/bad.yaml"], "bad.yaml is not valid YAML at line", None, None),
    "YAML not a mapping": (["run", "{world}/list.yaml"], "holds a list, not a mapping of config keys", None, None),
    "non-UTF-8 corpus": (["run", "wap_quick", "--data-dir", "{world}/latin1", *LM], "is not UTF-8 text (byte 0xe9", None, None),
    "corpus too small for the batch": (["run", "wap_quick", "--data-dir", "{world}/corpus", *LM, "--set", "data.batch_size=500"],
                                       "too few for data.batch_size=500 streams", None, None),
    "unknown import": (["run", "demo", "--import", "no_such_module_here"], "cannot import 'no_such_module_here'", None, None),
    "missing teacher checkpoint": (["run", "demo", "--set", "model.teacher_checkpoint=/nonexistent.pt"], "no file /nonexistent.pt", None, None),
    "out is a file": (["run", "demo", *TINY, "--out", "{world}/a-file"], "is a file; choose a folder", None, None),
    "out not writable": (["run", "demo", *TINY, "--out", "/sys/kernel/banets-out"], "cannot write into --out", None, None),
    "out holds user files": (["run", "demo", *TINY, "--out", "{world}/user"], "holds files that are not a banets run (report.md)", "user", None),
    "report into user files": (["report", "{world}/run", "--out", "{world}/user"], "holds files a banets report did not write (report.md)",
                               "user", None),
    "run over a run": (["run", "demo", *TINY, "--out", "{world}/run"], "already holds seed 0; continue it with `banets resume", "run", None),
    "resume with other seeds": (["resume", "{run}", "--set", "seeds=[5]"], "a resume continues the seeds", "run", "copy"),
    "resume with other lr": (["resume", "{run}", "--set", "optim.lr=0.5"], "differs in optim.lr", "run", "copy"),
    "edited config.yaml": (["resume", "{run}"], "config.yaml is not the one the run wrote (edited or damaged)", "run", edit_config),
    "truncated manifest": (["resume", "{run}"], "manifest.json is damaged (not valid JSON", "run", truncate_manifest),
    "checkpoint of another architecture": (["resume", "{run}", "--set", "ban.ensembles={T+B: [teacher, BAN-1]}"],
                                           "the weights of BAN-1 do not fit the model (size mismatch", "run", foreign_checkpoint),
    "tampered checkpoint": (["resume", "{run}", "--set", "ban.ensembles={T+B: [teacher, BAN-1]}"], "cannot be loaded safely",
                            "run", tampered_checkpoint),
    "run over a seed without config.yaml": (["run", "demo", *TINY, "--out", "{run}"], "seed-0 is not a complete run (no config.yaml); "
                                            "move it away, or choose another --out", "run",
                                            lambda run: (run / "seed-0" / "config.yaml").unlink()),
    "edited config.yaml, report": (["report", "{run}", "--out", "{world}/r"], "config.yaml is not the one the run wrote", "run",
                                   lambda run: (run / "seed-0" / "config.yaml").write_text("name: demo\nseeds: [0]\n")),
    "truncated config.yaml of an older run": (["report", "{run}", "--out", "{world}/r"], "config.yaml lacks data, model; restore it",
                                              "run", truncate_older_config),
    "manifest entry without a checkpoint": (["resume", "{run}", "--set", "ban.ensembles={T+B: [teacher, BAN-1]}"],
                                            "is not a banets manifest (the finished BAN-1 names no checkpoint and sha256)",
                                            "run", lambda run: edit_manifest(run, lambda m: m["models"]["BAN-1"].pop("checkpoint"))),
    "manifest with a list entry": (["report", "{run}", "--out", "{world}/r"], "its models are not a mapping of entries",
                                   "run", lambda run: edit_manifest(run, lambda m: m["models"].update({"BAN-1": [1]}))),
    "manifest with text run seeds": (["resume", "{run}"], "its run_seeds are not integers", "run",
                                     lambda run: edit_manifest(run, lambda m: m.update(run_seeds=["x"]))),
    "manifest with listed predictions": (["report", "{run}", "--out", "{world}/r"], "its predictions are not a mapping of "
                                         "splits to sha256", "run", lambda run: edit_manifest(run, lambda m: m.update(predictions=[1]))),
    "empty manifest": (["resume", "{run}"], "manifest.json is empty; ", "run", lambda run: edit_manifest(run, lambda m: m.clear())),
    "module that fails to import": (["run", "demo", "--import", "broken_module_here"],
                                    "importing 'broken_module_here' failed at {world}/broken_module_here.py:3 (JSONDecodeError",
                                    None, None),
    "module that needs a package": (["run", "demo", "--import", "needs_a_package_here"],
                                    "importing 'needs_a_package_here' failed at {world}/needs_a_package_here.py:1 (No module "
                                    "named 'no_such_package_anywhere'); install what it needs", None, None),
    "module that registers badly": (["run", "demo", "--import", "registers_badly_here"],
                                    "banets: error: dataset 'mine' names unknown data options ['nonsense']", None, None),
    "teacher options without a teacher": (["run", "demo", "--set", "model.teacher_options={width: 4}"],
                                          "model.teacher_options must be given with model.teacher_name", None, None),
    "digits without validation": (["run", "demo", "--set", "data.val_size=0"], "digits needs a validation split", None, None),
    "resume nothing": (["resume", "/nonexistent/run"], "is not a folder; pass the --out of a run", None, None),
    "report nothing": (["report", "/nonexistent/run"], "no seed directories under /nonexistent/run", None, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_a_nonzero_exit_and_changes_nothing(case, world, tmp_path, capsys, monkeypatch):
    argv, message, kept, damage = CASES[case]
    monkeypatch.syspath_prepend(str(world))  # --import finds the world's modules
    run = world / "run"
    if damage is not None:
        run = copy_run(world, tmp_path)
        if callable(damage):
            damage(run)
    watched = {"run": run, "user": world / "user", None: None}[kept]
    before = snapshot(watched) if watched else None
    try:
        code = main([arg.replace("{world}", str(world)).replace("{run}", str(run)) for arg in argv])
    except SystemExit as exit:  # argparse's errors: exit status 2
        code = exit.code
    out, err = capsys.readouterr()
    assert code != 0 and "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("banets: error: ")]
    assert len(errors) == 1 and message.replace("{world}", str(world)) in errors[0], err
    assert "weights_only=False" not in err and "pwned" not in err
    if watched:
        assert snapshot(watched) == before
    assert not Path("/tmp/banets-pwned").exists()


def test_at_least_thirty_bad_inputs_are_covered():
    assert len(CASES) >= 30


def test_a_failed_start_leaves_nothing_and_the_same_command_then_works(world, tmp_path, capsys):
    small = write_corpus(tmp_path / "small", words=10)
    args = ["run", "wap_quick", *LM, "--set", "data.eval_batch_size=8", "--out", str(tmp_path / "out")]
    assert main([*args, "--data-dir", str(small)]) == 1
    assert "too few for data.eval_batch_size=8" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # no dead-end directory, no stale vocabulary
    assert main([*args, "--data-dir", str(world / "corpus")]) == 0
    vocab = json.loads((tmp_path / "out" / "seed-0" / "vocab.json").read_text())["words"]
    assert len(vocab) == 2 + 37  # built from the good corpus
    other = write_corpus(tmp_path / "other", text=" ".join(f"v{i % 11}" for i in range(400)) + "\n")
    before = snapshot(tmp_path / "out")
    assert main(["resume", str(tmp_path / "out"), "--data-dir", str(other), "--set", "ban.ensembles={T+B: [teacher, BAN+L-1]}"]) == 1
    err = capsys.readouterr().err
    assert "the data differ from those" in err and "(vocab.json differs)" in err
    assert snapshot(tmp_path / "out") == before


def test_a_kill_after_the_final_checkpoint_recovers_that_model_instead_of_retraining_it(tmp_path, monkeypatch):
    from banets.config import load_config
    from banets.experiment import resume_experiment, run_experiment

    config = load_config("demo", ["optim.epochs=2", "optim.progress=none", "ban.generations=1", "ban.extra_losses=[]",
                                  "ban.controls={}", "model.options.width=4", "seeds=[0]"])
    run_experiment(config, tmp_path / "straight")
    record = SeedDirectory._record_finished

    def killed(self, spec, path, sha, history):
        if spec.name == "BAN-1":
            raise KeyboardInterrupt  # the checkpoint is written, the manifest never learns it
        record(self, spec, path, sha, history)

    monkeypatch.setattr(SeedDirectory, "_record_finished", killed)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "killed")
    monkeypatch.setattr(SeedDirectory, "_record_finished", record)
    assert SeedDirectory(tmp_path / "killed" / "seed-0").manifest["models"]["BAN-1"]["status"] == "running"
    trained = []
    from banets.engine import Trainer

    fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, *a: trained.append(self.name) or fit(self, *a))
    resume_experiment(tmp_path / "killed")
    assert trained == []  # recovered, not retrained
    assert snapshot(tmp_path / "killed" / "seed-0" / "checkpoints") == snapshot(tmp_path / "straight" / "seed-0" / "checkpoints")


def test_two_identical_runs_write_identical_checkpoints_and_weights(tmp_path):
    for name in ("a", "b"):
        assert main(["run", "demo", *TINY, "--out", str(tmp_path / name)]) == 0
    for folder in ("checkpoints", "weights", "predictions"):
        assert snapshot(tmp_path / "a" / "seed-0" / folder) == snapshot(tmp_path / "b" / "seed-0" / folder), folder


def test_run_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["run", "demo", *TINY, "--out", str(tmp_path / "o")]) == 0
    finally:
        os.umask(old)
    seed_dir = tmp_path / "o" / "seed-0"
    for path in (seed_dir, seed_dir / "config.yaml", seed_dir / "manifest.json", seed_dir / "checkpoints" / "teacher.pt",
                 seed_dir / "weights" / "teacher.safetensors", tmp_path / "o" / "report" / "report.md"):
        expected = 0o755 if path.is_dir() else 0o644
        assert path.stat().st_mode & 0o777 == expected, path


def test_an_interrupt_says_how_to_continue_and_exits_130(tmp_path):
    command = [sys.executable, "-m", "banets", "run", "demo", "--set", "optim.epochs=200", "--set", "optim.progress=epoch",
               "--seeds", "0", "--out", str(tmp_path / "o")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"},  # SIGINT as a terminal sends it, even when
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # pytest runs in the background
    manifest, deadline = tmp_path / "o" / "seed-0" / "manifest.json", time.time() + 60
    while '"epoch_checkpoints"' not in (manifest.read_text() if manifest.exists() else "") and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err
    assert f"banets: interrupted; continue with `banets resume {tmp_path / 'o'}`" in err
    teacher = SeedDirectory(tmp_path / "o" / "seed-0").manifest["models"]["teacher"]
    assert teacher["status"] == "running" and teacher["epoch_checkpoints"]  # what the resume continues from


def test_a_multi_seed_run_interrupted_in_its_first_seed_resumes_every_seed(tmp_path, monkeypatch, capsys):
    from banets.engine import Trainer

    fit = Trainer.fit

    def interrupted(self, *args):
        if self.name == "BAN-1":
            raise KeyboardInterrupt
        return fit(self, *args)

    monkeypatch.setattr(Trainer, "fit", interrupted)
    args = ["run", "demo", *tiny(seeds="0,1"), "--out", str(tmp_path / "o")]
    assert main(args) == 130
    assert "continue with `banets resume" in capsys.readouterr().err
    monkeypatch.setattr(Trainer, "fit", fit)
    assert [p.name for p in (tmp_path / "o").glob("seed-*")] == ["seed-0"]  # seed 1 never started
    assert main(["resume", str(tmp_path / "o")]) == 0
    assert "mean ± SD over 2 seeds" in capsys.readouterr().out
    assert all((tmp_path / "o" / f"seed-{s}" / "results.json").is_file() for s in (0, 1))


def test_other_data_under_the_same_paths_are_refused_on_resume(tmp_path, capsys):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(80, 6, generator=gen), torch.randint(0, 3, (80,), generator=gen)
    torch.save({"x": x[:60], "y": y[:60]}, tmp_path / "train.pt")
    torch.save({"x": x[60:], "y": y[60:]}, tmp_path / "val.pt")
    args = ["run", "demo", "--set", "data={dataset: tensors, batch_size: 16}", "--set", "model={name: mlp, options: {in_features: 6}}",
            "--data-dir", str(tmp_path / "train.pt"), "--set", f"data.val_path={tmp_path / 'val.pt'}", *tiny(width=None), "--out", str(tmp_path / "o")]
    assert main(args) == 0
    before = snapshot(tmp_path / "o")
    assert main(["resume", str(tmp_path / "o"), "--set", f"data.val_path={tmp_path / 'train.pt'}",
                 "--set", "ban.ensembles={T+B: [teacher, BAN-1]}"]) == 1
    assert "(data.json differs)" in capsys.readouterr().err and snapshot(tmp_path / "o") == before


def test_a_corrupt_final_checkpoint_left_by_a_killed_retraining_is_not_taken_as_finished(world, tmp_path):
    run = copy_run(world, tmp_path)
    seed_dir = run / "seed-0"
    path = seed_dir / "checkpoints" / "BAN-1.pt"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # a flipped byte torch does not notice
    path.write_bytes(bytes(data))
    directory = SeedDirectory(seed_dir)
    directory.manifest["models"]["BAN-1"]["status"] = "running"  # its retraining was killed
    directory._write_manifest()
    from banets.generations import ModelSpec

    assert SeedDirectory(seed_dir)._recover_final(ModelSpec("BAN-1", "generation"), directory.manifest["models"]["BAN-1"]) is None


def test_a_kill_between_recording_ensembles_and_config_yaml_still_resumes(world, tmp_path, monkeypatch):
    from banets import runs

    run = copy_run(world, tmp_path)
    write = runs.atomic_write_text

    def killed_at_config(path, text):
        if path.name == "config.yaml":
            raise KeyboardInterrupt
        write(path, text)

    monkeypatch.setattr(runs, "atomic_write_text", killed_at_config)
    assert main(["resume", str(run), "--set", "ban.ensembles={T+B: [teacher, BAN-1]}"]) == 130  # killed there
    assert "T+B" in SeedDirectory(run / "seed-0").manifest["ensembles"]  # the manifest was written, config.yaml was not
    monkeypatch.setattr(runs, "atomic_write_text", write)
    assert main(["resume", str(run), "--set", "ban.ensembles={T+B: [teacher, BAN-1]}"]) == 0
    assert SeedDirectory(run / "seed-0").config()["ban"]["ensembles"] == {"T+B": ["teacher", "BAN-1"]}


def test_a_report_index_that_points_outside_its_folder_is_refused(world, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / ".banets-report").write_text(json.dumps(["report.md", "../victim.txt"]))
    assert main(["report", str(world / "run"), "--out", str(folder)]) == 1
    assert "lists paths outside its folder" in capsys.readouterr().err and victim.read_text() == "keep me"
    (folder / ".banets-report").write_text("{bad")
    assert main(["report", str(world / "run"), "--out", str(folder)]) == 1
    assert ".banets-report is damaged" in capsys.readouterr().err


def test_user_files_in_the_report_folder_are_found_before_training(tmp_path, capsys):
    (tmp_path / "o" / "report").mkdir(parents=True)
    (tmp_path / "o" / "report" / "notes.md").write_text("mine")
    assert main(["run", "demo", *TINY, "--out", str(tmp_path / "o")]) == 1
    assert "holds files a banets report did not write (notes.md)" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["report"]


def test_presets_that_extend_each_other_in_a_circle_are_refused(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text(f"extends: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"extends: {tmp_path / 'a.yaml'}\n")
    assert main(["run", str(tmp_path / "a.yaml")]) == 1
    assert "presets extend each other in a circle" in capsys.readouterr().err
