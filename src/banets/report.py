"""Tables from finished runs: teacher, generations, other students and ensembles side by side, with the
spread over seeds and a paired bootstrap interval for each model's difference to the teacher."""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from banets.metrics import Predictions, bootstrap_paired_difference
from banets.runs import RunDirectory, RunError


@dataclass
class SeedRun:
    """One seed of one experiment, as read back from its run directory (or kept in memory)."""

    experiment: str
    seed: int
    predictions: dict[str, dict[str, Predictions]]  # split -> model -> predictions
    teachers: dict[str, Optional[str]]  # model -> the model that taught it
    losses: dict[str, str]


def read_run(seed_dir: Path) -> SeedRun:
    run = RunDirectory(seed_dir)
    config = run.config()
    models = run.manifest.get("models", {})
    splits = [p.stem for p in sorted((seed_dir / "predictions").glob("*.pt"))]
    if not splits:
        raise RunError(f"{seed_dir} has no predictions yet (unfinished run); finish it with `banets resume`")
    return SeedRun(
        experiment=config["name"],
        seed=config["seeds"][0],
        predictions={split: run.load_predictions(split) for split in splits},
        teachers={name: entry.get("teacher") for name, entry in models.items()},
        losses={name: entry.get("loss", "") for name, entry in models.items()},
    )


def find_seed_dirs(paths: list[Path]) -> list[Path]:
    """Every seed run directory at or below ``paths`` (a run's ``seed-*`` folders, or the folders themselves)."""
    found = []
    for path in map(Path, paths):
        found += [path] if (path / "manifest.json").exists() else sorted(p.parent for p in path.glob("**/manifest.json"))
    if not found:
        raise RunError(f"no run directories under {', '.join(map(str, paths))}")
    return found


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list[SeedRun], split: str = "val", reference: str = "teacher") -> list[dict]:
    """Per experiment and model: mean and SD over seeds of error, NLL, ECE and agreement with its teacher,
    and the paired difference in error to ``reference`` with a 95% bootstrap interval over seeds and examples."""
    rows = []
    for experiment in dict.fromkeys(r.experiment for r in runs):
        group = [r for r in runs if r.experiment == experiment and split in r.predictions]
        if not group:
            continue
        for model in group[0].predictions[split]:
            rows.append(_summarize_model(experiment, model, group, split, reference))
    return rows


def _summarize_model(experiment: str, model: str, group: list[SeedRun], split: str, reference: str) -> dict:
    preds = [r.predictions[split][model] for r in group]
    teacher = group[0].teachers.get(model) or (reference if model.startswith(("Ens", "T+Ens")) else None)
    row = {"experiment": experiment, "model": model, "loss": group[0].losses.get(model, "ensemble"), "seeds": len(group)}
    for metric in ("error", "nll", "ece"):
        row[metric], row[f"{metric}_sd"] = mean_sd([getattr(p, "mean_nll" if metric == "nll" else metric)() for p in preds])
    if teacher:
        row["agreement"], row["agreement_sd"] = mean_sd([p.agreement(r.predictions[split][teacher]) for p, r in zip(preds, group)])
    if model != reference:
        ours = [100.0 * (~p.correct).float().numpy() for p in preds]
        theirs = [100.0 * (~r.predictions[split][reference].correct).float().numpy() for r in group]
        row["delta"], row["delta_low"], row["delta_high"] = bootstrap_paired_difference(ours, theirs)
    return row


def markdown_table(rows: list[dict]) -> str:
    """The summary rows as a Markdown table (errors and ECE in percent, mean ± SD over seeds)."""
    header = "| experiment | model | loss | seeds | error % | NLL | ECE % | agreement % | Δ error vs teacher [95% CI] |"
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        delta = f"{r['delta']:+.2f} [{r['delta_low']:+.2f}, {r['delta_high']:+.2f}]" if "delta" in r else "—"
        agreement = f"{r['agreement']:.2f} ± {r['agreement_sd']:.2f}" if "agreement" in r else "—"
        lines.append(
            f"| {r['experiment']} | {r['model']} | {r['loss']} | {r['seeds']} | {r['error']:.2f} ± {r['error_sd']:.2f} | "
            f"{r['nll']:.4f} ± {r['nll_sd']:.4f} | {r['ece']:.2f} ± {r['ece_sd']:.2f} | {agreement} | {delta} |"
        )
    return "\n".join(lines)


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_report(runs: list[SeedRun], out: Path, splits: tuple[str, ...] = ("val", "test")) -> str:
    """Write ``report.md``, ``report-<split>.csv`` and ``report.json`` into ``out``; return the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    sections, everything = [], {}
    for split in splits:
        rows = summarize(runs, split)
        if rows:
            everything[split] = rows
            (out / f"report-{split}.csv").write_text(csv_text(rows))
            sections.append(f"## {split}\n\n{markdown_table(rows)}\n")
    (out / "report.json").write_text(json.dumps(everything, indent=2))
    markdown = "\n".join(sections)
    (out / "report.md").write_text(markdown)
    return markdown
