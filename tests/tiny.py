"""What the run-directory tests share: overrides that make the demo tiny (1 epoch, BAN-1 only, width 4, seed 0)
and a word-level LSTM tiny, and a snapshot of a folder's files, to show that a refused command changed nothing."""

from __future__ import annotations

from pathlib import Path

from banets.runs import sha256_of

TINY = ["--set", "optim.epochs=1", "--set", "optim.progress=none", "--set", "ban.generations=1", "--set", "ban.extra_losses=[]",
        "--set", "ban.controls={}", "--set", "model.options.width=4", "--seeds", "0"]
LM = ["--set", "model.options={embed_dim: 8, hidden_dim: 8, num_layers: 1, dropout: 0.0, init_range: 0.1}",
      "--set", "data.batch_size=4", "--set", "data.eval_batch_size=4", "--set", "data.bptt=5", "--set", "optim.epochs=1",
      "--set", "ban.generations=1", "--set", "ban.extra_losses=[]", "--set", "optim.progress=none", "--seeds", "0"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file below ``root`` (links left out) and its sha256."""
    return {str(p.relative_to(root)): sha256_of(p) for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}
