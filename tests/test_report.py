"""Reports: Table 2's wide shape, per-model tables with paired intervals, perplexity for language models,
metrics.jsonl read back, plots embedded in report.md. Run directories are written directly (no training)."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from banets.data.registry import Data
from banets.generations import ModelSpec
from banets.metrics import Predictions
from banets.report import read_run, read_runs, summarize, wide_rows, write_report
from banets.runs import SeedDirectory, RunError

EXAMPLES = 100
PLAN = [ModelSpec("teacher", "teacher", generation=0), ModelSpec("BAN-1", "generation", "ban", teacher="teacher", generation=1),
        ModelSpec("BAN-2", "generation", "ban", teacher="BAN-1", generation=2), ModelSpec("BAN+L", "student", "ban+l", teacher="teacher"),
        ModelSpec("LS", "control", "ce", {"label_smoothing": 0.1}), ModelSpec("CE", "control")]


def predictions(wrong: int, nll: float = 0.5) -> Predictions:
    """Label 0 everywhere; the first ``wrong`` examples predicted as class 1."""
    pred = torch.zeros(EXAMPLES, dtype=torch.long)
    pred[:wrong] = 1
    return Predictions(nll=torch.full((EXAMPLES,), nll), pred=pred, confidence=torch.full((EXAMPLES,), 0.9),
                       labels=torch.zeros(EXAMPLES, dtype=torch.long))


def fake_run(root, seed, wrong: dict[str, int], dataset="digits", name="demo", nll=0.5, splits=("val", "test", "train"),
             augment=True):
    """A finished seed directory whose models get ``wrong[model]`` errors out of 100 on every split."""
    run = SeedDirectory(root / f"seed-{seed}")
    data = {"dataset": dataset, "bptt": 7, "augment": augment}  # bptt is read for text only
    run.start({"name": name, "seeds": [seed], "data": data, "model": {"name": "small_cnn", "teacher_name": None}},
              Data([], [], metric="perplexity" if dataset == "text" else "error", block=7 if dataset == "text" else 1), [seed])
    for spec in PLAN:  # finished, as the report reads it (no checkpoint is read)
        run.entry(spec).update(status="done", checkpoint=f"checkpoints/{spec.name}.pt", sha256="0" * 64)
    run.manifest["ensembles"] = {"Ens*2": ["BAN-1", "BAN-2"], "T+CE": ["teacher", "CE"]}
    run._write_manifest()
    for split in splits:
        run.save_predictions(split, {model: predictions(n, nll) for model, n in wrong.items()})
    return run.root


def three_seeds(tmp_path, student_gain=5):
    """Teacher errors 10/20/30 %; every other model ``student_gain`` points better (on a subset of the teacher's errors)."""
    dirs = []
    for seed, teacher in enumerate((10, 20, 30)):
        wrong = {m.name: teacher - (0 if m.name == "teacher" else student_gain) for m in PLAN}
        dirs.append(fake_run(tmp_path, seed, {**wrong, "Ens*2": teacher - 2 * student_gain}))
    return [read_run(d) for d in dirs]


def test_wide_table_has_the_papers_columns_and_mean_sd_per_cell(tmp_path):
    rows = summarize(three_seeds(tmp_path), "test")
    (wide,) = wide_rows(rows)
    assert [k for k in wide if k not in ("experiment", "architecture", "metric", "seeds")] == \
        ["teacher", "BAN-1", "BAN-2", "BAN+L", "LS", "CE", "Ens*2"]
    assert wide["teacher"] == "20.00 ± 10.00" and wide["BAN-1"] == "15.00 ± 10.00" and wide["Ens*2"] == "10.00 ± 10.00"
    assert wide["seeds"] == 3 and wide["architecture"] == "small_cnn"


def test_student_better_on_a_subset_of_examples_has_an_interval_below_zero(tmp_path):
    rows = {r["model"]: r for r in summarize(three_seeds(tmp_path), "val")}
    ban = rows["BAN-1"]
    assert ban["delta"] == pytest.approx(-5.0) and ban["delta_low"] < ban["delta_high"] < 0
    assert "delta" not in rows["teacher"]
    assert ban["agreement"] == pytest.approx(95.0) and ban["agreement_with"] == "teacher"
    assert rows["BAN-2"]["agreement"] == pytest.approx(100.0) and rows["BAN-2"]["agreement_with"] == "BAN-1"
    assert rows["LS"]["agreement_with"] == "teacher"  # controls are compared with the teacher
    assert rows["teacher"]["train_error"] == pytest.approx(20.0)


def test_identical_models_have_a_zero_width_interval(tmp_path):
    rows = {r["model"]: r for r in summarize(three_seeds(tmp_path, student_gain=0), "val")}
    assert (rows["BAN-1"]["delta"], rows["BAN-1"]["delta_low"], rows["BAN-1"]["delta_high"]) == (0.0, 0.0, 0.0)


def test_language_model_runs_report_perplexity_and_nll_differences(tmp_path):
    run = read_run(fake_run(tmp_path, 0, {"teacher": 0, "BAN-1": 0}, dataset="text", name="ptb", nll=math.log(50.0),
                            splits=("val", "test")))
    rows = {r["model"]: r for r in summarize([run], "val")}
    assert rows["teacher"]["metric"] == "perplexity" and rows["teacher"]["perplexity"] == pytest.approx(50.0, rel=1e-5)
    assert "train_perplexity" not in rows["teacher"] and rows["BAN-1"]["delta"] == pytest.approx(0.0)
    markdown = write_report([run], tmp_path / "report")
    assert "| experiment | model | what | seeds | perplexity | train perplexity |" in markdown
    assert "Δ NLL vs teacher, nats/token" in markdown and "error %" not in markdown
    assert run.block == 7 and read_run(fake_run(tmp_path / "digits", 0, {"teacher": 0})).block == 1
    assert "resamples BPTT segments" in markdown and (tmp_path / "report" / "generations-val-perplexity.png").is_file()


def test_report_writes_tables_csv_json_and_embedded_plots(tmp_path):
    out = tmp_path / "report"
    markdown = write_report(three_seeds(tmp_path / "runs"), out)
    val, test = markdown.index("## val"), markdown.index("## test")
    assert 0 < val < test  # validation and test kept apart, validation first
    assert "| demo | small_cnn | 3 | 20.00 ± 10.00 | 15.00 ± 10.00 |" in markdown  # Table 2's row: teacher, then BAN-1
    assert "| demo | teacher | teacher, labels only | 3 | 20.00 ± 10.00 | 20.00 ± 10.00 |" in markdown  # test, training error
    images = [line[line.index("(") + 1 : -1] for line in markdown.splitlines() if line.startswith("![")]
    kinds = ("generations", "ensembles", "delta")
    assert sorted(images) == sorted(f"{kind}-{split}-error.png" for kind in kinds for split in ("val", "test"))
    for image in images:
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "table-test-error.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert (float(row["BAN-2"]), float(row["BAN-2 sd"]), int(row["BAN-2 n"])) == pytest.approx((15.0, 10.0, 3))  # numbers
    saved = json.loads((out / "report.json").read_text())
    assert {r["model"] for r in saved["splits"]["val"]} == {m.name for m in PLAN} | {"Ens*2"}


def test_each_paired_difference_is_bootstrapped_once_for_the_report_and_the_printed_summary(tmp_path, monkeypatch):
    import banets.report as report

    asked = []
    original = report.bootstrap_paired_difference
    monkeypatch.setattr(report, "bootstrap_paired_difference", lambda a, b, **kw: asked.append(1) or original(a, b, **kw))
    runs = three_seeds(tmp_path / "runs")
    write_report(runs, tmp_path / "report")
    computed = len(asked)
    assert computed >= 2 * (len(PLAN) - 1)  # every model vs the teacher on both splits, at least
    report.summary_table(runs, legend=True)  # the summary and verdicts the CLI prints: already computed
    assert len(asked) == computed
    assert len(runs[0].deltas) == computed  # one bootstrap per (seeds, split, model, other)


def test_unfinished_runs_are_skipped_with_a_note(tmp_path):
    fake_run(tmp_path, 0, {"teacher": 10, "BAN-1": 5})
    SeedDirectory(tmp_path / "seed-1").start({"name": "demo", "seeds": [1], "data": {"dataset": "digits"},
                                             "model": {"name": "small_cnn"}}, Data([], []), [1])
    runs, skipped = read_runs([tmp_path])
    assert [r.seed for r in runs] == [0] and "seed-1 has no predictions yet" in skipped[0]
    assert "skipped: " in write_report(runs, tmp_path / "report", skipped=tuple(skipped))
    with pytest.raises(RunError, match="no finished runs"):
        read_runs([tmp_path / "seed-1"])


def test_metrics_jsonl_keeps_the_last_line_per_model_and_epoch(tmp_path):
    run = SeedDirectory(tmp_path)
    lines = [{"model": "teacher", "epoch": 1, "train_loss": 2.0}, {"model": "teacher", "epoch": 2, "train_loss": 1.5},
             {"model": "teacher", "epoch": 2, "train_loss": 1.4}, {"model": "BAN-1", "epoch": 1, "train_loss": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"model": "BAN-1", "ep')
    assert run.epochs() == [lines[0], lines[2], lines[3]]  # the redone epoch wins; the line cut by a crash is dropped
    redone = {"model": "BAN-1", "epoch": 2, "train_loss": 0.9}
    run._append_jsonl("metrics.jsonl", redone)  # the resumed run's next line is not glued to the cut one
    assert run.epochs() == [lines[0], lines[2], lines[3], redone]
    with open(tmp_path / "metrics.jsonl", "ab") as f:
        f.write(b'\xff\xfe not text\n[1, 2]\n{"epoch": 3}\n{"model": "BAN-1", "epoch": "three"}\n')
    assert run.epochs() == [lines[0], lines[2], lines[3], redone]  # damaged lines are skipped


def test_a_seed_reported_twice_is_refused(tmp_path):
    from banets.cli import main

    quick = ["--set", "optim.epochs=1", "--set", "ban.generations=1", "--set", "model.options.width=4",
             "--set", "optim.progress=none", "--set", "ban.extra_losses=[]", "--seeds", "0"]
    for out in ("a", "b"):
        assert main(["run", "demo", *quick, "--out", str(tmp_path / out)]) == 0
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "r")]) == 1


def test_training_minutes_sum_each_models_epochs_and_skip_untimed_runs(tmp_path):
    runs = []
    for seed, (teacher_seconds, ban_seconds) in enumerate(((60.0, 90.0), (120.0, 150.0))):
        run = SeedDirectory(fake_run(tmp_path, seed, {"teacher": 10, "BAN-1": 5, "Ens*2": 5}))
        for epoch, seconds in enumerate((teacher_seconds / 2, teacher_seconds / 2), 1):
            run._append_jsonl("metrics.jsonl", {"model": "teacher", "epoch": epoch, "seconds": seconds})
        run._append_jsonl("metrics.jsonl", {"model": "BAN-1", "epoch": 1, "seconds": ban_seconds})
        runs.append(read_run(run.root))
    rows = {r["model"]: r for r in summarize(runs, "val")}
    assert (rows["teacher"]["minutes"], rows["teacher"]["minutes_sd"]) == pytest.approx((1.5, math.sqrt(0.5)))
    assert rows["BAN-1"]["minutes"] == pytest.approx(2.0) and "minutes" not in rows["Ens*2"]
    assert "| 1.50 ± 0.71 |" not in write_report(runs, tmp_path / "report")  # one decimal
    assert "| 1.5 ± 0.7 |" in write_report(runs, tmp_path / "report")
    untimed = read_run(fake_run(tmp_path / "old", 0, {"teacher": 10}))
    assert "minutes" not in summarize([untimed], "val")[0]


def test_a_run_made_before_manifests_recorded_ensembles_takes_them_from_its_config(tmp_path):
    seed_dir = fake_run(tmp_path, 0, {"teacher": 10, "BAN-1": 5, "BAN-2": 5, "Ens*2": 4})
    run = SeedDirectory(seed_dir)
    config = run.config()
    del run.manifest["ensembles"], run.manifest["config_sha256"]  # as old manifests were
    run.manifest["format_version"] = 1
    run._write_manifest()
    config["ban"] = {"generations": 2}
    (seed_dir / "config.yaml").write_text(__import__("yaml").safe_dump(config))
    (row,) = [r for r in summarize([read_run(seed_dir)], "val") if r["model"] == "Ens*2"]
    assert row["role"] == "ensemble" and row["what"] == "mean of BAN-1, BAN-2"


def test_every_plot_has_a_title_labelled_axes_and_the_learning_curves_exist(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved = {}
    original = Figure.savefig

    def record(fig, path, *args, **kwargs):
        ax = fig.axes[0]
        saved[Path(path).name] = (ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), len(ax.get_lines()) + len(ax.collections))
        return original(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    runs = three_seeds(tmp_path / "runs")
    for run in runs:  # validation error per epoch, as metrics.jsonl holds it
        run.epochs = [{"model": m, "epoch": e, "val_error": 30.0 - e} for m in ("teacher", "BAN-1") for e in (1, 2, 3)]
    markdown = write_report(runs, tmp_path / "report")
    assert {"delta-val-error.png", "curves-0.png", "generations-val-error.png", "ensembles-val-error.png"} <= set(saved)
    for name, (title, xlabel, ylabel, drawn) in saved.items():
        assert title and xlabel and drawn, name
    assert saved["curves-0.png"][1:3] == ("epoch", "validation error % (the second half of training)")
    assert "left of 0 = better" in saved["delta-val-error.png"][1]
    assert "![learning curves of demo (small_cnn)](curves-0.png)" in markdown and "## Verdict" in markdown


def test_the_learning_curves_show_the_loss_terms_beside_the_validation_curves(tmp_path):
    from matplotlib.image import imread

    from banets.report import SeedRun, loss_terms, plot_curves

    epochs = [{"model": "teacher", "epoch": e, "val_error": 50.0 - e} for e in (1, 2)]
    epochs += [{"model": "BAN+L-1", "epoch": e, "val_error": 40.0 - e, "train_loss_teacher": 1.0 / e,
                "train_loss_label": 2.0 / e} for e in (1, 2)]
    run = SeedRun("x", "mlp", "tensors", 0, {}, {}, epochs)
    assert loss_terms(epochs[2]) == {"BAN+L-1 teacher": 1.0, "BAN+L-1 label": 2.0}
    assert plot_curves([run], tmp_path / "curves.png", "x")
    height, width, _ = imread(tmp_path / "curves.png").shape
    assert width > 1.5 * height  # two panels side by side


def test_the_answer_says_when_the_teacher_has_memorised_its_training_examples(tmp_path):
    from banets.report import MEMORISED_NLL, answer

    wrong = {m.name: 10 for m in PLAN}
    cases = [(MEMORISED_NLL / 2, False, True), (MEMORISED_NLL * 2, False, False),
             (MEMORISED_NLL / 2, True, False)]  # with augmentation students are taught on views it was not scored on
    for nll, augment, memorised in cases:
        run = fake_run(tmp_path / f"{nll}-{augment}", 0, wrong, nll=nll, augment=augment)
        text = answer([read_run(run)])
        assert (f"Its training NLL, {nll:.4f} nats, says it has likely memorised the examples its students are "
                "taught from, so a born-again student learns little beyond their labels" in text) == memorised
        assert ("In our measurements born-again training paid where the teacher overfit" in text) != memorised
        assert text.count("(docs/when-born-again-helps.md)") == 1


def test_learning_curves_span_the_second_half_of_training_where_the_final_differences_are():
    from banets.report import late_range

    curves = {"teacher": ([1, 2, 3, 4], [50.0, 30.0, 20.0, 19.0]), "BAN-1": ([1, 2, 3, 4], [60.0, 25.0, 21.0, 20.0])}
    assert late_range(curves) == pytest.approx((18.8, 21.2))  # epochs 3 and 4: 19..21, a 10% margin
    assert late_range({"teacher": ([1, 2], [5.0, 4.0])}) == pytest.approx((3.96, 4.04))  # one value: 1% of it


def test_the_answer_says_who_beat_the_teacher_against_which_controls_and_what_the_seeds_allow(tmp_path):
    from banets.report import answer

    runs = three_seeds(tmp_path)  # every student 5 points better, Ens*2 10; CE too; T+CE none saved
    text = answer(runs)
    assert text.startswith("BAN-1 and BAN-2 and BAN+L and Ens*2 beat the teacher beyond noise; the best, Ens*2, by "
                           "-10.00 points of error")
    assert "Against the models trained without a teacher, Ens*2 beats LS and CE." in text
    assert ("The teacher's NLL is 0.500 on its training examples and 0.500 on validation (a gap of 0.000 nats; "
            "error 20.00% against 20.00%). In our measurements") in text  # 10, 20 and 30 wrong of 100 on every split
    assert "seed" not in text.split("validation (")[1]  # three seeds: no caveat
    older = [*runs[:2], fake_run(tmp_path / "older", 2, {m.name: 10 for m in PLAN}, splits=("val", "test"))]
    assert ("on its training examples and 0.500 on validation (a gap of 0.000 nats; error 15.00% against 15.00%; "
            "over the 2 of 3 seeds that scored them). In our") in answer([*older[:2], read_run(older[2])])
    one = answer(runs[:1])
    assert one.endswith("With one seed this is not yet a verdict: the intervals cover example noise only, not the "
                        "variation from seed to seed; run 3 or more seeds (--seeds 0,1,2).")
    even = [fake_run(tmp_path / "even", 0, {m.name: 20 for m in PLAN} | {"Ens*2": 20})]
    assert answer([read_run(d) for d in even]).startswith("No student or ensemble beat the teacher beyond noise (the "
                                                          "best, BAN-1: +0.00 points of error")
