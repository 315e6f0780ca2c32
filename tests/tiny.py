"""What the tests share to make a run tiny: the settings (1 epoch, BAN-1 only, width 4, seed 0, each widened by
keyword where a test needs more), their word-level LSTM counterpart, and a snapshot of a folder's files, to show
that a refused command changed nothing."""

from __future__ import annotations

from pathlib import Path

from banets.runs import sha256_of


def tiny_settings(epochs: int = 1, generations: int = 1, *, width: int | None = 4, extra_losses: bool = False,
                  controls: bool = False) -> list[str]:
    """``key=value`` settings for a tiny demo-like run: ``width=None`` for models without that option, and the
    preset's extra losses and controls kept only when asked for."""
    settings = [f"optim.epochs={epochs}", "optim.progress=none", f"ban.generations={generations}"]
    if width is not None:
        settings.append(f"model.options.width={width}")
    if not extra_losses:
        settings.append("ban.extra_losses=[]")
    if not controls:
        settings.append("ban.controls={}")
    return settings


def as_cli(settings: list[str], seeds: str | None = "0") -> list[str]:
    """``settings`` as ``--set`` arguments, and ``--seeds`` unless ``seeds`` is None."""
    return [arg for setting in settings for arg in ("--set", setting)] + (["--seeds", seeds] if seeds else [])


def tiny(epochs: int = 1, generations: int = 1, *, seeds: str | None = "0", **plan: int | bool | None) -> list[str]:
    """:func:`tiny_settings` as command-line arguments."""
    return as_cli(tiny_settings(epochs, generations, **plan), seeds)  # type: ignore[arg-type]


def tiny_lm(size: int = 8, epochs: int = 1, batch_size: int = 4, bptt: int = 5) -> list[str]:
    """A one-layer word-level LSTM of ``size`` units, BAN-1 only, as command-line arguments."""
    model = f"{{embed_dim: {size}, hidden_dim: {size}, num_layers: 1, dropout: 0.0, init_range: 0.1}}"
    settings = [f"model.options={model}", f"data.batch_size={batch_size}", f"data.bptt={bptt}",
                *tiny_settings(epochs, width=None, controls=True)]
    return as_cli(settings)


TINY = tiny()
LM = tiny_lm() + ["--set", "data.eval_batch_size=4"]


# A command run under ``python -c KILL_AT MODE N ARGS...``, SIGKILLed at the N-th event of MODE: "step" (before the N-th
# optimisation step), "finished" (right after the N-th model is saved), "write" (half-way through the N-th .pt file).
KILL_AT = r"""
import os, signal, sys, tempfile
import banets.engine, banets.runs
from banets.cli import main

mode, at = sys.argv[1], int(sys.argv[2])
calls = [0]

def due():
    calls[0] += 1
    return calls[0] == at

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if mode == "step":  # before the at-th optimisation step of the run
    step = banets.engine.Trainer._step
    def _step(self, *args):
        if due():
            die()
        return step(self, *args)
    banets.engine.Trainer._step = _step
elif mode == "finished":  # right after the at-th model is finished and saved
    finished = banets.runs.SeedDirectory.on_finished
    def on_finished(self, *args):
        finished(self, *args)
        if due():
            die()
    banets.runs.SeedDirectory.on_finished = on_finished
elif mode == "write":  # half-way through writing the at-th checkpoint file
    write = banets.runs.atomic_write_bytes
    def atomic_write_bytes(path, data):
        if path.suffix == ".pt" and due():
            fd, _ = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.write(fd, data[: len(data) // 2])
            os.fsync(fd)
            die()
        write(path, data)
    banets.runs.atomic_write_bytes = atomic_write_bytes
sys.exit(main(sys.argv[3:]))
"""


def snapshot(root: Path) -> dict[str, str]:
    """Every file below ``root`` (links left out) and its sha256."""
    return {str(p.relative_to(root)): sha256_of(p) for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}
