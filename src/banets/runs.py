"""Run directories: what a born-again run leaves on disk, and how a killed run picks up where it stopped.

Layout of one run (one seed)::

    config.yaml        the resolved configuration
    manifest.json      per model: role, generation, seed, loss, teacher, status, checkpoint, sha256, metrics;
                       the ensembles' members; the digest of config.yaml; how the report scores models
    metrics.jsonl      one JSON line per model and epoch with its wall-clock seconds (an epoch redone after a
                       crash appears again: readers keep the last line per model and epoch)
    checkpoints/       <model>.pt when finished; <model>.epoch<N>.pt while training (the last two kept)
    weights/           <model>.safetensors: each finished model's weights, for use outside banets
    predictions/       per-example predictions on each split, for reports and intervals
    results.json       the final table rows
    vocab.json, ...    files the data record (a corpus' vocabulary), compared on resume
    tensorboard/       <model>/events.out.tfevents.*: the per-epoch scalars, when tensorboard is installed

A seed directory is created whole (written under a temporary name, then renamed), only after every check
has passed, so a failed start leaves nothing behind. Files are written to a temporary file and renamed, with
the permissions the umask gives. Checkpoints hold only tensors and plain containers (loaded with
``weights_only=True``, so loading never runs code), no timings (a rerun writes the same bytes), and are verified
by their sha256 before use: a corrupt epoch checkpoint is skipped in favour of the previous good one; a
corrupt final checkpoint makes its model train again from its recorded seed (on CPU bitwise the same model,
so later generations stay valid); a final checkpoint written just before a crash that the manifest never
recorded is checked and used. A ``weights/`` file that is missing or does not match its recorded sha256 is
written again from its model's checkpoint on resume.

A run is resumed with the config it was started with: only runtime keys (device, progress, data path) may
change, and ``ban.ensembles``, which only evaluation uses: resuming a finished run with new ensembles
evaluates them from the saved models and, once they are evaluated, records them in ``config.yaml``. An edited
``config.yaml`` is refused (its digest is in the manifest), and so are data whose recorded files differ. A run
with a failed model (its loss became NaN/inf) is not resumed: the same recipe would fail again, so the fix
(say a lower learning rate) starts a new run.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml

from banets import losses
from banets.config import (
    MODEL_NAME,
    BornAgainConfig,
    ConfigError,
    ExperimentConfig,
    UserError,
    from_dict,
    qualified_name,
    read_yaml,
    to_dict,
)
from banets.data.registry import Data
from banets.generations import ModelSpec, plan_ensembles, plan_generations
from banets.metrics import Predictions
from banets.models.registry import RENAMED

FORMAT_VERSION = 2  # 2: banets 0.3, every record below in every manifest; 1: banets 0.2 and before (see upgrade)
UNREADABLE_NAMES = 100  # unreadable examples named in the manifest; the count is of all
KEEP_EPOCH_CHECKPOINTS = 2
SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")  # predictions/<split>.pt
TEACHER_CHECKPOINT = "model.teacher_checkpoint"
RUNTIME_KEYS = (  # may change on resume (a given teacher is compared with the one the run saved)
    "device", "optim.progress", "optim.checkpoint_every", "data.workers", "data.path", "data.val_path",
    "data.test_path", "data.download", "ban.ensembles",
    TEACHER_CHECKPOINT,
)


REPORT_DIR = "report"  # the sub-folder of an output folder that a run's report goes into


class RunError(UserError, RuntimeError):
    """An output folder or seed directory that cannot be used as asked (another config, another format version,
    damaged files)."""


SEED_PREFIX = "seed-"  # an output folder holds one seed directory per seed: seed-<s>/


def seed_dir(out: Path, seed: int) -> Path:
    """Where seed ``seed`` of the run in output folder ``out`` lives."""
    return Path(out) / f"{SEED_PREFIX}{seed}"


def seed_of(path: Path) -> int | None:
    """The seed a folder named ``seed-<s>`` holds; None for any other name."""
    number = path.name.removeprefix(SEED_PREFIX)
    return int(number) if path.name.startswith(SEED_PREFIX) and number.isdigit() else None


def is_seed_dir(path: Path) -> bool:
    """A seed directory: a folder holding the manifest a run writes, with its config, when it starts."""
    return path.is_dir() and (path / "manifest.json").is_file()


def is_start_leftover(path: Path) -> bool:
    """What a start interrupted before its seed directory was renamed into place (``.seed-<s>.<random>.tmp``)."""
    return path.name.startswith(f".{SEED_PREFIX}") and path.name.endswith(".tmp")


def seed_dirs(out: Path) -> list[Path]:
    """The seed directories of the run in output folder ``out``; refused when ``out`` holds none."""
    if not Path(out).is_dir():
        raise RunError(f"{out} is not a folder; pass the --out of a run (the folder holding seed-*/)")
    if is_seed_dir(Path(out)):
        raise RunError(f"{out} is one seed of a run; pass the run's folder, {Path(out).absolute().parent}")
    dirs = sorted(p for p in Path(out).glob(f"{SEED_PREFIX}*") if is_seed_dir(p) and seed_of(p) is not None)
    if not dirs:
        raise RunError(f"{out} holds no run (no seed-*/manifest.json); start one with `banets run PRESET --out {out}`")
    return dirs


def find_seed_dirs(paths: list[Path]) -> list[Path]:
    """Every seed directory at or below ``paths`` (output folders, folders of them, or seed directories)."""
    found = []
    for path in map(Path, paths):
        found += [path] if is_seed_dir(path) else sorted(p.parent for p in path.glob("**/manifest.json"))
    if not found:
        raise RunError(f"no seed directories under {', '.join(map(str, paths))}")
    return found




def config_record(config: ExperimentConfig, **changes: Any) -> dict:
    """``config`` as ``config.yaml`` records it: callables (your losses, optimizer, schedule) by their
    ``module:function`` name."""
    ban = replace(
        config.ban,
        loss=losses.name_of(config.ban.loss),
        extra_losses=[losses.name_of(x) for x in config.ban.extra_losses],
    )
    optim = replace(config.optim, optimizer=named(config.optim.optimizer), schedule=named(config.optim.schedule))
    return to_dict(replace(config, ban=ban, optim=optim, **changes))


def named(value: str | Callable) -> str:
    return value if isinstance(value, str) else qualified_name(value)


def _umask() -> int:
    """The process's umask, read without setting it where Linux shows it (setting it races other threads)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0)
        os.umask(mask)
        return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one, never half; the file
    gets the permissions an ordinary ``open`` would (0666 less the umask), so colleagues can read a shared run."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise RunError(os_error_message(error, len(data), path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise RunError(os_error_message(error, len(data), path)) from None
        raise


def os_error_message(error: OSError, needed: int | None = None, path: Path | None = None) -> str:
    """One line for a file system error met while writing or reading a run or a report: the path, the cause in
    words, and what to do (a run resumes where it stopped once the cause is fixed)."""
    where = path or error.filename or "a file"
    again = "then run the same command again (a run continues with `banets resume`)"
    if error.errno == errno.ENOSPC:
        size = f" ({needed:,} bytes needed)" if needed else ""
        device = f"the device holding {Path(where).parent}" if path or error.filename else "a device"
        return f"no space left on {device}{size}; free space there, {again}"
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"cannot write {where} ({error.strerror}); copy the run or report folder to a place you can write, "
                f"or choose another --out")
    if error.errno == errno.ENAMETOOLONG:
        return f"the name {where} is too long for the file system; choose a shorter --out (or name)"
    if error.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return (f"cannot use {where} ({error.strerror}): a file stands where banets keeps a folder, or the reverse; "
                f"move it away, {again}")
    return f"cannot use {where} ({error.strerror or error}); {again}"


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def matches(path: Path, sha256: str | None) -> bool:
    """Whether ``path`` is a file whose sha256 is ``sha256``."""
    return path.is_file() and sha256_of(path) == sha256


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_checkpoint(path: Path, state: dict) -> str:
    """Save ``state`` (CPU copies of its tensors, so any machine can load it) atomically; return its sha256."""
    buffer = io.BytesIO()
    torch.save(to_cpu(state), buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor inside (dicts, lists, tuples) moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def canonical(records: list[dict]) -> list[dict]:
    """``records`` rebuilt through JSON, so that equal records pickle to equal bytes whether they were made in this
    process or loaded from a checkpoint (pickle shares repeated key strings only when they are one object)."""
    return json.loads(json.dumps(records))


def load_checkpoint(path: Path, sha256: str | None = None) -> dict:
    """Load a checkpoint safely (tensors and plain containers only), after checking its sha256."""
    if sha256 is not None and not matches(path, sha256):
        raise RunError(f"checkpoint {path} does not match its recorded sha256 (corrupt or truncated)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged or unsafe file; its advice must not be shown
        raise RunError(
            f"checkpoint {path} cannot be loaded safely ({type(error).__name__}: damaged, or holds more "
            f"than tensors and plain containers)"
        ) from None


def save_weights(path: Path, model: nn.Module) -> str:
    """The model's parameters and buffers as ``.safetensors`` (shared tensors, e.g. tied embeddings, stored once);
    returns the file's sha256."""
    from safetensors import SafetensorError
    from safetensors.torch import save_model

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp") as scratch:
            tmp = Path(scratch) / path.name
            save_model(model, str(tmp))
            data = tmp.read_bytes()
    except (OSError, SafetensorError) as error:  # safetensors reports a full disk as its own error
        cause = error if isinstance(error, OSError) else OSError(errno.EIO, str(error))
        raise RunError(os_error_message(cause, path=path)) from None
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


class TensorBoardLog:
    """Per-epoch scalars of each model as TensorBoard event files in ``root/<model>``, when tensorboard is
    installed (``pip install banets[tensorboard]``); otherwise nothing, silently. Never prompts or logs in."""

    def __init__(self, root: Path):
        self.root = root
        self.writers: dict[str, Any] = {}
        self.off = False  # after a file system error: the run goes on without curves

    def log(self, model: str, record: dict) -> None:
        try:
            writer = self.writers.get(model) or self._open(model, purge_step=record["epoch"])
            if writer is None:
                return
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    writer.add_scalar(key.replace("_", "/", 1), value, global_step=record["epoch"])
            writer.flush()  # a killed run keeps its curves up to the last finished epoch
        except OSError as error:  # optional: a full disk or a read-only folder turns it off, not the run
            self.off = True
            warnings.warn(f"tensorboard logging off: {os_error_message(error)}", stacklevel=2)

    def close(self, model: str) -> None:
        if model in self.writers:
            self.writers.pop(model).close()

    def _open(self, model: str, purge_step: int):
        """A writer for ``model`` that hides events from ``purge_step`` on (epochs redone after a crash)."""
        if self.off:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        self.writers[model] = SummaryWriter(str(self.root / model), purge_step=purge_step)
        return self.writers[model]


class SeedDirectory:
    """A seed directory (one seed of a run); implements the driver's ``Store`` so that training resumes from it."""

    def __init__(self, root: str | Path, read_only: bool = False):
        self.root = Path(root)
        self.read_only = read_only  # under torchrun every process but rank 0 reads the directory and writes nothing
        self.manifest_path = self.root / "manifest.json"
        link = first_link(self.root)
        if link is not None:
            raise RunError(
                f"{link} is a symbolic link; banets writes none into a run and follows none that it finds "
                f"there, so replace it with the file or folder it points to (or remove it)"
            )
        self.manifest: dict[str, Any] = self._read_manifest() if self.manifest_path.exists() else {}
        self.tensorboard = TensorBoardLog(self.root / "tensorboard")

    def _read_manifest(self) -> dict:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RunError(
                f"{self.manifest_path} is damaged (not valid JSON: truncated or edited); restore it from a "
                f"copy, or start a new run with another --out"
            ) from None
        problem = manifest_problem(manifest)
        if problem:
            raise RunError(
                f"{self.manifest_path} is not a banets manifest ({problem}); restore it, or start a new run with "
                f"another --out"
            )
        return upgrade(manifest, self.root) if manifest.get("format_version") == 1 else manifest

    # -- creation and compatibility --------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.root / "config.yaml").exists()

    def start(self, config: dict, data: Data, run_seeds: list[int]) -> None:
        """Create the directory whole: ``config.yaml``, the manifest (with what it keeps of ``data``: the metric,
        the bootstrap block, the model options derived from the data; and ``run_seeds``, every seed of the run it
        belongs to, so a resume can start the ones an interruption never reached) and the data's ``files``, written
        into a temporary folder that is then renamed, so a crash leaves either no directory or a complete one."""
        if self.root.exists():
            raise RunError(
                f"{self.root} already exists; continue it with `banets resume {self.root.parent}` or choose "
                "another --out"
            )
        self.root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root.parent, prefix=f".{self.root.name}.", suffix=".tmp"))
        try:
            os.chmod(staging, 0o777 & ~_umask())
            config_text = yaml.safe_dump(config, sort_keys=False)
            atomic_write_text(staging / "config.yaml", config_text)
            for name, text in data.files.items():
                atomic_write_text(staging / name, text)
            self.manifest = {
                "format_version": FORMAT_VERSION,
                "config_sha256": _digest(config_text),
                **data.record(),
                "data_files": sorted(data.files),
                "data_sha256": {name: _digest(text) for name, text in sorted(data.files.items())},
                "run_seeds": list(run_seeds),
                "models": {},
                "ensembles": {},
                "predictions": {},
            }
            atomic_write_text(staging / "manifest.json", json.dumps(self.manifest, indent=2))
            os.rename(staging, self.root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def check_resumable(self, config: dict, files: dict[str, str] | None = None) -> None:
        """Check that this run can continue with ``config`` and data that record ``files``; tidy crash leftovers."""
        self._check_complete()
        self._check_compatible(config)
        self.check_not_failed()
        differing = self.data_differences(files or {})
        if differing:
            raise RunError(
                f"the data differ from those {self.root} was started with ({differing[0]} differs); pass the data "
                f"the run was started with (--data-dir), or start a new run"
            )
        self._remove_temporary_files()

    def check_same_experiment(self, config: dict, files: dict[str, str], resuming: bool) -> None:
        """Another seed of the run in this folder must be the same experiment: the same config (but its seed and
        runtime keys) and the same data, or the report would average two experiments as one. A new seed's trained
        teacher must be the very file the others used; a resume may point every seed at its new place."""
        may_change = RUNTIME_KEYS if resuming else tuple(k for k in RUNTIME_KEYS if k != TEACHER_CHECKPOINT)
        changed, differing = list(self.config_differences(config, may_change)), self.data_differences(files)
        if changed or differing:
            what = f"config (differs in {', '.join(changed)})" if changed else f"data ({differing[0]} differs)"
            raise RunError(
                f"{self.root.parent} holds {self.root.name} of another {what}; a new seed must repeat its "
                f"experiment exactly, so choose another --out"
            )

    def data_differences(self, files: dict[str, str]) -> list[str]:
        """The data files whose recorded text differs from ``files``' or that are missing; a file the run did not
        record when it started (made before banets recorded it, e.g. a text corpus' digests) is not compared."""
        recorded = self.manifest["data_files"]
        return [
            name
            for name, text in files.items()
            if (self.data_file(name) != text if (self.root / name).exists() else name in recorded)
        ]

    def data_file(self, name: str) -> str:
        """The text of a file the data recorded (``vocab.json``, ``data.json``), refused when it is not the one the
        run wrote (its sha256 is in the manifest of runs made since banets recorded it)."""
        path = self.root / name
        text = path.read_text(encoding="utf-8", errors="replace")
        recorded = self.manifest.get("data_sha256", {}).get(name)
        if recorded is not None and _digest(text) != recorded:
            raise RunError(
                f"{path} is damaged or edited (it does not match the sha256 the run recorded); restore it "
                f"from a copy of the run"
            )
        return text

    def config_differences(
        self, config: dict, may_change: tuple[str, ...] = RUNTIME_KEYS
    ) -> dict[str, tuple[Any, Any]]:
        """The config keys in which ``config`` differs from this run's, in order, each with its (saved, wanted)
        values, but those in ``may_change``. A trained teacher may move (its weights are compared when it is used),
        but not come or go."""
        saved, wanted = (_flatten(with_defaults(c)) for c in (self.config(), config))
        changed = {
            k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k) and not k.startswith(may_change)
        }
        if bool(saved.get(TEACHER_CHECKPOINT)) != bool(wanted.get(TEACHER_CHECKPOINT)):
            changed.add(TEACHER_CHECKPOINT)
        return {k: (saved.get(k), wanted.get(k)) for k in sorted(changed)}

    def _check_compatible(self, config: dict) -> None:
        version = self.manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise RunError(
                f"{self.root} was written by run format {version}, this banets reads formats 1 and {FORMAT_VERSION}; "
                f"resume it with the banets that wrote it, or start a new run"
            )
        changed = self.config_differences(config)
        if changed:
            first, (saved, wanted) = next(iter(changed.items()))
            raise RunError(
                f"{self.root} was made with another config (differs in {', '.join(changed)}: {first} was "
                f"{saved!r}, now {wanted!r}); resume it unchanged "
                f"(only {', '.join(RUNTIME_KEYS)} may change) or start a new run with `banets run ... --out NEW`"
            )

    def check_not_failed(self) -> None:
        failed = {
            name: e.get("error", "")
            for name, e in self.manifest.get("models", {}).items()
            if e.get("status") == "failed"
        }
        if failed:
            name, error = next(iter(failed.items()))
            raise RunError(
                f"{self.root}: {name} failed ({error}); resuming the same config would fail again, so start a new "
                f"run with the fix, e.g. `banets run {self.config()['name']} --set optim.lr=... --out NEW`"
            )

    def _remove_temporary_files(self) -> None:
        """Temporary files and folders of writes a crash interrupted (never renamed into place, so never
        referenced); the run holds no links (checked when it was opened), so nothing outside is touched."""
        if not self.read_only:
            for tmp in self.root.glob("**/.*.tmp"):
                shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink(missing_ok=True)

    def _check_complete(self) -> None:
        if not self.manifest:
            what = "is empty" if self.manifest_path.exists() else "is missing"
            raise RunError(
                f"{self.manifest_path} {what}; {self.root} is not a complete banets run, so start a new run with "
                f"another --out"
            )

    def config(self) -> dict:
        """``config.yaml``, refused when it is not the one the run wrote (edited or damaged)."""
        self._check_complete()
        path = self.root / "config.yaml"
        recorded = {self.manifest.get(k) for k in ("config_sha256", "config_sha256_before")} - {None}
        if _digest(path.read_text(encoding="utf-8", errors="replace")) not in recorded:
            raise RunError(
                f"{path} is not the one the run wrote (edited or damaged); undo the edit or restore it (a resume "
                f"changes runtime keys with --set, not in this file), or start a new run"
            )
        config = read_yaml(path)
        missing = [key for key in ("name", "seeds", "data", "model") if key not in config]
        if missing:
            raise RunError(
                f"{path} lacks {', '.join(missing)}; restore it from a copy, or start a new run with another --out"
            )
        return config

    def recipe(self) -> dict[str, Any]:
        """What the seeds of one experiment share: the config but its seeds, descriptions and runtime keys, and the
        digests of the data's recorded files. A report averages seeds only when this is equal."""
        config = _flatten(with_defaults(self.config()))
        kept = {k: v for k, v in config.items() if not k.startswith((*RUNTIME_KEYS, "seeds", "description", "cost"))}
        names = [n for n in self.manifest.get("data_files") or [] if (self.root / n).is_file()]
        teacher = self.manifest.get("models", {}).get("teacher", {}).get("weights_sha256")
        given = {"given teacher's weights": teacher} if config.get(TEACHER_CHECKPOINT) else {}
        return {**kept, **given, **{f"data file {name}": _digest(self.data_file(name)) for name in names}}

    # -- what the run recorded, for reports and load --------------------------------------------------------

    @property
    def models(self) -> dict[str, dict]:
        """Each model's entry: role, generation, seed, loss, teacher, status, checkpoint, final metrics."""
        return self.manifest.get("models", {})

    @property
    def run_seeds(self) -> list[int]:
        """Every seed of the run this directory is one of (a resume starts those an interruption never reached)."""
        return self.manifest.get("run_seeds", [])

    @property
    def scoring(self) -> tuple[str, int]:
        """How the report scores the models: the metric (error or perplexity) and the bootstrap block."""
        return self.manifest["metric"], self.manifest["bootstrap_block"]

    @property
    def ensembles(self) -> dict[str, list[str]]:
        """Every ensemble evaluated, by label, with its members."""
        return self.manifest["ensembles"]

    @property
    def splits(self) -> list[str]:
        """The splits whose predictions are saved."""
        return sorted(self.manifest["predictions"])

    def finished_state(self, name: str) -> tuple[dict, dict]:
        """Model ``name``'s entry and its final checkpoint, verified; refused when it is not finished."""
        entry = self.models.get(name)
        if entry is None or entry.get("status") != "done":
            finished = [n for n, e in self.models.items() if e.get("status") == "done"]
            raise RunError(
                f"{self.root} has no finished model {name!r}; its finished models are {', '.join(finished) or 'none'}"
            )
        try:
            return entry, load_checkpoint(self.root / entry["checkpoint"], entry["sha256"])
        except RunError as error:
            raise RunError(
                f"{error}; resuming the run (`banets resume {self.root.parent}`, or born_again(..., resume=True) for "
                f"a run made from Python) trains {name} again from its recorded seed"
            ) from None

    def model_options(self) -> dict[str, Any]:
        """The options the data gave the models (``num_classes``, a vocabulary's words, ...), to build them again."""
        if "model_options" not in self.manifest:
            raise RunError(
                f"{self.root} was made by a banets that did not record its models' data options; pass the "
                f"model: load(..., model_fn=lambda: create_model(NAME, num_classes=..., ...))"
            )
        options = dict(self.manifest["model_options"])
        for option, file in self.manifest.get("options_in_files", {}).items():
            options[option] = json.loads(self.data_file(file))[option]
        return options

    def is_finished(self, models: list[str], ensembles: dict[str, list[str]]) -> bool:
        """Whether every one of ``models`` is done with an intact checkpoint, the predictions are saved and
        ``ensembles`` are the recorded ones: then a resume has nothing to do."""
        entries = [self.manifest.get("models", {}).get(m, {}) for m in models]
        return (
            all(
                e.get("status") == "done" and self._intact(e) and self._weights_intact(m, e)
                for m, e in zip(models, entries)
            )
            and (self.root / "results.json").exists()
            and self._predictions_intact()
            and self.manifest.get("ensembles") == ensembles
        )

    def _intact(self, entry: dict) -> bool:
        return matches(self.root / entry.get("checkpoint", ""), entry.get("sha256"))

    def _weights_path(self, name: str) -> Path:
        return self.root / "weights" / f"{name}.safetensors"

    def _weights_intact(self, name: str, entry: dict) -> bool:
        """The weights file as written."""
        return matches(self._weights_path(name), entry.get("weights_sha256"))

    # -- the driver's Store ----------------------------------------------------------------------------

    def entry(self, spec: ModelSpec) -> dict:
        return self.manifest["models"].setdefault(spec.name, {**spec.describe(), "status": "pending"})

    def finished(self, spec: ModelSpec) -> dict | None:
        """A finished model's final checkpoint; None (train it again) when it is not finished or corrupt."""
        entry = self.manifest.get("models", {}).get(spec.name)
        if entry and entry.get("status") != "done":
            return self._recover_final(spec, entry)
        if not entry:
            return None
        path = self.root / entry["checkpoint"]
        if not self._intact(entry):
            warnings.warn(
                f"{spec.name}: checkpoint {path} is missing or does not match its recorded sha256 (corrupt or "
                f"truncated); training {spec.name} again from its seed {spec.seed} (on CPU the same model bit for "
                f"bit; finished models it taught are kept)",
                stacklevel=2,
            )
            entry["status"] = "pending"
            return None
        return load_checkpoint(path)  # intact but unsafe to load: someone replaced it and its digest; refused

    def _recover_final(self, spec: ModelSpec, entry: dict) -> dict | None:
        """The final checkpoint of a model killed after writing it but before the manifest recorded it (the file is
        written whole or not at all); used when it loads and holds every epoch, else None (resume from epochs)."""
        path = self.root / "checkpoints" / f"{spec.name}.pt"
        if not path.exists() or entry.get("status") == "failed":
            return None
        if entry.get("sha256") and sha256_of(path) != entry["sha256"]:
            return None  # the corrupt checkpoint of a model being trained again, not a new one
        try:
            state = load_checkpoint(path)
        except RunError:
            return None
        if len(state.get("history", [])) != self.config().get("optim", {}).get("epochs"):
            return None
        self._record_finished(spec, path, sha256_of(path), state["history"])
        return state

    def progress(self, spec: ModelSpec) -> dict | None:
        """The newest checkpoint whose sha256 matches, inside an epoch or at its end; corrupt ones are reported
        and skipped."""
        entry = self.manifest.get("models", {}).get(spec.name, {})
        inside = [entry["step_checkpoint"]] if "step_checkpoint" in entry else []
        for saved in [*inside, *reversed(entry.get("epoch_checkpoints", []))]:
            try:
                return load_checkpoint(self.root / saved["path"], saved["sha256"])
            except (RunError, OSError) as error:
                warnings.warn(f"{spec.name}: skipping checkpoint {saved['path']}: {error}", stacklevel=2)
        return None

    def on_checkpoint(self, spec: ModelSpec, trainer: Any) -> None:
        """A checkpoint inside an epoch (``optim.checkpoint_every``): one file per model, replaced each time."""
        path = Path("checkpoints") / f"{spec.name}.step.pt"
        state = trainer.state_dict()
        sha = save_checkpoint(self.root / path, {**state, "history": canonical(state["history"])})
        self.entry(spec).update(status="running", step_checkpoint={"path": str(path), "sha256": sha,
                                                                   "epoch": trainer.epoch,
                                                                   "step": state["position"]["step"]})
        self._write_manifest()

    def on_epoch_end(self, spec: ModelSpec, trainer: Any, record: dict) -> None:
        path = Path("checkpoints") / f"{spec.name}.epoch{trainer.epoch}.pt"
        state = trainer.state_dict()
        sha = save_checkpoint(self.root / path, {**state, "history": canonical(state["history"])})
        self._append_jsonl("metrics.jsonl", {"model": spec.name, **record})
        self.tensorboard.log(spec.name, record)
        entry = self.entry(spec)
        inside = entry.pop("step_checkpoint", None)
        kept = [*entry.get("epoch_checkpoints", []), {"path": str(path), "sha256": sha, "epoch": trainer.epoch}]
        for old in kept[:-KEEP_EPOCH_CHECKPOINTS]:
            (self.root / old["path"]).unlink(missing_ok=True)
        entry.update(status="running", epoch=trainer.epoch, epoch_checkpoints=kept[-KEEP_EPOCH_CHECKPOINTS:])
        self._write_manifest()
        self._remove_unrecorded(inside)

    def on_finished(self, spec: ModelSpec, model: nn.Module, history: list[dict]) -> None:
        path = self.root / "checkpoints" / f"{spec.name}.pt"
        sha = save_checkpoint(path, {"model": model.state_dict(), "history": canonical(history)})
        self.entry(spec)["weights_sha256"] = save_weights(self._weights_path(spec.name), model)
        self._record_finished(spec, path, sha, history)
        self.tensorboard.close(spec.name)

    def on_loaded(self, spec: ModelSpec, model: nn.Module) -> None:
        """A finished model loaded from its (verified) checkpoint: its ``weights/`` file, if missing or not the
        one written (damaged, edited), is written again from it."""
        entry = self.entry(spec)
        if self.read_only or self._weights_intact(spec.name, entry):
            return
        path = self._weights_path(spec.name)
        if "weights_sha256" in entry:
            warnings.warn(
                f"{spec.name}: {path} is missing or does not match its recorded sha256 (damaged or edited); "
                f"writing it again from checkpoint {entry['checkpoint']}",
                stacklevel=2,
            )
        entry["weights_sha256"] = save_weights(path, model)
        self._write_manifest()

    def _remove_unrecorded(self, saved: dict | None) -> None:
        """Remove a checkpoint the manifest no longer names (after writing it: a kill in between leaves a file
        no manifest names, never a name without its file)."""
        if saved is not None and not self.read_only:
            (self.root / saved["path"]).unlink(missing_ok=True)

    def _record_finished(self, spec: ModelSpec, path: Path, sha: str, history: list[dict]) -> None:
        entry = self.entry(spec)
        inside = entry.pop("step_checkpoint", None)
        for old in entry.pop("epoch_checkpoints", []):
            if not self.read_only:
                (self.root / old["path"]).unlink(missing_ok=True)
        entry.update(
            status="done",
            epoch=len(history),
            checkpoint=str(path.relative_to(self.root)),
            sha256=sha,
            final=history[-1] if history else {},
        )
        self._write_manifest()
        self._remove_unrecorded(inside)

    def epochs(self) -> list[dict]:
        """The per-epoch records of ``metrics.jsonl``, the last one per model and epoch (an epoch redone after
        a crash appears twice; a line cut short by a crash is skipped)."""
        path = self.root / "metrics.jsonl"
        latest: dict[tuple, dict] = {}
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (
                isinstance(record, dict)
                and isinstance(record.get("model"), str)
                and isinstance(record.get("epoch"), int)
            ):
                latest[record["model"], record["epoch"]] = record  # anything else is a damaged line: skipped
        return list(latest.values())

    def mark_failed(self, name: str, message: str) -> None:
        self.manifest["models"].setdefault(name, {}).update(status="failed", error=message)
        self._write_manifest()

    # -- results -----------------------------------------------------------------------------------------

    def save_predictions(self, split: str, predictions: dict[str, Predictions]) -> None:
        sha = save_checkpoint(
            self.root / "predictions" / f"{split}.pt", {name: vars(p) for name, p in predictions.items()}
        )
        self.manifest.setdefault("predictions", {})[split] = sha
        self._write_manifest()

    def load_predictions(self, split: str) -> dict[str, Predictions]:
        """The per-example predictions saved for ``split``, verified by their recorded sha256."""
        path = self.root / "predictions" / f"{split}.pt"
        if not matches(path, self.manifest["predictions"].get(split)):
            raise RunError(
                f"{path} is damaged (it does not match its recorded sha256); `banets resume {self.root.parent}` "
                f"evaluates the saved models again"
            )
        saved = load_checkpoint(path)
        return {name: Predictions(**fields) for name, fields in saved.items()}

    def _predictions_intact(self) -> bool:
        """Every split's predictions as written."""
        recorded = self.manifest["predictions"]
        folder = self.root / "predictions"
        return bool(recorded) and all(matches(folder / f"{split}.pt", sha) for split, sha in recorded.items())

    def save_results(self, results: dict) -> None:
        atomic_write_text(self.root / "results.json", json.dumps(results, indent=2))

    def record_unreadable(self, names: list[str]) -> None:
        """The examples left out as unreadable (``data.skip_unreadable``): their count and the first names."""
        self.manifest["unreadable"] = {"count": len(names), "names": names[:UNREADABLE_NAMES]}
        self._write_manifest()

    def on_stopped(self, after: str, reason: str) -> None:
        """Where and why ``ban.generations: auto`` trained no more generations, for resume and the report."""
        self.manifest["stopped"] = {"after": after, "reason": reason}
        self._write_manifest()

    @property
    def stopped(self) -> str | None:
        """Why ``ban.generations: auto`` stopped (None: it did not, or the run trains a fixed number)."""
        recorded = self.manifest.get("stopped")
        return str(recorded.get("reason")) if isinstance(recorded, dict) else None

    @property
    def stopped_after(self) -> str | None:
        """The last generation ``ban.generations: auto`` trained, when it stopped."""
        recorded = self.manifest.get("stopped")
        return str(recorded.get("after")) if isinstance(recorded, dict) else None

    @property
    def unreadable(self) -> dict:
        """``{"count": N, "names": [the first ones]}`` of the examples left out as unreadable (count 0: none)."""
        recorded = self.manifest.get("unreadable") or {}
        count, names = recorded.get("count"), recorded.get("names")
        if not isinstance(count, int) or not isinstance(names, list):  # none recorded, or not as written
            return {"count": 0, "names": []}
        return {"count": count, "names": [str(name) for name in names]}

    def record_ensembles(self, ensembles: dict[str, list[str]], requested: dict[str, list[str]]) -> None:
        """Record every ensemble's members in the manifest, and write ``requested`` (``ban.ensembles``) into
        ``config.yaml`` when a resume evaluated other ones than the run was started with."""
        saved = self.config()
        self.manifest["ensembles"] = ensembles
        if saved.get("ban", {}).get("ensembles", {}) == requested:
            self._write_manifest()
            return
        saved.setdefault("ban", {})["ensembles"] = requested
        text = yaml.safe_dump(saved, sort_keys=False)
        self.manifest["config_sha256_before"] = self.manifest.get("config_sha256")  # a kill between the two writes
        self.manifest["config_sha256"] = _digest(text)  # leaves a config.yaml that matches one of them
        self._write_manifest()
        atomic_write_text(self.root / "config.yaml", text)

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
        if not self.read_only:
            atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=2))


def upgrade(manifest: dict, root: Path) -> dict:
    """A manifest of format 1 (banets 0.2 and before) as format 2. What an older release did not record is derived
    from the run's files as they are now, so taken on trust, as that release read them unverified: the config's
    digest, the report's metric and bootstrap block, the ensembles its config plans, the data files' digests, each
    finished model's weights digest and the predictions' digests. Only the data options of the models of the
    oldest runs cannot be derived: loading one of them needs the model (``load(..., model_fn=)``)."""
    config_text = (root / "config.yaml").read_text(encoding="utf-8", errors="replace")
    config = read_yaml(root / "config.yaml")
    data = config.get("data", {})
    text_data = data.get("dataset") == "text"
    upgraded = {"config_sha256": _digest(config_text), "metric": "perplexity" if text_data else "error",
                "bootstrap_block": data.get("bptt", 1) if text_data else 1, "data_files": [],
                **manifest, "format_version": FORMAT_VERSION}
    if "ensembles" not in upgraded:
        ban = from_dict(BornAgainConfig, config.get("ban", {}), "ban.")
        upgraded["ensembles"] = plan_ensembles(plan_generations(ban), ban)
    present = [name for name in upgraded["data_files"] if (root / name).is_file()]
    upgraded.setdefault("data_sha256", {name: _digest((root / name).read_text(encoding="utf-8", errors="replace"))
                                        for name in present})
    for name, entry in upgraded.get("models", {}).items():
        weights = root / "weights" / f"{name}.safetensors"
        if entry.get("status") == "done" and "weights_sha256" not in entry and weights.is_file():
            entry["weights_sha256"] = sha256_of(weights)
    if "predictions" not in upgraded:
        files = {split: root / "predictions" / f"{split}.pt" for split in scored_splits(root / "results.json")}
        upgraded["predictions"] = {split: sha256_of(f) if f.is_file() else "missing" for split, f in files.items()}
    return upgraded


def scored_splits(results: Path) -> list[str]:
    """The splits a ``results.json`` scores (none when it is missing or not a mapping of plain split names)."""
    try:
        scored = json.loads(results.read_text()) if results.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return []
    return [split for split in scored if SPLIT_NAME.match(split)] if isinstance(scored, dict) else []


def first_link(root: Path) -> Path | None:
    """``root`` or the first file or folder below it that is a symbolic link (a link to a folder is not entered)."""
    if root.is_symlink():
        return root
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            if os.path.islink(os.path.join(folder, name)):
                return Path(folder) / name
    return None


def recorded_paths(manifest: dict) -> list[tuple[str, Any]]:
    """Every file name the manifest records, with what records it: the run reads, writes or deletes each."""
    paths: list[tuple[str, Any]] = [("data_files", name) for name in manifest.get("data_files") or []]
    paths += [("options_in_files", name) for name in (manifest.get("options_in_files") or {}).values()]
    for model, entry in manifest.get("models", {}).items():
        paths += [(f"{model}'s checkpoint", entry["checkpoint"])] if "checkpoint" in entry else []
        paths += [
            (f"{model}'s epoch checkpoint", saved.get("path") if isinstance(saved, dict) else saved)
            for saved in entry.get("epoch_checkpoints") or []
        ]
        inside = entry.get("step_checkpoint")
        paths += [(f"{model}'s checkpoint inside an epoch", inside.get("path"))] if isinstance(inside, dict) else []
    return paths


def stays_inside(name: Any) -> bool:
    """Whether ``name`` is a relative path that cannot leave the folder it is joined to (no ``..``, not absolute)."""
    return (
        isinstance(name, str)
        and bool(name)
        and "\0" not in name
        and not Path(name).is_absolute()
        and ".." not in Path(name).parts
    )


def manifest_problem(manifest: Any) -> str:
    """What makes ``manifest`` not one banets wrote (empty when nothing does): a mapping whose models are mappings,
    each finished one naming its checkpoint and sha256, and whose run seeds are integers."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    models = manifest.get("models", {})
    if not isinstance(models, dict) or not all(isinstance(e, dict) for e in models.values()):
        return "its models are not a mapping of entries"
    if not all(MODEL_NAME.match(name) for name in models):  # a model's name names its files
        return f"its models are named {sorted(models)[:3]}, not as banets names them (teacher, BAN-1, ...)"
    for name, entry in models.items():
        if entry.get("status") == "done" and not all(isinstance(entry.get(k), str) for k in ("checkpoint", "sha256")):
            return f"the finished {name} names no checkpoint and sha256"
    if not all(isinstance(s, int) for s in manifest.get("run_seeds", [])):
        return "its run_seeds are not integers"
    try:
        paths = recorded_paths(manifest)
    except (TypeError, AttributeError):
        return "its recorded file names are not lists and mappings of names"
    for what, name in paths:
        if not stays_inside(name):
            return f"{what} is recorded as {name!r}, a path outside its seed directory"
    if not isinstance(manifest.get("data_sha256", {}), dict):
        return "its data_sha256 is not a mapping of file names to sha256"
    predictions = manifest.get("predictions", {})
    if not isinstance(predictions, dict) or not all(isinstance(v, str) for v in predictions.values()):
        return "its predictions are not a mapping of splits to sha256"
    if not all(SPLIT_NAME.match(split) for split in predictions):
        return f"its predictions name splits {sorted(predictions)}, not plain names such as val"
    return ""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def with_defaults(config: dict) -> dict:
    """``config`` with every key of the current schema, so a run saved before a key existed compares by its default,
    and its models by their current names (``registry.RENAMED``)."""
    try:
        values = to_dict(from_dict(ExperimentConfig, config))
    except ConfigError as error:
        raise RunError(f"the run's config.yaml does not fit this banets ({error}); start a new run") from None
    for key in ("name", "teacher_name"):
        values["model"][key] = RENAMED.get(values["model"][key], values["model"][key])
    return values
