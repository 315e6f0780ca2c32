"""Everything checked before the first epoch, in the order of the README's list ("What happens when things go
wrong"), and nothing else: the config can be recorded, the device exists, the batch splits over the processes,
then the plan (:func:`check_plan`: losses and their options, ensembles, the model factories, one batch of every
split through student and teacher, what each loss returns, shared layers, the teacher cache) and the output
folder (:func:`prepare_out`). :func:`banets.experiment.run` calls them once; each raises a one-line error naming
the problem and the fix, and none trains or writes anything.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable, Sized
from pathlib import Path
from typing import cast

import torch
import torch.nn as nn
import yaml

from banets import distributed, losses
from banets.config import PYTHON, BornAgainConfig, ConfigError, ExperimentConfig, UserError, first_line
from banets.data import inputs
from banets.data.batches import TensorBatches, are_class_labels, check_two_classes, to_batch
from banets.data.inputs import Inputs
from banets.data.registry import Batch, Data, DataError
from banets.engine import reset_state, resolve_device
from banets.generations import TEACHER, ModelFn, ModelSpec, PlanError, Setup, plan_ensembles, saved_weights_of
from banets.models.outputs import logits_of
from banets.models.students import share_frozen
from banets.report import check_report_folder
from banets.runs import (
    REPORT_DIR,
    RunError,
    SeedDirectory,
    config_record,
    is_seed_dir,
    is_start_leftover,
    seed_dir,
    seed_of,
)
from banets.user_code import SetupError


def check_recordable(config: ExperimentConfig) -> None:
    """``config.yaml`` must be able to hold the config: plain numbers, strings, lists and mappings only."""
    try:
        yaml.safe_dump(config_record(config))
    except yaml.YAMLError as error:
        raise ConfigError(
            f"a config value cannot be written to config.yaml ({first_line(error)}); use plain "
            f"Python numbers, strings, lists and dicts (e.g. float(x) for a NumPy number)"
        ) from None


def available_device(name: str) -> torch.device:
    """The device ``name`` resolves to, refused with a one-line error when this machine has none of that kind."""
    kind = name.split(":")[0]
    present = {
        "cuda": torch.cuda.is_available,
        "mps": lambda: torch.backends.mps.is_available(),
        "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available(),
    }
    if kind in present and not present[kind]():
        raise SetupError(
            f"device={name} but torch {torch.__version__} finds no {kind} device here; use --set device=cpu "
            f"(or device=auto: a GPU when there is one)"
        )
    return resolve_device(name)


def check_batch_split(batch_size: int) -> None:
    """The global batch splits evenly over the data-parallel processes (torchrun)."""
    if batch_size % distributed.world_size():
        raise SetupError(
            f"data.batch_size={batch_size} is the global batch and must split evenly over "
            f"{distributed.world_size()} processes; set a multiple of {distributed.world_size()}"
        )


def check_plan(plan: list[ModelSpec], ban: BornAgainConfig, setup: Setup, device: torch.device) -> None:
    """Everything that can be checked before training: every loss with its options, the model factories, the
    first batch of every split through a student and of the training data through the teacher (shapes, label
    range, finite values), what each loss returns, the shared layers, the ensembles and the teacher cache.
    Raises a one-line error naming the problem and the fix; trains nothing."""
    check_loss_options(plan)
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
    check_classes_differ(setup.data.train)
    bounds = label_bounds(setup.data.train, y)
    with torch.no_grad():
        student_logits, teacher_logits = (
            check_outputs(forward_once(model, x, device, what), y, bounds, what)
            for model, what in ((student, "the model"), (teacher, "the teacher"))
        )
        check_held_out(setup, student, bounds, device)
    if student_logits.shape != teacher_logits.shape:
        raise PlanError(
            f"the teacher outputs {tuple(teacher_logits.shape)} but the students output "
            f"{tuple(student_logits.shape)}; build teacher and students for the same classes and inputs"
        )
    for spec in plan:
        check_loss(spec, student_logits, teacher_logits, y)
    check_teacher_use(plan, ban, setup, student, teacher, device)


def check_teacher_use(plan: list[ModelSpec], ban: BornAgainConfig, setup: Setup, student: nn.Module,
                      teacher: nn.Module, device: torch.device) -> None:
    """What the plan does with the teacher besides teaching: initialising the students, sharing its layers, and
    caching its outputs."""
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


def check_loss_options(plan: list[ModelSpec]) -> None:
    """Every model's loss can be made with its options."""
    for spec in plan:
        try:
            spec.make_loss()
        except losses.LossError as error:
            raise PlanError(f"{loss_named(spec)}: {error}") from None


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
    except UserError:
        raise  # banets' own refusal (a registered model's, an hf: folder's): its one line says what to do
    except (RuntimeError, ValueError, TypeError) as error:
        raise PlanError(
            f"{what} failed to build the model ({type(error).__name__}: {first_line(error)}); check its options"
        ) from None
    if not isinstance(model, nn.Module):
        raise PlanError(f"{what} returned {type(model).__name__}, not an nn.Module; make it return the model")
    return model


def first_batch(data: Iterable[Batch], what: str) -> Batch:
    """The first batch of ``data``, with integer labels."""
    for batch in data:
        x, y = to_batch(batch)
        if not are_class_labels(y):
            raise DataError(f"the {what} labels are {y.dtype}; class labels must be integers (e.g. y.long())")
        return x, y
    raise DataError(f"the {what} data yield no batch; is it empty?")


def model_inputs(setup: Setup, data: Iterable[Batch], x: Inputs, device: torch.device, what: str) -> Inputs:
    """Batch ``x`` of ``data`` as models see it in evaluation: on ``device``, through the data's transform, and
    finite (all of ``data`` checked when it is held in memory and not transformed)."""
    x = inputs.to_device(x, device)
    if isinstance(x, dict) and setup.data.transform is not None:
        raise PlanError(f"a transform takes one input tensor, but the batches have named inputs ({', '.join(x)}); "
                        f"prepare them in the Dataset or its collate_fn instead")
    if isinstance(x, torch.Tensor) and setup.data.transform is not None:
        try:
            x = setup.data.transform(x, None, False)
        except (RuntimeError, ValueError, TypeError) as error:
            raise PlanError(
                f"the transform fails on a batch of shape {tuple(x.shape)} ({first_line(error)}); it is called "
                f"as transform(x, generator, train), generator a torch.Generator (None when not training)"
            ) from None
    whole = data.tensors[0] if isinstance(data, TensorBatches) and setup.data.transform is None else x
    if any(t.is_floating_point() and not torch.isfinite(t).all() for t in inputs.tensors(whole)):
        raise DataError(
            f"the {what} inputs hold NaN or inf; clean or drop those examples (or give a transform that does)"
        )
    return x


def forward_once(model: nn.Module, x: Inputs, device: torch.device, what: str) -> object:
    """``model(x)`` (``model(**x)`` for named inputs) in evaluation mode, its carried state forgotten after; a model
    that fails on the batch is a :class:`PlanError` naming the batch's shape (the usual cause: a model built for
    other inputs)."""
    check_input_names(model, x, what)
    model.to(device).eval()
    try:
        return inputs.call(model, x)
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        raise PlanError(
            f"{what} fails on a batch of shape {inputs.shapes(x)} ({first_line(error)}); build it for "
            f"these inputs (`banets models NAME` lists a registered model's options, e.g. in_channels)"
        ) from None
    finally:
        reset_state(model)


def check_input_names(model: nn.Module, x: Inputs, what: str) -> None:
    """Every named input is an argument of the model's ``forward``: one it does not take would be an error inside
    it, or, taken by a ``**kwargs``, dropped without a word, so a name that ``forward`` does not list is refused
    unless ``forward`` takes ``**kwargs``."""
    if not isinstance(x, dict):
        return
    parameters = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = [name for name in x if name not in parameters]
    if unknown:
        raise PlanError(
            f"the batches' {', '.join(map(repr, unknown))} {'is not' if len(unknown) == 1 else 'are not'} an argument "
            f"of {what}'s forward ({type(model).__name__} takes {', '.join(parameters) or 'none'}); leave "
            f"{'it' if len(unknown) == 1 else 'them'} out of the batches (e.g. in the collate_fn), or name the labels "
            f"with label_key="
        )


def label_bounds(data: Iterable[Batch], y: torch.Tensor) -> tuple[int, int]:
    """The smallest and largest label but the ignore index (padding): of the whole label tensor when the data are
    in memory, else of batch ``y`` ((0, 0) when all of it is padding)."""
    labels = data.tensors[1] if isinstance(data, TensorBatches) else y
    labels = labels[labels != losses.IGNORE_INDEX]
    return (int(labels.min()), int(labels.max())) if labels.numel() else (0, 0)


def check_classes_differ(data: Iterable[Batch]) -> None:
    """Training labels in memory hold two classes or more (streamed data show one batch: they are not checked)."""
    if isinstance(data, TensorBatches):
        labels = data.tensors[1]
        check_two_classes(labels[labels != losses.IGNORE_INDEX], "check the labels")


def check_outputs(output: object, y: torch.Tensor, bounds: tuple[int, int], what: str) -> torch.Tensor:
    """The logits in what a model returned (:func:`~banets.models.outputs.logits_of`), checked against the labels
    of one batch: a finite tensor of ``labels.shape + (classes,)`` whose classes cover every label in ``bounds``."""
    try:
        logits = logits_of(output)
    except TypeError as error:
        raise PlanError(f"{what} {error}") from None
    if tuple(logits.shape[:-1]) != tuple(y.shape):
        raise PlanError(
            f"{what} returned logits of shape {tuple(logits.shape)} for labels of shape {tuple(y.shape)}; "
            f"expected {tuple(y.shape)} + (classes,)"
        )
    low, high = bounds
    if low < 0:
        raise DataError(
            f"the labels include {low}; class labels are 0 .. classes - 1 ({losses.IGNORE_INDEX} marks padding, which "
            f"no loss or metric sees), so relabel them (e.g. y - y.min())"
        )
    if high >= logits.shape[-1]:
        raise PlanError(
            f"{what} has {logits.shape[-1]} outputs but the labels range over [{low}, {high}]; "
            f"build it with at least {high + 1} classes (labels are 0 .. classes - 1)"
        )
    if logits.float().log_softmax(-1).isnan().any():  # NaN, +inf or a row of -inf (-inf masking a class is fine)
        raise PlanError(
            f"{what} outputs NaN or inf on the first batch; check its weights (a damaged or diverged "
            f"checkpoint?) and the inputs"
        )
    return logits


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


def loss_named(spec: ModelSpec) -> str:
    return f"{spec.name}'s loss {losses.name_of(spec.loss)} with options {spec.loss_options or 'none'}"


def check_loss(spec: ModelSpec, student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor) -> None:
    """``spec``'s loss once on one batch: a finite scalar (or named scalar terms) with a gradient to the student's
    logits: a loss of your own may fail on a batch, or return anything."""
    named = loss_named(spec)
    student, teacher, labels = losses.real_positions(student_logits, teacher_logits, y)  # as in training
    try:
        returned = losses.call(spec.make_loss(), student.detach().requires_grad_(), teacher, labels, progress=0.0)
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
    try:
        len(cast(Sized, setup.data.train))  # a wrapper of batches has __len__, which asks the batches it wraps
    except TypeError:
        raise PlanError("ban.cache_teacher needs training data of a known number of batches (tensors, a Dataset or a "
                        "DataLoader over one), not a stream; set ban.cache_teacher=null") from None
    first, again = (to_batch(next(iter(setup.data.train)))[0] for _ in range(2))
    same = inputs.equal(first, again)
    if same and isinstance(first, torch.Tensor) and setup.data.transform is not None:
        x = first.to(device)
        draws = [setup.data.transform(x, torch.Generator(device=device).manual_seed(s), True) for s in (0, 1)]
        same = torch.equal(*draws)
    if not same:
        raise PlanError(
            "ban.cache_teacher replays the teacher's outputs of the first epoch, but these training batches "
            "change from epoch to epoch (shuffled or augmented); set ban.cache_teacher=null"
        )


def prepare_out(out: Path, config: ExperimentConfig, data: Data, resume: bool) -> None:
    """Check ``out`` before training: a folder (made if missing) that holds nothing but banets' own seed runs and
    report; without ``resume`` none of this config's seeds exists yet, with it every existing one can continue;
    the other seeds it holds are of the same experiment."""
    option = "out=" if config.data.dataset == PYTHON else "--out"  # as the user named it: born_again(out=) or the CLI
    check_out_folder(out, option)
    for seed in config.seeds:
        run_dir = SeedDirectory(seed_dir(out, seed))
        if not run_dir.root.exists():
            continue
        if not run_dir.exists():
            raise RunError(
                f"{run_dir.root} is not a complete run (no config.yaml); move it away, or choose another {option}"
            )
        if not resume:
            run_dir.check_not_failed()  # a failed run is not one to continue
            how = f"born_again(..., out={str(out)!r}, resume=True)" if option == "out=" else f"`banets resume {out}`"
            raise RunError(f"{out} already holds seed {seed}; continue it with {how} or choose another {option}")
        run_dir.check_resumable(config_record(config, seeds=[seed]), data.files)
    for other in sorted(out.iterdir()):
        number = seed_of(other)
        if is_seed_dir(other) and number is not None and number not in config.seeds:
            SeedDirectory(other).check_same_experiment(config_record(config, seeds=[number]), data.files, resume)


def check_out_folder(out: Path, option: str) -> None:
    """``out`` is a folder this process can write, holding nothing but banets' runs and report (made if missing)."""
    if out.exists() and not out.is_dir():
        raise RunError(f"{option} {out} is a file; choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".banets-write-test"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise RunError(
            f"cannot write into {option} {out} ({error.strerror}); choose a folder you can write to"
        ) from None
    foreign = sorted(p.name for p in out.iterdir() if not is_ours(p))
    if foreign:
        raise RunError(
            f"{option} {out} holds files that are not a banets run ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); choose an empty or new folder"
        )
    check_report_folder(out / REPORT_DIR)


def is_ours(path: Path) -> bool:
    """A seed directory, the report folder, or a leftover of an interrupted start (``.seed-*.tmp``)."""
    if path.name == REPORT_DIR and path.is_dir():
        return True
    return is_start_leftover(path) or (is_seed_dir(path) and seed_of(path) is not None)
