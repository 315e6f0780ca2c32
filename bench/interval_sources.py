"""How much of the report's 95% interval comes from seeds and how much from examples (or text segments).

For each model's paired difference to the teacher, the interval is computed three ways from the same predictions:
resampling seeds and examples (the report's), examples only (every seed in every draw) and seeds only (every
example in every draw). Usage: ``python bench/interval_sources.py RUN_DIR [RUN_DIR ...] [--split test]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from banets.generations import TEACHER
from banets.metrics import bootstrap_paired_difference
from banets.report import experiments, read_runs

WAYS = {"seeds and examples": (True, True), "examples only": (False, True), "seeds only": (True, False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    runs, _ = read_runs(args.dirs)
    for (experiment, architecture), group in experiments(runs).items():
        metric = group[0].metric
        print(f"\n{experiment} ({architecture}), {args.split}, {len(group)} seeds: width of the 95% interval of Δ vs the teacher")
        print(f"| model | Δ | {' | '.join(WAYS)} |\n|---|---|{'---|' * len(WAYS)}")
        for model in group[0].predictions[args.split]:
            if model == TEACHER:
                continue
            ours = [metric.per_example(r.predictions[args.split][model]) for r in group]
            theirs = [metric.per_example(r.predictions[args.split][TEACHER]) for r in group]
            intervals = [bootstrap_paired_difference(ours, theirs, block=group[0].block, resample=way) for way in WAYS.values()]
            widths = " | ".join(f"{high - low:.4f}" for _, low, high in intervals)
            print(f"| {model} | {intervals[0][0]:+.4f} | {widths} |")


if __name__ == "__main__":
    main()
