"""The regime map (issue 26): what born-again training gains over its teacher, against how much the teacher overfits.

Each row is a model family in one regime, given as ``"LABEL=RUN_DIR[,RUN_DIR...]"`` (the run folders of one preset,
every seed). Per row:

- the teacher's mean NLL on its own training examples (unaugmented) and its generalisation gap (its mean NLL on
  validation minus that), averaged over the seeds that evaluated training examples (their number is printed);
- for each first-born student (taught by the teacher), the CE control and the plain ensemble T+CE: the paired
  difference of validation NLL to the teacher, nats per example (per token for text), with the report's 95%
  bootstrap interval (seeds and examples, or text segments, resampled).

NLL, not error or perplexity, so that images and text share one axis. Prints a markdown table and draws the plot.
Usage: ``python bench/regime_map.py "LSTM, dropout 0.3=runs/a" "LSTM, dropout 0=runs/b,runs/c" --out map.png``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from banets.generations import TEACHER
from banets.metrics import bootstrap_paired_difference
from banets.report import SeedRun, _pyplot, read_runs, scored_training, teacher_nll

MARKERS = {"ban": "s", "ban+l": "o", "CE": "x", "T+CE": "^"}


def teacher_fit(group: list[SeedRun]) -> tuple[float, float, int]:
    """The teacher's mean NLL on its training examples and its gap (validation minus training NLL), over the seeds
    that scored training examples. A training NLL near 0 means its targets there are the labels: nothing to pass on."""
    scored = scored_training(group)
    if not scored:
        return float("nan"), float("nan"), 0
    train = teacher_nll(scored, "train")
    return train, teacher_nll(scored, "val") - train, len(scored)


def compared(run: SeedRun) -> dict[str, str]:
    """The models set against the teacher and what each is: first-born students (by loss), then CE and T+CE."""
    students = {name: e["loss"] for name, e in run.models.items() if e.get("teacher") == TEACHER}
    return {**students, **{name: name for name in ("CE", "T+CE") if name in run.predictions["val"]}}


def gains(group: list[SeedRun]) -> dict[str, tuple[str, tuple[float, float, float]]]:
    """Model -> (what it is, Δ validation NLL vs the teacher [95% CI])."""
    def nll(model: str) -> list[np.ndarray]:
        return [r.predictions["val"][model].nll.double().numpy() for r in group]
    return {model: (what, bootstrap_paired_difference(nll(model), nll(TEACHER), block=group[0].block))
            for model, what in compared(group[0]).items()}


def plot(rows: dict[str, tuple[float, dict]], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10.5, 4.5))
    for colour, (label, (gap, row)) in enumerate(rows.items()):
        for shift, (model, (what, (mean, low, high))) in enumerate(row.items()):  # side by side at the row's gap
            ax.errorbar(gap + 0.006 * shift, mean, yerr=[[mean - low], [high - mean]], marker=MARKERS.get(what, "."),
                        color=f"C{colour}", label=f"{label}: {model}", capsize=3, linestyle="none")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("teacher's generalisation gap: validation minus training NLL (nats)")
    ax.set_ylabel("Δ validation NLL vs the teacher (nats)")
    ax.set_title("Born-again gain against the teacher's overfitting (below 0: better)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside: points sit everywhere
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rows", nargs="+", help='"LABEL=RUN_DIR[,RUN_DIR...]"')
    parser.add_argument("--out", type=Path, required=True, help="the plot, a .png")
    args = parser.parse_args()
    rows = {}
    print("| row | seeds | teacher's train NLL | teacher's gap (seeds) | model | Δ val NLL vs teacher [95% CI] |")
    print("|---|---|---|---|---|---|")
    for spec in args.rows:
        label, _, dirs = spec.partition("=")
        if not dirs or label in rows:
            parser.error(f"{spec!r}: give each row once, as LABEL=RUN_DIR[,RUN_DIR...]")
        group, _ = read_runs([Path(d) for d in dirs.split(",")])
        train_nll, gap, scored = teacher_fit(group)
        rows[label] = (gap, gains(group))
        for model, (_, (mean, low, high)) in rows[label][1].items():
            interval = f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"
            print(f"| {label} | {len(group)} | {train_nll:.4f} | {gap:.3f} ({scored}) | {model} | {interval} |")
    plot(rows, args.out)


if __name__ == "__main__":
    main()
