"""torchrun data parallelism: two CPU processes (gloo) through the real CLI against one process.

One run is started under ``torchrun --nproc-per-node 2``, killed on rank 0 after three epochs and resumed
under torchrun; the weights, per-example predictions and files must match an uninterrupted one-process run
with the same global batch. Every process but rank 0 runs with an audit hook that raises on any write under
the test's directory, so a stray write by another rank fails the run loudly. The digits splits and batch
sizes are chosen so that neither the last training batch (53 rows) nor the evaluation batches (97, 69 rows)
split evenly over two processes. A second run compiles the model (``optim.compile``) under torchrun.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from banets import distributed
from banets.config import UserError, load_config
from banets.epoch_position import generator_states, load_generator_states
from banets.experiment import run_experiment
from banets.runs import SeedDirectory, load_checkpoint

TINY = """\
name: tiny
seeds: [0]
device: cpu
data: {dataset: digits, val_size: 360, batch_size: 64, eval_batch_size: 97}
model: {name: mlp, options: {hidden: [32]}}
optim: {epochs: 2, lr: 0.1, schedule: constant, progress: none}
ban: {generations: 1, loss: ban}
"""

WORKER = """\
import os, sys
from banets.cli import main

ROOT = os.path.realpath(sys.argv[1])
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND


def refuse_writes(event, args):
    if event == "open":
        paths = [args[0]] if args[2] & WRITE_FLAGS else []
    elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree"):
        paths = [a for a in args[:2] if isinstance(a, (str, os.PathLike))]
    else:
        return
    for path in paths:
        if isinstance(path, (str, os.PathLike)) and os.path.realpath(path).startswith(ROOT):
            raise PermissionError(f"rank {os.environ['RANK']} must not write {path} ({event})")


if os.environ["RANK"] != "0":
    sys.addaudithook(refuse_writes)
elif "CRASH_AFTER_EPOCHS" in os.environ:
    from banets.runs import SeedDirectory
    original, calls = SeedDirectory.on_epoch_end, []

    def crash(self, spec, trainer, record):
        original(self, spec, trainer, record)
        calls.append(spec.name)
        if len(calls) == int(os.environ["CRASH_AFTER_EPOCHS"]):
            raise RuntimeError("simulated kill")

    SeedDirectory.on_epoch_end = crash
sys.exit(main(sys.argv[2:]))
"""


def torchrun(tmp_path, *argv, **env):
    """``torchrun --standalone`` (a free port of its own) with two CPU processes running the worker."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(tmp_path / "worker.py"), str(tmp_path), *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def files(root):
    """The run's files but TensorBoard's (a resumed run adds an event file per resumed model)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.parts[len(root.parts)] != "tensorboard")


def weights(seed_dir, name):
    entry = SeedDirectory(seed_dir).manifest["models"][name]
    return load_checkpoint(seed_dir / entry["checkpoint"], entry["sha256"])["model"]


def test_torchrun_matches_one_process_resumes_and_only_rank_0_writes(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "worker.py").write_text(WORKER)
    run_experiment(load_config(str(tmp_path / "tiny.yaml")), tmp_path / "single")

    killed = torchrun(tmp_path, "run", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "dist"), CRASH_AFTER_EPOCHS="3")
    assert killed.returncode != 0 and "simulated kill" in killed.stderr, killed.stderr[-3000:]
    models = SeedDirectory(tmp_path / "dist" / "seed-0").manifest["models"]
    assert (models["teacher"]["status"], models["BAN-1"]["status"], models["BAN-1"]["epoch"]) == ("done", "running", 1)

    resumed = torchrun(tmp_path, "resume", str(tmp_path / "dist"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "must not write" not in killed.stderr + resumed.stderr
    assert resumed.stdout.count("Verdict:") == 1  # the summary is printed by rank 0 only

    single, dist = tmp_path / "single" / "seed-0", tmp_path / "dist" / "seed-0"
    assert files(dist) == files(single)
    assert len((dist / "metrics.jsonl").read_text().splitlines()) == 4  # 2 models x 2 epochs, each written once
    for name in ("teacher", "BAN-1"):
        ours, theirs = weights(dist, name), weights(single, name)
        for key in theirs:
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6, msg=f"{name} {key}")
    for split, rows in (("val", 360), ("test", 360), ("train", 1077)):
        ours, theirs = SeedDirectory(dist).load_predictions(split), SeedDirectory(single).load_predictions(split)
        for name in ("teacher", "BAN-1"):
            assert len(ours[name].labels) == rows
            assert torch.equal(ours[name].labels, theirs[name].labels)  # every example once, in order
            torch.testing.assert_close(ours[name].nll, theirs[name].nll, rtol=1e-4, atol=1e-5)
    results = json.loads((dist / "results.json").read_text())
    expected = json.loads((single / "results.json").read_text())
    assert [r["error"] for r in results["test"]] == pytest.approx([r["error"] for r in expected["test"]], abs=0.3)


def test_torchrun_with_torch_compile_trains_the_same_teacher_as_one_eager_process(tmp_path):
    """The model compiled first, then wrapped in DDP (PyTorch's advice), on real processes: same weights."""
    (tmp_path / "tiny.yaml").write_text(TINY.replace("generations: 1", "generations: 0").replace("epochs: 2", "epochs: 1"))
    (tmp_path / "worker.py").write_text(WORKER)
    run_experiment(load_config(str(tmp_path / "tiny.yaml")), tmp_path / "eager")
    compiled = torchrun(tmp_path, "run", str(tmp_path / "tiny.yaml"), "--set", "optim.compile=true", "--out", str(tmp_path / "dist"))
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    ours, theirs = weights(tmp_path / "dist" / "seed-0", "teacher"), weights(tmp_path / "eager" / "seed-0", "teacher")
    assert ours.keys() == theirs.keys()  # the compiled wrapper's "_orig_mod." prefix is not saved
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6, msg=key)


def test_rows_of_splits_a_batch_into_contiguous_near_equal_parts():
    for total in (1, 53, 64, 97):
        parts = [distributed.rows_of(total, rank, 4) for rank in range(4)]
        assert [i for part in parts for i in range(total)[part]] == list(range(total))
        sizes = [part.stop - part.start for part in parts]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_shares_make_the_average_of_per_process_gradients_the_global_mean(monkeypatch):
    """DDP averages the processes' gradients: with uneven rows, each mean loss must be weighted by its share."""
    weight = torch.randn(5, 3, requires_grad=True)
    x, y = torch.randn(53, 5), torch.randint(0, 3, (53,))
    torch.nn.functional.cross_entropy(x @ weight, y).backward()
    expected, weight.grad = weight.grad.clone(), None
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        xs, ys, share = distributed.split_batch(x, y)
        (torch.nn.functional.cross_entropy(xs @ weight, ys) * share / 2).backward()
    torch.testing.assert_close(weight.grad, expected)


def test_with_padding_the_shares_make_the_average_the_mean_over_real_tokens(monkeypatch):
    """Token labels with padding (-100) spread unevenly over the processes: each process's mean over its real tokens,
    weighted by its share, averages to the global batch's mean over real tokens (not over rows)."""
    weight = torch.randn(5, 3, requires_grad=True)
    x, y = torch.randn(7, 6, 5), torch.randint(0, 3, (7, 6))
    y[:3, 1:] = -100  # the first process's rows are mostly padding
    ce = torch.nn.functional.cross_entropy
    ce((x @ weight).reshape(-1, 3), y.reshape(-1), ignore_index=-100).backward()
    expected, weight.grad = weight.grad.clone(), None
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        xs, ys, share = distributed.split_batch(x, y)
        (ce((xs @ weight).reshape(-1, 3), ys.reshape(-1), ignore_index=-100) * share / 2).backward()
    torch.testing.assert_close(weight.grad, expected)


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused(tmp_path, monkeypatch):
    (tmp_path / "tiny.yaml").write_text(TINY.replace("batch_size: 64", "batch_size: 63"))
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(UserError, match="data.batch_size=63 .* split evenly over 2 processes"):
        run_experiment(load_config(str(tmp_path / "tiny.yaml")), tmp_path / "out")


def test_each_process_draws_its_own_dropout_masks_and_one_process_keeps_its_stream(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    masks = []
    for rank in (0, 1, 0):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        distributed.reseed_per_process(7)
        masks.append(torch.nn.functional.dropout(torch.ones(256), 0.5))
    assert not torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])  # per rank, and reproducible
    monkeypatch.setattr(distributed, "world_size", lambda: 1)
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    distributed.reseed_per_process(7)
    assert torch.equal(torch.rand(4), expected)


def test_a_checkpoint_inside_an_epoch_gives_each_process_back_its_own_generators(monkeypatch):
    states = []
    for seed in (1, 2):  # what two processes' generators are at the checkpoint
        torch.manual_seed(seed)
        states.append(generator_states(torch.Generator().manual_seed(seed + 10)))
    assert not torch.equal(states[0]["torch"], states[1]["torch"])
    for rank, expected in ((0, 1), (1, 2), (2, 1)):  # a third process (resumed on more) takes them in turn
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        augment = torch.Generator()
        load_generator_states(states, augment)
        assert torch.equal(torch.get_rng_state(), states[expected - 1]["torch"])
        assert torch.equal(augment.get_state(), torch.Generator().manual_seed(expected + 10).get_state())


def test_torchrun_on_streamed_images_matches_one_process_and_every_rank_exits_0(tmp_path):
    """Each process reads and augments only its rows of every global batch, in a DataLoader worker: the views
    are keyed by example, so two processes train the weights one process trains (up to float rounding)."""
    from test_stream import write_photos

    write_photos(tmp_path / "photos", per_class=13, size=(30, 24))  # 26 images: 22 train (batches 8, 8, 6), 4 val
    (tmp_path / "images.yaml").write_text(TINY.replace(
        "data: {dataset: digits, val_size: 360, batch_size: 64, eval_batch_size: 97}",
        f"data: {{dataset: imagefolder, path: {tmp_path / 'photos'}, image_size: 12, val_size: 4, batch_size: 8, "
        f"eval_batch_size: 3, workers: 1}}").replace("options: {hidden: [32]}", "options: {in_features: 432, hidden: [16]}"))
    one_and_two_processes_train_alike(tmp_path, "images.yaml")


def one_and_two_processes_train_alike(tmp_path, config: str) -> None:
    """The run of ``config`` in one process (``single``) and under torchrun with two (``dist``): every rank exits 0,
    only rank 0 writes, and the teacher's and BAN-1's weights agree up to float rounding."""
    (tmp_path / "worker.py").write_text(WORKER)
    run_experiment(load_config(str(tmp_path / config)), tmp_path / "single")
    dist = torchrun(tmp_path, "run", str(tmp_path / config), "--out", str(tmp_path / "dist"))
    assert dist.returncode == 0 and "must not write" not in dist.stderr, dist.stderr[-3000:]
    for name in ("teacher", "BAN-1"):
        ours, theirs = weights(tmp_path / "dist" / "seed-0", name), weights(tmp_path / "single" / "seed-0", name)
        for key in theirs:
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6, msg=f"{name} {key}")


def test_torchrun_on_named_inputs_matches_one_process(tmp_path):
    """Labelled texts (the textclass dataset): batches of named inputs split row by row over two processes train the
    weights one process trains, and every validation text is predicted once."""
    from test_textclass import reviews, write_csv

    path = write_csv(tmp_path / "reviews.csv", reviews(34))  # 26 to train (batches 8, 8, 8, 2), 8 to validate
    (tmp_path / "texts.yaml").write_text(TINY.replace(
        "data: {dataset: digits, val_size: 360, batch_size: 64, eval_batch_size: 97}",
        f"data: {{dataset: textclass, path: {path}, tokenizer: words, val_size: 8, batch_size: 8, "
        f"eval_batch_size: 3}}").replace("model: {name: mlp, options: {hidden: [32]}}",
                                         "model: {name: transformer_classifier, options: {dim: 8, layers: 1, "
                                         "heads: 2, dropout: 0.0}}"))
    one_and_two_processes_train_alike(tmp_path, "texts.yaml")
    ours, theirs = (SeedDirectory(tmp_path / run / "seed-0").load_predictions("val") for run in ("dist", "single"))
    assert len(ours["BAN-1"].labels) == 8 and torch.equal(ours["BAN-1"].labels, theirs["BAN-1"].labels)
