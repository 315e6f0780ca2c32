"""Streamed image folders and shards (issue 27): start-up time and peak memory against the number of images, and the
loader's images per second against its workers, next to a ResNet-20 training step.

    OMP_NUM_THREADS=1 python bench/bench_stream.py --folder /tmp/bench-images --counts 10000 50000 200000
    OMP_NUM_THREADS=1 python bench/bench_stream.py --folder /tmp/bench-images --counts 10000 50000 200000 --shards

Writes ``--folder``/``N`` for each count: ``N`` generated 64 x 64 JPEGs in 10 class folders (the smaller folders
are hard links into the largest). Each measurement runs in a fresh process, so that its peak RSS is its own: the
training process's and, separately, the largest of its DataLoader workers'.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

CLASSES = 10
SIZE = 64


def write_folder(root: Path, count: int) -> None:
    """``count`` JPEGs, smooth gradients tinted by class, written once (kept between runs)."""
    if (root / "done").exists():
        return
    from PIL import Image

    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(count):
        folder = root / f"c{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.stack([(rows * 3 + i) % 256, (cols * 2 + 25 * (i % CLASSES)) % 256, (rows + cols + i) % 256], -1)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
    (root / "done").touch()


def link_folder(source: Path, root: Path, count: int) -> None:
    """The first ``count`` files of ``source`` as hard links: a smaller folder without writing the images again."""
    if (root / "done").exists():
        return
    for i in range(count):
        folder = root / f"c{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        os.link(source / f"c{i % CLASSES}" / f"{i}.jpg", folder / f"{i}.jpg")
    (root / "done").touch()


def rss_mb(pid: int | str, field: str = "VmRSS") -> float:
    """``field`` of /proc/PID/status in MB (VmRSS: resident now; VmHWM: the peak, which exec resets, unlike
    getrusage's ru_maxrss, which a child inherits from the process that started it)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            line = next(line for line in status if line.startswith(field + ":"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return 0.0


class WorkerPeak(threading.Thread):
    """Samples the resident memory of this process's child processes (the DataLoader workers) every 50 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.running = 0.0, True

    def run(self) -> None:
        while self.running:
            for children in Path("/proc/self/task").glob("*/children"):
                for pid in children.read_text().split():
                    self.peak = max(self.peak, rss_mb(pid))
            time.sleep(0.05)


def measure_epoch(folder: str, workers: int, image_size: int, batch_size: int, dataset: str) -> dict:
    """In this process: start-up (listing, split, record) and one training epoch through the loader."""
    from banets.config import DataConfig
    from banets.data.registry import build_dataset

    sampler = WorkerPeak()
    sampler.start()
    start = time.perf_counter()
    data = build_dataset(DataConfig(dataset=dataset, path=folder, val_size=1000, image_size=image_size,
                                    batch_size=batch_size, workers=workers))
    startup = time.perf_counter() - start
    start, images = time.perf_counter(), 0
    for batch in data.train:
        images += len(batch[1])
    epoch = time.perf_counter() - start
    sampler.running = False
    return {"startup_s": startup, "images": images, "epoch_s": epoch, "images_per_s": images / epoch,
            "rss_main_mb": rss_mb("self", "VmHWM"), "rss_worker_mb": sampler.peak}


def resnet20_step_rate(image_size: int, batch_size: int) -> float:
    """Images per second of one ResNet-20 training step (forward, backward, SGD) on this process's threads."""
    import torch

    from banets.models import create_model

    model = create_model("resnet20", num_classes=CLASSES)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(batch_size, 3, image_size, image_size), torch.randint(0, CLASSES, (batch_size,))
    times = []
    for _ in range(6):
        start = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return batch_size / min(times[1:])


def in_child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", default="/tmp/bench-images")
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--shards", action="store_true", help="read each folder written as shards (banets shard)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, workers, dataset = args.child
        print(json.dumps(measure_epoch(folder, int(workers), args.image_size, args.batch_size, dataset)))
        return
    root, largest = Path(args.folder), max(args.counts)
    write_folder(root / str(largest), largest)
    for count in args.counts:
        link_folder(root / str(largest), root / str(count), count)
    if args.shards:
        from banets.data.shards import write_shards

        for count in args.counts:
            if not (root / f"{count}-shards").exists():
                start = time.perf_counter()
                write_shards(root / str(count), root / f"{count}-shards")
                print(f"banets shard of {count:,} images: {time.perf_counter() - start:.1f} s")
    sizes = ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size)]
    print(f"ResNet-20 training step, batch {args.batch_size} at {args.image_size} px: "
          f"{resnet20_step_rate(args.image_size, args.batch_size):.0f} images/s")
    print("| images | workers | start-up (s) | epoch (s) | images/s | peak RSS, main (MB) | peak RSS, largest worker (MB) |")
    print("|---|---|---|---|---|---|---|")
    for count in args.counts:
        for workers in args.workers if count == min(args.counts) else [max(args.workers)]:
            source = root / (f"{count}-shards" if args.shards else str(count))
            dataset = "shards" if args.shards else "imagefolder"
            row = in_child(*sizes, "--child", str(source), str(workers), dataset)
            print(f"| {count:,} | {workers} | {row['startup_s']:.2f} | {row['epoch_s']:.1f} | {row['images_per_s']:.0f} "
                  f"| {row['rss_main_mb']:.0f} | {row['rss_worker_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
