"""Run directories: what a born-again run leaves on disk, and how a killed run picks up where it stopped.

Layout of one run (one seed)::

    config.yaml        the resolved configuration
    manifest.json      per model: role, generation, seed, loss, teacher, status, checkpoint, sha256, metrics
    metrics.jsonl      one JSON line per model and epoch (an epoch redone after a crash appears again:
                       readers keep the last line per model and epoch)
    checkpoints/       <model>.pt when finished; <model>.epoch<N>.pt while training (the last two kept)
    predictions/       per-example predictions on each split, for reports and intervals
    results.json       the final table rows
    tensorboard/       <model>/events.out.tfevents.*: the per-epoch scalars, when tensorboard is installed

Checkpoints are written to a temporary file and renamed, hold only tensors and plain containers (loaded
with ``weights_only=True``, so loading never runs code), and are verified by their sha256 before use: a
corrupt epoch checkpoint is skipped in favour of the previous good one; a corrupt final checkpoint makes
its model train again from its recorded seed (on CPU bitwise the same model, so later generations stay valid).

A run is resumed with the config it was started with: only runtime keys (device, progress, data path) may
change, and ``ban.ensembles``, which only evaluation uses: resuming a finished run with new ensembles
evaluates them from the saved models and, once they are evaluated, records them in ``config.yaml``. A run with
a failed model (its loss became NaN/inf) is not resumed: the same recipe would fail again, so the fix (say a
lower learning rate) starts a new run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from banets.config import ExperimentConfig, from_dict, to_dict
from banets.engine import Trainer
from banets.generations import ModelSpec
from banets.metrics import Predictions

FORMAT_VERSION = 1
KEEP_EPOCH_CHECKPOINTS = 2


class RunError(RuntimeError):
    """A run directory that cannot be used as asked (another config, another format version)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_checkpoint(path: Path, state: dict) -> str:
    """Save ``state`` atomically; return its sha256."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(path: Path, sha256: Optional[str] = None) -> dict:
    """Load a checkpoint safely (tensors and plain containers only), after checking its sha256."""
    if sha256 is not None and sha256_of(path) != sha256:
        raise RunError(f"checkpoint {path} does not match its recorded sha256 (corrupt or truncated)")
    return torch.load(path, map_location="cpu", weights_only=True)


class TensorBoardLog:
    """Per-epoch scalars of each model as TensorBoard event files in ``root/<model>``, when tensorboard is
    installed (``pip install banets[tensorboard]``); otherwise nothing, silently. Never prompts or logs in."""

    def __init__(self, root: Path):
        self.root = root
        self.writers: dict[str, Any] = {}

    def log(self, model: str, record: dict) -> None:
        writer = self.writers.get(model) or self._open(model, purge_step=record["epoch"])
        if writer is None:
            return
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                writer.add_scalar(key.replace("_", "/", 1), value, global_step=record["epoch"])
        writer.flush()  # a killed run keeps its curves up to the last finished epoch

    def close(self, model: str) -> None:
        if model in self.writers:
            self.writers.pop(model).close()

    def _open(self, model: str, purge_step: int):
        """A writer for ``model`` that hides events from ``purge_step`` on (epochs redone after a crash)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        self.writers[model] = SummaryWriter(str(self.root / model), purge_step=purge_step)
        return self.writers[model]


class RunDirectory:
    """A run directory; implements the driver's ``Store`` so that training resumes from it."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        self.manifest: dict[str, Any] = json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else {}
        self.tensorboard = TensorBoardLog(self.root / "tensorboard")

    # -- creation and compatibility --------------------------------------------------------------------

    def start(self, config: dict, resume: bool) -> None:
        """Create the directory for ``config``, or check that an existing one was made by the same config."""
        config_path = self.root / "config.yaml"
        if config_path.exists():
            if not resume:
                raise RunError(f"{self.root} already holds a run; continue it with `banets resume {self.root}` or choose another --out")
            self._check_compatible(config)
            self._check_not_failed()
            self._remove_temporary_files()
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_config(config)
        self.manifest = {"format_version": FORMAT_VERSION, "models": {}}
        self._write_manifest()

    def _check_compatible(self, config: dict) -> None:
        version = self.manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise RunError(f"{self.root} was written by run format {version}, this banets writes {FORMAT_VERSION}; start a new run")
        saved, wanted = _without_runtime(with_defaults(self.config())), _without_runtime(with_defaults(config))
        changed = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        if changed:
            raise RunError(f"{self.root} was made with another config (differs in {', '.join(changed)}); resume it unchanged "
                           f"(only {', '.join(RUNTIME_KEYS)} may change) or start a new run with `banets run ... --out NEW`")

    def _check_not_failed(self) -> None:
        failed = {name: e.get("error", "") for name, e in self.manifest.get("models", {}).items() if e.get("status") == "failed"}
        if failed:
            name, error = next(iter(failed.items()))
            raise RunError(f"{self.root}: {name} failed ({error}); resuming the same config would fail again, so start a new "
                           f"run with the fix, e.g. `banets run {self.config()['name']} --set optim.lr=... --out NEW`")

    def _remove_temporary_files(self) -> None:
        """Temporary files of writes a crash interrupted (never renamed into place, so never referenced)."""
        for tmp in self.root.glob("**/.*.tmp"):
            tmp.unlink()

    def config(self) -> dict:
        return yaml.safe_load((self.root / "config.yaml").read_text())

    def _write_config(self, config: dict) -> None:
        atomic_write_text(self.root / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    # -- the driver's Store ----------------------------------------------------------------------------

    def entry(self, spec: ModelSpec) -> dict:
        return self.manifest["models"].setdefault(spec.name, {
            "role": spec.role, "generation": spec.generation, "seed": spec.seed, "loss": spec.loss,
            "loss_options": spec.loss_options, "teacher": spec.teacher, "status": "pending",
        })

    def finished(self, spec: ModelSpec) -> Optional[dict]:
        """A finished model's final checkpoint; None (train it again) when it is not finished or corrupt."""
        entry = self.manifest.get("models", {}).get(spec.name)
        if not entry or entry.get("status") != "done":
            return None
        try:
            return load_checkpoint(self.root / entry["checkpoint"], entry["sha256"])
        except (RunError, OSError, RuntimeError) as error:
            warnings.warn(f"{spec.name}: {error}; training {spec.name} again from its seed {spec.seed} (on CPU the same "
                          f"model bit for bit; finished models it taught are kept)")
            entry["status"] = "pending"
            return None

    def progress(self, spec: ModelSpec) -> Optional[dict]:
        """The newest epoch checkpoint whose sha256 matches; corrupt ones are reported and skipped."""
        entry = self.manifest.get("models", {}).get(spec.name, {})
        for saved in reversed(entry.get("epoch_checkpoints", [])):
            try:
                return load_checkpoint(self.root / saved["path"], saved["sha256"])
            except (RunError, OSError, RuntimeError) as error:
                warnings.warn(f"{spec.name}: skipping checkpoint {saved['path']}: {error}")
        return None

    def on_epoch_end(self, spec: ModelSpec, trainer: Trainer, record: dict) -> None:
        path = Path("checkpoints") / f"{spec.name}.epoch{trainer.epoch}.pt"
        sha = save_checkpoint(self.root / path, trainer.state_dict())
        self._append_jsonl("metrics.jsonl", {"model": spec.name, **record})
        self.tensorboard.log(spec.name, record)
        entry = self.entry(spec)
        kept = [*entry.get("epoch_checkpoints", []), {"path": str(path), "sha256": sha, "epoch": trainer.epoch}]
        for old in kept[:-KEEP_EPOCH_CHECKPOINTS]:
            (self.root / old["path"]).unlink(missing_ok=True)
        entry.update(status="running", epoch=trainer.epoch, epoch_checkpoints=kept[-KEEP_EPOCH_CHECKPOINTS:])
        self._write_manifest()

    def on_finished(self, spec: ModelSpec, trainer: Trainer) -> None:
        path = Path("checkpoints") / f"{spec.name}.pt"
        sha = save_checkpoint(self.root / path, {"model": trainer.model.state_dict(), "history": trainer.history})
        entry = self.entry(spec)
        for old in entry.pop("epoch_checkpoints", []):
            (self.root / old["path"]).unlink(missing_ok=True)
        entry.update(status="done", epoch=trainer.epoch, checkpoint=str(path), sha256=sha,
                     final=trainer.history[-1] if trainer.history else {})
        self._write_manifest()
        self.tensorboard.close(spec.name)

    def epochs(self) -> list[dict]:
        """The per-epoch records of ``metrics.jsonl``, the last one per model and epoch (an epoch redone after
        a crash appears twice; a line cut short by a crash is skipped)."""
        path = self.root / "metrics.jsonl"
        latest: dict[tuple, dict] = {}
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            latest[record["model"], record["epoch"]] = record
        return list(latest.values())

    def mark_failed(self, name: str, message: str) -> None:
        self.manifest["models"].setdefault(name, {}).update(status="failed", error=message)
        self._write_manifest()

    # -- results -----------------------------------------------------------------------------------------

    def save_predictions(self, split: str, predictions: dict[str, Predictions]) -> None:
        save_checkpoint(self.root / "predictions" / f"{split}.pt", {name: vars(p) for name, p in predictions.items()})

    def load_predictions(self, split: str) -> dict[str, Predictions]:
        saved = load_checkpoint(self.root / "predictions" / f"{split}.pt")
        return {name: Predictions(**fields) for name, fields in saved.items()}

    def save_results(self, results: dict) -> None:
        atomic_write_text(self.root / "results.json", json.dumps(results, indent=2))

    def record_ensembles(self, ensembles: dict[str, list[str]]) -> None:
        """Write ``ensembles`` into ``config.yaml`` when a resume evaluated other ones than the run was started with."""
        saved = self.config()
        if saved.get("ban", {}).get("ensembles", {}) != ensembles:
            saved.setdefault("ban", {})["ensembles"] = ensembles
            self._write_config(saved)

    def _append_jsonl(self, name: str, record: dict) -> None:
        """Append one JSON line; after a line a crash cut short, start a new line (readers skip the cut one)."""
        with open(self.root / name, "a+b") as f:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write(json.dumps(record).encode() + b"\n")

    def _write_manifest(self) -> None:
        atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=2))


RUNTIME_KEYS = ("device", "optim.progress", "seeds", "data.path", "ban.ensembles")  # may differ between a run and its resume


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        flat.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return flat


def with_defaults(config: dict) -> dict:
    """``config`` with every key of the current schema, so a run saved before a key existed compares by its default."""
    return to_dict(from_dict(ExperimentConfig, config))


def _without_runtime(config: dict) -> dict:
    return {k: v for k, v in _flatten(config).items() if not k.startswith(RUNTIME_KEYS)}
