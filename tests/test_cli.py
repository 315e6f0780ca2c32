"""The banets command: exit codes, one-line errors, the demo and run/report round trip."""

import subprocess
import sys

import pytest

from banets.cli import main

QUICK = ["--set", "optim.epochs=2", "--set", "ban.generations=2", "--set", "model.options.width=4", "--set", "optim.progress=none"]


def test_demo_runs_offline_and_prints_the_table(capsys):
    assert main(["demo", *QUICK]) == 0
    out = capsys.readouterr().out
    for row in ("| demo | teacher |", "| demo | BAN-1 |", "| demo | BAN-2 |", "| demo | BAN+L |", "| demo | Ens*2 |"):
        assert row in out
    assert "## test" in out and "demo finished" in out


def test_run_then_report_merges_run_directories(tmp_path, capsys):
    for seed in (0, 1):
        assert main(["run", "demo", *QUICK, "--seeds", str(seed), "--out", str(tmp_path / f"s{seed}")]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "merged")]) == 0
    out = capsys.readouterr().out
    assert "| demo | BAN-1 | ban | 2 |" in out
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
        (["resume", "/nonexistent/run"], "holds no run"),
        (["report", "/nonexistent/run"], "no run directories"),
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
