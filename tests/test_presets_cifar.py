"""The CIFAR presets: the paper's recipe (Section 4), every row of Tables 1 and 2, the CPU quick preset; their
models and stated costs; and `banets run` of shrunk rows end to end on fake data in the official formats."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from banets.cli import main
from banets.config import load_config, preset_names
from banets.data.fake_cifar import write_fake_cifar10
from banets.experiment import model_factory
from banets.generations import plan_ensembles, plan_generations
from test_cifar import make_cifar100

pytestmark = pytest.mark.filterwarnings("ignore:.*differ from the official md5 sums:UserWarning")  # fake data
TABLE1 = [f"table1_wrn_28_{k}" for k in (1, 2, 5, 10)] + [f"table1_densenet_{g}" for g in ("112_33", "90_60", "80_80", "80_120")]
TABLE2 = [f"table2_densenet_{g}" for g in ("112_33", "90_60", "80_80", "80_120")]
CIFAR_PRESETS = ["cifar_paper", "cifar100_paper", "cifar10_quick", *TABLE1, *TABLE2]
CLASSES = {"cifar10": 10, "cifar100": 100}
FAST = ["--set", "optim.progress=none", "--set", "optim.epochs=1", "--set", "data.val_size=10", "--set", "data.batch_size=8",
        "--set", "data.eval_batch_size=16"]


def build(config) -> torch.nn.Module:
    """The preset's model, constructed on the meta device (no weights allocated)."""
    with torch.device("meta"):
        return model_factory(config.model.name, config.model.options, {"num_classes": CLASSES[config.data.dataset]})()


def plan_names(config) -> list[str]:
    plan = plan_generations(config.ban)
    return [s.name for s in plan] + list(plan_ensembles(plan, config.ban))


def test_every_table_row_and_the_quick_preset_are_listed(capsys):
    assert set(CIFAR_PRESETS) <= set(preset_names())
    assert main(["presets"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    for name in CIFAR_PRESETS:
        assert re.search(r"\d+ trainings x \d+ ep", listed[name]), listed[name]


@pytest.mark.parametrize("name", CIFAR_PRESETS)
def test_preset_builds_its_model_with_the_dataset_classes_and_states_its_flops(name):
    config = load_config(name)
    model = build(config)
    assert model.classifier.out_features == CLASSES[config.data.dataset]
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.empty(1, 3, 32, 32, device="meta"))
    stated = re.search(r"(\d+) trainings x (\d+) ep.*?([\d.]+) GFLOP/img", config.cost)
    assert stated, f"{name}: cost {config.cost!r} states no trainings x epochs and GFLOP/img"
    trainings, epochs, gflops = int(stated[1]), int(stated[2]), float(stated[3])
    plan = plan_generations(config.ban)
    assert trainings == len(plan) and epochs == config.optim.epochs
    forward = counter.get_total_flops()
    assert gflops == pytest.approx(forward / 1e9, abs=0.006)
    total = re.search(r"([\d.]+) PFLOP", config.cost)
    if total:  # a training step counted as 3 forwards, plus 1 for each distilled student's teacher
        forwards = 3 * len(plan) + sum(spec.teacher is not None for spec in plan)
        expected = (50_000 - config.data.val_size) * epochs * forward * forwards / 1e15
        decimals = len(total[1].partition(".")[2])
        assert float(total[1]) == pytest.approx(expected, abs=0.5 * 10**-decimals), f"{name}: {expected:.4g} PFLOP"


@pytest.mark.parametrize("name", [*TABLE1, *TABLE2])
def test_table_rows_follow_the_paper_recipe(name):
    """Section 4: Wide-ResNet's CIFAR setting, no mean/std normalisation, dropout for Wide-ResNets only."""
    config = load_config(name)
    optim, data = config.optim, config.data
    assert (optim.optimizer, optim.lr, optim.momentum, optim.nesterov, optim.weight_decay) == ("sgd", 0.1, 0.9, True, 5e-4)
    assert (optim.epochs, optim.schedule, optim.milestones, optim.gamma) == (200, "multistep", [0.3, 0.6, 0.8], 0.2)
    assert (optim.precision, optim.channels_last, data.batch_size, data.augment, data.normalize) == ("auto", True, 128, True, False)
    assert (config.model.options.get("dropout", 0) > 0) == name.startswith("table1_wrn")


def test_table_rows_train_the_paper_columns():
    for name in TABLE1:
        assert load_config(name).data.dataset == "cifar10"
        assert plan_names(load_config(name)) == ["teacher", "BAN-1"]
    for name in TABLE2:
        assert load_config(name).data.dataset == "cifar100"
        assert plan_names(load_config(name)) == ["teacher", "BAN-1", "BAN-2", "BAN-3", "BAN+L", "CWTM", "DKPP", "Ens*2", "Ens*3"]


def test_quick_preset_runs_ban_l_next_to_ban_and_the_control_on_a_subset():
    config = load_config("cifar10_quick")
    assert plan_names(config) == ["teacher", "BAN-1", "BAN-2", "BAN+L", "CE", "Ens*2", "T+CE"]
    assert config.ban.loss == "ban" and config.data.train_subset == 5000 and config.model.options == {"width": 32}
    assert config.device == "cpu" and config.data.dataset == "cifar10" and config.optim.channels_last


def test_the_regime_presets_differ_only_in_augmentation_and_weight_decay():
    regularised, overfit = load_config("cifar10_regime"), load_config("cifar10_regime_overfit")
    for config in (regularised, overfit):
        assert plan_names(config) == ["teacher", "BAN-1", "BAN+L", "CE", "T+CE"]
    assert (regularised.data.augment, regularised.optim.weight_decay) == (True, 5e-4)
    assert (overfit.data.augment, overfit.optim.weight_decay) == (False, 0.0)
    assert replace(overfit, name=regularised.name, description=regularised.description,
                   data=replace(overfit.data, augment=True),
                   optim=replace(overfit.optim, weight_decay=5e-4)) == regularised


def run_and_read(args: list[str], out, capsys) -> tuple[dict, str]:
    assert main(["run", *args, *FAST, "--seeds", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    return json.loads((out / "seed-0" / "results.json").read_text()), printed


def test_table2_row_runs_end_to_end_on_fake_cifar100(tmp_path, capsys):
    make_cifar100(tmp_path / "data")
    tiny = ["--set", "model.options={depth: 10, growth_rate: 4}", "--set", "ban.generations=2"]
    results, printed = run_and_read(["table2_densenet_80_80", "--data-dir", str(tmp_path / "data"), *tiny], tmp_path / "out", capsys)
    models = ["teacher", "BAN-1", "BAN-2", "BAN+L", "CWTM", "DKPP", "Ens*2"]
    assert [row["model"] for row in results["val"]] == models
    assert set(results) == {"val", "test", "train"}
    assert all(0 <= row["error"] <= 100 for row in results["val"])
    assert [line.split()[0] for line in printed.splitlines()[3:3 + len(models)]] == models  # the summary table
    seed_dir = tmp_path / "out" / "seed-0"
    assert (seed_dir / "config.yaml").is_file() and (tmp_path / "out" / "report" / "report.md").is_file()
    manifest = json.loads((seed_dir / "manifest.json").read_text())
    assert manifest["models"]["CWTM"]["status"] == "done" and manifest["models"]["DKPP"]["teacher"] == "teacher"
    test_labels = torch.load(seed_dir / "predictions" / "test.pt", weights_only=True)["teacher"]["labels"]
    assert len(test_labels) == 12  # the whole fake test set, evaluated once


def test_quick_preset_runs_end_to_end_on_fake_cifar10(tmp_path, capsys):
    write_fake_cifar10(tmp_path / "data", per_batch=8)
    tiny = ["--set", "model.options={width: 4}", "--set", "data.train_subset=24"]
    results, printed = run_and_read(["cifar10_quick", "--data-dir", str(tmp_path / "data"), *tiny], tmp_path / "out", capsys)
    assert [row["model"] for row in results["train"]] == ["teacher", "BAN-1", "BAN-2", "BAN+L", "CE", "Ens*2", "T+CE"]
    assert "\nCE        no teacher, another seed" in printed
