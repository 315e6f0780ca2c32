"""Checkpoints inside an epoch (``optim.checkpoint_every``): a run SIGKILLed at random steps inside epochs resumes at
the step after its last checkpoint and ends bitwise where the uninterrupted run ends, for images streamed from shards
by a DataLoader worker and for a language model whose hidden state and teacher cache carry over from batch to batch."""

import os
import random
import signal
import subprocess
import sys

import pytest
import torch

from banets import losses
from banets.cli import main
from banets.config import TrainConfig, load_config
from banets.data.batches import TensorBatches
from banets.data.registry import build_dataset
from banets.data.shards import write_shards
from banets.engine import Trainer
from banets.runs import SeedDirectory, load_checkpoint
from test_lm_pipeline import write_markov_text
from test_stream import write_photos
from tiny import KILL_AT, tiny, tiny_lm

IMAGES = ["run", "demo", "--set", "data={dataset: shards, image_size: 16, batch_size: 4, val_size: 4, workers: 1}",
          "--set", "model={name: small_cnn, options: {width: 4}}", "--set", "optim.checkpoint_every=3",
          *tiny(epochs=2, width=None)]  # 26 training images: 7 steps an epoch, 28 steps in all
LM = ["run", "wap_quick", *tiny_lm(epochs=2), "--set", "optim.checkpoint_every=2", "--set", "ban.cache_teacher=auto"]


def kill_points(per_epoch: int, epochs: int, count: int) -> list[int]:
    """``count`` steps drawn at random (seeded), as KILL_AT counts them (the N-th of the run, killed before it), each
    after its epoch's third step (so a checkpoint inside the epoch exists) and before the epoch's end."""
    inside = [e * per_epoch + s for e in range(epochs) for s in range(4, per_epoch + 1)]
    return sorted(random.Random(0).sample(inside, count))


def final_weights(seed_dir):
    return {name: load_checkpoint(seed_dir / e["checkpoint"], e["sha256"])["model"]
            for name, e in SeedDirectory(seed_dir).manifest["models"].items()}


def steps_per_epoch(seed_dir) -> int:
    return len(build_dataset(load_config(str(seed_dir / "config.yaml")).data).train)


def killed_and_resumed_equal_straight(root, args):
    """The run straight, then killed at three random steps inside its first four epochs and resumed."""
    assert main([*args, "--out", str(root / "straight")]) == 0
    points = kill_points(steps_per_epoch(root / "straight" / "seed-0"), 4, 3)
    children = {at: subprocess.Popen([sys.executable, "-c", KILL_AT, "step", str(at), *args, "--out", str(root / str(at))],
                                     env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True) for at in points}
    resumed_inside = 0
    for at, child in children.items():
        _, err = child.communicate(timeout=300)
        assert child.returncode == -signal.SIGKILL, f"step {at} was never reached\n{err[-2000:]}"
        models = SeedDirectory(root / str(at) / "seed-0").manifest["models"]
        resumed_inside += any("step_checkpoint" in entry for entry in models.values())
        assert main(["resume", str(root / str(at))]) == 0
        straight, resumed = final_weights(root / "straight" / "seed-0"), final_weights(root / str(at) / "seed-0")
        for name in straight:
            for key in straight[name]:
                assert torch.equal(straight[name][key], resumed[name][key]), f"killed at step {at}: {name} {key}"
        assert not list((root / str(at) / "seed-0" / "checkpoints").glob("*.step.pt"))  # gone once finished
    assert resumed_inside == len(points)


def test_images_streamed_from_shards_by_a_worker_resume_bitwise_inside_an_epoch(tmp_path):
    write_photos(tmp_path / "set", per_class=15, size=(40, 30))
    write_shards(tmp_path / "set", tmp_path / "shards", shard_size=8)  # read like a folder: see test_shards
    torch.set_num_threads(1)
    killed_and_resumed_equal_straight(tmp_path, [*IMAGES, "--data-dir", str(tmp_path / "shards")])


def test_a_language_model_with_a_teacher_cache_resumes_bitwise_inside_an_epoch(tmp_path):
    write_markov_text(tmp_path / "corpus")
    torch.set_num_threads(1)
    killed_and_resumed_equal_straight(tmp_path, [*LM, "--data-dir", str(tmp_path / "corpus")])


@pytest.mark.parametrize("every, message", [(0, "optim.checkpoint_every must be a number of steps"),
                                            ("soon", "optim.checkpoint_every must be a number of steps")])
def test_a_checkpoint_interval_that_is_neither_steps_nor_minutes_is_refused(every, message, capsys):
    assert main(["run", "demo", *tiny(), "--set", f"optim.checkpoint_every={every}"]) == 1
    assert message in capsys.readouterr().err


def test_checkpoints_inside_an_epoch_come_every_n_steps_but_not_at_its_end(tmp_path):
    x, y = torch.randn(24, 3), torch.arange(24) % 2
    written = []
    trainer = Trainer(torch.nn.Linear(3, 2), losses.get("ce"), TrainConfig(epochs=2, progress="none", checkpoint_every=2),
                      seed=0, device=torch.device("cpu"), on_checkpoint=lambda t: written.append((t.epoch, t.position["step"])))
    trainer.fit(TensorBatches(x, y, batch_size=4, shuffle=True))  # 6 steps an epoch
    assert written == [(0, 2), (0, 4), (1, 2), (1, 4)]  # step 6 ends the epoch: its epoch checkpoint is written
