"""Dataset registry: ``register_dataset``, ``build_dataset`` and what every builder returns, :class:`Data`.

A builder turns the ``data`` config section into train / validation / test batches (and an optional
transform, applied on the training device). Each dataset declares the options of the section it uses; any
other option set away from its default is refused, so a setting is never silently ignored. Builders raise
:class:`DataError` (one line naming the file, the problem and the fix) before anything is trained.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from banets.config import DataConfig, UserError, did_you_mean, qualified_name
from banets.data.inputs import Inputs

# Inputs (a tensor, or named tensors) and labels; a streamed training batch carries a third element, the global
# batch's rows, when it holds only this process's rows of it (the engine weighs the process's loss by its share).
Batch = tuple[Inputs, torch.Tensor]
# Turns a raw input batch (already on the device) into model input; ``train`` selects augmentation.
Transform = Callable[[torch.Tensor, torch.Generator | None, bool], torch.Tensor]
ALWAYS_USED = {"dataset", "batch_size", "eval_batch_size"}


class DataError(UserError, ValueError):
    """A dataset that is missing, corrupt, unsafe or not in the expected format; the message is one line."""


@dataclass
class Data:
    """Everything the driver needs from a dataset.

    ``model_options`` are derived from the data and given to registered models that take them (num_classes,
    in_channels, vocab_size); ``files`` are written into each seed directory when it starts and compared on
    resume (e.g. a text corpus' vocabulary, digests of the data), so a resumed run cannot silently use other data;
    ``metric`` is how the report scores models: ``error`` (classifiers) or ``perplexity`` (language models);
    ``block`` how many consecutive examples its bootstrap resamples together (a BPTT segment of a text);
    ``options_in_files`` names the model options kept in one of ``files`` rather than in the manifest
    (``{"words": "vocab.json"}``: the file's JSON holds them under that key); ``unreadable`` names the examples
    left out because they could not be read, which the seed directory lists for the report.
    """

    train: Iterable[Batch]
    val: Iterable[Batch]
    test: Iterable[Batch] | None = None
    train_eval: Iterable[Batch] | None = None  # training examples evaluated at the end (does the teacher fit?)
    transform: Transform | None = None
    model_options: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    metric: str = "error"
    block: int = 1
    options_in_files: dict[str, str] = field(default_factory=dict)
    unreadable: Callable[[], list[str]] | None = None  # examples skipped as unreadable so far (data.skip_unreadable)

    def record(self) -> dict:
        """What a run's manifest keeps of these data: how models are scored, and how they are built again."""
        options = {k: v for k, v in self.model_options.items() if k not in self.options_in_files}
        return {"metric": self.metric, "bootstrap_block": self.block, "model_options": options,
                "options_in_files": self.options_in_files}


@dataclass(frozen=True)
class DatasetEntry:
    build: Callable[[DataConfig], Data]
    options: frozenset[str]  # the DataConfig fields this dataset uses
    summary: str


_DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(name: str, options: Iterable[str], summary: str = ""):
    """Register ``build(cfg: DataConfig) -> Data`` under ``name``; ``options`` are the ``data.*`` keys it uses."""

    def add(build: Callable[[DataConfig], Data]) -> Callable[[DataConfig], Data]:
        if name in _DATASETS and qualified_name(_DATASETS[name].build) != qualified_name(
            build
        ):  # the same one again: replaced
            raise DataError(f"dataset {name!r} is registered twice; choose another name")
        unknown = set(options) - {f.name for f in dataclasses.fields(DataConfig)}
        if unknown:
            raise DataError(f"dataset {name!r} names unknown data options {sorted(unknown)}; see `banets datasets`")
        first_paragraph = " ".join(inspect.cleandoc(build.__doc__ or "").split("\n\n")[0].split())
        _DATASETS[name] = DatasetEntry(build, frozenset(options) | ALWAYS_USED, summary or first_paragraph)
        return build

    return add


def list_datasets() -> dict[str, DatasetEntry]:
    _import_builtin_datasets()
    return dict(sorted(_DATASETS.items()))


def dataset_entry(name: str) -> DatasetEntry:
    datasets = list_datasets()
    if name not in datasets:
        hint = f"{did_you_mean(name, datasets)} ".lstrip()
        raise DataError(
            f"unknown dataset {name!r}; {hint}choose one of {', '.join(datasets)} (or register your own and "
            "--import it)"
        )
    return datasets[name]


def check_options(cfg: DataConfig) -> None:
    """Refuse options that ``cfg.dataset`` does not use but that are set away from their defaults."""
    entry, defaults = dataset_entry(cfg.dataset), DataConfig()
    unused = [
        f.name
        for f in dataclasses.fields(DataConfig)
        if f.name not in entry.options and getattr(cfg, f.name) != getattr(defaults, f.name)
    ]
    if unused:
        raise DataError(
            f"dataset {cfg.dataset!r} does not use data.{', data.'.join(unused)}; remove "
            f"{'it' if len(unused) == 1 else 'them'} "
            f"(it uses data.{', data.'.join(sorted(entry.options - ALWAYS_USED))})"
        )


def build_dataset(cfg: DataConfig) -> Data:
    """The batches of the dataset ``cfg`` describes, after checking that every option set is one it uses."""
    check_options(cfg)
    data = dataset_entry(cfg.dataset).build(cfg)
    if not isinstance(data, Data):
        raise DataError(
            f"dataset {cfg.dataset!r} returned {type(data).__name__}, not banets.data.Data; make its "
            f"builder return Data(train=..., val=..., ...)"
        )
    return data


def _import_builtin_datasets() -> None:
    import banets.data.builtin  # noqa: F401  (registers the built-in datasets on import)
