"""Reports from finished runs, shaped like Table 2 of Furlanello et al. (2018), with the statistics it lacks.

For each split (validation, which compares models; test, evaluated once at the end) a report has

- a wide table: one row per experiment and architecture, one column per model (Teacher, BAN-1..k, the other
  students such as BAN+L, CWTM, DKPP, KD, the controls trained without a teacher such as LS and CE, and the
  BAN ensembles Ens*k of Eq. 4), each cell the mean over seeds ± the standard deviation;
- per experiment, a long table: one row per model with its training error (did the teacher fit its training
  set?), NLL, expected calibration error, agreement with the model that taught it (fidelity), and the paired
  difference to the teacher with a 95% bootstrap interval over seeds and examples, so that "the student beats
  the teacher" is a claim with an interval;
- plots: the score per generation (the teacher as generation 0) and the BAN ensembles against the number of
  generations they average.

Classifiers are scored by top-1 error; language models (``data.dataset == "text"``) by perplexity, as in the
paper's Table 6, with paired differences in per-token NLL.
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from banets.metrics import Predictions, bootstrap_paired_difference
from banets.runs import RunDirectory, RunError

SPLIT_TITLES = {
    "val": "validation split: compares and selects models",
    "test": "test split: evaluated once, at the end",
}
ENSEMBLE = re.compile(r"^Ens\*(\d+)$")  # BANE over generations 1..k (Eq. 4)


@dataclass(frozen=True)
class Metric:
    """How a model is scored: its value on a split, and the per-example scores whose paired difference to the
    teacher is bootstrapped."""

    key: str  # column name in CSV and JSON
    label: str  # column title in Markdown
    delta_label: str
    value: Callable[[Predictions], float]
    per_example: Callable[[Predictions], np.ndarray]


ERROR = Metric("error", "error %", "Δ error vs teacher, points [95% CI]", Predictions.error,
               lambda p: 100.0 * (~p.correct).double().numpy())
PERPLEXITY = Metric("perplexity", "perplexity", "Δ NLL vs teacher, nats/token [95% CI]", Predictions.perplexity,
                    lambda p: p.nll.double().numpy())


METRICS = {m.key: m for m in (ERROR, PERPLEXITY)}


def metric_for(dataset: str) -> Metric:
    """Perplexity for language models (the paper's Table 6), top-1 error for classifiers (Tables 1-5)."""
    return PERPLEXITY if dataset == "text" else ERROR


@dataclass
class SeedRun:
    """One seed of one experiment, as read back from its run directory."""

    experiment: str  # the config's name
    architecture: str  # the students' model (and the teacher's, when it differs)
    dataset: str
    seed: int
    predictions: dict[str, dict[str, Predictions]]  # split -> model -> predictions
    models: dict[str, dict]  # the manifest's entries: role, generation, loss, teacher, ...
    epochs: list[dict]  # metrics.jsonl, the last record per model and epoch
    path: Path = Path()  # the seed's run directory
    block: int = 1  # consecutive examples resampled together by the bootstrap (a BPTT segment of a text)

    @property
    def metric(self) -> Metric:
        return metric_for(self.dataset)


def read_run(seed_dir: Path) -> SeedRun:
    """A finished seed directory; an unfinished one raises :class:`RunError`."""
    run = RunDirectory(seed_dir)
    config = run.config()
    splits = [p.stem for p in sorted((Path(seed_dir) / "predictions").glob("*.pt"))]
    if not splits:
        raise RunError(f"{seed_dir} has no predictions yet (unfinished run); finish it with `banets resume`")
    model = config["model"]
    teacher = model.get("teacher_name")
    return SeedRun(
        experiment=config["name"],
        architecture=f"{teacher} → {model['name']}" if teacher and teacher != model["name"] else model["name"],
        dataset=config["data"]["dataset"],
        seed=config["seeds"][0],
        predictions={split: run.load_predictions(split) for split in splits},
        models=run.manifest.get("models", {}),
        epochs=run.epochs(),
        path=Path(seed_dir),
        block=config["data"].get("bptt", 1) if config["data"]["dataset"] == "text" else 1,
    )


def find_seed_dirs(paths: list[Path]) -> list[Path]:
    """Every seed run directory at or below ``paths`` (a run's ``seed-*`` folders, or the folders themselves)."""
    found = []
    for path in map(Path, paths):
        found += [path] if (path / "manifest.json").exists() else sorted(p.parent for p in path.glob("**/manifest.json"))
    if not found:
        raise RunError(f"no run directories under {', '.join(map(str, paths))}")
    return found


def read_runs(paths: list[Path]) -> tuple[list[SeedRun], list[str]]:
    """The finished seed runs below ``paths``, and one note per unfinished one (skipped)."""
    runs, skipped = [], []
    for seed_dir in find_seed_dirs(paths):
        try:
            runs.append(read_run(seed_dir))
        except RunError as error:
            skipped.append(str(error))
    if not runs:
        raise RunError("no finished runs to report: " + "; ".join(skipped))
    check_distinct_seeds(runs)
    return runs, skipped


def check_distinct_seeds(runs: list[SeedRun]) -> None:
    """Refuse to count one (experiment, architecture, seed) twice: its intervals would be too narrow."""
    seen: dict[tuple[str, str, int], Path] = {}
    for run in runs:
        key = (run.experiment, run.architecture, run.seed)
        if key in seen:
            raise RunError(f"seed {run.seed} of {run.experiment} ({run.architecture}) appears twice, in {seen[key]} and "
                           f"{run.path}; report each seed once (or give the runs different names with --set name=...)")
        seen[key] = run.path


# -- statistics ------------------------------------------------------------------------------------------


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def experiments(runs: list[SeedRun]) -> dict[tuple[str, str], list[SeedRun]]:
    """The seed runs grouped by (experiment, architecture), in the order first seen."""
    groups: dict[tuple[str, str], list[SeedRun]] = {}
    for run in runs:
        groups.setdefault((run.experiment, run.architecture), []).append(run)
    return groups


def summarize(runs: list[SeedRun], split: str = "val", reference: str = "teacher") -> list[dict]:
    """One row per experiment and model: mean and SD over seeds of the score (error or perplexity), the
    training score, NLL, ECE, agreement with the model's teacher, and the paired difference to ``reference``
    with a 95% bootstrap interval over seeds and examples."""
    rows = []
    for (experiment, architecture), group in experiments(runs).items():
        group = [r for r in group if split in r.predictions]
        for model in group[0].predictions[split] if group else []:
            rows.append(summarize_model(experiment, architecture, model, group, split, reference))
    return rows


def summarize_model(experiment: str, architecture: str, model: str, group: list[SeedRun], split: str, reference: str) -> dict:
    metric, entry = group[0].metric, group[0].models.get(model, {})
    group = [r for r in group if model in r.predictions[split]]
    preds = [r.predictions[split][model] for r in group]
    row = {"experiment": experiment, "architecture": architecture, "model": model,
           "role": entry.get("role", "ensemble"), "generation": entry.get("generation"), "loss": entry.get("loss", "ensemble"),
           "seeds": len(group), "metric": metric.key}
    row[metric.key], row[f"{metric.key}_sd"] = mean_sd([metric.value(p) for p in preds])
    trained = [r.predictions["train"][model] for r in group if model in r.predictions.get("train", {})]
    if trained:
        row[f"train_{metric.key}"], row[f"train_{metric.key}_sd"] = mean_sd([metric.value(p) for p in trained])
    row["nll"], row["nll_sd"] = mean_sd([p.mean_nll() for p in preds])
    seconds = [sum(e.get("seconds", 0.0) for e in r.epochs if e["model"] == model) for r in group]
    if all(seconds):  # trained models of runs that timed their epochs (not ensembles)
        row["minutes"], row["minutes_sd"] = mean_sd([s / 60 for s in seconds])
    row["ece"], row["ece_sd"] = mean_sd([p.ece() for p in preds])
    teacher = entry.get("teacher") or (reference if model != reference else None)
    if teacher and all(teacher in r.predictions[split] for r in group):
        row["agreement_with"] = teacher
        row["agreement"], row["agreement_sd"] = mean_sd([p.agreement(r.predictions[split][teacher]) for p, r in zip(preds, group)])
    if model != reference and all(reference in r.predictions[split] for r in group):
        ours = [metric.per_example(p) for p in preds]
        theirs = [metric.per_example(r.predictions[split][reference]) for r in group]
        row["delta"], row["delta_low"], row["delta_high"] = bootstrap_paired_difference(ours, theirs, block=group[0].block)
    return row


def _pm(row: dict, key: str, digits: int = 2) -> str:
    return f"{row[key]:.{digits}f} ± {row[key + '_sd']:.{digits}f}" if key in row else "—"


def wide_rows(rows: list[dict]) -> list[dict]:
    """Table 2's shape: one row per experiment and architecture, one ``mean ± SD`` cell per model."""
    wide: dict[tuple[str, str], dict] = {}
    for r in rows:
        line = wide.setdefault((r["experiment"], r["architecture"]), {
            "experiment": r["experiment"], "architecture": r["architecture"], "metric": r["metric"], "seeds": r["seeds"]})
        line[r["model"]] = _pm(r, r["metric"]) + ("" if r["seeds"] == line["seeds"] else f" (n={r['seeds']})")
    return list(wide.values())


def column_order(rows: list[dict]) -> list[str]:
    """Teacher, generations, the teacher's other students (BAN+L, CWTM, DKPP, KD), controls, then ensembles."""
    rank = {"teacher": 0, "generation": 1, "student": 2, "control": 3, "ensemble": 4}
    first = {}
    for r in rows:
        first.setdefault(r["model"], (rank.get(r["role"], 4), r["generation"] or 0, len(first)))
    return sorted(first, key=first.get)


# -- tables ------------------------------------------------------------------------------------------------


def markdown_wide_table(rows: list[dict]) -> str:
    """The Table 2 view of ``rows`` (all scored by one metric)."""
    models = column_order(rows)
    lines = ["| experiment | architecture | seeds | " + " | ".join(models) + " |", "|" + "---|" * (3 + len(models))]
    for line in wide_rows(rows):
        lines.append(f"| {line['experiment']} | {line['architecture']} | {line['seeds']} | "
                     + " | ".join(line.get(m, "—") for m in models) + " |")
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    """One row per model (all of one metric): mean ± SD over seeds, and the paired difference to the teacher."""
    metric = METRICS[rows[0]["metric"]]
    header = (f"| experiment | model | loss | seeds | {metric.label} | train {metric.label} | NLL | ECE % | "
              f"agreement % (with) | {metric.delta_label} | training min |")
    lines = [header, "|" + "---|" * 11]
    for r in rows:
        delta = f"{r['delta']:+.2f} [{r['delta_low']:+.2f}, {r['delta_high']:+.2f}]" if "delta" in r else "—"
        agreement = f"{_pm(r, 'agreement')} ({r['agreement_with']})" if "agreement" in r else "—"
        lines.append(f"| {r['experiment']} | {r['model']} | {r['loss']} | {r['seeds']} | {_pm(r, metric.key)} | "
                     f"{_pm(r, 'train_' + metric.key)} | {_pm(r, 'nll', 4)} | {_pm(r, 'ece')} | {agreement} | {delta} | "
                     f"{_pm(r, 'minutes', 1)} |")
    return "\n".join(lines)


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# -- plots ------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _by_experiment(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(f"{r['experiment']} ({r['architecture']})", []).append(r)
    return groups


def plot_generations(rows: list[dict], path: Path, title: str) -> bool:
    """The score of the teacher (generation 0) and of BAN-1..k, mean ± SD over seeds, one line per experiment
    and generation loss. False (no file) when no experiment has a generation."""
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.0))
    drawn = False
    for label, group in _by_experiment(rows).items():
        chain = sorted((r for r in group if r["role"] in ("teacher", "generation")), key=lambda r: r["generation"] or 0)
        if len(chain) < 2:
            continue
        key = chain[0]["metric"]
        ax.errorbar([r["generation"] or 0 for r in chain], [r[key] for r in chain], yerr=[r[key + "_sd"] for r in chain],
                    marker="o", capsize=4, label=f"{label}, loss {chain[1]['loss']}, n={chain[0]['seeds']}")
        drawn = True
    return _save_if_drawn(fig, ax, drawn, path, title, "generation (0 = teacher)", rows)


def plot_ensembles(rows: list[dict], path: Path, title: str) -> bool:
    """BANE: Ens*k (generations 1..k averaged, Eq. 4) against k, with the single generation BAN-k beside it
    (shifted a little to the right so the error bars stay apart) and the teacher as a dashed line. False (no file)
    when no experiment has an ensemble."""
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.0))
    drawn = False
    for i, (label, group) in enumerate(_by_experiment(rows).items()):
        by_gen = {r["generation"]: r for r in group if r["role"] == "generation"}
        ensembles = {1: by_gen.get(1)} | {int(ENSEMBLE.match(r["model"])[1]): r for r in group if ENSEMBLE.match(r["model"])}
        if len(ensembles) < 2 or ensembles[1] is None:
            continue
        key, color = group[0]["metric"], f"C{i}"
        ks = sorted(ensembles)
        ax.errorbar(ks, [ensembles[k][key] for k in ks], yerr=[ensembles[k][key + "_sd"] for k in ks], color=color,
                    marker="o", capsize=4, label=f"{label}: Ens*k")
        singles = sorted(by_gen)
        ax.errorbar([k + 0.04 for k in singles], [by_gen[k][key] for k in singles], yerr=[by_gen[k][key + "_sd"] for k in singles],
                    color=color, marker="s", linestyle=":", capsize=4, alpha=0.7, label=f"{label}: BAN-k alone")
        teacher = next((r for r in group if r["role"] == "teacher"), None)
        if teacher:
            ax.axhline(teacher[key], color=color, linestyle="--", linewidth=1, label=f"{label}: teacher")
        drawn = True
    return _save_if_drawn(fig, ax, drawn, path, title, "k (generations averaged)", rows)


def _axis_label(rows: list[dict]) -> str:
    return f"{METRICS[rows[0]['metric']].label} (mean ± SD over seeds)"


def _save_if_drawn(fig, ax, drawn: bool, path: Path, title: str, xlabel: str, rows: list[dict]) -> bool:
    """Label, title and save the figure when anything was drawn; close it either way."""
    if drawn:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(_axis_label(rows))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return drawn


# -- the report ---------------------------------------------------------------------------------------------


def split_section(runs: list[SeedRun], split: str, out: Path) -> tuple[str, list[dict]]:
    """The Markdown of one split (wide tables, plots, long tables per experiment) and its summary rows.
    CSV files and plots are written into ``out``."""
    rows = summarize(runs, split)
    if not rows:
        return "", rows
    (out / f"report-{split}.csv").write_text(csv_text(rows))
    parts = [f"## {split} — {SPLIT_TITLES.get(split, split + ' split')}\n"]
    for metric in dict.fromkeys(r["metric"] for r in rows):
        of_metric = [r for r in rows if r["metric"] == metric]
        (out / f"table-{split}-{metric}.csv").write_text(csv_text(wide_rows(of_metric)))
        parts.append(f"{METRICS[metric].label}, mean ± SD over seeds:\n\n{markdown_wide_table(of_metric)}\n")
        for name, plot, title in (("generations", plot_generations, "per born-again generation"),
                                  ("ensembles", plot_ensembles, "BAN ensembles Ens*k vs single generations")):
            image = f"{name}-{split}-{metric}.png"
            if plot(of_metric, out / image, f"{split} {metric}, {title}"):
                parts.append(f"![{split} {metric}: {name}]({image})\n")
    for (experiment, architecture), _ in experiments(runs).items():
        of_experiment = [r for r in rows if (r["experiment"], r["architecture"]) == (experiment, architecture)]
        if of_experiment:
            parts.append(f"### {experiment} ({architecture})\n\n{markdown_table(of_experiment)}\n")
    return "\n".join(parts), rows


def write_report(runs: list[SeedRun], out: Path, splits: tuple[str, ...] = ("val", "test"), skipped: tuple[str, ...] = ()) -> str:
    """Write ``report.md`` with its plots, ``report-<split>.csv`` (one row per model), ``table-<split>-<metric>.csv``
    (Table 2's shape), ``epochs.csv`` (per-epoch metrics) and ``report.json`` into ``out``; return the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    seeds = sorted({r.seed for r in runs})
    head = [
        "# banets report\n",
        f"{len(runs)} seed run(s), seeds {', '.join(map(str, seeds))}. Cells are the mean over seeds ± the standard "
        "deviation; Δ is the paired difference to the teacher, averaged over seeds and examples, with a 95% percentile "
        "bootstrap interval resampling seeds and examples (2000 draws). Agreement is with the model that taught each "
        "one (the teacher for controls and ensembles). The training score is measured without augmentation. Per-epoch "
        "metrics of every model and seed: [epochs.csv](epochs.csv) (and `tensorboard --logdir` on the run directories).\n",
        *(["For language models Δ resamples BPTT segments (runs of `data.bptt` consecutive tokens of one stream) "
           "rather than single tokens, which are correlated within a sentence (a block bootstrap).\n"]
          if any(r.metric is PERPLEXITY for r in runs) else []),
        *(f"- skipped: {note}" for note in skipped),
    ]
    sections, everything = [], {}
    for split in splits:
        markdown, rows = split_section(runs, split, out)
        if rows:
            sections.append(markdown)
            everything[split] = rows
    epochs = [{"experiment": r.experiment, "architecture": r.architecture, "seed": r.seed, **e} for r in runs for e in r.epochs]
    if epochs:
        (out / "epochs.csv").write_text(csv_text(epochs))
    (out / "report.json").write_text(json.dumps({"splits": everything, "skipped": list(skipped)}, indent=2))
    markdown = "\n".join(head) + "\n" + "\n".join(sections)
    (out / "report.md").write_text(markdown)
    return markdown
