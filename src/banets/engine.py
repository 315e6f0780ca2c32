"""The one training loop, shared by every teacher, generation and model family.

It knows nothing of the paper's tables: it trains ``model`` on ``loss(student_logits, teacher_logits,
labels)``, with an optional frozen teacher evaluated on the same (augmented) batch. Each epoch starts by
reseeding torch from ``(seed, epoch)``, so a run resumed at an epoch boundary repeats the uninterrupted
run exactly (on CPU, bitwise). Checkpointing and reporting plug in through ``callbacks`` and ``state_dict``;
under torchrun each process trains on its rows of every global batch (see ``distributed``).

Mixed precision (``optim.precision``): bf16 autocast needs no loss scaling (bf16 has fp32's exponent range);
fp16 autocast, for GPUs without bf16 tensor cores, scales the loss with ``torch.amp.GradScaler`` so that small
gradients do not flush to zero in fp16, and skips the optimizer step whose scaled gradients overflowed (halving
the scale), as PyTorch's automatic mixed precision recipe does. The scaler's state is part of ``state_dict``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import torch
import torch.nn as nn
from torch import Tensor
from tqdm.auto import tqdm

from banets import distributed
from banets.config import TrainConfig, UserError, first_line, is_own, qualified_name
from banets.data import inputs
from banets.data.inputs import Inputs
from banets.data.registry import Batch, DataError, Transform
from banets.epoch_position import (
    CheckpointClock,
    batches_from,
    carried_states,
    generator_states,
    load_carried_states,
    load_generator_states,
)
from banets.losses import IGNORE_INDEX, Loss, Terms, call, real_positions, total
from banets.metrics import Predictions
from banets.models.outputs import model_logits
from banets.teacher import FrozenTeacher
from banets.user_code import SetupError, imported_function

ModuleT = TypeVar("ModuleT", bound=nn.Module)
T = TypeVar("T")


class DivergedError(UserError, RuntimeError):
    """The training loss of model ``model`` became NaN or infinite."""

    def __init__(self, model: str, message: str):
        super().__init__(f"{model}: {message}")
        self.model = model


class Callback(Protocol):
    def __call__(self, trainer: Trainer, record: dict) -> None: ...


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; under torchrun, CUDA is this process's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return distributed.local_device(torch.device(name))


AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
BF16_CAPABILITY = (8, 0)  # Ampere: the first NVIDIA GPUs with bf16 tensor cores
MAX_SKIPPED_STEPS = 10  # fp16: consecutive NaN/inf losses the loss scaler may skip before the run counts as diverged


def choose_precision(precision: str, device_type: str, capability: tuple[int, int] | None = None) -> str:
    """What ``optim.precision`` means on a device of type ``device_type`` (and, on CUDA, compute ``capability``):
    ``fp32``, ``bf16`` or ``fp16``. ``auto`` is bf16 on CUDA GPUs of capability 8.0 or more, fp16 (with loss
    scaling) on older ones, whose bf16 is emulated (``torch.cuda.is_bf16_supported()`` counts it, but it runs
    without tensor cores), and fp32 elsewhere: CPUs here lack bf16 units. An explicit choice is kept (fp16 runs on
    a CPU too, slowly: PyTorch has CPU autocast and ``GradScaler("cpu")`` for it)."""
    if precision != "auto":
        return precision
    if device_type != "cuda":
        return "fp32"
    return "bf16" if capability is not None and capability >= BF16_CAPABILITY else "fp16"


def device_precision(precision: str, device: torch.device) -> str:
    """:func:`choose_precision` for ``device``, asking CUDA for its compute capability."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return choose_precision(precision, device.type, capability)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``, or None for plain fp32."""
    return AUTOCAST_DTYPES[device_precision(precision, device)]


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


@typing.runtime_checkable
class Stateful(Protocol):
    """A module that carries state from batch to batch (a language model's hidden state, a teacher cache)."""

    def reset_state(self) -> None: ...


def reset_state(model: nn.Module) -> None:
    """Forget carried state (language models' hidden state) before a new pass over a dataset."""
    for module in model.modules():  # the model itself, or a wrapper's (ensemble, cache) members
        if isinstance(module, Stateful):
            module.reset_state()


@dataclass
class EpochTotals:
    """An epoch's training loss, errors and rows, summed on the device (no step waits for them), and a watch on
    NaN/inf losses: ``nonfinite_run`` counts the consecutive steps, up to the last, whose loss was not finite,
    ``longest_nonfinite_run`` the longest such run, ``last_nonfinite`` the last such loss. Steps with a non-finite
    loss are left out of the sums (under fp16 the loss scaler skips them; otherwise the run stops as diverged)."""

    loss_sum: Tensor
    errors: Tensor
    rows: Tensor
    nonfinite_run: Tensor
    longest_nonfinite_run: Tensor
    last_nonfinite: Tensor
    term_sums: dict[str, Tensor] = field(default_factory=dict)  # a loss's terms by name, summed like loss_sum

    @classmethod
    def zeros(cls, nonfinite_run: Tensor) -> EpochTotals:
        """Empty sums; ``nonfinite_run`` carries the previous epoch's run of NaN/inf losses over, whatever the
        epochs' lengths."""
        count = torch.zeros_like(nonfinite_run)
        value = torch.zeros((), device=nonfinite_run.device)
        return cls(value, count, count.clone(), nonfinite_run, nonfinite_run.clone(), value.clone())

    def add(self, loss: Tensor, logits: Tensor, y: Tensor, terms: Terms) -> None:
        finite = torch.isfinite(loss)
        self.loss_sum += torch.where(finite, loss * y.numel(), 0.0)
        for name, term in terms.items():
            term_sum = self.term_sums.setdefault(name, torch.zeros_like(self.loss_sum))
            term_sum += torch.where(finite, term * y.numel(), 0.0)  # in place, like loss_sum
        self.errors += torch.where(finite, (logits.argmax(-1) != y).sum(), 0)
        self.rows += finite * y.numel()
        self.nonfinite_run = torch.where(finite, 0, self.nonfinite_run + 1)
        self.longest_nonfinite_run = torch.maximum(self.longest_nonfinite_run, self.nonfinite_run)
        self.last_nonfinite = torch.where(finite, self.last_nonfinite, loss.float())

    def sum_over_processes(self) -> None:
        distributed.sum_over_processes(self.loss_sum, self.errors, self.rows, *self.term_sums.values())

    def saved(self) -> dict[str, dict[str, Tensor]]:
        """For a mid-epoch checkpoint: the sums so far over every process (each process keeps its own), the terms'
        sums likewise, and the NaN/inf watch."""
        sums = {"loss_sum": self.loss_sum, "errors": self.errors, "rows": self.rows}
        summed = distributed.sum_over_processes(*(v.clone() for v in [*sums.values(), *self.term_sums.values()]))
        watch = {"nonfinite_run": self.nonfinite_run, "longest_nonfinite_run": self.longest_nonfinite_run,
                 "last_nonfinite": self.last_nonfinite}
        return {"sums": dict(zip(sums, (v.cpu() for v in summed[: len(sums)]))),
                "terms": dict(zip(self.term_sums, (v.cpu() for v in summed[len(sums) :]))),
                "watch": {k: v.cpu() for k, v in watch.items()}}

    @classmethod
    def from_saved(cls, saved: dict[str, dict[str, Tensor]], device: torch.device) -> EpochTotals:
        """The totals of :meth:`saved`, their sums on rank 0 only: the sums are added over the processes at the
        epoch's end."""

        def sums(part: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.to(device) if distributed.is_main() else torch.zeros_like(v, device=device)
                    for k, v in part.items()}

        watch = {k: v.to(device) for k, v in saved["watch"].items()}
        return cls(**sums(saved["sums"]), **watch, term_sums=sums(saved["terms"]))


class Trainer:
    """Trains one model; ``fit`` runs the remaining epochs, ``state_dict`` captures everything to resume."""

    def __init__(self, model: nn.Module, loss: Loss, config: TrainConfig, *, seed: int, device: torch.device,
                 teacher: nn.Module | None = None, transform: Transform | None = None,
                 callbacks: Sequence[Callback] = (), on_checkpoint: Callable[[Trainer], None] | None = None,
                 name: str = "model", label: str = ""):
        self.seed, self.device, self.name = seed, device, name
        self.label = f"{name} ({label})" if label else name  # how progress names this model
        self.config = config if distributed.is_main() else replace(config, progress="none")  # rank 0 reports
        self.model, self.teacher = self._on_device(model), None
        if teacher is not None:  # a module given as it is is frozen like every teacher
            self.teacher = self._on_device(teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher))
        self.loss, self.transform, self.callbacks = loss, transform, list(callbacks)
        self.on_checkpoint = on_checkpoint  # writes a checkpoint inside an epoch (optim.checkpoint_every)
        self.resume_at: dict | None = None  # the position a mid-epoch checkpoint left this epoch at
        self.position: dict | None = None  # while an epoch runs and a checkpoint is written: where it stands
        # compile the model itself, then wrap it (DistributedDataParallel under torchrun): PyTorch's advice in
        # "Where to apply torch.compile?", as compiling the wrapper traces DDP's hooks and SyncBatchNorm's collectives
        compiled = typing.cast(nn.Module, torch.compile(self.model)) if config.compile else self.model
        self.forward = distributed.data_parallel(compiled, device)
        self.precision = device_precision(config.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.nonfinite_run = torch.zeros((), dtype=torch.long, device=device)  # consecutive steps with a NaN/inf loss
        self.optimizer = make_optimizer(self.model, config)
        self.batches_per_epoch = 0  # known once fit is given the training data
        self.scheduler: Any = None  # made by fit, which knows the steps of the training
        self.resumed_schedule: dict | None = None  # a checkpoint's scheduler state, loaded once it is made
        self.epoch = 0
        self.progress = 0.0  # the fraction of the training done at this batch, for losses that take it (annealing)
        self.history: list[dict] = []

    def _on_device(self, model: ModuleT) -> ModuleT:
        memory_format = torch.channels_last if self.config.channels_last else torch.preserve_format
        # Module.to takes memory_format (PyTorch's type stubs omit it)
        return model.to(self.device, memory_format=memory_format)  # type: ignore[call-overload]

    # -- one epoch -------------------------------------------------------------------------------------

    def fit(self, train_data: Iterable[Batch], val_data: Iterable[Batch] | None = None) -> list[dict]:
        """Train from the current epoch to ``config.epochs``, calling the callbacks after each epoch with the
        epoch's record and its wall-clock ``seconds`` (kept out of ``history``, so checkpoints do not depend on
        timing)."""
        check_schedulable(self.config, train_data)
        self.batches_per_epoch = known_length(train_data) or 0
        if self.scheduler is None:
            self._make_schedule()
        bar = self._model_bar()
        while self.epoch < self.config.epochs:
            start = time.perf_counter()
            record = self.train_epoch(train_data)
            if val_data is not None:
                record.update(
                    {
                        f"val_{k}": v
                        for k, v in evaluate(self.model, val_data, self.device, self.config, self.transform)
                        .summary()
                        .items()
                    }
                )
            self._step_schedule(record)
            self.epoch += 1
            self.history.append(record)
            timed = {**record, "seconds": time.perf_counter() - start}  # the epoch and its validation
            self._report(timed, bar)
            for callback in self.callbacks:
                callback(self, timed)
        if bar is not None:
            bar.close()
        if self.config.progress == "model" and self.history:
            tqdm.write(format_record(self.label, self.history[-1]))  # one line per finished model, on a terminal or not
        return self.history

    def train_epoch(self, train_data: Iterable[Batch]) -> dict:
        torch.manual_seed(epoch_seed(self.seed, self.epoch))
        augment_rng = torch.Generator(device=self.device).manual_seed(epoch_seed(self.seed, self.epoch))
        self.model.train()
        resume_at, self.resume_at = self.resume_at, None
        first, totals = self._start_epoch(train_data, resume_at, augment_rng)
        steps = tqdm(batches_from(train_data, first), desc=f"{self.label} epoch {self.epoch + 1}/{self.config.epochs}",
                     leave=False, disable=None if self.config.progress == "epoch" else True, dynamic_ncols=True)
        clock, batches = CheckpointClock(self.config.checkpoint_every), first
        last = self.batches_per_epoch or None  # the epoch's end writes an epoch checkpoint
        accumulate = self.config.accumulate
        for step, batch in enumerate(steps, start=first):
            batches += 1
            self._seed_step(step, first, resume_at, augment_rng)
            x, y, share = self._own_rows(batch, augment_rng)
            self.progress = (self.epoch + step / last) / self.config.epochs if last else self.epoch / self.config.epochs
            group = min(accumulate, last - step + step % accumulate) if last else accumulate  # its batches
            update = (step + 1) % accumulate == 0 or step + 1 == last
            padded = bool((batch[1] == IGNORE_INDEX).any())  # read on the batch as loaded: no wait on a GPU
            logits, y, loss, terms = self._step(x, y, share / group, update, padded)
            totals.add(loss.detach(), logits.detach(), y, {name: term.detach() for name, term in terms.items()})
            if step % 25 == 0:
                self._check_finite(totals, step)
                steps.set_postfix(loss=f"{loss.item():.4f}")
            if self.on_checkpoint is not None and update and step + 1 != last and clock.due((step + 1) // accumulate):
                self._write_position(step + 1, totals, augment_rng)
        if last is None and batches % accumulate:  # data of unknown length ended inside a group: its batches count
            self._update()
        return self._end_epoch(totals, batches)

    def _seed_step(self, step: int, first: int, resume_at: dict | None, augment_rng: torch.Generator) -> None:
        """The generators before batch ``step``: at the epoch's start each process's own (the epoch's data order is
        drawn, the same in every process; the model's draws are not); at the first batch after a checkpoint inside
        the epoch, as they were after the batch before it."""
        if step == 0:
            distributed.reseed_per_process(epoch_seed(self.seed, self.epoch))
        elif step == first and resume_at is not None:
            load_generator_states(resume_at["generators"], augment_rng)

    def _start_epoch(self, train_data: Iterable[Batch], resume_at: dict | None,
                     augment_rng: torch.Generator) -> tuple[int, EpochTotals]:
        """The step the epoch starts at and its totals so far: 0 and zeros, or where a checkpoint inside the epoch
        left them, with the states carried from batch to batch (an LSTM's) restored."""
        for model in (self.model, self.teacher):
            if model is not None:
                reset_state(model)
        self.optimizer.zero_grad(set_to_none=True)  # groups of accumulated batches end with the epoch
        if resume_at is None:
            return 0, EpochTotals.zeros(self.nonfinite_run)
        if self.teacher is not None and self.teacher.cached:
            self._teach_again(train_data, resume_at["step"], augment_rng)
            load_carried_states(resume_at["carried"], self.model)
        else:
            load_carried_states(resume_at["carried"], self.model, self.teacher)
        return resume_at["step"], EpochTotals.from_saved(resume_at["totals"], self.device)

    def _end_epoch(self, totals: EpochTotals, batches: int) -> dict:
        """The epoch's record, from its totals summed over the processes."""
        totals.sum_over_processes()
        if batches == 0:
            raise DataError(
                f"{self.name}: the training data yielded no batch in epoch {self.epoch + 1}; pass data that "
                f"can be read again every epoch (an (x, y) pair, a list of batches, a Dataset or a DataLoader)"
            )
        self._check_finite(totals, "at the end of the epoch")
        if self.teacher is not None:
            reset_state(self.teacher)  # a cached teacher checks the batches it replayed this epoch
        self.nonfinite_run = totals.nonfinite_run
        rows = max(totals.rows.item(), 1)
        return {
            "epoch": self.epoch + 1,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": totals.loss_sum.item() / rows,
            **{f"train_loss_{name}": term.item() / rows for name, term in totals.term_sums.items()},
            "train_error": 100.0 * totals.errors.item() / rows,
        }

    def _teach_again(self, train_data: Iterable[Batch], steps: int, augment_rng: torch.Generator) -> None:
        """A cached teacher resumed inside an epoch lost its stored outputs with the killed process: it runs again
        over the epoch's first ``steps`` batches, which stores them and brings a stateful teacher (a language model)
        to the state it had at the checkpoint. The generators are then reseeded as at the epoch's start."""
        assert self.teacher is not None
        with torch.no_grad(), self._autocast():
            for batch in itertools.islice(train_data, steps):
                self.teacher(self._own_rows(batch, augment_rng)[0])
        torch.manual_seed(epoch_seed(self.seed, self.epoch))

    def _own_rows(self, batch: Batch, augment_rng: torch.Generator) -> tuple[Inputs, Tensor, float | Tensor]:
        """A training batch's inputs and labels, this process's rows of them, and their share of the batch."""
        x, y = self._inputs(batch, augment_rng, train=True)
        # a streamed batch is (x, y, global rows): this process's rows only, already augmented
        return distributed.split_batch(x, y, batch[2] if len(batch) == 3 else None)

    def _inputs(self, batch: Batch, rng: torch.Generator, train: bool) -> tuple[Inputs, Tensor]:
        x = inputs.to_device(batch[0], self.device)
        return model_view(x, self.transform, rng, train, self.config), batch[1].to(self.device, non_blocking=True)

    def _step(self, x: Inputs, y: Tensor, share: float | Tensor = 1.0, update: bool = True,
              padded: bool = False) -> tuple[Tensor, Tensor, Tensor, Terms]:
        """Gradients of ``loss * share`` (``share``: this batch's part of the optimiser step, see
        ``distributed.split_batch`` and ``optim.accumulate``), then, with ``update``, one optimiser step; returns the
        logits and labels the loss saw (with ``padded``, the positions not labelled ``IGNORE_INDEX``), the loss and
        its terms by name (none for a loss of one term).

        Under fp16 the loss is scaled before ``backward`` and the gradients unscaled before clipping (so the norm
        is the true gradients'); ``scaler.step`` skips the step when they hold inf/NaN and ``update`` then halves
        the scale (PyTorch's "Automatic Mixed Precision" recipe). Without fp16 the scaler passes everything through.
        Data-parallel processes average their gradients only on the batch that updates (DDP's ``no_sync``).
        """
        no_sync = getattr(self.forward, "no_sync", None)
        with contextlib.nullcontext() if update or no_sync is None else no_sync():
            logits, y, value = self._forward_loss(x, y, padded)
            loss, terms = total(value), (value if isinstance(value, dict) else {})
            self.scaler.scale(loss * share).backward()
        if update:
            self._update()
        return logits, y, loss, terms

    def _update(self) -> None:
        """One optimiser step on the gradients gathered since the last (clipped when asked), and the schedule's
        move when it moves every step."""
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.config.schedule_every == "step" and self.scheduler is not None:
            self.scheduler.step()

    def _forward_loss(self, x: Inputs, y: Tensor, padded: bool) -> tuple[Tensor, Tensor, Tensor | Terms]:
        with self._autocast():
            teacher_logits = self.teacher(x) if self.teacher is not None else None  # frozen: no gradients
            logits = model_logits(self.forward, x)
            if teacher_logits is not None and teacher_logits.shape != logits.shape:
                raise ValueError(
                    f"{self.name}: teacher outputs {tuple(teacher_logits.shape)} but student outputs "
                    f"{tuple(logits.shape)}; build teacher and student for the same classes and inputs"
                )
            if padded:
                logits, teacher_logits, y = real_positions(logits, teacher_logits, y)
            try:
                return logits, y, call(self.loss, logits, teacher_logits, y, self.progress)
            except IndexError as error:  # a label beyond the outputs, in a batch the checks before training did not see
                raise DataError(
                    f"{self.name}: a label is outside the model's {logits.shape[-1]} outputs ({error}); "
                    f"build the model for every class in the data"
                ) from None

    def _autocast(self):
        dtype = AUTOCAST_DTYPES[self.precision]
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def _check_finite(self, totals: EpochTotals, step) -> None:
        """Stop when the loss was NaN/inf at a step (under fp16: at more than ``MAX_SKIPPED_STEPS`` consecutive
        steps, as the loss scaler skips an overflowed step and the next ones recover). Every process decides alike."""
        allowed = MAX_SKIPPED_STEPS if self.scaler.is_enabled() else 0
        (diverged,) = distributed.sum_over_processes((totals.longest_nonfinite_run > allowed).int())
        if not diverged.item():
            return
        value = totals.last_nonfinite.item()
        skipped = f" for more than {allowed} consecutive steps (each skipped by fp16's loss scaler)" if allowed else ""
        raise DivergedError(
            self.name,
            f"loss became {value if not math.isfinite(value) else 'nan or inf'}{skipped} at epoch "
            f"{self.epoch + 1} ({f'step {step}' if isinstance(step, int) else step}); lower the learning rate "
            "(optim.lr) or set optim.grad_clip"
            f"{' or optim.precision=fp32' if allowed else ''}; "
            + (f"checkpoints up to epoch {self.epoch} are kept" if self.epoch else "it finished no epoch"),
        )

    def steps_per_epoch(self) -> int:
        """Optimiser steps an epoch: one per ``optim.accumulate`` batches, and one for the batches left at its end."""
        return math.ceil(self.batches_per_epoch / self.config.accumulate)

    def _make_schedule(self) -> None:
        """The learning-rate schedule over the whole training, at the position a checkpoint left it in."""
        total = self.config.epochs * (self.steps_per_epoch() if self.config.schedule_every == "step" else 1)
        # the rates (and momenta: OneCycleLR's) a checkpoint left, which a new scheduler sets to its first step's
        settings = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.scheduler = make_scheduler(self.optimizer, self.config, total)
        if self.scheduler is not None and self.resumed_schedule is not None:
            self.scheduler.load_state_dict(self.resumed_schedule)
            for group, setting in zip(self.optimizer.param_groups, settings):
                group.update(setting)

    def _step_schedule(self, record: dict) -> None:
        if self.config.schedule_every == "step":
            return  # moved after every optimiser step
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(math.exp(min(record["val_nll"], 50.0)))
        elif self.scheduler is not None:
            self.scheduler.step()

    # -- reporting -------------------------------------------------------------------------------------

    def _model_bar(self):
        if self.config.progress != "model":
            return None
        return tqdm(
            total=self.config.epochs, initial=self.epoch, desc=self.label, leave=False, dynamic_ncols=True, disable=None
        )

    def _report(self, record: dict, bar) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_err=f"{record.get('val_error', float('nan')):.2f}")
        elif self.config.progress == "epoch":
            tqdm.write(format_record(self.name, record))

    # -- resume ----------------------------------------------------------------------------------------

    def _write_position(self, step: int, totals: EpochTotals, augment_rng: torch.Generator) -> None:
        """A checkpoint inside the epoch, after ``step`` steps (``on_checkpoint`` writes ``state_dict()``)."""
        generators = distributed.gather_objects(generator_states(augment_rng))  # every process's, in rank order
        self.position = {"step": step, "generators": generators, "totals": totals.saved(),
                         "carried": carried_states(self.model, self.teacher)}
        assert self.on_checkpoint is not None
        self.on_checkpoint(self)
        self.position = None

    def state_dict(self) -> dict:
        """Everything to resume from: at an epoch's end, or with ``position`` inside the epoch ``epoch``."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else self.resumed_schedule,
            "scaler": self.scaler.state_dict(),  # fp16's loss scale and growth tracker ({} without fp16)
            "epoch": self.epoch,
            "history": self.history,
            **({"position": self.position} if self.position is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.resumed_schedule = state["scheduler"]
        if self.scheduler is not None:  # made already: made again at the checkpoint's position
            self._make_schedule()
        if state.get("scaler") and self.scaler.is_enabled():  # absent from older checkpoints, {} without fp16
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        self.resume_at = state.get("position")


def format_record(name: str, record: dict) -> str:
    parts = [
        f"{name} epoch {record['epoch']}",
        f"lr {record['lr']:.4g}",
        f"loss {record['train_loss']:.4f}",
        f"train err {record['train_error']:.2f}%",
    ]
    if "val_error" in record:
        parts += [f"val err {record['val_error']:.2f}%", f"val nll {record['val_nll']:.4f}"]
    return " | ".join(parts)


def known_length(data: Iterable) -> int | None:
    """``len(data)``, or None for data without one (an iterable, a DataLoader of an IterableDataset)."""
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_schedulable(config: TrainConfig, train_data: Iterable) -> None:
    """A schedule moved every step must know the steps of the whole training: the data must have a length."""
    if config.schedule_every == "step" and not known_length(train_data):
        raise DataError("optim.schedule_every=step needs training data of known length (a tensor pair, a list of "
                        "batches, a map-style Dataset or a DataLoader of one), to know the steps of the training")


def check_recipe(config: TrainConfig, model_fn: Callable[[], nn.Module]) -> None:
    """Your optimizer and schedule build what they must, before anything trains (for a model of ``model_fn``)."""
    if is_own(config.optimizer) or is_own(config.schedule):
        make_scheduler(make_optimizer(model_fn(), config), config, total=1)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov by default), Adam (L2 in the gradient) or AdamW over the trainable parameters; AdamW's
    decoupled weight decay skips biases and normalisation scales (the parameters of fewer than 2 dimensions, as
    nanoGPT's ``configure_optimizers`` and Hugging Face's Trainer do). Your own: ``config.optimizer(model)``."""
    if is_own(config.optimizer):
        return own(config.optimizer, "optim.optimizer", torch.optim.Optimizer, model)
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=config.lr)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose sgd, adam or adamw")


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total: int = 0):
    """The learning-rate schedule, moved once an epoch or, with ``schedule_every: step``, after every optimiser
    step; ``total``: how many times it moves (the optimiser steps of the whole training, or the epochs). Your own:
    ``config.schedule(optimizer, total)``."""
    if is_own(config.schedule):
        return own(config.schedule, "optim.schedule", torch.optim.lr_scheduler.LRScheduler, optimizer, total)
    if config.schedule_every == "step":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: step_factor(step, config, total))
    if config.schedule == "multistep":
        milestones = sorted({max(1, round(f * config.epochs)) for f in config.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.gamma)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.schedule == "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0 - epoch / config.epochs)
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=config.gamma, patience=0,
                                                          threshold=config.plateau_threshold, threshold_mode="abs")
    if config.schedule == "constant":
        return None
    raise ValueError(f"unknown schedule {config.schedule!r}; choose multistep, cosine, linear, plateau or constant")


def own(factory: str | Callable, key: str, kind: type[T], *arguments: Any) -> T:
    """What your ``factory`` (a callable, or its ``module:function`` name) builds from ``arguments``, checked to be
    a ``kind``."""
    function = imported_function(factory, key) if isinstance(factory, str) else factory
    try:
        built = function(*arguments)
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError, IndexError) as error:
        signature = "optimizer(model)" if len(arguments) == 1 else "schedule(optimizer, total)"
        raise SetupError(f"{key} {qualified_name(function)} failed ({type(error).__name__}: {first_line(error)}); "
                         f"it is called as {signature}") from None
    if not isinstance(built, kind):
        raise SetupError(f"{key} {qualified_name(function)} returned {type(built).__name__}, not a "
                         f"{kind.__module__}.{kind.__name__}; return the one it builds")
    return built


def step_factor(step: int, config: TrainConfig, total: int) -> float:
    """The learning rate's factor before optimiser step ``step + 1`` of ``total``: a linear warmup from 0 over
    ``warmup_steps`` (as transformers' ``get_linear_schedule_with_warmup``), then the schedule over the rest."""
    if step < config.warmup_steps:
        return step / config.warmup_steps
    done = (step - config.warmup_steps) / max(1, total - config.warmup_steps)  # of the steps after the warmup
    if config.schedule == "linear":
        return max(0.0, 1.0 - done)
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
    if config.schedule == "multistep":
        return config.gamma ** sum(done >= m for m in config.milestones)
    return 1.0  # constant


# -- evaluation ----------------------------------------------------------------------------------------


def model_view(x: Inputs, transform: Transform | None, rng: torch.Generator | None, train: bool,
               config: TrainConfig) -> Inputs:
    """Inputs on the device as the model sees them: through the data's transform (a tensor's: named inputs have
    none), and in channels-last layout when asked for images."""
    if isinstance(x, dict):
        return x
    if transform is not None:
        x = transform(x, rng, train)
    if config.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def predict_batches(
    models: Sequence[nn.Module],
    data: Iterable[Batch],
    device: torch.device,
    config: TrainConfig,
    transform: Transform | None = None,
    split: str = "validation",
) -> Iterator[tuple[list[Tensor], Tensor]]:
    """For each batch, every model's log-probabilities flattened to ``(rows, classes)``, and the labels; a batch
    with NaN or +inf outputs (NaN inputs) is a :class:`DataError` naming ``split`` and the batch, not a NaN score.

    One pass over ``data`` serves all models (an ensemble's members see each batch once), and batches
    are yielded as they come so the caller reduces them at once: a language model's log-probabilities
    over a whole split would not fit in memory. Under torchrun each process predicts its rows of each batch
    and every process gets the whole batch's log-probabilities, in order.
    """
    for model in models:
        model.eval()
        reset_state(model)
    dtype = autocast_dtype(config.precision, device)
    with torch.no_grad():
        for index, batch in enumerate(data):
            rows = distributed.shard(len(batch[1]))  # this process's rows; their predictions are gathered below
            x = model_view(inputs.to_device(inputs.rows(batch[0], rows), device), transform, None, False, config)
            y = batch[1].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                logits = [distributed.gather_rows(model_logits(model, x).float(), len(y)) for model in models]
            log_probs, labels = [z.reshape(-1, z.shape[-1]).log_softmax(-1) for z in logits], y.reshape(-1)
            if (batch[1] == IGNORE_INDEX).any():  # padding: scored on the real positions only
                keep = labels != IGNORE_INDEX
                log_probs, labels = [lp[keep] for lp in log_probs], labels[keep]
            # NaN or +inf logits, or a row of -inf, make the label's log-probability NaN or -inf (a -inf that masks
            # another class does not): checking it costs one value per row, not a pass over all classes. The logits
            # were gathered, so every process stops at the same batch.
            if not all(torch.isfinite(lp.gather(1, labels[:, None])).all() for lp in log_probs):
                raise DataError(
                    f"batch {index} of the {split} data gives NaN or +inf outputs: its inputs hold NaN or inf "
                    f"(clean or drop those examples, or give a transform that does), or the model's weights do"
                )
            yield log_probs, labels


def evaluate(
    model: nn.Module,
    data: Iterable[Batch],
    device: torch.device,
    config: TrainConfig,
    transform: Transform | None = None,
    split: str = "validation",
) -> Predictions:
    """Per-example predictions of one model on ``data`` (evaluation mode, no augmentation)."""
    batches = predict_batches([model], data, device, config, transform, split)
    parts = [Predictions.from_log_probs(lp, y) for (lp,), y in batches]
    return Predictions.concat(parts)
