"""Images per second of the batched pad-crop-flip against a per-image Python loop, on CPU.

Run: python bench/bench_augment.py [--batch 128] [--repeats 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from banets.data.augment import pad_crop_flip


def per_image_loop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """The same augmentation, one image at a time (the baseline the batched version replaces)."""
    height, width = x.shape[-2:]
    out = torch.empty_like(x)
    for n, image in enumerate(x):
        top, left = (int(v) for v in torch.randint(0, 2 * padding + 1, (2,), generator=generator))
        window = F.pad(image, (padding,) * 4)[:, top : top + height, left : left + width]
        out[n] = window.flip(-1) if torch.rand((), generator=generator) < 0.5 else window
    return out


def images_per_second(augment: Callable[[], torch.Tensor], batch: int, repeats: int) -> float:
    """Throughput of ``augment`` from the median of ``repeats`` timed calls (robust to a busy machine)."""
    for _ in range(5):
        augment()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        augment()
        seconds.append(time.perf_counter() - start)
    return batch / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.rand(args.batch, 3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    rows = [
        ("batched pad_crop_flip", images_per_second(lambda: pad_crop_flip(x, 4, generator), args.batch, args.repeats)),
        ("per-image loop", images_per_second(lambda: per_image_loop(x, 4, generator), args.batch, args.repeats // 10)),
    ]
    print(f"pad-crop-flip, batch {args.batch} x 3 x 32 x 32 float32, CPU, {args.threads} threads, median of calls")
    print(f"| {'method':<22} | {'images/s':>12} | {'speed-up':>8} |")
    print(f"|{'-' * 24}|{'-' * 14}|{'-' * 10}|")
    for name, rate in rows:
        print(f"| {name:<22} | {rate:>12,.0f} | {rate / rows[-1][1]:>7.1f}x |")


if __name__ == "__main__":
    main()
