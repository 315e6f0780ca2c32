"""The sequence of teaching selves (Section 3.1): the plan, checked whole before training, and the driver.

A *plan* lists the models of one born-again experiment in training order: the teacher, trained on labels
(Eq. 1); generation k, a fresh model from its own seed taught by generation k-1 (Eq. 2-3); and optional
single students of the teacher with other losses (the BAN+L, CWTM and DKPP columns of Table 2) or with
no teacher at all (controls). :func:`check_plan` tries everything that can fail before the first epoch
(losses, model factories, one batch through student and teacher, ensembles); the :class:`Driver` then trains
the plan with one engine and knows no dataset or preset.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import re
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from typing import Protocol, cast

import torch
import torch.nn as nn

from banets import losses
from banets.config import BornAgainConfig, Loss, TrainConfig, UserError, first_line
from banets.data.batches import TensorBatches, are_class_labels, to_batch
from banets.data.registry import Batch, Data, DataError
from banets.engine import Trainer, reset_state
from banets.ensemble import prefix_ensembles
from banets.metrics import Predictions
from banets.models.students import share_frozen
from banets.teacher import FrozenTeacher

ModelFn = Callable[[], nn.Module]
SEED_STRIDE = 1000  # model i of a plan uses seed + 1000 * i: distinct within a run and across base seeds 0..999


class PlanError(UserError, ValueError):
    """A plan that cannot train as given (a model factory, a batch, a teacher that does not fit); one line."""


class Role(enum.StrEnum):
    """What a model (or an ensemble) is in a born-again experiment."""

    TEACHER = "teacher"  # trained on labels (Eq. 1), or given already trained
    GENERATION = "generation"  # born-again generation k, taught by generation k-1 (Eq. 2-3)
    STUDENT = "student"  # one more student of the teacher with another loss (BAN+L, CWTM, DKPP: Table 2)
    CONTROL = "control"  # trained on labels without a teacher (another seed, label smoothing)
    ENSEMBLE = "ensemble"  # averaged predictions of trained models (BANE, Eq. 4)


TEACHER = "teacher"  # the teacher's name in every plan


@dataclass
class ModelSpec:
    """One model of a plan: how it is built, what teaches it and with which loss."""

    name: str
    role: Role
    loss: Loss = "ce"
    loss_options: dict = field(default_factory=dict)
    teacher: str | None = None
    generation: int | None = None  # 0 for the teacher, k for the k-th born-again generation
    seed: int = 0
    init_from: str | None = None  # start from this model's weights instead of a fresh initialisation

    def make_loss(self) -> losses.Loss:
        return losses.get(self.loss, **self.loss_options)

    def describe(self) -> dict:
        """The plain record of this model in a manifest and a report."""
        return {
            "role": str(self.role),
            "generation": self.generation,
            "seed": self.seed,
            "loss": losses.name_of(self.loss),
            "loss_options": self.loss_options,
            "teacher": self.teacher,
        }


def short_name(loss: Loss) -> str:
    """A loss as it names a model (and its files): ``ban+l`` -> ``BAN+L``, ``my.module:focal_loss`` -> ``FOCAL_LOSS``,
    a lambda -> ``LAMBDA``."""
    name = losses.name_of(loss).rsplit(":", 1)[-1].rsplit(".", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.+*-]", "_", name).strip("_").upper() or "LOSS"


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def plan_generations(ban: BornAgainConfig, seed: int = 0) -> list[ModelSpec]:
    """Teacher, ``ban.generations`` students each taught by the previous one, then the extra students.

    ``ban.extra_losses`` adds one student of the teacher per loss (named after it, e.g. ``"BAN+L"``);
    ``ban.controls`` adds students trained without a teacher, e.g. ``{"LS": {"label_smoothing": 0.1}}``
    (cross-entropy with those options), so a gain can be told apart from plain regularisation.
    """
    specs = [ModelSpec(TEACHER, Role.TEACHER, "ce", generation=0)]
    for k in range(1, ban.generations + 1):
        init = TEACHER if ban.init_from_teacher and k == 1 else None
        specs.append(
            ModelSpec(
                f"{short_name(ban.loss)}-{k}",
                Role.GENERATION,
                ban.loss,
                dict(ban.loss_options),
                teacher=specs[-1].name,
                generation=k,
                init_from=init,
            )
        )
    specs += [ModelSpec(short_name(extra), Role.STUDENT, extra, teacher=TEACHER) for extra in ban.extra_losses]
    specs += [ModelSpec(label, Role.CONTROL, "ce", dict(options)) for label, options in ban.controls.items()]
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PlanError(f"the plan names {', '.join(duplicates)} twice; give controls and extra losses distinct names")
    for i, spec in enumerate(specs):
        spec.seed = seed + SEED_STRIDE * i
    return specs


def chain(plan: list[ModelSpec]) -> list[str]:
    """The born-again generations in order (the teacher excluded)."""
    return [s.name for s in sorted(plan, key=lambda s: s.generation or 0) if s.role == Role.GENERATION]


def plan_ensembles(plan: list[ModelSpec], ban: BornAgainConfig) -> dict[str, list[str]]:
    """BANE (Eq. 4) over every prefix of the generations: Ens*2 = gens 1-2, Ens*3 = gens 1-3, ... (with the
    teacher too when ``ban.ensemble_teacher``); and ``ban.ensembles`` of any trained models by name, e.g.
    ``{"T+CE": ["teacher", "CE"]}``: two models trained without a teacher, the plain ensemble that BANE's
    gain is measured against."""
    ensembles = prefix_ensembles(chain(plan))
    if ban.ensemble_teacher:
        ensembles.update(prefix_ensembles([TEACHER, *chain(plan)], label="T+Ens*{k}", min_size=2))
    trained = [s.name for s in plan]
    for label, members in ban.ensembles.items():
        if label in trained or label in ensembles:
            raise PlanError(f"ensemble name {label!r} is already taken by a model or a BANE ensemble; choose another")
        unknown = [m for m in members if m not in trained]
        if unknown or not members:
            raise PlanError(
                f"ensemble {label!r} names {', '.join(unknown) or 'no model'}; the trained models are "
                f"{', '.join(trained)}"
            )
        ensembles[label] = list(members)
    return ensembles


# -- checks before the first epoch ------------------------------------------------------------------------


def build_model(factory: ModelFn, what: str) -> nn.Module:
    """``factory()``, checked to be an ``nn.Module`` built by a callable."""
    if isinstance(factory, nn.Module):
        raise PlanError(
            f"{what} is a model instance; pass a factory that builds a fresh one, e.g. lambda: "
            f"{type(factory).__name__}(...)"
        )
    if not callable(factory):
        raise PlanError(f"{what} must be a callable that returns an nn.Module, got {type(factory).__name__}")
    try:
        model = factory()
    except (RuntimeError, ValueError, TypeError) as error:
        raise PlanError(
            f"{what} failed to build the model ({type(error).__name__}: {first_line(error)}); check its options"
        ) from None
    if not isinstance(model, nn.Module):
        raise PlanError(f"{what} returned {type(model).__name__}, not an nn.Module; make it return the model")
    return model


def label_bounds(data: Iterable[Batch], y: torch.Tensor) -> tuple[int, int]:
    """The smallest and largest label: of the whole label tensor when the data are in memory, else of batch ``y``."""
    labels = data.tensors[1] if isinstance(data, TensorBatches) else y
    return int(labels.min()), int(labels.max())


def check_outputs(logits: object, y: torch.Tensor, bounds: tuple[int, int], what: str) -> torch.Tensor:
    """``logits`` checked against the labels of one batch: a finite tensor of ``labels.shape + (classes,)``
    whose classes cover every label in ``bounds``."""
    if not isinstance(logits, torch.Tensor):
        raise PlanError(f"{what} returned {type(logits).__name__}; a model must return a logits tensor")
    if tuple(logits.shape[:-1]) != tuple(y.shape):
        raise PlanError(
            f"{what} returned logits of shape {tuple(logits.shape)} for labels of shape {tuple(y.shape)}; "
            f"expected {tuple(y.shape)} + (classes,)"
        )
    low, high = bounds
    if low < 0:
        raise DataError(
            f"the labels include {low}; class labels are 0 .. classes - 1, so relabel them (e.g. y - y.min())"
        )
    if high >= logits.shape[-1]:
        raise PlanError(
            f"{what} has {logits.shape[-1]} outputs but the labels range over [{low}, {high}]; "
            f"build it with at least {high + 1} classes (labels are 0 .. classes - 1)"
        )
    if not torch.isfinite(logits).all():
        raise PlanError(
            f"{what} outputs NaN or inf on the first batch; check its weights (a damaged or diverged "
            f"checkpoint?) and the inputs"
        )
    return logits


def forward_once(model: nn.Module, x: torch.Tensor, device: torch.device, what: str) -> object:
    """``model(x)`` in evaluation mode, its carried state forgotten after; a model that fails on the batch is a
    :class:`PlanError` naming the batch's shape (the usual cause: a model built for other inputs)."""
    model.to(device).eval()
    try:
        return model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        raise PlanError(
            f"{what} fails on a batch of shape {tuple(x.shape)} ({first_line(error)}); build it for "
            f"these inputs (`banets models NAME` lists a registered model's options, e.g. in_channels)"
        ) from None
    finally:
        reset_state(model)


def first_batch(data: Iterable[Batch], what: str) -> Batch:
    """The first batch of ``data``, with integer labels."""
    for batch in data:
        x, y = to_batch(batch)
        if not are_class_labels(y):
            raise DataError(f"the {what} labels are {y.dtype}; class labels must be integers (e.g. y.long())")
        return x, y
    raise DataError(f"the {what} data yield no batch; is it empty?")


def model_inputs(setup: Setup, data: Iterable[Batch], x: torch.Tensor, device: torch.device, what: str) -> torch.Tensor:
    """Batch ``x`` of ``data`` as models see it in evaluation: on ``device``, through the data's transform, and
    finite (all of ``data`` checked when it is held in memory and not transformed)."""
    x = x.to(device)
    if setup.data.transform is not None:
        try:
            x = setup.data.transform(x, None, False)
        except (RuntimeError, ValueError, TypeError) as error:
            raise PlanError(
                f"the transform fails on a batch of shape {tuple(x.shape)} ({first_line(error)}); it is called "
                f"as transform(x, generator, train), generator a torch.Generator (None when not training)"
            ) from None
    inputs = data.tensors[0] if isinstance(data, TensorBatches) and setup.data.transform is None else x
    if inputs.is_floating_point() and not torch.isfinite(inputs).all():
        raise DataError(
            f"the {what} inputs hold NaN or inf; clean or drop those examples (or give a transform that does)"
        )
    return x


@dataclass
class Setup:
    """What a plan trains on: the students' factory, the data, and the teacher's factory or a trained teacher."""

    student_fn: ModelFn
    data: Data
    teacher_fn: ModelFn | None = None  # a teacher of another architecture
    teacher: nn.Module | None = None  # a trained teacher, used as it is


def check_plan(plan: list[ModelSpec], ban: BornAgainConfig, setup: Setup, device: torch.device) -> None:
    """Everything that can be checked before training: every loss with its options, the model factories, the
    first batch of every split through a student and of the training data through the teacher (shapes, label
    range, finite values), what each loss returns, the shared layers, the ensembles and the teacher cache.
    Raises a one-line error naming the problem and the fix; trains nothing."""
    for spec in plan:
        spec.make_loss()
    plan_ensembles(plan, ban)
    if setup.data.val is None:
        raise PlanError(
            "no validation data; banets compares and selects models on a held-out split: pass val "
            "(e.g. 10% of the training examples carved off)"
        )
    student = fresh_model(setup.student_fn, "the model factory")
    teacher = setup.teacher
    if teacher is None:
        teacher = fresh_model(setup.teacher_fn, "the teacher factory") if setup.teacher_fn is not None else student
    x, y = first_batch(setup.data.train, "training")
    x, y = model_inputs(setup, setup.data.train, x, device, "training"), y.to(device)
    bounds = label_bounds(setup.data.train, y)
    with torch.no_grad():
        logits = {
            what: check_outputs(forward_once(model, x, device, what), y, bounds, what)
            for model, what in ((student, "the model"), (teacher, "the teacher"))
        }
        check_held_out(setup, student, bounds, device)
    if logits["the model"].shape != logits["the teacher"].shape:
        raise PlanError(
            f"the teacher outputs {tuple(logits['the teacher'].shape)} but the students output "
            f"{tuple(logits['the model'].shape)}; build teacher and students for the same classes and inputs"
        )
    for spec in plan:
        check_loss(spec, logits["the model"], logits["the teacher"], y)
    if ban.init_from_teacher and teacher is not student:
        with saved_weights_of(
            TEACHER,
            "ban.init_from_teacher needs a teacher of the students' architecture: drop it, "
            "or train the teacher as a student",
        ):
            copy.deepcopy(student).load_state_dict(teacher.state_dict())
    if ban.share_layers:
        try:
            share_frozen(student, teacher, ban.share_layers)
        except ValueError as error:
            raise PlanError(f"ban.share_layers: {error}") from None
    if ban.cache_teacher and any(spec.teacher is not None for spec in plan):
        check_replayable(setup, device)


def fresh_model(factory: ModelFn, what: str) -> nn.Module:
    """:func:`build_model`, checked to build a new model at every call: a factory that returns one model (or
    one layer) again would make every generation the same object, trained over and over."""
    model, again = build_model(factory, what), build_model(factory, what)
    changing = {id(p) for p in model.parameters() if p.requires_grad} | {id(b) for b in model.buffers()}
    if any(id(t) in changing for t in (*again.parameters(), *again.buffers())):  # a frozen shared embedding is fine
        raise PlanError(
            f"{what} returns the same model (or layers) at every call; build a new one inside it, e.g. "
            f"lambda: {type(model).__name__}(...), not lambda: model"
        )
    return model


def check_held_out(setup: Setup, student: nn.Module, bounds: tuple[int, int], device: torch.device) -> None:
    """The first batch of the validation and test data through the student: their inputs fit it and their labels
    are classes it has (the training labels' range at least)."""
    for data, what in ((setup.data.val, "validation"), (setup.data.test, "test")):
        if data is not None:
            x, y = first_batch(data, what)
            x, y = model_inputs(setup, data, x, device, what), y.to(device)
            low, high = label_bounds(data, y)
            model = f"the model, on the {what} data,"
            check_outputs(
                forward_once(student, x, device, model), y, (min(low, bounds[0]), max(high, bounds[1])), model
            )


def check_loss(spec: ModelSpec, student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor) -> None:
    """``spec``'s loss once on one batch: a finite scalar (or named scalar terms) with a gradient to the student's
    logits. Options are checked only when a loss is called (label smoothing 2), and a loss of your own may return
    anything."""
    named = f"{spec.name}'s loss {losses.name_of(spec.loss)} with options {spec.loss_options or 'none'}"
    try:
        returned = spec.make_loss()(student_logits.detach().requires_grad_(), teacher_logits, y)
    except (RuntimeError, ValueError, TypeError) as error:
        raise PlanError(f"{named} fails on a batch ({first_line(error)}); fix its options") from None
    terms = list(returned.values()) if isinstance(returned, dict) and returned else [returned]
    for value in terms:
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise PlanError(
                f"{named} returned {shape}, not one number; return a scalar tensor (e.g. .mean() over the batch), "
                f"or a dict of them by name"
            )
    value = losses.total(returned)
    if not value.requires_grad:
        raise PlanError(
            f"{named} returned a value without a gradient to the student's logits; compute it from them "
            f"with torch operations (no .item(), .detach() or NumPy)"
        )
    if not torch.isfinite(value):
        raise PlanError(f"{named} is {value.item()} on the first batch; fix its options (e.g. a temperature of 0)")


def check_replayable(setup: Setup, device: torch.device) -> None:
    """``ban.cache_teacher`` replays the teacher's outputs of the first epoch: the training batches must come in
    the same order and unaugmented every epoch (a language model's BPTT batches), which shuffled or augmented
    data do not."""
    first, again = (to_batch(next(iter(setup.data.train)))[0] for _ in range(2))
    same = first.shape == again.shape and torch.equal(first, again)
    if same and setup.data.transform is not None:
        x = first.to(device)
        draws = [setup.data.transform(x, torch.Generator(device=device).manual_seed(s), True) for s in (0, 1)]
        same = torch.equal(*draws)
    if not same:
        raise PlanError(
            "ban.cache_teacher replays the teacher's outputs of the first epoch, but these training batches "
            "change from epoch to epoch (shuffled or augmented); set ban.cache_teacher=null"
        )


# -- the driver ----------------------------------------------------------------------------------------------


class Store(Protocol):
    """Where a driver keeps its models: in memory by default, a run directory for resumable runs."""

    def finished(self, spec: ModelSpec) -> dict | None: ...  # a finished model's state dict
    def progress(self, spec: ModelSpec) -> dict | None: ...  # a Trainer state to resume from
    def on_epoch_end(self, spec: ModelSpec, trainer: Trainer, record: dict) -> None: ...
    def on_finished(self, spec: ModelSpec, model: nn.Module, history: list[dict]) -> None: ...
    def on_loaded(self, spec: ModelSpec, model: nn.Module) -> None: ...  # a finished model loaded, not trained


class MemoryStore:
    """Keeps nothing: every model is trained from scratch."""

    def finished(self, spec: ModelSpec) -> dict | None:
        return None

    def progress(self, spec: ModelSpec) -> dict | None:
        return None

    def on_epoch_end(self, spec: ModelSpec, trainer: Trainer, record: dict) -> None:
        pass

    def on_finished(self, spec: ModelSpec, model: nn.Module, history: list[dict]) -> None:
        pass

    def on_loaded(self, spec: ModelSpec, model: nn.Module) -> None:
        pass


class ReadOnlyStore(MemoryStore):
    """Reads what another process saved in ``store`` (to resume from it) and writes nothing: the store of
    every process but rank 0 under torchrun."""

    def __init__(self, store: Store):
        self.store = store

    def finished(self, spec: ModelSpec) -> dict | None:
        return self.store.finished(spec)

    def progress(self, spec: ModelSpec) -> dict | None:
        return self.store.progress(spec)


@dataclass
class Driver:
    """Trains the models of a plan in order with one engine; each teacher is a frozen copy. A model with a teacher
    takes the teacher's ``ban.share_layers`` (module paths) copied and frozen (Section 4.1, Table 5); a trained
    teacher given in ``setup`` is used as it is."""

    setup: Setup
    optim: TrainConfig
    ban: BornAgainConfig
    device: torch.device
    store: Store = field(default_factory=MemoryStore)
    models: dict[str, nn.Module] = field(default_factory=dict)
    histories: dict[str, list[dict]] = field(default_factory=dict)
    label: str = ""  # shown beside each model's progress, e.g. "seed 0 [1/3]"

    def run(self, plan: list[ModelSpec]) -> dict[str, nn.Module]:
        for i, spec in enumerate(plan):
            if spec.name not in self.models:
                self.models[spec.name] = self.train(spec, f"model {i + 1}/{len(plan)}")
        return self.models

    def build(self, spec: ModelSpec) -> nn.Module:
        torch.manual_seed(spec.seed)
        factory = (
            self.setup.teacher_fn if spec.role == Role.TEACHER and self.setup.teacher_fn else self.setup.student_fn
        )
        model = factory()
        if spec.init_from is not None:
            model.load_state_dict(self.models[spec.init_from].state_dict())
        if self.ban.share_layers and spec.teacher is not None:
            share_frozen(model, self.models[spec.teacher], self.ban.share_layers)
        return model

    def frozen_teacher(self, spec: ModelSpec) -> FrozenTeacher | None:
        if spec.teacher is None:
            return None
        batches = len(cast(Sized, self.setup.data.train)) if self.ban.cache_teacher else 0
        return FrozenTeacher(self.models[spec.teacher], self.ban.cache_teacher, batches)

    def train(self, spec: ModelSpec, position: str = "") -> nn.Module:
        if spec.role == Role.TEACHER and self.setup.teacher is not None:
            model = self.setup.teacher.to(self.device).eval()
            stored = self.store.finished(spec)
            if stored is None:
                self.store.on_finished(spec, model, [])
            elif not same_weights(model.state_dict(), stored["model"]):
                raise PlanError(
                    f"the trained {spec.name} given now differs from the one this run was started with; give "
                    f"the same one to continue the run, or start a new run"
                )
            else:
                self.store.on_loaded(spec, model)
            self.histories[spec.name] = []
            return model
        model = self.build(spec)
        done = self.store.finished(spec)
        if done is not None:
            with saved_weights_of(spec.name):
                model.load_state_dict(done["model"])
            self.store.on_loaded(spec, model)
            self.histories[spec.name] = done.get("history", [])
            return model.to(self.device)
        callbacks = [lambda trainer, record: self.store.on_epoch_end(spec, trainer, record)]
        trainer = Trainer(
            model,
            spec.make_loss(),
            self.optim,
            seed=spec.seed,
            device=self.device,
            teacher=self.frozen_teacher(spec),
            transform=self.setup.data.transform,
            callbacks=callbacks,
            name=spec.name,
            label=", ".join(p for p in (position, self.label) if p),
        )
        progress = self.store.progress(spec)
        if progress is not None:
            with saved_weights_of(spec.name):
                trainer.load_state_dict(progress)
        self.histories[spec.name] = trainer.fit(self.setup.data.train, self.setup.data.val)
        self.store.on_finished(spec, trainer.model, trainer.history)
        return trainer.model


RUN_OF_ANOTHER_ARCHITECTURE = (
    "the run directory holds another architecture's checkpoint: resume with the config it was "
    "made with, or start a new run"
)


@contextlib.contextmanager
def saved_weights_of(name: str, fix: str = RUN_OF_ANOTHER_ARCHITECTURE) -> Iterator[None]:
    """Loading the weights of model ``name``: another architecture's are a one-line error naming ``fix``, not
    torch's listing of every tensor."""
    try:
        yield
    except RuntimeError as error:
        detail = next(
            (
                line.strip()
                for line in str(error).splitlines()
                if "size mismatch" in line or "Missing" in line or "Unexpected" in line
            ),
            "",
        )
        raise PlanError(f"the weights of {name} do not fit the model ({detail.rstrip('.')}); {fix}") from None


@dataclass
class BornAgainResult:
    """One seed's trained models, the plan that made them, its ensembles, and per-example predictions per split."""

    models: dict[str, nn.Module]
    plan: list[ModelSpec]
    ensembles: dict[str, list[str]]
    predictions: dict[str, dict[str, Predictions]]
    histories: dict[str, list[dict]]
