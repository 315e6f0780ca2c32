"""The sequence of teaching selves (Section 3.1): the plan, its ensembles, and the driver that trains it.

A *plan* lists the models of one born-again experiment in training order: the teacher, trained on labels
(Eq. 1); generation k, a fresh model from its own seed taught by generation k-1 (Eq. 2-3); and optional
single students of the teacher with other losses (the BAN+L, CWTM and DKPP columns of Table 2) or with
no teacher at all (controls). BANE (Eq. 4) averages the generations. The :class:`Driver` trains the plan with
one engine, each student learning from a frozen copy of its teacher, and knows no dataset or preset; what is
checked before the first epoch lives in ``preflight``.
"""

from __future__ import annotations

import contextlib
import enum
import re
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass, field
from typing import Protocol, cast

import torch
import torch.nn as nn

from banets import distributed, losses
from banets.config import AUTO, BornAgainConfig, Loss, TrainConfig, UserError
from banets.data.registry import Data
from banets.engine import Trainer, evaluate
from banets.ensemble import prefix_ensembles
from banets.metrics import Predictions, bootstrap_paired_difference
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
    for k in range(1, ban.planned_generations + 1):
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


def trained_part(plan: list[ModelSpec], ensembles: dict[str, list[str]],
                 last: str | None) -> tuple[list[ModelSpec], dict[str, list[str]]]:
    """The plan and its ensembles without the generations after ``last``, where ``ban.generations: auto`` stopped
    (all of them when it did not)."""
    cut = next((spec.generation or 0 for spec in plan if spec.name == last), None)
    if cut is None:  # it did not stop (or the record names no generation of this plan)
        return plan, ensembles
    kept = [spec for spec in plan if spec.role != Role.GENERATION or (spec.generation or 0) <= cut]
    names = {spec.name for spec in kept}
    return kept, {label: members for label, members in ensembles.items() if set(members) <= names}


def chain(plan: list[ModelSpec]) -> list[str]:
    """The born-again generations in order (the teacher excluded)."""
    return [s.name for s in sorted(plan, key=lambda s: s.generation or 0) if s.role == Role.GENERATION]


def plan_ensembles(plan: list[ModelSpec], ban: BornAgainConfig) -> dict[str, list[str]]:
    """BANE (Eq. 4) over every prefix of the generations: Ens*2 = gens 1-2, Ens*3 = gens 1-3, ... (with the
    teacher too when ``ban.ensemble_teacher``); and ``ban.ensembles`` of any trained models by name, e.g.
    ``{"T+CE": ["teacher", "CE"]}``: two models trained without a teacher, the plain ensemble that BANE's
    gain is measured against, which ``ban.plain_ensemble`` adds for every plain control (another seed, no
    options)."""
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
    if ban.plain_ensemble:
        plain = [s.name for s in plan if s.role == Role.CONTROL and not s.loss_options]
        ensembles.update({f"T+{name}": [TEACHER, name] for name in plain if f"T+{name}" not in ensembles})
    return ensembles


# -- what a plan trains on ----------------------------------------------------------------------------------


@dataclass
class Setup:
    """What a plan trains on: the students' factory, the data, and the teacher's factory or a trained teacher."""

    student_fn: ModelFn
    data: Data
    teacher_fn: ModelFn | None = None  # a teacher of another architecture
    teacher: nn.Module | None = None  # a trained teacher, used as it is


# -- the driver ----------------------------------------------------------------------------------------------


class Store(Protocol):
    """Where a driver keeps its models: in memory by default, a seed directory for resumable runs."""

    def finished(self, spec: ModelSpec) -> dict | None: ...  # a finished model's state dict
    def progress(self, spec: ModelSpec) -> dict | None: ...  # a Trainer state to resume from
    def on_epoch_end(self, spec: ModelSpec, trainer: Trainer, record: dict) -> None: ...
    def on_checkpoint(self, spec: ModelSpec, trainer: Trainer) -> None: ...  # inside an epoch
    def on_finished(self, spec: ModelSpec, model: nn.Module, history: list[dict]) -> None: ...
    def on_loaded(self, spec: ModelSpec, model: nn.Module) -> None: ...  # a finished model loaded, not trained
    def on_stopped(self, after: str, reason: str) -> None: ...  # ban.generations=auto stopped after ``after``


class MemoryStore:
    """Keeps nothing: every model is trained from scratch."""

    def finished(self, spec: ModelSpec) -> dict | None:
        return None

    def progress(self, spec: ModelSpec) -> dict | None:
        return None

    def on_epoch_end(self, spec: ModelSpec, trainer: Trainer, record: dict) -> None:
        pass

    def on_checkpoint(self, spec: ModelSpec, trainer: Trainer) -> None:
        pass

    def on_finished(self, spec: ModelSpec, model: nn.Module, history: list[dict]) -> None:
        pass

    def on_loaded(self, spec: ModelSpec, model: nn.Module) -> None:
        pass

    def on_stopped(self, after: str, reason: str) -> None:
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
    stopped: str | None = None  # why ban.generations=auto trained no more generations
    stopped_after: str | None = None  # the last generation it trained

    def run(self, plan: list[ModelSpec]) -> dict[str, nn.Module]:
        """Train the plan's models in order (with ``ban.generations: auto``, its generations while they pay)."""
        specs = {spec.name: spec for spec in plan}
        for i, spec in enumerate(plan):
            if spec.name in self.models or (spec.role == Role.GENERATION and not self.goes_on(spec, specs)):
                continue
            self.models[spec.name] = self.train(spec, f"model {i + 1}/{len(plan)}")
        return self.models

    def goes_on(self, spec: ModelSpec, specs: dict[str, ModelSpec]) -> bool:
        """Whether generation ``spec`` trains: always, but with ``ban.generations: auto`` only while the generation
        that would teach it beat its own teacher on validation beyond noise (the 95% interval of the paired
        bootstrap over the validation examples below zero)."""
        if self.stopped is not None:
            return False
        if self.ban.generations != AUTO or spec.teacher is None or specs[spec.teacher].teacher is None:
            return True
        previous = specs[spec.teacher]
        mean, low, high = self.gain(previous.name, str(previous.teacher))
        if high < 0:
            return True
        unit = "points of error" if self.setup.data.metric == "error" else "nats/token"
        self.stopped_after = previous.name
        self.stopped = (f"ban.generations=auto stopped after {previous.name}: it did not beat {previous.teacher} on "
                        f"validation beyond noise ({mean:+.4g} {unit} [{low:+.4g}, {high:+.4g}])")
        self.store.on_stopped(previous.name, self.stopped)
        if self.optim.progress != "none" and distributed.is_main():
            print(f"{self.label}: {self.stopped}" if self.label else self.stopped)
        return False

    def gain(self, student: str, teacher: str) -> tuple[float, float, float]:
        """``student``'s validation score minus ``teacher``'s (lower is better) and its 95% paired bootstrap
        interval over the validation examples (blocks of them for a text)."""
        data = self.setup.data
        ours, theirs = (evaluate(self.models[name], data.val, self.device, self.optim, data.transform)
                        for name in (student, teacher))
        return bootstrap_paired_difference(ours.scores(data.metric), theirs.scores(data.metric), block=data.block)

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
            return self._given_teacher(spec)
        model = self.build(spec)
        done = self.store.finished(spec)
        if done is not None:
            with saved_weights_of(spec.name):
                model.load_state_dict(done["model"])
            self.store.on_loaded(spec, model)
            self.histories[spec.name] = done.get("history", [])
            return model.to(self.device)
        callbacks = [lambda trainer, record: self.store.on_epoch_end(spec, trainer, record)]
        trainer = Trainer(model, spec.make_loss(), self.optim, seed=spec.seed, device=self.device,
                          teacher=self.frozen_teacher(spec), transform=self.setup.data.transform, callbacks=callbacks,
                          on_checkpoint=lambda trainer: self.store.on_checkpoint(spec, trainer), name=spec.name,
                          label=", ".join(p for p in (position, self.label) if p))
        progress = self.store.progress(spec)
        if progress is not None:
            with saved_weights_of(spec.name):
                trainer.load_state_dict(progress)
        self.histories[spec.name] = trainer.fit(self.setup.data.train, self.setup.data.val)
        self.store.on_finished(spec, trainer.model, trainer.history)
        return trainer.model

    def _given_teacher(self, spec: ModelSpec) -> nn.Module:
        """The trained teacher given from Python, recorded as the run's teacher; on resume, it must be the same."""
        assert self.setup.teacher is not None
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


RUN_OF_ANOTHER_ARCHITECTURE = (
    "the seed directory holds another architecture's checkpoint: resume with the config it was "
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
