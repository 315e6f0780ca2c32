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


def snapshot(root: Path) -> dict[str, str]:
    """Every file below ``root`` (links left out) and its sha256."""
    return {str(p.relative_to(root)): sha256_of(p) for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}
