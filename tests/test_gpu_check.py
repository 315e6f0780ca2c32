"""bench/gpu_check.py in its CPU smoke mode: every part runs and reports, and a failed check fails the script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_smoke_run_passes_every_part_and_writes_the_report(tmp_path):
    result = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = report["rows"]
    assert all(row["ok"] for row in rows)
    assert {row["part"] for row in rows} == {"1 steps", "2 speed", "3 losses", "4 end to end", "5 cuda paths"}
    checks = {row["check"] for row in rows}
    assert {"resnet8 bf16", "resnet8 fp16", "small_cnn fp16"} <= checks
    assert {f"resnet8 {mode} {kind}" for mode in ("eager", "compiled") for kind in ("bare", "engine", "distill")} <= checks
    assert {"lstm_lm engine", "lstm_lm distill", "ce", "ban", "dkpp"} <= checks
    assert {"run, killed after epoch 1", "resume", "resume continued at epoch 2", "teacher epoch 2", "BAN-1 epoch 2"} <= checks
    assert {"LSTM in float32 under bf16 autocast", "no host sync: DKPP permutation", "teacher cache budget"} <= checks
    assert all(row["numbers"]["images_per_s"] > 0 for row in rows if row["check"].endswith(" engine") and row["part"] == "2 speed"
               and "lstm" not in row["check"])
    assert report["environment"]["precision_auto"] == "fp32"
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| 4 end to end | resume | pass |" in table and table in result.stdout + "\n"
    assert table.rstrip().endswith(f"{len(rows)} passed, 0 failed")


def test_a_failed_check_fails_the_script(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_check

    compare, calls = gpu_check.loss_and_grad, []

    def off_on_the_device(name, student, teacher, labels, device):
        """BAN's value 0.1% off in its first call, the device's (in smoke mode the device is the CPU too)."""
        value, grad = compare(name, student, teacher, labels, device)
        calls.append(name)
        return (value * 1.001, grad) if calls.count("ban") == 1 and name == "ban" else (value, grad)

    monkeypatch.setattr(gpu_check, "loss_and_grad", off_on_the_device)
    assert gpu_check.main(["--smoke", "--parts", "3", "--out", str(tmp_path)]) == 1
    rows = {row["check"]: row for row in json.loads((tmp_path / "gpu_check.json").read_text())["rows"]}
    assert not rows["ban"]["ok"] and rows["ban"]["numbers"]["value_error"] > 5e-4
    assert all(row["ok"] for check, row in rows.items() if check != "ban")
