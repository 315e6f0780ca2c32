"""Does the teacher-output cache pay? Student steps per second of a born-again language model, with the
frozen teacher run every step and with its logits replayed from ``teacher_cache.CachedTeacher``.

Both go through ``Trainer.train_epoch`` with the BAN+L loss (Furlanello et al. 2018, Sec. 5.3) on Zaremba
batches of random tokens shaped like a preset's (the data do not change the cost). The cached trainer first
runs one epoch that fills the cache; after that both epochs are timed alternately, round by round, and each
reports its fastest round. On CPU the time is the process's CPU time (other processes on a shared machine do
not inflate it; with one thread it is the wall-clock time on an idle core); on CUDA, synchronised wall-clock.

Run: OMP_NUM_THREADS=1 python bench/bench_teacher_cache.py [--preset wap_quick] [--batches 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from banets import losses
from banets.config import load_config
from banets.data.text import BpttBatches
from banets.engine import Trainer, resolve_device
from banets.models import create_model
from banets.teacher import FrozenTeacher


def timed_epoch(trainer: Trainer, batches: BpttBatches, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    start = clock()
    trainer.train_epoch(batches)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="wap_quick")
    parser.add_argument("--batches", type=int, default=20, help="batches per timed epoch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    config = load_config(args.preset, ["optim.progress=none"])
    device = resolve_device(args.device if args.device != "auto" else config.device)
    vocab, batch, bptt = config.data.max_vocab, config.data.batch_size, config.data.bptt
    tokens = torch.randint(vocab, (batch * (args.batches * bptt + 1),), generator=torch.Generator().manual_seed(0))
    batches = BpttBatches(tokens, batch, bptt)
    torch.manual_seed(0)
    teacher = create_model(config.model.name, vocab_size=vocab, **config.model.options)
    trainers = {
        name: Trainer(create_model(config.model.name, vocab_size=vocab, **config.model.options), losses.get("ban+l"),
                      config.optim, seed=0, device=device, teacher=FrozenTeacher(teacher, cache, len(batches)))
        for name, cache in (("teacher every step", None), ("cached teacher", "fp32"))
    }
    for trainer in trainers.values():  # warm-up; fills the cache
        trainer.train_epoch(batches)
    best = {name: min(timed_epoch(trainer, batches, device) for _ in range(args.rounds)) for name, trainer in trainers.items()}
    params = sum(p.numel() for p in teacher.parameters())
    print(f"{args.preset}: {config.model.name} {config.model.options}, {params:,} params, vocabulary {vocab}, "
          f"batch {batch} x {bptt} tokens, {device}, {torch.get_num_threads()} thread(s), fastest of {args.rounds} rounds")
    print("| teacher | steps/s | tokens/s | relative |\n|---|---:|---:|---:|")
    base = best["teacher every step"]
    for name, seconds in best.items():
        print(f"| {name} | {args.batches / seconds:.2f} | {args.batches * batch * bptt / seconds:,.0f} | {base / seconds:.2f}x |")
    cache_bytes = sum(t.numel() * t.element_size() for t in trainers["cached teacher"].teacher.logits)
    print(f"cache: {cache_bytes / 1e6:.1f} MB for {args.batches} batches ({cache_bytes / (args.batches * batch * bptt):,.0f} B/token)")


if __name__ == "__main__":
    main()
