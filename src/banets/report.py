"""Reports from finished runs, shaped like Table 2 of Furlanello et al. (2018), with the statistics it lacks.

For each split (validation, which compares models; test, evaluated once at the end) a report has

- a wide table: one row per experiment and architecture, one column per model (Teacher, BAN-1..k, the other
  students such as BAN+L, CWTM, DKPP, KD, the controls trained without a teacher such as LS and CE, and the
  ensembles: BANE's Ens*k of Eq. 4 and any plain ensemble such as T+CE), each cell the mean over seeds ± SD;
- per experiment, a long table: one row per model with its training score (did the teacher fit its training
  set?), NLL, expected calibration error, agreement with the model that taught it (fidelity), and the paired
  difference to the teacher with a 95% bootstrap interval over seeds and examples;
- plots: the score per generation, the BAN ensembles against the generations they average, every model's
  difference to the teacher with its interval (a forest plot), and the validation learning curves;
- a verdict in plain words for every student and ensemble: better than the teacher beyond seed noise or not,
  and better than each teacher-free control and each plain ensemble or not, because that is the question a
  born-again run answers.

Classifiers are scored by top-1 error; language models by perplexity, as in the paper's Table 6, with paired
differences in per-token NLL. :func:`model_row` computes a model's row for ``results.json`` and for reports alike.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from banets.config import ExperimentConfig, to_dict
from banets.generations import TEACHER, BornAgainResult, Role
from banets.metrics import Predictions, bootstrap_paired_difference
from banets.runs import RunError, SeedDirectory, atomic_write_text, find_seed_dirs

SPLIT_TITLES = {
    "val": "validation split: compares and selects models",
    "test": "test split: evaluated once, at the end",
}
REPORT_INDEX = ".banets-report"  # the files a report folder's last report wrote: the only ones a new report may replace


@dataclass(frozen=True)
class Metric:
    """How a model is scored: its value on a split, and the per-example scores whose paired difference to the
    teacher is bootstrapped."""

    key: str  # column name in CSV and JSON
    label: str  # column title
    delta_label: str
    value: Callable[[Predictions], float]
    per_example: Callable[[Predictions], np.ndarray]
    curve_key: str  # the per-epoch record plotted in the learning curves
    curve: Callable[[float], float]


ERROR = Metric("error", "error %", "Δ error vs teacher, points [95% CI]", Predictions.error,
               lambda p: p.scores("error"), "val_error", lambda v: v)
PERPLEXITY = Metric("perplexity", "perplexity", "Δ NLL vs teacher, nats/token [95% CI]", Predictions.perplexity,
                    lambda p: p.scores("perplexity"), "val_nll", lambda v: math.exp(min(v, 50.0)))
METRICS = {m.key: m for m in (ERROR, PERPLEXITY)}


@dataclass
class SeedRun:
    """One seed of one experiment, as read back from its seed directory (or taken from a run in memory)."""

    experiment: str  # the config's name
    architecture: str  # the students' model (and the teacher's, when it differs)
    dataset: str
    seed: int
    predictions: dict[str, dict[str, Predictions]]  # split -> model -> predictions
    models: dict[str, dict]  # the manifest's entries: role, generation, loss, teacher, ...
    epochs: list[dict]  # metrics.jsonl, the last record per model and epoch
    path: Path = Path()  # the seed directory
    block: int = 1  # consecutive examples resampled together by the bootstrap (a BPTT segment of a text)
    metric_key: str = "error"
    ensembles: dict[str, list[str]] = field(default_factory=dict)  # label -> members
    deltas: dict[tuple, tuple[float, float, float] | None] = field(default_factory=dict, repr=False, compare=False)
    recipe: dict = field(default_factory=dict, repr=False, compare=False)  # SeedDirectory.recipe(): seeds share it
    apart: str = ""  # why this run is reported apart from the runs of its name (another config or data)
    unreadable: dict = field(default_factory=lambda: {"count": 0, "names": []})  # examples left out (skip_unreadable)
    stopped: str | None = None  # why ban.generations=auto trained no more generations

    @property
    def metric(self) -> Metric:
        return METRICS[self.metric_key]

    def chain_ensembles(self) -> dict[int, str]:
        """BANE's ensembles (Eq. 4) by k: those whose recorded members are generations 1..k, k > 1."""
        generations = sorted(
            (e.get("generation"), n) for n, e in self.models.items() if e.get("role") == Role.GENERATION
        )
        chain = [name for _, name in generations]
        return {
            len(members): label
            for label, members in self.ensembles.items()
            if len(members) > 1 and members == chain[: len(members)]
        }


def architecture_of(model: dict) -> str:
    teacher = model.get("teacher_name")
    return f"{teacher} → {model['name']}" if teacher and teacher != model["name"] else model["name"]


def read_run(seed_dir: Path) -> SeedRun:
    """A finished seed directory; an unfinished one raises :class:`RunError`."""
    run = SeedDirectory(seed_dir)
    run.check_not_failed()
    config = run.config()
    splits = run.splits
    if not splits:
        raise RunError(
            f"{seed_dir} has no predictions yet (unfinished run); finish it with `banets resume "
            f"{Path(seed_dir).parent}`"
        )
    return SeedRun(
        experiment=config["name"],
        architecture=architecture_of(config["model"]),
        dataset=config["data"]["dataset"],
        seed=config["seeds"][0],
        predictions={split: run.load_predictions(split) for split in splits},
        models=run.models,
        epochs=run.epochs(),
        path=Path(seed_dir),
        metric_key=run.scoring[0],
        block=run.scoring[1],
        ensembles=run.ensembles,
        recipe=run.recipe(),
        unreadable=run.unreadable,
        stopped=run.stopped,
    )


def seed_run_of(config: ExperimentConfig, seed: int, result: BornAgainResult, data_record: dict) -> SeedRun:
    """A seed's result in memory, as :func:`read_run` would read it back from its seed directory (but untimed)."""
    return SeedRun(
        experiment=config.name,
        architecture=architecture_of(to_dict(config)["model"]),
        dataset=config.data.dataset,
        seed=seed,
        predictions=result.predictions,
        models={s.name: {**s.describe(), "epoch": len(result.histories.get(s.name, []))} for s in result.plan},
        epochs=[{"model": name, **r} for name, history in result.histories.items() for r in history],
        block=data_record["bootstrap_block"],
        metric_key=data_record["metric"],
        ensembles=result.ensembles,
    )


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
    separate_experiments(runs)
    check_distinct_seeds(runs)
    return runs, skipped


def separate_experiments(runs: list[SeedRun]) -> None:
    """Runs of one name and architecture whose configs (seeds aside) or data differ are different experiments,
    never averaged as seeds of one: each variant after the first is renamed ``name (2)``, ``name (3)``, ..., and
    says in ``apart`` which keys differ."""
    for (experiment, _), group in experiments(runs).items():
        variants: dict[str, list[SeedRun]] = {}
        for run in group:
            variants.setdefault(json.dumps(run.recipe, sort_keys=True, default=str), []).append(run)
        first = group[0].recipe
        for number, members in enumerate(list(variants.values())[1:], start=2):
            recipe = members[0].recipe
            differing = sorted(k for k in first.keys() | recipe.keys() if first.get(k) != recipe.get(k))
            note = (
                f"{experiment} ({number}) ({', '.join(str(r.path) for r in members)}) differs from {experiment} "
                f"({group[0].path}) in {', '.join(differing[:4])}{', ...' if len(differing) > 4 else ''}; reported "
                f"as a separate experiment, not as more seeds"
            )
            for run in members:
                run.experiment, run.apart = f"{experiment} ({number})", note


def check_distinct_seeds(runs: list[SeedRun]) -> None:
    """Refuse to count one (experiment, architecture, seed) twice: its intervals would be too narrow."""
    seen: dict[tuple[str, str, int], Path] = {}
    for run in runs:
        key = (run.experiment, run.architecture, run.seed)
        if key in seen:
            raise RunError(
                f"seed {run.seed} of {run.experiment} ({run.architecture}) appears twice, in {seen[key]} and "
                f"{run.path}; report each seed once (or give the runs different names with --set name=...)"
            )
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


def paired_delta(group: list[SeedRun], split: str, model: str, other: str) -> tuple[float, float, float] | None:
    """Mean of ``model``'s per-example score minus ``other``'s over seeds and examples, with a 95% bootstrap
    interval resampling both; None unless every seed has both."""
    if model == other or not all(model in r.predictions[split] and other in r.predictions[split] for r in group):
        return None
    key = (tuple(r.seed for r in group), split, model, other)  # each is asked for by the tables, verdicts and plots
    if key not in group[0].deltas:
        metric = group[0].metric
        ours = [metric.per_example(r.predictions[split][model]) for r in group]
        theirs = [metric.per_example(r.predictions[split][other]) for r in group]
        group[0].deltas[key] = bootstrap_paired_difference(ours, theirs, block=group[0].block)
    return group[0].deltas[key]


def role_of(run: SeedRun, model: str) -> str:
    return str(Role.ENSEMBLE) if model in run.ensembles else run.models.get(model, {}).get("role", str(Role.ENSEMBLE))


def describe(run: SeedRun, model: str) -> str:
    """What a model is, in a few words: how it was trained, or what an ensemble averages."""
    if model in run.ensembles:
        members = run.ensembles[model]
        return "mean of " + (", ".join(members) if len(members) < 3 else f"{members[0]}..{members[-1]}")
    entry = run.models.get(model, {})
    role, loss, options = entry.get("role"), entry.get("loss", ""), entry.get("loss_options") or {}
    with_options = loss + "".join(f", {k}={v}" for k, v in options.items())
    if role == Role.TEACHER:
        return "teacher, trained elsewhere" if entry.get("epoch") == 0 else "teacher, labels only"
    if role == Role.CONTROL:
        return "no teacher, " + (
            f"smoothed {options['label_smoothing']}" if "label_smoothing" in options else "another seed"
        )
    if role == Role.GENERATION:
        return f"gen {entry.get('generation')}, {with_options} from {entry.get('teacher')}"
    return f"{with_options} from {entry.get('teacher')}"


def model_row(
    experiment: str, architecture: str, model: str, group: list[SeedRun], split: str, reference: str = TEACHER
) -> dict:
    """One model's (or ensemble's) row on ``split``: mean and SD over seeds of the score, the training score,
    NLL, ECE, minutes of training, agreement with the model that taught it (the teacher for controls and
    ensembles), and the paired difference to ``reference`` with its 95% interval over seeds and examples."""
    first = group[0]
    group = [r for r in group if model in r.predictions[split]]
    entry = first.models.get(model, {})
    row = {
        "experiment": experiment,
        "architecture": architecture,
        "model": model,
        "role": role_of(first, model),
        "what": describe(first, model),
        "generation": entry.get("generation"),
        "loss": entry.get("loss", "ensemble"),
        "seeds": len(group),
        "metric": first.metric.key,
        **score_columns(group, split, model),
    }
    teacher = entry.get("teacher") or (reference if model != reference else None)
    if teacher and all(teacher in r.predictions[split] for r in group):
        row["agreement_with"] = teacher
        agreement = [r.predictions[split][model].agreement(r.predictions[split][teacher]) for r in group]
        row["agreement"], row["agreement_sd"] = mean_sd(agreement)
    delta = paired_delta(group, split, model, reference)
    if delta is not None:
        row["delta"], row["delta_low"], row["delta_high"] = delta
    return row


def score_columns(group: list[SeedRun], split: str, model: str) -> dict:
    """Mean and SD over seeds of the model's score on ``split`` and on the training examples, its NLL, ECE, and
    minutes of training (for trained models of runs that timed their epochs)."""
    metric, preds = group[0].metric, [r.predictions[split][model] for r in group]
    columns = dict(zip((metric.key, f"{metric.key}_sd"), mean_sd([metric.value(p) for p in preds])))
    trained = [r.predictions["train"][model] for r in group if model in r.predictions.get("train", {})]
    if trained:
        columns.update(zip((f"train_{metric.key}", f"train_{metric.key}_sd"),
                           mean_sd([metric.value(p) for p in trained])))
    columns["nll"], columns["nll_sd"] = mean_sd([p.mean_nll() for p in preds])
    columns["ece"], columns["ece_sd"] = mean_sd([p.ece() for p in preds])
    seconds = [sum(e.get("seconds", 0.0) for e in r.epochs if e["model"] == model) for r in group]
    if all(seconds):  # not ensembles, not a given teacher
        columns["minutes"], columns["minutes_sd"] = mean_sd([s / 60 for s in seconds])
    return columns


def summarize(runs: list[SeedRun], split: str = "val", reference: str = TEACHER) -> list[dict]:
    """One :func:`model_row` per experiment and model (and ensemble) on ``split``."""
    rows = []
    for (experiment, architecture), group in experiments(runs).items():
        group = [r for r in group if split in r.predictions]
        for model in group[0].predictions[split] if group else []:
            rows.append(model_row(experiment, architecture, model, group, split, reference))
    return rows


# -- verdicts --------------------------------------------------------------------------------------------


def relative_change(metric: Metric, delta: tuple[float, float, float]) -> str:
    """A difference in words' units: points of error, or percent of perplexity (from the NLL difference)."""
    if metric is PERPLEXITY:
        low, mid, high = (100.0 * math.expm1(d) for d in (delta[1], delta[0], delta[2]))
        return f"{mid:+.1f}% perplexity [{low:+.1f}, {high:+.1f}]"
    return f"{delta[0]:+.2f} points of error [{delta[1]:+.2f}, {delta[2]:+.2f}]"


def judge(delta: tuple[float, float, float]) -> str:
    """better / worse when the 95% interval excludes 0, else even."""
    return "better" if delta[2] < 0 else "worse" if delta[1] > 0 else "even"


def plain_ensembles(run: SeedRun) -> list[str]:
    """Ensembles of models trained without any teacher of the chain (e.g. T+CE): BANE's fair comparison."""
    learned = {n for n, e in run.models.items() if e.get("role") in (Role.GENERATION, Role.STUDENT)}
    return [label for label, members in run.ensembles.items() if not learned & set(members)]


def answer(group: list[SeedRun], split: str = "val") -> str:
    """The experiment's answer in one paragraph: did a student or ensemble beat the teacher beyond noise, did the
    best one beat the teacher-free controls and the plain ensemble of equal cost, how far the teacher fits its
    training data better than the validation data, and what the number of seeds allows."""
    first = group[0]
    controls = [n for n, e in first.models.items() if e.get("role") == Role.CONTROL]
    plain = plain_ensembles(first)
    judged = {model: delta for model in first.predictions.get(split, {})
              if role_of(first, model) not in (Role.TEACHER, Role.CONTROL) and model not in plain
              and (delta := paired_delta(group, split, model, TEACHER)) is not None}
    if not judged:
        return "No student or ensemble to judge."
    best = min(judged, key=lambda model: judged[model][0])
    winners = [model for model, delta in judged.items() if judge(delta) == "better"]
    sentences = [
        f"{' and '.join(winners)} beat the teacher beyond noise; the best, {best}, by "
        f"{relative_change(first.metric, judged[best])}." if winners else
        f"No student or ensemble beat the teacher beyond noise (the best, {best}: "
        f"{relative_change(first.metric, judged[best])}).",
        against_controls(group, split, best, controls, plain),
        generalisation_gap(group),
        seed_caveat(len(group)),
    ]
    return " ".join(sentence for sentence in sentences if sentence)


def against_controls(group: list[SeedRun], split: str, best: str, controls: list[str], plain: list[str]) -> str:
    """How ``best`` fares against the models trained without a teacher, or what is missing to tell."""
    if not controls:
        return ("No teacher-free control was trained, so a gain cannot be told from that of another seed "
                "(ban.controls={CE: {}} trains one, and with it the plain ensemble of equal cost, T+CE).")
    words = {"better": "beats", "even": "is even with", "worse": "loses to"}
    against: dict[str, list[str]] = {verb: [] for verb in words.values()}
    for other in [*controls, *plain]:
        if (delta := paired_delta(group, split, best, other)) is not None:
            against[words[judge(delta)]].append(other)
    outcomes = [f"{verb} {' and '.join(names)}" for verb, names in against.items() if names]
    missing = "" if plain else (" No plain ensemble of equal cost was evaluated: a plain control, "
                                "ban.controls={CE: {}}, brings one (T+CE).")
    return f"Against the models trained without a teacher, {best} {'; '.join(outcomes)}.{missing}"


GUIDE = "docs/when-born-again-helps.md"
MEMORISED_NLL = 0.01  # nats, the mean over training examples (the CNN without augmentation: 0.0007)


def scored_training(group: list[SeedRun]) -> list[SeedRun]:
    """The seeds whose teacher was scored on its training examples (unaugmented) and on validation: a run made by
    an older banets may not have scored the training examples."""
    return [r for r in group if TEACHER in r.predictions.get("train", {}) and TEACHER in r.predictions.get("val", {})]


def teacher_nll(scored: list[SeedRun], split: str) -> float:
    """The teacher's mean NLL on ``split``, averaged over the seeds ``scored``."""
    return float(np.mean([r.predictions[split][TEACHER].mean_nll() for r in scored]))


def generalisation_gap(group: list[SeedRun]) -> str:
    """The teacher's mean NLL on the training examples (unaugmented) and on the validation split, over the seeds
    that scored their training examples."""
    scored = scored_training(group)
    if not scored:
        return ""
    train, val = teacher_nll(scored, "train"), teacher_nll(scored, "val")
    errors = ""
    if group[0].metric_key == "error":  # a classifier's gap in nats is small beside a language model's: say errors too
        train_error, val_error = (float(np.mean([r.predictions[s][TEACHER].error() for r in scored]))
                                  for s in ("train", "val"))
        errors = f"; error {train_error:.2f}% against {val_error:.2f}%"
    seeds = f"; over the {len(scored)} of {len(group)} seeds that scored them" if len(scored) < len(group) else ""
    gap = (f"The teacher's NLL is {train:.3f} on its training examples and {val:.3f} on validation (a gap of "
           f"{val - train:.3f} nats{errors}{seeds}).")
    if memorised(group[0], train):
        return (f"{gap} Its training NLL, {train:.4f} nats, says it has likely memorised the examples its students "
                f"are taught from, so a born-again student learns little beyond their labels ({GUIDE}).")
    return f"{gap} In our measurements born-again training paid where the teacher overfit ({GUIDE})."


def memorised(run: SeedRun, train_nll: float) -> bool:
    """A teacher nearly certain of every training label, taught from without augmentation: its outputs there are
    the labels. With augmentation its students see crops and flips it was not scored on, so nothing is said."""
    return train_nll < MEMORISED_NLL and run.recipe.get("data.augment") is not True


def seed_caveat(seeds: int) -> str:
    if seeds == 1:
        return ("With one seed this is not yet a verdict: the intervals cover example noise only, not the variation "
                "from seed to seed; run 3 or more seeds (--seeds 0,1,2).")
    if seeds < 3:
        return f"With {seeds} seeds the intervals cover seed-to-seed variation only roughly; 3 or more are better."
    return ""


def verdicts(group: list[SeedRun], split: str = "val") -> list[str]:
    """One plain-words line per student and ensemble, from the paired 95% intervals on ``split``."""
    first = group[0]
    controls = [n for n, e in first.models.items() if e.get("role") == Role.CONTROL]
    plain = plain_ensembles(first)
    lines = []
    for model in first.predictions.get(split, {}):
        if role_of(first, model) in (Role.TEACHER, Role.CONTROL) or model in plain:
            continue
        delta = paired_delta(group, split, model, TEACHER)
        if delta is None:
            continue
        words = {"better": "better", "worse": "worse", "even": "no difference beyond noise"}[judge(delta)]
        parts = [f"{model}: {relative_change(first.metric, delta)} vs the teacher ({words})"]
        outcomes: dict[str, list[str]] = {"beats": [], "loses to": [], "is even with": []}
        for other in [*controls, *plain]:
            versus = paired_delta(group, split, model, other)
            if versus is not None:
                outcomes[{"better": "beats", "worse": "loses to", "even": "is even with"}[judge(versus)]].append(other)
        parts += [f"{verb} {' and '.join(names)}" for verb, names in outcomes.items() if names]
        lines.append("; ".join(parts))
    return lines


# -- tables ------------------------------------------------------------------------------------------------


def _pm(row: dict, key: str, digits: int = 2) -> str:
    """``mean ± SD``, or the mean alone when one seed gives no spread."""
    if key not in row:
        return "—"
    return f"{row[key]:.{digits}f}" + (f" ± {row[key + '_sd']:.{digits}f}" if row["seeds"] > 1 else "")


def _delta(row: dict) -> str:
    """The paired difference and its interval: points of error to 2 decimals, nats per token to 3."""
    if "delta" not in row:
        return "—"
    digits = 3 if row["metric"] == PERPLEXITY.key else 2
    return f"{row['delta']:+.{digits}f} [{row['delta_low']:+.{digits}f}, {row['delta_high']:+.{digits}f}]"


def column_order(rows: list[dict]) -> list[str]:
    """Teacher, generations, the teacher's other students (BAN+L, CWTM, DKPP, KD), controls, then ensembles."""
    rank = {Role.TEACHER: 0, Role.GENERATION: 1, Role.STUDENT: 2, Role.CONTROL: 3, Role.ENSEMBLE: 4}
    first: dict[str, tuple[int, int, int]] = {}
    for r in rows:
        first.setdefault(r["model"], (rank.get(r["role"], 4), r["generation"] or 0, len(first)))
    return sorted(first, key=first.__getitem__)


def wide_rows(rows: list[dict], numeric: bool = False) -> list[dict]:
    """Table 2's shape: one row per experiment and architecture, one cell per model: ``mean ± SD`` text, or with
    ``numeric`` a column of means and one of SDs per model (for spreadsheets)."""
    wide: dict[tuple[str, str], dict] = {}
    for r in rows:
        line = wide.setdefault(
            (r["experiment"], r["architecture"]),
            {
                "experiment": r["experiment"],
                "architecture": r["architecture"],
                "metric": r["metric"],
                "seeds": r["seeds"],
            },
        )
        if numeric:
            line[r["model"]], line[f"{r['model']} sd"], line[f"{r['model']} n"] = (
                r[r["metric"]],
                r[r["metric"] + "_sd"],
                r["seeds"],
            )
        else:
            line[r["model"]] = _pm(r, r["metric"]) + ("" if r["seeds"] == line["seeds"] else f" (n={r['seeds']})")
    return list(wide.values())


def markdown_wide_table(rows: list[dict]) -> str:
    """The Table 2 view of ``rows`` (all scored by one metric)."""
    models = column_order(rows)
    lines = ["| experiment | architecture | seeds | " + " | ".join(models) + " |", "|" + "---|" * (3 + len(models))]
    for line in wide_rows(rows):
        lines.append(
            f"| {line['experiment']} | {line['architecture']} | {line['seeds']} | "
            + " | ".join(line.get(m, "—") for m in models)
            + " |"
        )
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    """One row per model (all of one metric): mean ± SD over seeds, and the paired difference to the teacher."""
    metric = METRICS[rows[0]["metric"]]
    header = (
        f"| experiment | model | what | seeds | {metric.label} | train {metric.label} | NLL | ECE % | "
        f"agreement % (with) | {metric.delta_label} | training min |"
    )
    lines = [header, "|" + "---|" * 11]
    for r in sorted(rows, key=lambda r: column_order(rows).index(r["model"])):
        agreement = f"{_pm(r, 'agreement')} ({r['agreement_with']})" if "agreement" in r else "—"
        lines.append(
            f"| {r['experiment']} | {r['model']} | {r['what']} | {r['seeds']} | {_pm(r, metric.key)} | "
            f"{_pm(r, 'train_' + metric.key)} | {_pm(r, 'nll', 4)} | {_pm(r, 'ece')} | {agreement} | {_delta(r)} | "
            f"{_pm(r, 'minutes', 1)} |"
        )
    return "\n".join(lines)


SUMMARY_COLUMNS = (
    (8, "model"),
    (24, "what it is"),
    (13, "{metric}"),
    (13, "NLL"),
    (6, "agree%"),
    (24, "Δ vs teacher [95% CI]"),
)
WIDTH = 100  # the summary table and its notes fit a terminal of this many columns


def summary_table(runs: list[SeedRun], split: str = "val", legend: bool = False) -> str:
    """A compact plain-text table per experiment (under 100 columns): model, what it is, score, NLL, agreement
    with its teacher, Δ vs the teacher with its interval; the seeds counted; a legend and the verdicts."""
    blocks = []
    for (experiment, architecture), group in experiments(runs).items():
        rows = summarize(group, split)
        if not rows:
            continue
        n = max(r["seeds"] for r in rows)
        title = f"{experiment} ({architecture}), {split} split, " + (
            f"mean ± SD over {n} seeds" if n > 1 else "n=1 seed")
        lines = [title, *table_lines(rows)]
        if legend:
            lines += textwrap.wrap(legend_line(group[0], METRICS[rows[0]["metric"]]), WIDTH)
        one_seed = (" (one seed: the intervals cover example noise only, not seed-to-seed variation; run more seeds "
                    "before trusting them)")
        lines += ["", *textwrap.wrap("Verdict:" + (one_seed if n == 1 else ""), WIDTH)]
        for verdict in verdicts(group, split) or ["(no student or ensemble to judge)"]:
            lines += textwrap.wrap(verdict, WIDTH, initial_indent="  ", subsequent_indent="    ")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def table_lines(rows: list[dict]) -> list[str]:
    """The header, a rule and one line per model of :func:`summary_table`, cells cut to their column's width."""
    metric = METRICS[rows[0]["metric"]]
    longest = max(len(r["model"]) for r in rows)  # a long model name takes room from "what it is"
    rest = [w for w, _ in SUMMARY_COLUMNS[2:]]
    room = WIDTH - 2 * (len(SUMMARY_COLUMNS) - 1) - max(8, longest) - sum(rest)  # "what it is" takes what is left
    widths = [max(8, longest), max(12, min(room, max(len(r["what"]) for r in rows))), *rest]
    header = "  ".join(f"{name.format(metric=metric.label):<{w}}" for w, (_, name) in zip(widths, SUMMARY_COLUMNS))
    lines = [header.rstrip(), "-" * len(header.rstrip())]
    for r in sorted(rows, key=lambda r: column_order(rows).index(r["model"])):
        agreement = f"{r['agreement']:.1f}" if "agreement" in r else "—"
        cells = (r["model"], r["what"], _pm(r, metric.key), _pm(r, "nll", 3), agreement, _delta(r))
        lines.append("  ".join(f"{str(c)[:w]:<{w}}" for c, w in zip(cells, widths)).rstrip())
    return lines


def legend_line(run: SeedRun, metric: Metric) -> str:
    """What the short names of a run mean."""
    parts = []
    if any(e.get("role") == Role.CONTROL for e in run.models.values()):
        parts.append("controls (LS, CE, ...) train on labels without a teacher")
    if run.chain_ensembles():
        parts.append("Ens*k averages generations 1..k (BANE, Eq. 4)")
    unit = "points" if metric is ERROR else "nats/token"
    parts.append(
        "agree%: predictions equal to those of the model that taught it (the teacher for controls and ensembles)"
    )
    parts.append(f"Δ: paired difference to the teacher in {unit}, [95% bootstrap interval]")
    return "Legend: " + "; ".join(parts) + "."


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


def plot_generations(rows: list[dict], path: Path, title: str, runs: list[SeedRun]) -> bool:
    """The score of the teacher (generation 0) and of BAN-1..k, mean ± SD over seeds, one line per experiment
    and generation loss. False (no file) when no experiment has a generation."""
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.0))
    drawn = False
    for label, group in _by_experiment(rows).items():
        chain = sorted(
            (r for r in group if r["role"] in (Role.TEACHER, Role.GENERATION)), key=lambda r: r["generation"] or 0
        )
        if len(chain) < 2:
            continue
        key = chain[0]["metric"]
        ax.errorbar(
            [r["generation"] or 0 for r in chain],
            [r[key] for r in chain],
            yerr=[r[key + "_sd"] for r in chain],
            marker="o",
            capsize=4,
            label=f"{label}, loss {chain[1]['loss']}, n={chain[0]['seeds']}",
        )
        drawn = True
    return _save_if_drawn(fig, ax, drawn, path, title, "generation (0 = teacher)", _axis_label(rows))


def plot_ensembles(rows: list[dict], path: Path, title: str, runs: list[SeedRun]) -> bool:
    """BANE: the ensemble of generations 1..k (Eq. 4) against k, with the single generation BAN-k beside it
    (shifted a little to the right so the error bars stay apart) and the teacher as a dashed line. False (no file)
    when no experiment has such an ensemble."""
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.0))
    drawn = False
    first_run = {f"{r.experiment} ({r.architecture})": r for r in reversed(runs)}
    for i, (label, group) in enumerate(_by_experiment(rows).items()):
        by_gen = {r["generation"]: r for r in group if r["role"] == Role.GENERATION}
        by_name = {r["model"]: r for r in group}
        ensembles = {k: by_name[name] for k, name in first_run[label].chain_ensembles().items() if name in by_name}
        if not ensembles or 1 not in by_gen:
            continue
        key, color = group[0]["metric"], f"C{i}"
        _errorbars(ax, {**ensembles, 1: by_gen[1]}, key, 0.0, color=color, marker="o",
                   label=f"{label}: ensemble of gens 1..k")
        _errorbars(ax, by_gen, key, 0.04, color=color, marker="s", linestyle=":", alpha=0.7,
                   label=f"{label}: generation k alone")
        teacher = next((r for r in group if r["role"] == Role.TEACHER), None)
        if teacher:
            ax.axhline(teacher[key], color=color, linestyle="--", linewidth=1, label=f"{label}: teacher")
        drawn = True
    return _save_if_drawn(fig, ax, drawn, path, title, "k (generations averaged)", _axis_label(rows))


def _errorbars(ax, by_k: dict[int, dict], key: str, shift: float, **style) -> None:
    """The rows' ``key`` (mean ± SD over seeds) against k, each point ``shift`` to the right."""
    ks = sorted(by_k)
    ax.errorbar([k + shift for k in ks], [by_k[k][key] for k in ks], yerr=[by_k[k][key + "_sd"] for k in ks],
                capsize=4, **style)


def plot_forest(rows: list[dict], path: Path, title: str, runs: list[SeedRun]) -> bool:
    """Every model's and ensemble's paired difference to the teacher with its 95% interval, one line each
    (students, controls and ensembles alike), and the teacher's level as a vertical line at 0."""
    with_delta = [r for r in rows if "delta" in r]
    if not with_delta:
        return False
    multiple = len(_by_experiment(rows)) > 1
    fig, ax = _pyplot().subplots(figsize=(6.4, 1.2 + 0.32 * len(with_delta)))
    order = list(reversed(with_delta))
    colors = {Role.GENERATION: "C0", Role.STUDENT: "C1", Role.CONTROL: "C7", Role.ENSEMBLE: "C2"}
    for y, r in enumerate(order):
        ax.errorbar([r["delta"]], [y], xerr=[[r["delta"] - r["delta_low"]], [r["delta_high"] - r["delta"]]],
                    fmt="o", capsize=4, color=colors.get(r["role"], "C3"), label=str(r["role"]))
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="best")
    names = [f"{r['experiment']}: {r['model']}" if multiple else r["model"] for r in order]
    ax.set_yticks(range(len(order)), names, fontsize=8)
    ax.axvline(0.0, color="black", linewidth=1, linestyle="--")
    ax.set_xlabel(METRICS[rows[0]["metric"]].delta_label.replace(" [95% CI]", " (95% interval; left of 0 = better)"))
    seeds = max(r["seeds"] for r in rows)
    ax.set_title(title + f", {seeds} seed{'s' if seeds > 1 else ''}", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return True


Curves = dict[str, tuple[list[int], list[float]]]  # label -> epochs and values


def epoch_means(group: list[SeedRun], values: Callable[[dict], dict[str, float]]) -> Curves:
    """Per curve, its epochs and the mean over seeds of what ``values`` takes from each epoch's record."""
    points: dict[str, dict[int, list[float]]] = {}
    for run in group:
        for record in run.epochs:
            for label, value in values(record).items():
                points.setdefault(label, {}).setdefault(record["epoch"], []).append(value)
    return {label: (sorted(by_epoch), [statistics.fmean(by_epoch[e]) for e in sorted(by_epoch)])
            for label, by_epoch in points.items()}


def loss_terms(record: dict) -> dict[str, float]:
    """The training loss terms of an epoch's record (``train_loss_teacher``: ``"BAN+L-1 teacher"``)."""
    return {f"{record['model']} {key.removeprefix('train_loss_')}": value
            for key, value in record.items() if key.startswith("train_loss_")}


def plot_curves(group: list[SeedRun], path: Path, title: str) -> bool:
    """Validation score per epoch of every trained model, the mean over seeds (the teacher in black); beside it,
    the training loss terms of the models whose loss has several (BAN+L's and KD's teacher and label terms)."""
    metric = group[0].metric
    key = metric.curve_key
    validation = epoch_means(group, lambda r: {r["model"]: metric.curve(r[key])} if key in r else {})
    if not validation:
        return False
    terms = epoch_means(group, loss_terms)
    fig, axes = _pyplot().subplots(1, 2 if terms else 1, figsize=(12.0 if terms else 6.4, 4.0), squeeze=False)
    ax = axes[0][0]
    for i, (model, (epochs, means)) in enumerate(validation.items()):
        teacher = model == TEACHER
        ax.plot(epochs, means, color="black" if teacher else f"C{i}", linewidth=2 if teacher else 1.2, label=model)
    ax.set_ylim(*late_range(validation))
    if terms:
        models = list(validation)  # a model's colour in both panels
        for label, (epochs, means) in terms.items():
            colour = next((i for i, model in enumerate(models) if label.startswith(f"{model} ")), len(models))
            axes[0][1].plot(epochs, means, color=f"C{colour}", linestyle="--" if label.endswith(" label") else "-",
                            label=label)
        _decorate(axes[0][1], "the loss terms in training (per example)", "epoch", "training loss term")
    return _save_if_drawn(fig, ax, True, path, title + f", mean over {len(group)} seed(s)", "epoch",
                          f"validation {metric.label} (the second half of training)")


def late_range(curves: Curves) -> tuple[float, float]:
    """The y range of the curves' second half (plus a margin): the early epochs, far above, would squeeze the final
    differences between models into a line."""
    last = max(max(epochs) for epochs, _ in curves.values())
    late = [value for epochs, means in curves.values() for epoch, value in zip(epochs, means) if epoch > last / 2]
    low, high = min(late), max(late)
    margin = 0.1 * (high - low) or 0.01 * abs(high) or 0.01
    return low - margin, high + margin


def _axis_label(rows: list[dict]) -> str:
    return f"{METRICS[rows[0]['metric']].label} (mean ± SD over seeds)"


def _decorate(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save_if_drawn(fig, ax, drawn: bool, path: Path, title: str, xlabel: str, ylabel: str) -> bool:
    """Label, title and save the figure when anything was drawn; close it either way."""
    if drawn:
        _decorate(ax, title, xlabel, ylabel)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return drawn


# -- the report ---------------------------------------------------------------------------------------------


def check_report_folder(root: Path) -> set[str]:
    """The files a previous report wrote into ``root`` (its index); a folder holding any other file (but the
    temporary files of a report that was killed while writing), or a symbolic link, is refused."""
    if root.is_symlink():
        raise RunError(
            f"report folder {root} is a symbolic link, which banets does not follow; pass the folder it "
            f"points to (report --out), or remove the link"
        )
    if root.exists() and not root.is_dir():
        raise RunError(f"report --out {root} is a file; choose a folder")
    index = root / REPORT_INDEX
    try:
        previous = set(json.loads(index.read_text())) if index.is_file() else set()
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        raise RunError(
            f"{index} is damaged; remove it and the files of the last report, or choose another folder"
        ) from None
    if any(not isinstance(name, str) or Path(name).name != name or name.startswith(".") for name in previous):
        raise RunError(f"{index} lists paths outside its folder; remove it, or choose another folder")
    entries = list(root.iterdir()) if root.exists() else []
    link = next((p for p in entries if p.is_symlink()), None)
    if link is not None:
        raise RunError(f"{link} is a symbolic link, which banets does not follow; remove it, or choose another folder")
    owned = previous | {REPORT_INDEX}
    foreign = sorted(p.name for p in entries if p.name not in owned and not is_temporary(p, owned))
    if foreign:
        raise RunError(
            f"report --out {root} holds files a banets report did not write ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); choose an empty or new folder"
        )
    return previous


def is_temporary(path: Path, owned: set[str]) -> bool:
    """A file that an atomic write of one of the ``owned`` files had not yet renamed into place when it was
    killed (``.<name>.<random>.tmp``)."""
    return path.is_file() and path.name.endswith(".tmp") and any(path.name.startswith(f".{name}.") for name in owned)


class ReportFolder:
    """The folder a report writes into. It writes only files it records in ``.banets-report`` before writing them,
    and refuses a folder that holds other files (yours), so a report never overwrites what it did not write and
    a report killed while writing is written again by the next one."""

    def __init__(self, root: Path):
        self.root = root
        self.previous = check_report_folder(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunError(
                f"cannot create report folder {root} ({error.strerror}); choose a folder you can write to"
            ) from None
        for leftover in root.iterdir():
            if is_temporary(leftover, self.previous | {REPORT_INDEX}):
                leftover.unlink()
        self.written: list[str] = []

    def path(self, name: str) -> Path:
        """Where to write ``name``, recorded in the index first, so a kill while writing it leaves a folder the
        next report recognises as its own."""
        if name not in self.previous and name not in self.written:
            atomic_write_text(self.root / REPORT_INDEX, json.dumps(sorted(self.previous | {*self.written, name})))
        self.written.append(name)
        return self.root / name

    def write(self, name: str, text: str) -> None:
        atomic_write_text(self.path(name), text)

    def close(self) -> None:
        """Record what this report wrote, and remove the files of a previous report that this one did not write
        again."""
        for stale in self.previous - set(self.written):
            (self.root / stale).unlink(missing_ok=True)
        atomic_write_text(
            self.root / REPORT_INDEX, json.dumps(sorted(n for n in set(self.written) if (self.root / n).exists()))
        )


PLOTS = (
    ("generations", plot_generations, "per born-again generation"),
    ("ensembles", plot_ensembles, "ensembles of generations 1..k vs single generations"),
    ("delta", plot_forest, "every model vs the teacher"),
)


def split_section(runs: list[SeedRun], split: str, folder: ReportFolder) -> tuple[str, list[dict]]:
    """The Markdown of one split (wide tables, plots, long tables per experiment) and its summary rows.
    CSV files and plots are written into ``folder``."""
    rows = summarize(runs, split)
    if not rows:
        return "", rows
    folder.write(f"report-{split}.csv", csv_text(rows))
    parts = [f"## {split} — {SPLIT_TITLES.get(split, split + ' split')}\n"]
    for metric in dict.fromkeys(r["metric"] for r in rows):
        of_metric = [r for r in rows if r["metric"] == metric]
        folder.write(f"table-{split}-{metric}.csv", csv_text(wide_rows(of_metric, numeric=True)))
        parts.append(f"{METRICS[metric].label}, mean ± SD over seeds:\n\n{markdown_wide_table(of_metric)}\n")
        for name, plot, title in PLOTS:
            image = f"{name}-{split}-{metric}.png"
            if plot(of_metric, folder.path(image), f"{split} {metric}, {title}", runs):
                parts.append(f"![{split} {metric}: {name}]({image})\n")
    for (experiment, architecture), _ in experiments(runs).items():
        of_experiment = [r for r in rows if (r["experiment"], r["architecture"]) == (experiment, architecture)]
        if of_experiment:
            parts.append(f"### {experiment} ({architecture})\n\n{markdown_table(of_experiment)}\n")
    return "\n".join(parts), rows


def experiment_section(index: int, group: list[SeedRun], folder: ReportFolder) -> str:
    """An experiment's verdict (validation split) and learning curves."""
    title = f"{group[0].experiment} ({group[0].architecture})"
    parts = [
        f"### {title}\n",
        f"**Answer.** {answer(group)}\n",
        *(f"- {line}" for line in verdicts(group, "val") or ["no student or ensemble to judge"]),
        "",
    ]
    image = f"curves-{index}.png"
    if plot_curves(group, folder.path(image), f"{title}: validation learning curves"):
        parts.append(f"![learning curves of {title}]({image})\n")
    return "\n".join(parts)


def report_intro(runs: list[SeedRun]) -> list[str]:
    """The title and what the report's numbers are."""
    seeds = sorted({r.seed for r in runs})
    intro = [
        "# banets report\n",
        f"{len(runs)} seed run(s), seeds {', '.join(map(str, seeds))}. Cells are the mean over seeds ± the standard "
        "deviation; Δ is the paired difference to the teacher, averaged over seeds and examples, with a 95% percentile "
        "bootstrap interval resampling seeds and examples (2000 draws). Agreement is with the model that taught each "
        "one (the teacher for controls and ensembles). The training score is measured without augmentation. Per-epoch "
        "metrics of every model and seed: [epochs.csv](epochs.csv) (and `tensorboard --logdir` on the run "
        "directories).\n",
    ]
    if any(r.metric is PERPLEXITY for r in runs):
        intro.append("For language models Δ resamples BPTT segments (runs of `data.bptt` consecutive tokens of one "
                     "stream) rather than single tokens, which are correlated within a sentence (a block bootstrap).\n")
    return intro


def run_notes(runs: list[SeedRun], skipped: tuple[str, ...]) -> list[str]:
    """What the reader should know about the runs before the verdicts: those skipped, examples left out, where
    ``ban.generations: auto`` stopped, and runs reported apart."""
    return [
        *(f"- skipped: {note}" for note in skipped),
        *(unreadable_note(r) for r in runs if r.unreadable["count"]),
        *(f"- {r.path.name or f'seed {r.seed}'}: {r.stopped}" for r in runs if r.stopped),
        *(f"- {note}" for note in dict.fromkeys(r.apart for r in runs if r.apart)),
    ]


def unreadable_note(run: SeedRun) -> str:
    names = run.unreadable["names"]
    more = f" and {run.unreadable['count'] - len(names)} more" if run.unreadable["count"] > len(names) else ""
    return (f"- {run.path.name or f'seed {run.seed}'}: {run.unreadable['count']} unreadable example(s) left out of "
            f"training and scoring (data.skip_unreadable): {', '.join(f'`{name}`' for name in names)}{more}")


def write_report(
    runs: list[SeedRun], out: Path, splits: tuple[str, ...] = ("val", "test"), skipped: tuple[str, ...] = ()
) -> str:
    """Write ``report.md`` with its plots, ``report-<split>.csv`` (one row per model), ``table-<split>-<metric>.csv``
    (Table 2's shape, numeric), ``epochs.csv`` (per-epoch metrics) and ``report.json`` into ``out``; return the
    Markdown."""
    folder = ReportFolder(Path(out))
    head = [
        *report_intro(runs),
        *run_notes(runs, skipped),
        "\n## Verdict — validation split, 95% intervals\n",
        *(experiment_section(i, group, folder) for i, group in enumerate(experiments(runs).values())),
    ]
    sections, everything = [], {}
    for split in splits:
        markdown, rows = split_section(runs, split, folder)
        if rows:
            sections.append(markdown)
            everything[split] = rows
    epochs = [
        {"experiment": r.experiment, "architecture": r.architecture, "seed": r.seed, **e}
        for r in runs
        for e in r.epochs
    ]
    if epochs:
        folder.write("epochs.csv", csv_text(epochs))
    folder.write("report.json", json.dumps({"splits": everything, "skipped": list(skipped)}, indent=2))
    markdown = "\n".join(head) + "\n" + "\n".join(sections)
    folder.write("report.md", markdown)
    folder.close()
    return markdown
