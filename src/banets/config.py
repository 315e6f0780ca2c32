"""Typed experiment configuration: dataclasses, YAML presets and ``--set key=value`` overrides.

A preset is a YAML file in ``banets/presets`` whose keys mirror :class:`ExperimentConfig`; ``extends:``
names another preset to start from, so a table row states only what differs. Overrides use dotted keys
(``optim.lr=0.05``), parse their value as YAML, and are checked against the field's type; an unknown key
names the nearest valid ones. Every section checks its values when it is built (from YAML, ``--set`` or
Python), so nonsense such as ``optim.epochs=0`` is refused before anything is trained or written.

The sections are handed whole to the code that uses them: ``optim`` (:class:`TrainConfig`) to the engine,
``ban`` (:class:`BornAgainConfig`) to the plan of generations, ``data`` to the dataset registry.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

PRESET_DIR = Path(__file__).parent / "presets"
MAX_SEED = 2**31 - 1


class UserError(Exception):
    """A problem with what the user gave (a config, data, a model, an output folder), not a bug in banets: the
    command line prints its one-line message, which names the problem and the fix, and exits with status 1."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (or its type's name), for one-line errors that wrap it."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def did_you_mean(word: str, choices: Iterable[str], n: int = 1, quote: bool = True) -> str:
    """``did you mean 'x'?`` naming the ``n`` of ``choices`` closest to ``word``; empty when none is close."""
    near = difflib.get_close_matches(word, list(choices), n=n)
    return f"did you mean {' or '.join(repr(c) if quote else c for c in near)}?" if near else ""


def qualified_name(fn: Any) -> str:
    """``module:qualname`` of a function: how configs name it, and how a registry knows a cell run again."""
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__name__)}"


def is_own(value: str | Callable) -> bool:
    """Whether a config value names the user's own function (a callable, or ``module:function``), not a built-in."""
    return callable(value) or ":" in value


class ConfigError(UserError, ValueError):
    """A configuration key or value that does not fit the schema."""


class Section:
    """A config section: its fields are type-checked and its values validated when it is built."""

    prefix: typing.ClassVar[str] = ""  # the section's dotted name in messages, e.g. "optim."

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # every Section is a dataclass
            setattr(self, f.name, coerce(getattr(self, f.name), hints[f.name], self.prefix + f.name))
        self.validate()

    def validate(self) -> None:
        """Check values beyond their types; raise :class:`ConfigError` naming the key and what it takes."""

    def check(self, condition: bool, key: str, takes: str) -> None:
        if not condition:
            raise ConfigError(f"{self.prefix}{key} must be {takes}, got {getattr(self, key)!r}")

    def check_choice(self, key: str, choices: tuple[str, ...]) -> None:
        value = getattr(self, key)
        if value not in choices:
            hint = did_you_mean(str(value), choices)
            hint = f"; {hint}" if hint else ""
            raise ConfigError(f"{self.prefix}{key}={value!r} is not one of {', '.join(choices)}{hint}")


OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("multistep", "cosine", "linear", "plateau", "constant")
SCHEDULE_UNITS = ("epoch", "step")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PROGRESS = ("model", "epoch", "none")
CACHE_DTYPES = ("auto", "fp32", "bf16", "fp16")
TOKENIZERS = ("whitespace", "words")
HF = "hf:"  # a Hugging Face model (model.name) or tokenizer (data.tokenizer) at a local path: hf:<path>


@dataclass
class TrainConfig(Section):
    """Optimiser, schedule and numerics of one model's training: the ``optim`` section.

    Defaults are Wide-ResNet's CIFAR recipe (SGD, Nesterov momentum 0.9, lr 0.1 cut x0.2 at 30/60/80% of
    the epochs, weight decay 5e-4) over a short 10 epochs: set ``epochs`` for your data (the paper's CIFAR
    presets use 200). ``progress``: ``model`` shows one bar per model on a terminal and one line per finished
    model elsewhere, ``epoch`` one line per epoch, ``none`` nothing.
    """

    prefix: typing.ClassVar[str] = "optim."
    epochs: int = 10
    # sgd | adam | adamw (decoupled weight decay, none on biases and norms), or your own: a callable model ->
    # torch.optim.Optimizer, or its module:function name
    optimizer: str | Callable = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    # multistep | cosine | linear (to 0) | plateau | constant, or your own: a callable (optimizer, total) -> scheduler
    # (total: the optimiser steps of the training with schedule_every: step, else the epochs), or module:function
    schedule: str | Callable = "multistep"
    schedule_every: str = "epoch"  # epoch | step: when the schedule moves (plateau: epoch only)
    warmup_steps: int = 0  # linear warmup over this many optimiser steps (with schedule_every: step)
    accumulate: int = 1  # batches whose gradients make one optimiser step (a global batch of batch_size x this)
    milestones: list[float] = field(default_factory=lambda: [0.3, 0.6, 0.8])  # fractions of the epochs
    gamma: float = 0.2  # learning-rate factor at each milestone or plateau
    plateau_threshold: float = 0.0  # plateau: validation perplexity must fall by more than this
    grad_clip: float | None = None  # max global gradient norm
    precision: str = "auto"  # auto (bf16 on GPUs with bf16 units, fp16 on older GPUs, fp32 on CPU) | fp32 | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    progress: str = "model"  # model | epoch | none
    checkpoint_every: int | str | None = None  # inside an epoch too: every N optimiser steps (500) or "30min"

    def validate(self) -> None:
        self.check(self.epochs >= 1, "epochs", "a positive number of epochs")
        self.check(self.checkpoint_every is None or checkpoint_interval(self.checkpoint_every) is not None,
                   "checkpoint_every", "a number of steps (e.g. 500) or of minutes (e.g. '30min'), or null")
        self.check(0 < self.lr < math.inf, "lr", "a positive finite number")
        self.check(0 <= self.momentum < 1, "momentum", "in [0, 1)")
        self.check(0 <= self.weight_decay < math.inf, "weight_decay", "0 or more, finite")
        self.check(all(0 < m <= 1 for m in self.milestones), "milestones", "fractions of the epochs in (0, 1]")
        self.check(0 < self.gamma <= 1, "gamma", "a factor in (0, 1]")
        self.check(self.plateau_threshold >= 0, "plateau_threshold", "0 or more")
        self.check(self.grad_clip is None or self.grad_clip > 0, "grad_clip", "positive or null")
        for key, names in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
            if not is_own(getattr(self, key)):
                self.check_choice(key, names)
        self.check_choice("schedule_every", SCHEDULE_UNITS)
        self.check(self.accumulate >= 1, "accumulate", "a positive number of batches")
        self.check(self.warmup_steps >= 0, "warmup_steps", "0 or more")
        self.check(not self.warmup_steps or self.schedule_every == "step", "warmup_steps",
                   "used with optim.schedule_every=step (warmup counts optimiser steps)")
        self.check(not self.warmup_steps or not is_own(self.schedule), "warmup_steps",
                   "0 with a schedule of your own (put the warmup in it)")
        self.check(self.schedule != "plateau" or self.schedule_every == "epoch", "schedule",
                   "one that moves every step with optim.schedule_every=step (plateau decides once an epoch)")
        self.check_choice("precision", PRECISIONS)
        self.check_choice("progress", PROGRESS)


def checkpoint_interval(every: int | str) -> tuple[str, float] | None:
    """``optim.checkpoint_every`` as ``("steps", n)`` or ``("seconds", s)``; None if it is neither."""
    if isinstance(every, int):
        return ("steps", every) if every >= 1 else None
    minutes = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*min\s*", every)
    return ("seconds", 60 * float(minutes[1])) if minutes and float(minutes[1]) > 0 else None


@dataclass
class DataConfig(Section):
    """The ``data`` section: which registered dataset, where it is, how it is split and batched. A dataset
    refuses the options it does not use (``banets datasets`` lists what each one takes)."""

    prefix: typing.ClassVar[str] = "data."
    dataset: str = "digits"  # a registered dataset: digits | cifar10 | cifar100 | text | imagefolder | tensors
    path: str | None = None  # local folder, archive or file; required when there is no network
    download: bool = False
    val_size: int = 5000  # carved from the training set, seeded by split_seed
    split_seed: int = 0
    train_subset: int | None = None  # train on the first N training examples (text: the first N tokens)
    batch_size: int = 128
    eval_batch_size: int = 500
    augment: bool = True  # images: pad-crop-flip (32 px or less), else random-resized crop and flip
    normalize: bool = False  # per-channel mean/std; the paper omits it (Section 4)
    max_vocab: int | None = 10000  # text: vocabulary cap
    tokenizer: str = "whitespace"  # text: whitespace (pre-tokenised, PTB) | words (raw text); textclass also hf:<path>
    bptt: int = 35  # text: unrolled steps
    image_size: int = 32  # imagefolder: images are resized (shorter side) and center-cropped to this size
    val_path: str | None = None  # tensors: a separate validation file (else carved from the training file)
    test_path: str | None = None  # tensors: a separate test file
    workers: int | None = None  # imagefolder, shards: DataLoader workers (null: the cores per process less one)
    skip_unreadable: bool = False  # imagefolder, shards: leave unreadable images out (listed in the report), not stop
    text_column: str = "text"  # textclass: the column of the texts
    label_column: str = "label"  # textclass: the column of the labels (integers, or names)
    max_length: int = 128  # textclass: texts are cut to this many tokens

    def validate(self) -> None:
        for key in ("batch_size", "eval_batch_size", "bptt", "image_size", "max_length"):
            self.check(getattr(self, key) >= 1, key, "a positive integer")
        self.check(self.val_size >= 0, "val_size", "0 or more")
        self.check(0 <= self.split_seed <= MAX_SEED, "split_seed", f"an integer in [0, {MAX_SEED}]")
        self.check(self.train_subset is None or self.train_subset >= 1, "train_subset", "a positive integer or null")
        self.check(self.workers is None or self.workers >= 0, "workers", "0 or more, or null")
        self.check(self.max_vocab is None or self.max_vocab >= 3, "max_vocab",
                   "3 or more (it counts <unk> and <eos>) or null")
        self.check(self.tokenizer in TOKENIZERS or self.tokenizer.startswith(HF), "tokenizer",
                   f"one of {', '.join(TOKENIZERS)}, or hf:<path> of a tokenizer.json (textclass)")


@dataclass
class ModelConfig(Section):
    """The ``model`` section: the students' architecture, and the teacher's when it differs or is given."""

    prefix: typing.ClassVar[str] = "model."
    name: str = "mlp"  # a name from `banets models`, or timm:<name>
    options: dict = field(default_factory=dict)  # keyword arguments of create_model
    teacher_name: str | None = None  # a teacher of another architecture (default: same as the students)
    teacher_options: dict = field(default_factory=dict)
    teacher_checkpoint: str | None = None  # a trained teacher (banets checkpoint, state dict or .safetensors)

    def validate(self) -> None:
        self.check(
            not self.teacher_options or self.teacher_name is not None,
            "teacher_options",
            "given with model.teacher_name (the teacher is the students' model otherwise: set model.options)",
        )


Loss = str | Callable  # a registered loss name, module:function, or a callable (student, teacher, labels) -> scalar


@dataclass
class BornAgainConfig(Section):
    """The ``ban`` section: the plan of born-again generations (Sec. 3.1), their losses and ensembles."""

    prefix: typing.ClassVar[str] = "ban."
    # born-again generations, or "auto": generation k+1 only while generation k beat its own teacher on validation
    # beyond noise (a paired bootstrap over the validation examples), at most max_generations
    generations: int | str = 3
    max_generations: int = 5
    loss: Loss = "ban"  # the generations' loss: ban | ban+l | cwtm | dkpp | kd, or your own
    loss_options: dict = field(default_factory=dict)
    extra_losses: list[Loss] = field(default_factory=list)  # one student of the teacher per loss (Table 2 columns)
    controls: dict = field(default_factory=dict)  # students without a teacher: label -> ce options
    init_from_teacher: bool = False  # generation 1 starts from the teacher's weights
    ensemble_teacher: bool = False  # also ensemble the teacher with the generations
    # more ensembles of trained models: label -> [names], e.g. {T+CE: [teacher, CE]}
    ensembles: dict = field(default_factory=dict)
    # the plain ensemble of equal cost beside each plain control (cross-entropy from another seed, no options): T+CE
    plain_ensemble: bool = True
    cache_teacher: str | None = None  # reuse the teacher's logits across epochs (data that repeat): auto|fp32|bf16|fp16
    share_layers: list[str] = field(default_factory=list)  # teacher modules copied and frozen: [conv1, classifier]

    def validate(self) -> None:
        self.check(self.generations == AUTO or (isinstance(self.generations, int) and self.generations >= 0),
                   "generations", f"0 or more, or {AUTO}")
        self.check(self.max_generations >= 1, "max_generations", "1 or more")
        if self.cache_teacher is not None:
            self.check_choice("cache_teacher", CACHE_DTYPES)
        for key in ("controls", "ensembles"):
            for label in getattr(self, key):
                self.check(
                    isinstance(label, str) and bool(MODEL_NAME.match(label)),
                    key,
                    f"labelled with letters, digits and _ . + * - (they name files), not {label!r}",
                )
        for label, options in self.controls.items():
            self.check(
                isinstance(options, dict), "controls", f"a mapping of labels to option mappings ({label!r} is not)"
            )
        for label, members in self.ensembles.items():
            self.check(
                isinstance(members, list) and all(isinstance(m, str) for m in members),
                "ensembles",
                f"a mapping of labels to lists of model names ({label!r} is not)",
            )

    @property
    def planned_generations(self) -> int:
        """The generations planned: ``generations``, or with ``auto`` the most it may train."""
        return self.max_generations if self.generations == AUTO else int(self.generations)


AUTO = "auto"  # ban.generations: as many as keep beating their teachers


PYTHON = "python"  # data.dataset of a run whose data and model were given from Python (born_again)
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+*-]*$")  # a control's or ensemble's label: it names files
DEVICE = re.compile(r"^(auto|cpu|mps|(cuda|xpu)(:\d+)?)$")


@dataclass
class ExperimentConfig(Section):
    name: str = "custom"
    description: str = ""
    cost: str = ""  # expected cost, shown by `banets presets`
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    imports: list[str] = field(default_factory=list)  # Python modules imported first: their models, datasets, losses
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: TrainConfig = field(default_factory=TrainConfig)
    ban: BornAgainConfig = field(default_factory=BornAgainConfig)

    def validate(self) -> None:
        self.check(bool(self.seeds), "seeds", "a non-empty list of seeds, e.g. [0, 1, 2]")
        self.check(all(0 <= s <= MAX_SEED for s in self.seeds), "seeds", f"integers in [0, {MAX_SEED}]")
        self.check(len(set(self.seeds)) == len(self.seeds), "seeds", "distinct")
        self.check(bool(DEVICE.match(self.device)), "device", "auto, cpu, cuda, cuda:N or mps")
        self.check(
            bool(re.match(r"^\w[\w.+-]*$", self.name)),
            "name",
            "letters, digits and . _ + - only, from a letter or digit",
        )


# -- building configs from dictionaries ----------------------------------------------------------------


def from_dict(cls: type, values: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from nested ``values``, rejecting unknown keys and ill-typed values."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    check_text_keys(values, prefix.rstrip(".") or "the config")
    for key, value in values.items():
        if key not in names:
            raise ConfigError(unknown_key_message(first_leaf(prefix + key, value), all_keys(ExperimentConfig)))
        kwargs[key] = coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against the type ``hint`` (ints are accepted for floats, callables for ``Callable``)."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} is a section; set its fields, e.g. {key}.{dataclasses.fields(hint)[0].name}=...")
        return from_dict(hint, value, key + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):  # Optional[X], X | None
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            try:
                return coerce(value, option, key)
            except ConfigError:
                pass
        return coerce(value, options[-1], key)
    if origin is collections.abc.Callable or hint is Callable:
        if not callable(value):
            raise ConfigError(f"{key} expects a name or a callable, got {value!r} ({type(value).__name__})")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} expects a list, got {value!r}; write it as [a, b, ...]")
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} expects a mapping, got {value!r}; write it as {{k: v}}")
        check_no_glued_colons(value, key)
        check_text_keys(value, key)
        return dict(value)
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        return _as_float(value, key)
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
    ):
        raise ConfigError(f"{key} expects {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value


def check_text_keys(mapping: dict, where: str) -> None:
    """A section's keys, and those of a mapping it holds (options, controls, ensembles), are names: ``1: 2`` is not
    (an option's own value may be any mapping, e.g. class weights ``{0: 1.0, 1: 2.0}``)."""
    for key in mapping:
        if not isinstance(key, str):
            raise ConfigError(f"{where} has the key {key!r}, not a name; config keys are names such as lr or width")


def check_no_glued_colons(mapping: dict, key: str) -> None:
    """YAML reads ``{width:4}`` as a key ``"width:4"`` without a value: refuse it, naming the space it needs."""
    for inner, value in mapping.items():
        if isinstance(inner, str) and ":" in inner and value is None:
            name, _, number = inner.partition(":")
            raise ConfigError(
                f"{key} has a key {inner!r} without a value; YAML needs a space after the colon: {{{name}: {number}}}"
            )
        if isinstance(value, dict):
            check_no_glued_colons(value, f"{key}.{inner}")


def _as_float(value: int | str, key: str) -> float:
    """Ints and numeric strings YAML 1.1 leaves unparsed, such as ``1e-3``, are floats."""
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{key} expects float, got {value!r} (str)") from None


def all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        nested = isinstance(hint, type) and dataclasses.is_dataclass(hint)
        keys += all_keys(hint, f"{prefix}{f.name}.") if nested else [prefix + f.name]
    return keys


def first_leaf(key: str, value: Any) -> str:
    """The dotted key of the first leaf below ``key`` (``modle``, ``{name: x}`` -> ``modle.name``)."""
    while isinstance(value, dict) and value:
        inner, value = next(iter(value.items()))
        key = f"{key}.{inner}"
    return key


def unknown_key_message(key: str, valid: list[str]) -> str:
    hint = did_you_mean(key, valid, n=3, quote=False) or "`banets presets --keys` lists them"
    return f"unknown config key {key!r}; {hint}"


# -- presets and overrides ------------------------------------------------------------------------------


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_dict(name_or_path: str, chain: tuple[str, ...] = ()) -> dict:
    """The preset's nested dictionary with its ``extends:`` chain merged in (later keys win)."""
    if name_or_path in chain:
        raise ConfigError(
            f"presets extend each other in a circle: {' -> '.join([*chain, name_or_path])}; break the circle"
        )
    if not isinstance(name_or_path, str):
        raise ConfigError(f"extends: takes one preset name or YAML file, got {name_or_path!r}")
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        if not path.is_file():
            raise ConfigError(
                f"no file {path}; give a YAML config file that exists, or a preset name (`banets presets`)"
            )
    else:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        hint = did_you_mean(str(name_or_path), preset_names(), n=3, quote=False) or "see `banets presets`"
        raise ConfigError(f"no preset {name_or_path!r}; {hint}")
    values = read_yaml(path)
    parent = values.pop("extends", None)
    values.setdefault("name", path.stem)
    return deep_merge(preset_dict(parent, (*chain, name_or_path)), values) if parent else values


def read_yaml(path: Path) -> dict:
    """A YAML mapping from ``path``; a file that is not one is a one-line :class:`ConfigError`."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ConfigError(
            f"{path} is not valid YAML{line} ({getattr(error, 'problem', None) or error}); fix the file"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"{path} holds a {type(values).__name__}, not a mapping of config keys; see `banets presets --keys`"
        )
    return values


def deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (
            deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def apply_override(values: dict, text: str) -> dict:
    """``values`` with ``"optim.lr=0.05"`` applied: the value, parsed as YAML, replaces what the key held, a
    mapping included (``ban.controls={}`` removes every control; presets' ``extends:`` merges instead)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value, e.g. optim.lr=0.05")
    key, raw = text.split("=", 1)
    *parents, leaf = key.strip().split(".")
    updated = dict(values)
    cursor = updated
    for part in parents:
        inner = cursor.get(part)
        cursor[part] = dict(inner) if isinstance(inner, dict) else {}
        cursor = cursor[part]
    try:
        cursor[leaf] = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(
            f"override {text!r}: the value is not valid YAML ({getattr(error, 'problem', None) or error}); "
            "quote it for the shell, e.g. --set 'ban.controls={CE: {}}'"
        ) from None
    return updated


PATH_KEYS = (("data", "path"), ("data", "val_path"), ("data", "test_path"), ("model", "teacher_checkpoint"))


def load_config(preset: str | None = None, overrides: tuple[str, ...] | list[str] = ()) -> ExperimentConfig:
    """The preset (or the defaults) with ``overrides`` applied, validated; its file paths made absolute (from the
    current folder; links kept as given), so that the run's ``config.yaml`` finds them from anywhere on resume."""
    return config_of(preset_dict(preset) if preset else {}, overrides)


def config_of(values: dict, overrides: tuple[str, ...] | list[str] = ()) -> ExperimentConfig:
    """The config ``values`` hold (a preset's or a run's) with ``overrides`` applied, validated, paths made absolute."""
    for override in overrides:
        values = apply_override(values, override)
    config = from_dict(ExperimentConfig, values)
    for section, key in PATH_KEYS:
        path = getattr(getattr(config, section), key)
        if path:
            setattr(getattr(config, section), key, absolute_path(path))
    for section, key in (("model", "name"), ("model", "teacher_name"), ("data", "tokenizer")):  # hf:<path> too,
        name = getattr(getattr(config, section), key)  # when the path is there (else its error names it as given)
        if name and name.startswith(HF) and Path(name[len(HF):]).expanduser().exists():
            setattr(getattr(config, section), key, HF + absolute_path(name[len(HF):]))
    return config


def absolute_path(path: str | Path) -> str:
    """``path`` from the current folder, ``~`` expanded, links kept as given."""
    return str(Path(path).expanduser().absolute())


def to_dict(config: ExperimentConfig) -> dict:
    return dataclasses.asdict(config)
