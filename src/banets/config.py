"""Typed experiment configuration: dataclasses, YAML presets and ``--set key=value`` overrides.

A preset is a YAML file in ``banets/presets`` whose keys mirror :class:`ExperimentConfig`; ``extends:``
names another preset to start from, so a table row states only what differs. Overrides use dotted keys
(``optim.lr=0.05``), parse their value as YAML, and are checked against the field's type; an unknown key
names the nearest valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from banets.engine import TrainConfig

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration key or value that does not fit the schema."""


@dataclass
class DataConfig:
    dataset: str = "digits"  # digits | cifar10 | cifar100 | text
    path: Optional[str] = None  # local folder or archive; required when there is no network
    download: bool = False
    val_size: int = 5000  # carved from the training set, seeded by split_seed
    split_seed: int = 0
    train_subset: Optional[int] = None  # train on this many of the remaining training examples
    batch_size: int = 128
    eval_batch_size: int = 500
    augment: bool = True  # pad-crop-flip for images
    normalize: bool = False  # per-channel mean/std; the paper omits it (Section 4)
    max_vocab: Optional[int] = 10000  # text: vocabulary cap
    tokenizer: str = "whitespace"  # text: whitespace (pre-tokenised, PTB) | words (raw text)
    bptt: int = 35  # text: unrolled steps


@dataclass
class ModelConfig:
    name: str = "mlp"  # a name from `banets models`
    options: dict = field(default_factory=dict)  # keyword arguments of create_model
    teacher_name: Optional[str] = None  # a teacher of another architecture (default: same as the students)
    teacher_options: dict = field(default_factory=dict)


@dataclass
class BornAgainConfig:
    generations: int = 3
    loss: str = "ban"  # the generations' loss: ban | ban+l | cwtm | dkpp | kd
    loss_options: dict = field(default_factory=dict)
    extra_losses: list[str] = field(default_factory=list)  # one student of the teacher per loss (Table 2 columns)
    controls: dict = field(default_factory=dict)  # students without a teacher: label -> ce options
    init_from_teacher: bool = False  # generation 1 starts from the teacher's weights
    ensemble_teacher: bool = False  # also ensemble the teacher with the generations
    ensembles: dict = field(default_factory=dict)  # more ensembles of trained models: label -> [names], e.g. {T+CE: [teacher, CE]}
    cache_teacher: Optional[str] = None  # language models: reuse the teacher's logits across epochs, in auto|fp32|bf16|fp16
    share_layers: list[str] = field(default_factory=list)  # teacher's modules copied and frozen, e.g. [conv1, classifier]


@dataclass
class ExperimentConfig:
    name: str = "custom"
    description: str = ""
    cost: str = ""  # expected cost, shown by `banets presets`
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: TrainConfig = field(default_factory=TrainConfig)
    ban: BornAgainConfig = field(default_factory=BornAgainConfig)


# -- building configs from dictionaries ----------------------------------------------------------------


def from_dict(cls: type, values: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from nested ``values``, rejecting unknown keys and ill-typed values."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(unknown_key_message(first_leaf(prefix + key, value), all_keys(ExperimentConfig)))
        kwargs[key] = coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against the type ``hint`` (ints are accepted for floats)."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} is a section; set its fields, e.g. {key}.{dataclasses.fields(hint)[0].name}=...")
        return from_dict(hint, value, key + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} expects a list, got {value!r}; write it as [a, b, ...]")
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} expects a mapping, got {value!r}; write it as {{k: v}}")
        return dict(value)
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        return _as_float(value, key)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and (hint is bool or not isinstance(value, bool))):
        raise ConfigError(f"{key} expects {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value


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
        keys += all_keys(hint, f"{prefix}{f.name}.") if dataclasses.is_dataclass(hint) else [prefix + f.name]
    return keys


def first_leaf(key: str, value: Any) -> str:
    """The dotted key of the first leaf below ``key`` (``modle``, ``{name: x}`` -> ``modle.name``)."""
    while isinstance(value, dict) and value:
        inner, value = next(iter(value.items()))
        key = f"{key}.{inner}"
    return key


def unknown_key_message(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(near)}?" if near else "; `banets presets --keys` lists them"
    return f"unknown config key {key!r}{hint}"


# -- presets and overrides ------------------------------------------------------------------------------


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_dict(name_or_path: str) -> dict:
    """The preset's nested dictionary with its ``extends:`` chain merged in (later keys win)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        near = difflib.get_close_matches(str(name_or_path), preset_names(), n=3)
        raise ConfigError(f"no preset {name_or_path!r}" + (f"; did you mean {', '.join(near)}?" if near else "; see `banets presets`"))
    values = yaml.safe_load(path.read_text()) or {}
    parent = values.pop("extends", None)
    values.setdefault("name", path.stem)
    return deep_merge(preset_dict(parent), values) if parent else values


def deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
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
    cursor[leaf] = yaml.safe_load(raw) if raw.strip() else None
    return updated


def load_config(preset: Optional[str] = None, overrides: tuple[str, ...] | list[str] = ()) -> ExperimentConfig:
    """The preset (or the defaults) with ``overrides`` applied, validated."""
    values = preset_dict(preset) if preset else {}
    for override in overrides:
        values = apply_override(values, override)
    return from_dict(ExperimentConfig, values)


def to_dict(config: ExperimentConfig) -> dict:
    return dataclasses.asdict(config)
