"""Kill a real `banets run` with SIGKILL at chosen moments, resume it, and compare with an uninterrupted run.

The kill points are made deterministic by a wrapper around ``banets.cli.main`` that patches one function in
the child process (no test hooks in the library): the training step (mid-epoch), the end of a model (between
generations), and the atomic write of a checkpoint (half of the temporary file written, then death).
On CPU the resumed run must end with the same weights, metrics and results, bit for bit.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from banets.cli import main
from banets.runs import SeedDirectory, load_checkpoint, sha256_of
from tiny import KILL_AT, tiny

RUN = ["run", "demo", *tiny(epochs=3, generations=2, controls=True)]
STEPS_PER_EPOCH = 17  # 1077 training digits in batches of 64

KILLS = {
    "mid-epoch": ("step", 3 * STEPS_PER_EPOCH + STEPS_PER_EPOCH + 8),  # BAN-1, epoch 2, step 8
    "between-generations": ("finished", 2),  # BAN-1 saved, BAN-2 not started
    "epoch-checkpoint-write": ("write", 6),  # teacher epochs 1-3, teacher.pt, BAN-1 epoch 1, then BAN-1 epoch 2
    "final-checkpoint-write": ("write", 4),  # the teacher's final checkpoint
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted run and one killed run per kill point, the killed ones in parallel; every part of every
    run uses one thread (the same arithmetic everywhere, and no oversubscribed cores)."""
    root = tmp_path_factory.mktemp("kill")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    children = {name: subprocess.Popen([sys.executable, "-c", KILL_AT, mode, str(at), *RUN, "--out", str(root / name)],
                                       env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True)
                for name, (mode, at) in KILLS.items()}
    try:
        assert main([*RUN, "--out", str(root / "straight")]) == 0
        for name, child in children.items():
            _, err = child.communicate(timeout=600)
            assert child.returncode == -signal.SIGKILL, f"{name}: the kill point was never reached\n{err}"
        assert_killed_where_intended(root)
        yield root
    finally:
        torch.set_num_threads(threads)


def assert_killed_where_intended(root):
    models = {name: SeedDirectory(root / name / "seed-0").manifest["models"] for name in KILLS}
    assert models["mid-epoch"]["BAN-1"]["status"] == "running" and models["mid-epoch"]["BAN-1"]["epoch"] == 1
    assert models["between-generations"]["BAN-1"]["status"] == "done" and "BAN-2" not in models["between-generations"]
    assert models["epoch-checkpoint-write"]["BAN-1"]["epoch"] == 1
    assert models["final-checkpoint-write"]["teacher"]["status"] == "running"
    for name in ("epoch-checkpoint-write", "final-checkpoint-write"):
        assert list((root / name / "seed-0" / "checkpoints").glob(".*.tmp")), name  # the half-written temporary file


def final_weights(seed_dir):
    return {name: load_checkpoint(seed_dir / e["checkpoint"], e["sha256"])["model"]
            for name, e in SeedDirectory(seed_dir).manifest["models"].items()}


def untimed(records: list[dict]) -> list[dict]:
    """Epoch records or result rows without their wall-clock ``seconds`` and ``minutes``, which no two runs share."""
    return [{k: v for k, v in r.items() if k != "seconds" and not k.startswith("minutes")} for r in records]


@pytest.mark.parametrize("kill", list(KILLS))
def test_resume_after_sigkill_is_bitwise_the_uninterrupted_run(runs, kill):
    assert main(["resume", str(runs / kill)]) == 0
    straight, resumed = runs / "straight" / "seed-0", runs / kill / "seed-0"
    expected, got = final_weights(straight), final_weights(resumed)
    assert list(got) == list(expected) == ["teacher", "BAN-1", "BAN-2", "LS", "CE"]
    for name, state in expected.items():
        assert state.keys() == got[name].keys()
        assert all(torch.equal(state[k], got[name][k]) for k in state), name
    results = [json.loads((d / "results.json").read_text()) for d in (resumed, straight)]
    assert {k: untimed(v) for k, v in results[0].items()} == {k: untimed(v) for k, v in results[1].items()}
    assert untimed(SeedDirectory(resumed).epochs()) == untimed(SeedDirectory(straight).epochs())  # redone epochs replace the lost ones
    for folder in ("checkpoints", "weights", "predictions"):  # the files themselves, byte for byte
        digests = [{p.name: sha256_of(p) for p in (d / folder).iterdir()} for d in (resumed, straight)]
        assert digests[0] == digests[1], folder
    leftovers = sorted(p.name for p in (resumed / "checkpoints").iterdir())
    assert leftovers == sorted(f"{name}.pt" for name in expected)  # no temporary file, no stale epoch checkpoint
    assert not list(resumed.glob("**/.*.tmp"))
