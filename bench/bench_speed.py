"""Images per second of a training step, bare and through the engine, plain and distilling.

Four measurements per model, interleaved round by round, each the fastest of its rounds (as ``timeit`` does: on
a shared machine the fastest epoch is the one least slowed by other processes):

- bare: forward, cross-entropy, backward and SGD step on one fixed, pre-made float batch (no data, no loop);
- engine: ``Trainer.train_epoch`` over ``TensorBatches`` of uint8 images with the batched pad-crop-flip, i.e.
  everything a real epoch does (shuffled gather, augmentation, the step, loss and error bookkeeping);
- distill: the same, with a frozen teacher of the same architecture evaluated on each augmented batch and the
  BAN loss (Furlanello et al. 2018, Eq. 2), i.e. the cost of one born-again generation's step;
- teacher: the frozen teacher's forward alone (evaluation mode, no grad) on the fixed batch, which bounds the
  distillation step from below at ``1 + teacher time / bare time`` of the plain step.

The targets of issue 3: engine within 5% of bare, distill at most 1.25x the engine step.

Run: OMP_NUM_THREADS=1 python bench/bench_speed.py [--models resnet8,resnet20] [--steps 4] [--rounds 15] [--channels-last] [--wall]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from collections.abc import Callable

import torch

from banets import losses
from banets.data.augment import cifar_transform
from banets.data.batches import TensorBatches
from banets.engine import TrainConfig, Trainer, autocast_dtype, make_optimizer
from banets.models import create_model
from banets.teacher import FrozenTeacher


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(config: TrainConfig, device: torch.device):
    """The engine's autocast (precision auto: bf16 or fp16 on CUDA, see ``engine.choose_precision``; none on CPU),
    for the steps outside it."""
    dtype = autocast_dtype(config.precision, device)
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def timed(run: Callable[[], None], device: torch.device, wall: bool) -> float:
    """Seconds taken by ``run``: on CPU by default the process's CPU time, which other processes on a shared
    machine do not inflate (with one thread it is the wall-clock time on an idle core; with several it is their
    sum); with ``wall``, and always on CUDA, the synchronised wall-clock time."""
    clock = time.perf_counter if wall or device.type != "cpu" else time.process_time
    sync(device)
    start = clock()
    run()
    sync(device)
    return clock() - start


def bare_steps(model: torch.nn.Module, config: TrainConfig, x: torch.Tensor, y: torch.Tensor, steps: int) -> Callable[[], None]:
    """``steps`` plain model steps on the fixed batch ``(x, y)``: what the engine cannot beat (the model compiled as
    the engine compiles it when ``config.compile``)."""
    optimizer = make_optimizer(model, config)
    model.train()
    forward = torch.compile(model) if config.compile else model

    def run() -> None:
        for _ in range(steps):
            with autocast(config, x.device):
                loss = losses.ce(forward(x), None, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def teacher_forwards(teacher: torch.nn.Module, config: TrainConfig, x: torch.Tensor, steps: int) -> Callable[[], None]:
    """``steps`` forwards of a frozen teacher on the fixed batch ``x``, as the engine runs them."""
    teacher.eval().requires_grad_(False)

    def run() -> None:
        with torch.no_grad(), autocast(config, x.device):
            for _ in range(steps):
                teacher(x)

    return run


def engine_epoch(model: torch.nn.Module, config: TrainConfig, device: torch.device, data: TensorBatches,
                 teacher: torch.nn.Module | None = None) -> Callable[[], None]:
    """One engine epoch over ``data``: with a teacher, a BAN student's epoch; without, the teacher's own."""
    trainer = Trainer(model, losses.get("ban" if teacher is not None else "ce"), config, seed=0, device=device,
                      teacher=FrozenTeacher(teacher) if teacher is not None else None, transform=cifar_transform("cifar10"))
    return lambda: trainer.train_epoch(data)


def measure(name: str, device: torch.device, batch: int, steps: int, rounds: int, config: TrainConfig,
            wall: bool) -> dict[str, float]:
    """Images/s of model ``name``'s bare, engine and distillation steps and teacher forward (fastest of ``rounds``),
    trained as ``config`` says (precision, channels_last, compile)."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (batch * steps, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch * steps,), device=device)
    data = TensorBatches(images, labels, batch_size=batch, shuffle=True, drop_last=True)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    x = (images[:batch].float() / 255).contiguous(memory_format=memory_format)
    runs = {
        "bare": bare_steps(create_model(name).to(device, memory_format=memory_format), config, x, labels[:batch], steps),
        "engine": engine_epoch(create_model(name), config, device, data),
        "distill": engine_epoch(create_model(name), config, device, data, teacher=copy.deepcopy(create_model(name))),
        "teacher": teacher_forwards(create_model(name).to(device, memory_format=memory_format), config, x, steps),
    }
    for run in runs.values():  # warm-up: allocator, kernels, optimizer state
        run()
    seconds: dict[str, list[float]] = {kind: [] for kind in runs}
    for _ in range(rounds):
        for kind, run in runs.items():
            seconds[kind].append(timed(run, device, wall))
    return {kind: batch * steps / min(s) for kind, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet8,resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="steps per timed epoch")
    parser.add_argument("--rounds", type=int, default=15, help="timed epochs per measurement (the fastest is kept)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--wall", action="store_true", help="time wall-clock seconds on CPU (an idle machine, several threads)")
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    config = TrainConfig(progress="none", channels_last=args.channels_last)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), batch {args.batch}, "
          f"{args.steps} steps per epoch, fastest of {args.rounds}, channels_last {args.channels_last}, "
          f"{'wall-clock' if args.wall else 'CPU'} time\n")
    print("| device | model | bare step img/s | engine step img/s | data+loop overhead | distill step img/s | "
          "distill / engine time | teacher forward img/s | bound: 1 + teacher / bare time |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for device in devices:
        for name in args.models.split(","):
            rate = measure(name, device, args.batch, args.steps, args.rounds, config, args.wall)
            overhead = rate["bare"] / rate["engine"] - 1
            print(f"| {device.type} | {name} | {rate['bare']:,.0f} | {rate['engine']:,.0f} | {100 * overhead:+.1f}% | "
                  f"{rate['distill']:,.0f} | {rate['engine'] / rate['distill']:.2f}x | {rate['teacher']:,.0f} | "
                  f"{1 + rate['bare'] / rate['teacher']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
