"""Data parallelism over the processes that ``torchrun`` starts, with PyTorch's own machinery.

Each process holds a replica of the student, wrapped in ``DistributedDataParallel``, and takes its rows of
every global batch, so a preset's recipe (global batch size, learning rate, schedule) is unchanged. How a
step on N processes relates to the single-process step:

- Data order: every process reseeds torch from ``(seed, epoch)`` as a single process does, so all draw the
  same permutation and see the same global batches; each keeps the contiguous rows ``shard(len(batch))``, and
  the union over processes is the global batch.
- Augmentation: each process augments the whole global batch from the same generator state, then keeps its
  rows, so every example gets the crop and flip it gets in a single process (the cost: each process copies
  to its device and augments N times the rows it trains on, small next to a forward and backward pass).
- Gradients: DDP averages the processes' gradients; each process's mean loss is weighted by its ``share``
  of the rows so that the average is the gradient of the global batch's mean loss, also when the last batch
  does not split evenly.
- Randomness inside the model or the loss (dropout masks, DKPP's permutations): once an epoch's data order
  is drawn, each process reseeds from ``(seed, epoch)`` and its rank (``reseed_per_process``), so the
  processes draw different masks for their different rows, as one process draws different masks for the
  rows of its batch (the draws themselves differ from a one-process run's).
- What differs from one process otherwise: CWTM normalises its teacher-confidence weights over each
  process's rows; BatchNorm normalises over each process's rows on CPU (on CUDA it becomes SyncBatchNorm,
  which PyTorch has only for accelerators, and normalises over the global batch).
- Evaluation: each process predicts its rows of every evaluation batch and the predictions are gathered back
  in order, so every example counts once whatever the number of processes, and every process holds the whole
  split's predictions (and so takes the same learning-rate decisions).
- Files: only rank 0 writes (``experiment.run_seed``); the others read checkpoints to resume.

With one process (no torchrun, or ``--nproc-per-node 1``) nothing here changes what a single process does.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from banets.data import inputs
from banets.data.inputs import Inputs
from banets.losses import IGNORE_INDEX


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank: the process group's, or before it exists torchrun's ``RANK`` (0 without torchrun)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def local_world_size() -> int:
    """How many processes torchrun started on this machine (1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def is_main() -> bool:
    """Rank 0: the process that writes files and prints."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, an unnumbered CUDA device means this process's GPU, ``cuda:LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def init_from_env(device: torch.device) -> None:
    """Join the process group that torchrun describes in the environment (``WORLD_SIZE``, ``RANK``,
    ``MASTER_ADDR``...): NCCL for a CUDA device, gloo otherwise. Does nothing for a single process or when a
    group exists already (a Python API user may create their own)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def shutdown(finished: bool = False) -> None:
    """Leave the process group, if this process joined one; when every process ``finished`` its command, after
    they all got there (a barrier), so that none tears down its connections while another still uses them."""
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first (it creates files), then on the other ranks (they read them)."""
    if world_size() > 1 and not is_main():
        dist.barrier()
    yield
    if world_size() > 1 and is_main():
        dist.barrier()


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when several processes train it, else ``model`` itself.
    ``model`` may be ``torch.compile``'s wrapper: compilation waits for the first call, so the graph sees the
    SyncBatchNorm layers and DDP's hooks stay outside it.

    On CUDA its BatchNorm layers become SyncBatchNorm (in place: the parameters and buffers are the same
    tensors), so batch statistics are those of the global batch as in one process. PyTorch has SyncBatchNorm
    only for accelerators: on CPU each process normalises its own rows.
    """
    if world_size() == 1:
        return model
    if device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index])
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        warnings.warn(
            "BatchNorm on CPU under torchrun normalises each process's rows, not the global batch", stacklevel=2
        )
    return DistributedDataParallel(model)


def rows_of(total: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous rows of a batch of ``total`` rows: sizes differ by at most one, earlier ranks
    take the extra rows (as ``torch.tensor_split``)."""
    base, extra = divmod(total, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def shard(total: int) -> slice:
    """This process's rows of a batch of ``total`` rows (all of them for one process)."""
    return rows_of(total, rank(), world_size())


def reseed_per_process(seed: int) -> None:
    """Under torchrun, reseed torch's generator from ``seed`` and this process's rank, so that dropout masks and
    DKPP's permutations differ from one process to the next; with one process, leave the generator alone."""
    if world_size() > 1:
        torch.manual_seed(seed * 1009 + rank())


def split_batch(x: Inputs, y: Tensor, global_rows: int | None = None) -> tuple[Inputs, Tensor, float | Tensor]:
    """This process's rows of a global training batch, and its share: the factor on its mean loss that
    makes DDP's average of the processes' gradients the gradient of the global batch's mean loss. With
    ``global_rows``, ``x`` and ``y`` are already this process's rows (streamed data reads only its own).
    Labels with padding (``IGNORE_INDEX``) share by real labels, as the loss averages over them: a tensor on the
    labels' device, so that the host does not wait for it."""
    world = world_size()
    if world == 1:
        return x, y, 1.0
    if (global_rows or len(y)) < world:
        raise ValueError(
            f"a training batch of {len(y)} rows cannot be split over {world} processes; "
            f"use a batch size whose last batch has at least {world} rows, or drop the last batch"
        )
    if global_rows is not None:
        return x, y, world * len(y) / global_rows
    rows = shard(len(y))
    real = y != IGNORE_INDEX
    return inputs.rows(x, rows), y[rows], world * real[rows].sum() / real.sum().clamp(min=1)


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true in any process (every process gets the same answer)."""
    if world_size() == 1:
        return flag
    value = torch.tensor(int(flag), device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_over_processes(*values: Tensor) -> tuple[Tensor, ...]:
    """Each value summed over the processes (in place)."""
    if world_size() > 1:
        for value in values:
            dist.all_reduce(value)
    return values


def gather_objects(value: Any) -> list[Any]:
    """``value`` of every process, in rank order (picklable values; every process gets the list)."""
    if world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def gather_rows(local: Tensor, total: int) -> Tensor:
    """The rows each process computed for its ``shard`` of a batch of ``total`` rows, concatenated in rank
    order: the whole batch's result on every process. (``all_gather`` needs equal shapes, hence the padding.)"""
    world = world_size()
    if world == 1:
        return local
    sizes = [s.stop - s.start for s in (rows_of(total, r, world) for r in range(world))]
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])
