"""The banets command: exit codes, one-line errors, the demo and run/report round trip."""

import re
import subprocess
import sys

import pytest

from banets.cli import main
from tiny import tiny

QUICK = tiny(epochs=2, generations=2, seeds=None, extra_losses=True, controls=True)


def test_demo_prints_one_compact_table_a_legend_and_verdicts(capsys, tmp_path):
    assert main(["demo", *QUICK, "--seeds", "0", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    table = out[out.index("demo (small_cnn), val split"):out.index("\nreport, plots")]
    lines = table.splitlines()
    assert lines[0].endswith("n=1 seed") and lines[1].split()[:3] == ["model", "what", "it"]
    assert [line.split()[0] for line in lines[3:12]] == ["teacher", "BAN-1", "BAN-2", "BAN+L", "LS", "CE", "Ens*2", "T+CE",
                                                         "Legend:"]
    assert max(len(line) for line in lines) <= 100
    assert "±" not in table  # one seed: no spread to show
    assert "Legend: " in table and "Ens*k averages generations 1..k" in table and "Verdict: (one seed: the intervals cover" in table
    assert re.search(r"BAN-1: [+-]\d+\.\d\d points of error \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\] vs the teacher", table)
    assert f"{tmp_path / 'demo'}/report/report.md" in out and (tmp_path / "demo" / "report" / "report.md").is_file()
    assert (tmp_path / "demo" / "seed-0" / "manifest.json").is_file()


def test_run_then_report_merges_run_directories(tmp_path, capsys):
    for seed in (0, 1):
        assert main(["run", "demo", *QUICK, "--seeds", str(seed), "--out", str(tmp_path / f"s{seed}")]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "merged")]) == 0
    out = capsys.readouterr().out
    assert "mean ± SD over 2 seeds" in out
    report = (tmp_path / "merged" / "report.md").read_text()
    assert "| demo | BAN-1 | gen 1, ban from teacher | 2 |" in report
    for name in ("report.md", "report-val.csv", "report-test.csv", "report.json"):
        assert (tmp_path / "merged" / name).is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "demo", "--set", "optim.lrr=0.1"], "unknown config key 'optim.lrr'; did you mean optim.lr"),
        (["run", "no-such-preset"], "no preset 'no-such-preset'"),
        (["run", "demo", "--set", "model.name=resnet9000"], "unknown model 'resnet9000'"),
        (["run", "demo", "--set", "ban.ensembles={T+CE: [teacher, CEE]}"], "ensemble 'T+CE' names CEE; the trained models are teacher"),
        (["run", "demo", "--set", "ban.ensembles={BAN-1: [teacher, CE]}"], "ensemble name 'BAN-1' is already taken"),
        (["resume", "/nonexistent/run"], "/nonexistent/run is not a folder; pass the --out of a run"),
        (["report", "/nonexistent/run"], "no seed directories"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(argv, message, capsys, tmp_path):
    if argv[0] == "run":
        argv = [*argv, "--out", str(tmp_path / "out")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("banets: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert not list(tmp_path.glob("**/checkpoints/*.pt"))  # refused before anything trained


def test_console_entry_point_exit_code():
    done = subprocess.run([sys.executable, "-m", "banets", "run", "demo", "--set", "optim.epochs=oops"],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert "optim.epochs expects int" in done.stderr


def test_presets_and_models_are_listed(capsys):
    assert main(["presets"]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["models", "resnet*"]) == 0
    assert "resnet20" in capsys.readouterr().out
    assert main(["models", "wrn_28_1"]) == 0  # one name: that model, with its options
    assert capsys.readouterr().out.splitlines()[-1].startswith("options: depth=28, widen_factor=1")
    assert main(["models", "wrn_28"]) == 0  # a bare word that names no model: the names holding it
    assert {line.split()[0] for line in capsys.readouterr().out.splitlines()} == {"wrn_28_1", "wrn_28_2", "wrn_28_5", "wrn_28_10"}



def test_fp16_runs_on_a_cpu(tmp_path, capsys):
    """fp16 is valid on a CPU (autocast and GradScaler("cpu")), if slow: a run, not an error."""
    out = tmp_path / "fp16"
    assert main(["run", "demo", *QUICK, "--set", "optim.precision=fp16", "--set", "ban.generations=0", "--set",
                 "ban.extra_losses=[]", "--set", "ban.controls={}", "--seeds", "0", "--out", str(out)]) == 0
    assert "error" not in capsys.readouterr().err
    assert "precision: fp16" in (out / "seed-0" / "config.yaml").read_text()
