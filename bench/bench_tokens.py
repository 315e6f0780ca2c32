"""Token files (issue 27): start-up time, one epoch's read time and peak memory for 10M and 100M tokens.

    OMP_NUM_THREADS=1 python bench/bench_tokens.py --folder /tmp/bench-tokens --counts 10000000 100000000

Writes ``--folder``/``N``: ``N`` random uint16 ids over a 10,000-word vocabulary in ``train.bin`` (small valid and
test files), as ``banets tokenize`` lays them out. Each measurement runs in a fresh process (its own peak RSS,
``VmHWM``), reading every training batch of 20 streams x 35 steps (PTB's shape) once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from banets.data.text import EOS, UNK, Vocabulary
from banets.data.tokens import FORMAT


def write_tokens(root: Path, count: int) -> None:
    if (root / "tokens.json").exists():
        return
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    counts = {"train": count, "valid": 100_000, "test": 100_000}
    for split, n in counts.items():
        with open(root / f"{split}.bin", "wb") as file:
            for start in range(0, n, 10_000_000):
                rng.integers(0, 10_000, min(10_000_000, n - start), dtype=np.uint16).tofile(file)
    (root / "vocab.json").write_text(Vocabulary([UNK, EOS, *(f"w{i}" for i in range(9_998))]).to_json())
    (root / "tokens.json").write_text(json.dumps({"format": FORMAT, "dtype": "<u2", "tokens": counts}))


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024


def measure(folder: str) -> dict:
    from banets.config import DataConfig
    from banets.data.registry import build_dataset

    start = time.perf_counter()
    data = build_dataset(DataConfig(dataset="tokens", path=folder, batch_size=20, eval_batch_size=10, bptt=35))
    startup = time.perf_counter() - start
    start, tokens = time.perf_counter(), 0
    for x, _ in data.train:
        tokens += x.numel()
    epoch = time.perf_counter() - start
    return {"startup_s": startup, "epoch_s": epoch, "tokens_per_s": tokens / epoch, "rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", default="/tmp/bench-tokens")
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000_000, 100_000_000])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    print("| tokens | file (MB) | start-up (s) | epoch read (s) | tokens/s | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for count in args.counts:
        folder = Path(args.folder) / str(count)
        write_tokens(folder, count)
        done = subprocess.run([sys.executable, __file__, "--child", str(folder)], capture_output=True, text=True,
                              check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        size = (folder / "train.bin").stat().st_size / 1e6
        print(f"| {count:,} | {size:.0f} | {row['startup_s']:.2f} | {row['epoch_s']:.1f} | "
              f"{row['tokens_per_s'] / 1e6:.1f}M | {row['rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
