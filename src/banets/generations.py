"""The sequence of teaching selves (Section 3.1) and the Python API ``born_again``.

A *plan* lists the models of one born-again experiment in training order: the teacher, trained on labels
(Eq. 1); generation k, a fresh model from its own seed taught by generation k-1 (Eq. 2-3); and optional
single students of the teacher with other losses (the BAN+L, CWTM and DKPP columns of Table 2) or with
no teacher at all (controls). The driver trains a plan with one engine and knows no dataset or preset.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Protocol, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from banets import losses
from banets.data.tensors import TensorBatches
from banets.engine import Batch, Trainer, TrainConfig, Transform, resolve_device
from banets.ensemble import evaluate_with_ensembles, prefix_ensembles
from banets.metrics import Predictions
from banets.models.students import share_frozen
from banets.teacher_cache import CACHE_DTYPES, CachedTeacher

ModelFn = Callable[[], nn.Module]
SEED_STRIDE = 1000  # model i of a plan uses seed + 1000 * i: distinct within a run and across base seeds 0..999


@dataclass
class ModelSpec:
    """One model of a plan: how it is built, what teaches it and with which loss."""

    name: str
    role: str  # teacher | generation | student (one student of the teacher) | control (no teacher)
    loss: str = "ce"
    loss_options: dict = field(default_factory=dict)
    teacher: Optional[str] = None
    generation: Optional[int] = None  # 0 for the teacher, k for the k-th born-again generation
    seed: int = 0
    init_from: Optional[str] = None  # start from this model's weights instead of a fresh initialisation

    def make_loss(self) -> losses.Loss:
        return losses.get(self.loss, **self.loss_options)


def generation_name(loss: str, k: int) -> str:
    return f"{loss.upper()}-{k}"


def plan_generations(
    generations: int = 3,
    loss: str = "ban",
    seed: int = 0,
    *,
    loss_options: Optional[dict] = None,
    extra_losses: Iterable[str] = (),
    controls: dict[str, dict] | None = None,
    init_from_teacher: bool = False,
) -> list[ModelSpec]:
    """Teacher, ``generations`` students each taught by the previous one, then the extra students.

    ``extra_losses`` adds one student of the teacher per loss (named after it, e.g. ``"BAN+L"``);
    ``controls`` adds students trained without a teacher, e.g. ``{"LS": {"label_smoothing": 0.1}}``
    (cross-entropy with those options), so a gain can be told apart from plain regularisation.
    """
    specs = [ModelSpec("teacher", "teacher", "ce", generation=0)]
    for k in range(1, generations + 1):
        init = "teacher" if init_from_teacher and k == 1 else None
        specs.append(ModelSpec(generation_name(loss, k), "generation", loss, dict(loss_options or {}),
                               teacher=specs[-1].name, generation=k, init_from=init))
    specs += [ModelSpec(extra.upper(), "student", extra, teacher="teacher") for extra in extra_losses]
    specs += [ModelSpec(label, "control", "ce", dict(options)) for label, options in (controls or {}).items()]
    for i, spec in enumerate(specs):
        spec.seed = seed + SEED_STRIDE * i
    return specs


def chain(plan: list[ModelSpec]) -> list[str]:
    """The born-again generations in order (the teacher excluded)."""
    return [s.name for s in sorted(plan, key=lambda s: s.generation or 0) if s.role == "generation"]


def plan_ensembles(plan: list[ModelSpec], include_teacher: bool = False,
                   extra: Optional[dict[str, list[str]]] = None) -> dict[str, list[str]]:
    """BANE (Eq. 4) over every prefix of the generations: Ens*2 = gens 1-2, Ens*3 = gens 1-3, ...; and the
    ``extra`` ensembles of any trained models by name, e.g. ``{"T+CE": ["teacher", "CE"]}``: two models
    trained without a teacher, the plain ensemble that BANE's gain is measured against."""
    ensembles = prefix_ensembles(chain(plan))
    if include_teacher:
        ensembles.update(prefix_ensembles(["teacher", *chain(plan)], label="T+Ens*{k}", min_size=2))
    trained = [s.name for s in plan]
    for label, members in (extra or {}).items():
        if label in trained or label in ensembles:
            raise KeyError(f"ensemble name {label!r} is already taken by a model or a BANE ensemble; choose another")
        unknown = [m for m in members if m not in trained]
        if unknown or not members:
            raise KeyError(f"ensemble {label!r} names {', '.join(unknown) or 'no model'}; the trained models are "
                           f"{', '.join(trained)}")
        ensembles[label] = list(members)
    return ensembles


class Store(Protocol):
    """Where a driver keeps its models: in memory by default, a run directory for resumable runs."""

    def finished(self, spec: ModelSpec) -> Optional[dict]: ...  # a finished model's state dict
    def progress(self, spec: ModelSpec) -> Optional[dict]: ...  # a Trainer state to resume from
    def on_epoch_end(self, spec: ModelSpec, trainer: Trainer, record: dict) -> None: ...
    def on_finished(self, spec: ModelSpec, trainer: Trainer) -> None: ...


class MemoryStore:
    """Keeps nothing: every model is trained from scratch."""

    def finished(self, spec: ModelSpec) -> Optional[dict]:
        return None

    def progress(self, spec: ModelSpec) -> Optional[dict]:
        return None

    def on_epoch_end(self, spec: ModelSpec, trainer: Trainer, record: dict) -> None:
        pass

    def on_finished(self, spec: ModelSpec, trainer: Trainer) -> None:
        pass


class ReadOnlyStore:
    """Reads what another process saved in ``store`` (to resume from it) and writes nothing: the store of
    every process but rank 0 under torchrun."""

    def __init__(self, store: Store):
        self.store = store

    def finished(self, spec: ModelSpec) -> Optional[dict]:
        return self.store.finished(spec)

    def progress(self, spec: ModelSpec) -> Optional[dict]:
        return self.store.progress(spec)

    def on_epoch_end(self, spec: ModelSpec, trainer: Trainer, record: dict) -> None:
        pass

    def on_finished(self, spec: ModelSpec, trainer: Trainer) -> None:
        pass


@dataclass
class Driver:
    """Trains the models of a plan in order with one engine; each teacher is a frozen copy. A model with a teacher
    takes the teacher's ``share_layers`` (module paths) copied and frozen (Section 4.1, Table 5)."""

    student_fn: ModelFn
    train_data: Iterable[Batch]
    val_data: Optional[Iterable[Batch]]
    config: TrainConfig
    device: torch.device
    teacher_fn: Optional[ModelFn] = None
    share_layers: Sequence[str] = ()
    transform: Optional[Transform] = None
    store: Store = field(default_factory=MemoryStore)
    models: dict[str, nn.Module] = field(default_factory=dict)
    histories: dict[str, list[dict]] = field(default_factory=dict)
    cache_teacher: Optional[str] = None  # keep each teacher's logits across epochs in this dtype (teacher_cache)

    def run(self, plan: list[ModelSpec]) -> dict[str, nn.Module]:
        for spec in plan:
            if spec.name not in self.models:
                self.models[spec.name] = self.train(spec)
        return self.models

    def build(self, spec: ModelSpec) -> nn.Module:
        torch.manual_seed(spec.seed)
        factory = self.teacher_fn if spec.role == "teacher" and self.teacher_fn else self.student_fn
        model = factory()
        if spec.init_from is not None:
            model.load_state_dict(self.models[spec.init_from].state_dict())
        if self.share_layers and spec.teacher is not None:
            share_frozen(model, self.models[spec.teacher], self.share_layers)
        return model

    def frozen_teacher(self, spec: ModelSpec) -> Optional[nn.Module]:
        if spec.teacher is None:
            return None
        teacher = copy.deepcopy(self.models[spec.teacher]).eval().requires_grad_(False)
        return CachedTeacher(teacher, len(self.train_data), self.cache_teacher) if self.cache_teacher else teacher

    def train(self, spec: ModelSpec) -> nn.Module:
        model = self.build(spec)
        done = self.store.finished(spec)
        if done is not None:
            model.load_state_dict(done["model"])
            self.histories[spec.name] = done.get("history", [])
            return model.to(self.device)
        callbacks = [lambda trainer, record: self.store.on_epoch_end(spec, trainer, record)]
        trainer = Trainer(model, spec.make_loss(), self.config, seed=spec.seed, device=self.device,
                          teacher=self.frozen_teacher(spec), transform=self.transform, callbacks=callbacks, name=spec.name)
        progress = self.store.progress(spec)
        if progress is not None:
            trainer.load_state_dict(progress)
        self.histories[spec.name] = trainer.fit(self.train_data, self.val_data)
        self.store.on_finished(spec, trainer)
        return trainer.model


@dataclass
class BornAgainResult:
    """The trained models, the plan that made them, and per-example predictions per split and model."""

    models: dict[str, nn.Module]
    plan: list[ModelSpec]
    ensembles: dict[str, list[str]]
    predictions: dict[str, dict[str, Predictions]]
    histories: dict[str, list[dict]]

    def rows(self, split: str = "val") -> list[dict]:
        """One row per model and ensemble: error, NLL, ECE and agreement with its teacher (percent)."""
        preds = self.predictions[split]
        teachers = {s.name: s.teacher for s in self.plan}
        losses_of = {s.name: s.loss for s in self.plan}
        rows = []
        for name, p in preds.items():
            teacher = teachers.get(name) or ("teacher" if name in self.ensembles else None)
            rows.append({
                "model": name,
                "loss": losses_of.get(name, "ensemble"),
                "error": p.error(),
                "nll": p.mean_nll(),
                "ece": p.ece(),
                "agreement": p.agreement(preds[teacher]) if teacher else None,
            })
        return rows


def as_batches(data, batch_size: int, shuffle: bool) -> Iterable[Batch]:
    """Accept a DataLoader or any iterable of batches as is, a Dataset, or a tuple of tensors ``(x, y)``."""
    if isinstance(data, tuple):
        return TensorBatches(*data, batch_size=batch_size, shuffle=shuffle)
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle)
    return data


def born_again(
    model_fn: ModelFn,
    train_data,
    val_data,
    test_data=None,
    *,
    generations: int = 3,
    loss: str = "ban",
    loss_options: Optional[dict] = None,
    extra_losses: Iterable[str] = (),
    controls: dict[str, dict] | None = None,
    teacher: Optional[nn.Module] = None,
    teacher_fn: Optional[ModelFn] = None,
    share_layers: Sequence[str] = (),
    init_from_teacher: bool = False,
    ensemble_teacher: bool = False,
    ensembles: Optional[dict[str, list[str]]] = None,
    seed: int = 0,
    config: Optional[TrainConfig] = None,
    batch_size: int = 128,
    device: str = "auto",
    transform: Optional[Transform] = None,
    store: Optional[Store] = None,
    cache_teacher: Optional[str] = None,
) -> BornAgainResult:
    """Train a teacher (or take ``teacher``), then ``generations`` born-again students, and evaluate all.

    ``model_fn`` builds a fresh student (any ``nn.Module`` returning logits); ``teacher_fn`` builds a teacher
    of another architecture; ``share_layers`` (e.g. ``["conv1", "classifier"]``) are copied from each model's teacher
    and frozen. Data may be DataLoaders, Datasets or ``(x, y)`` tensor tuples. Returns the
    models and per-example predictions of every model and BANE ensemble on the validation split (and
    the test split, evaluated once at the end, when given). ``cache_teacher`` (a dtype: auto, fp32, bf16, fp16)
    reuses the teacher's first-epoch logits in later epochs, for data that repeat exactly (language models).
    ``ensembles`` adds named ensembles of any trained models (``plan_ensembles``' ``extra``).
    """
    config = config or TrainConfig()
    if cache_teacher is not None and cache_teacher not in CACHE_DTYPES:
        raise ValueError(f"cache_teacher must be None or one of {', '.join(CACHE_DTYPES)}, got {cache_teacher!r}")
    plan = plan_generations(generations, loss, seed, loss_options=loss_options, extra_losses=extra_losses,
                            controls=controls, init_from_teacher=init_from_teacher)
    all_ensembles = plan_ensembles(plan, include_teacher=ensemble_teacher, extra=ensembles)  # checked before training
    driver = Driver(model_fn, as_batches(train_data, batch_size, shuffle=True), as_batches(val_data, batch_size, shuffle=False),
                    config, resolve_device(device), teacher_fn=teacher_fn, share_layers=tuple(share_layers),
                    transform=transform, store=store or MemoryStore(), cache_teacher=cache_teacher)
    if teacher is not None:
        driver.models["teacher"] = teacher.to(driver.device)
    models = driver.run(plan)
    splits = {"val": driver.val_data} | ({"test": as_batches(test_data, batch_size, shuffle=False)} if test_data is not None else {})
    predictions = {
        split: evaluate_with_ensembles(models, all_ensembles, data, driver.device, config, transform) for split, data in splits.items()
    }
    return BornAgainResult(models, plan, all_ensembles, predictions, driver.histories)
