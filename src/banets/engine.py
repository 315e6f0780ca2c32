"""The one training loop, shared by every teacher, generation and model family.

It knows nothing of the paper's tables: it trains ``model`` on ``loss(student_logits, teacher_logits,
labels)``, with an optional frozen teacher evaluated on the same (augmented) batch. Each epoch starts by
reseeding torch from ``(seed, epoch)``, so a run resumed at an epoch boundary repeats the uninterrupted
run exactly (on CPU, bitwise). Checkpointing and reporting plug in through ``callbacks`` and ``state_dict``;
under torchrun each process trains on its rows of every global batch (see ``distributed``).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import replace
from typing import Iterable, Iterator, Optional, Protocol, Sequence

import torch
import torch.nn as nn
from torch import Tensor
from tqdm.auto import tqdm

from banets import distributed
from banets.config import TrainConfig, UserError
from banets.data.registry import Batch, Transform
from banets.losses import Loss
from banets.metrics import Predictions


class DivergedError(UserError, RuntimeError):
    """The training loss of model ``model`` became NaN or infinite."""

    def __init__(self, model: str, message: str):
        super().__init__(f"{model}: {message}")
        self.model = model


class Callback(Protocol):
    def __call__(self, trainer: "Trainer", record: dict) -> None: ...


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; under torchrun, CUDA is this process's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return distributed.local_device(torch.device(name))


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for plain fp32. bf16 is the default on CUDA only: CPUs here lack bf16 units."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def reset_state(model: nn.Module) -> None:
    """Forget carried state (language models' hidden state) before a new pass over a dataset."""
    for module in model.modules():  # the model itself, or a wrapper's (ensemble, cache) members
        if hasattr(module, "reset_state"):
            module.reset_state()


class Trainer:
    """Trains one model; ``fit`` runs the remaining epochs, ``state_dict`` captures everything to resume."""

    def __init__(
        self,
        model: nn.Module,
        loss: Loss,
        config: TrainConfig,
        *,
        seed: int,
        device: torch.device,
        teacher: Optional[nn.Module] = None,
        transform: Optional[Transform] = None,
        callbacks: Sequence[Callback] = (),
        name: str = "model",
        label: str = "",
    ):
        self.seed, self.device, self.name = seed, device, name
        self.label = f"{name} ({label})" if label else name  # how progress names this model
        self.config = config if distributed.is_main() else replace(config, progress="none")  # rank 0 reports
        memory_format = torch.channels_last if config.channels_last else torch.preserve_format
        self.model = model.to(device, memory_format=memory_format)
        self.teacher = teacher.to(device, memory_format=memory_format).eval() if teacher is not None else None
        if self.teacher is not None:
            self.teacher.requires_grad_(False)
        self.loss, self.transform, self.callbacks = loss, transform, list(callbacks)
        self.forward = distributed.data_parallel(self.model, device)  # DistributedDataParallel under torchrun
        if config.compile:
            self.forward = torch.compile(self.forward)
        self.optimizer = make_optimizer(self.model, config)
        self.scheduler = make_scheduler(self.optimizer, config)
        self.epoch = 0
        self.history: list[dict] = []

    # -- one epoch -------------------------------------------------------------------------------------

    def fit(self, train_data: Iterable[Batch], val_data: Optional[Iterable[Batch]] = None) -> list[dict]:
        """Train from the current epoch to ``config.epochs``, calling the callbacks after each epoch with the
        epoch's record and its wall-clock ``seconds`` (kept out of ``history``, so checkpoints do not depend on timing)."""
        bar = self._model_bar()
        while self.epoch < self.config.epochs:
            start = time.perf_counter()
            record = self.train_epoch(train_data)
            if val_data is not None:
                record.update({f"val_{k}": v for k, v in evaluate(self.model, val_data, self.device, self.config, self.transform).summary().items()})
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
        for model in (self.model, self.teacher):
            if model is not None:
                reset_state(model)
        loss_sum = torch.zeros((), device=self.device)
        errors = torch.zeros((), device=self.device)
        rows = 0
        steps = tqdm(train_data, desc=f"{self.label} epoch {self.epoch + 1}/{self.config.epochs}", leave=False,
                     disable=None if self.config.progress == "epoch" else True, dynamic_ncols=True)
        for step, batch in enumerate(steps):
            if step == 0:  # the epoch's data order is drawn, the same in every process; the model's draws are not
                distributed.reseed_per_process(epoch_seed(self.seed, self.epoch))
            x, y = self._inputs(batch, augment_rng, train=True)
            x, y, share = distributed.split_batch(x, y)
            logits, loss = self._step(x, y, share)
            loss_sum += loss.detach() * y.numel()
            errors += (logits.detach().argmax(-1) != y).sum()
            rows += y.numel()
            if step % 25 == 0:
                self._check_finite(loss.item(), step)
                steps.set_postfix(loss=f"{loss.item():.4f}")
        loss_sum, errors, rows = distributed.sum_over_processes(loss_sum, errors, torch.tensor(rows, device=self.device))
        self._check_finite(loss_sum.item(), "last")
        return {
            "epoch": self.epoch + 1,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum.item() / max(rows.item(), 1),
            "train_error": 100.0 * errors.item() / max(rows.item(), 1),
        }

    def _inputs(self, batch: Batch, rng: torch.Generator, train: bool) -> tuple[Tensor, Tensor]:
        x, y = (t.to(self.device, non_blocking=True) for t in batch[:2])
        if self.transform is not None:
            x = self.transform(x, rng, train)
        if self.config.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _step(self, x: Tensor, y: Tensor, share: float = 1.0) -> tuple[Tensor, Tensor]:
        """One optimiser step on ``loss * share`` (``share``: see ``distributed.split_batch``); returns the logits and loss."""
        with self._autocast():
            teacher_logits = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(x)
            logits = self.forward(x)
            if teacher_logits is not None and teacher_logits.shape != logits.shape:
                raise ValueError(
                    f"{self.name}: teacher outputs {tuple(teacher_logits.shape)} but student outputs "
                    f"{tuple(logits.shape)}; build teacher and student for the same classes and inputs"
                )
            loss = self.loss(logits, teacher_logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * share).backward()
        if self.config.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return logits, loss

    def _autocast(self):
        dtype = autocast_dtype(self.config.precision, self.device)
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def _check_finite(self, value: float, step) -> None:
        if not math.isfinite(value):
            raise DivergedError(
                self.name, f"loss became {value} at epoch {self.epoch + 1} (step {step}); lower the learning "
                f"rate (--set optim.lr=...) or set optim.grad_clip; checkpoints up to epoch {self.epoch} are kept"
            )

    def _step_schedule(self, record: dict) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(math.exp(min(record["val_nll"], 50.0)))
        elif self.scheduler is not None:
            self.scheduler.step()

    # -- reporting -------------------------------------------------------------------------------------

    def _model_bar(self):
        if self.config.progress != "model":
            return None
        return tqdm(total=self.config.epochs, initial=self.epoch, desc=self.label, leave=False, dynamic_ncols=True, disable=None)

    def _report(self, record: dict, bar) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_err=f"{record.get('val_error', float('nan')):.2f}")
        elif self.config.progress == "epoch":
            tqdm.write(format_record(self.name, record))

    # -- resume ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": self.epoch,
            "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])


def format_record(name: str, record: dict) -> str:
    parts = [f"{name} epoch {record['epoch']}", f"lr {record['lr']:.4g}", f"loss {record['train_loss']:.4f}",
             f"train err {record['train_error']:.2f}%"]
    if "val_error" in record:
        parts += [f"val err {record['val_error']:.2f}%", f"val nll {record['val_nll']:.4f}"]
    return " | ".join(parts)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov by default) or Adam over the trainable parameters; frozen ones get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose sgd or adam")


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    if config.schedule == "multistep":
        milestones = sorted({max(1, round(f * config.epochs)) for f in config.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.gamma)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=config.gamma, patience=0, threshold=config.plateau_threshold, threshold_mode="abs"
        )
    if config.schedule == "constant":
        return None
    raise ValueError(f"unknown schedule {config.schedule!r}; choose multistep, cosine, plateau or constant")


# -- evaluation ----------------------------------------------------------------------------------------


def predict_batches(
    models: Sequence[nn.Module],
    data: Iterable[Batch],
    device: torch.device,
    config: TrainConfig,
    transform: Optional[Transform] = None,
) -> Iterator[tuple[list[Tensor], Tensor]]:
    """For each batch, every model's log-probabilities flattened to ``(rows, classes)``, and the labels.

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
        for batch in data:
            rows = distributed.shard(len(batch[1]))  # this process's rows; their predictions are gathered below
            x, y = batch[0][rows].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
            if transform is not None:
                x = transform(x, None, False)
            if config.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                logits = [distributed.gather_rows(model(x).float(), len(y)) for model in models]
            yield [z.reshape(-1, z.shape[-1]).log_softmax(-1) for z in logits], y.reshape(-1)


def evaluate(model: nn.Module, data: Iterable[Batch], device: torch.device, config: TrainConfig,
             transform: Optional[Transform] = None) -> Predictions:
    """Per-example predictions of one model on ``data`` (evaluation mode, no augmentation)."""
    parts = [Predictions.from_log_probs(lp, y) for (lp,), y in predict_batches([model], data, device, config, transform)]
    return Predictions.concat(parts)
