"""The plan and the generation driver (Section 3.1), through the Python API ``born_again``."""

import pytest
import torch

from banets import born_again
from banets.config import BornAgainConfig, TrainConfig
from banets.data.registry import Data
from banets.ensemble import average_log_probs
from banets.generations import Driver, Role, Setup, plan_ensembles, plan_generations
from banets.models import create_model


def flat_params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_plan_orders_teacher_generations_students_and_controls():
    ban = BornAgainConfig(generations=3, extra_losses=["ban+l", "cwtm"], controls={"LS": {"label_smoothing": 0.1}})
    plan = plan_generations(ban, seed=5)
    assert [s.name for s in plan] == ["teacher", "BAN-1", "BAN-2", "BAN-3", "BAN+L", "CWTM", "LS"]
    assert [s.teacher for s in plan] == [None, "teacher", "BAN-1", "BAN-2", "teacher", "teacher", None]
    assert [s.role for s in plan] == [Role.TEACHER, *[Role.GENERATION] * 3, Role.STUDENT, Role.STUDENT, Role.CONTROL]
    assert [s.generation for s in plan[:4]] == [0, 1, 2, 3]
    seeds = [s.seed for s in plan]
    assert len(set(seeds)) == len(seeds) and seeds[0] == 5
    assert plan_ensembles(plan, ban) == {"Ens*2": ["BAN-1", "BAN-2"], "Ens*3": ["BAN-1", "BAN-2", "BAN-3"]}
    with_teacher = plan_ensembles(plan, BornAgainConfig(generations=3, ensemble_teacher=True))
    assert with_teacher["T+Ens*3"] == ["teacher", "BAN-1", "BAN-2"]


def test_each_generation_is_taught_by_a_frozen_copy_of_the_previous(blobs, tiny_config, mlp_fn):
    """The teacher runs in eval mode without gradients, is not the student, and its weights never change."""
    seen = []

    def model_fn():
        model = mlp_fn()
        model.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
        return model

    train, val, _ = blobs
    snapshots = {}

    class Recorder:
        def finished(self, spec): return None
        def progress(self, spec): return None
        def on_epoch_end(self, spec, trainer, record):
            if trainer.teacher is not None:
                snapshots.setdefault(spec.name, []).append(flat_params(trainer.teacher).clone())
                assert trainer.teacher is not trainer.model
        def on_finished(self, spec, model, history): pass

    from banets.data.batches import TensorBatches

    data = Data(TensorBatches(*train, batch_size=64, shuffle=True), TensorBatches(*val, batch_size=64))
    driver = Driver(Setup(model_fn, data), tiny_config, BornAgainConfig(generations=2), torch.device("cpu"), store=Recorder())
    models = driver.run(plan_generations(driver.ban))
    assert all(torch.equal(s, flat_params(models["teacher"])) for s in snapshots["BAN-1"])
    assert all(torch.equal(s, flat_params(models["BAN-1"])) for s in snapshots["BAN-2"])
    assert (False, False) in seen  # the frozen teacher: eval mode, no grad
    assert not any(t and not g for t, g in seen)  # nothing trains without gradients


def test_generations_get_distinct_recorded_seeds_and_distinct_weights(blobs, tiny_config, mlp_fn):
    train, val, _ = blobs
    result = born_again(mlp_fn, train, val, ban=BornAgainConfig(generations=2), optim=tiny_config).results[0]
    seeds = {s.name: s.seed for s in result.plan}
    assert len(set(seeds.values())) == 3
    assert not torch.equal(flat_params(result.models["teacher"]), flat_params(result.models["BAN-1"]))


def test_init_from_teacher_starts_generation_one_from_the_teacher(mlp_fn, tiny_config):
    driver = Driver(Setup(mlp_fn, Data([], [])), tiny_config, BornAgainConfig(generations=2, init_from_teacher=True),
                    torch.device("cpu"))
    plan = plan_generations(driver.ban)
    driver.models["teacher"] = mlp_fn()
    assert torch.equal(flat_params(driver.models["teacher"]), flat_params(driver.build(plan[1])))
    assert not torch.equal(flat_params(driver.models["teacher"]), flat_params(driver.build(plan[2])))


def test_same_seed_same_models_on_cpu(blobs, tiny_config, mlp_fn):
    train, val, _ = blobs
    runs = [born_again(mlp_fn, train, val, ban=BornAgainConfig(generations=1), optim=tiny_config, seeds=3) for _ in range(2)]
    for name in ("teacher", "BAN-1"):
        assert torch.equal(flat_params(runs[0].models[name]), flat_params(runs[1].models[name]))


def test_students_learn_and_rows_cover_models_and_ensembles(blobs, mlp_fn):
    train, val, test = blobs
    optim = TrainConfig(epochs=8, lr=0.1, weight_decay=1e-4, progress="none")
    run = born_again(mlp_fn, train, val, test, ban=BornAgainConfig(generations=2, extra_losses=["cwtm", "dkpp"]), optim=optim)
    rows = {r["model"]: r for r in run.rows("val")}
    assert set(rows) == {"teacher", "BAN-1", "BAN-2", "CWTM", "DKPP", "Ens*2"}
    assert all(r["error"] < 25.0 for r in rows.values()), rows  # chance is 75%
    assert rows["BAN-2"]["agreement"] > 80.0 and rows["BAN-2"]["agreement_with"] == "BAN-1"
    assert set(run.results[0].predictions) == {"val", "test", "train"}  # training examples: the teacher's gap
    assert len(run.results[0].predictions["test"]["Ens*2"].labels) == 128


def test_several_seeds_give_a_mean_an_sd_and_an_interval(blobs, tiny_config, mlp_fn):
    train, val, _ = blobs
    run = born_again(mlp_fn, train, val, ban=BornAgainConfig(generations=1), optim=tiny_config, seeds=[0, 1])
    (row,) = [r for r in run.rows("val") if r["model"] == "BAN-1"]
    errors = [run.results[s].predictions["val"]["BAN-1"].error() for s in (0, 1)]
    assert row["seeds"] == 2 and row["error"] == pytest.approx(sum(errors) / 2)
    assert row["delta_low"] <= row["delta"] <= row["delta_high"]


def test_named_ensembles_average_any_trained_models(blobs, tiny_config, mlp_fn):
    train, val, _ = blobs
    ban = BornAgainConfig(generations=1, controls={"CE": {}}, ensembles={"T+CE": ["teacher", "CE"]})
    run = born_again(mlp_fn, train, val, ban=ban, optim=tiny_config)
    result = run.results[0]
    assert result.ensembles == {"T+CE": ["teacher", "CE"]}  # one generation: no Ens*k
    with torch.no_grad():
        members = [result.models[m].eval()(val[0]).log_softmax(-1) for m in ("teacher", "CE")]
    average = average_log_probs(members)
    got = result.predictions["val"]["T+CE"]
    assert torch.equal(got.pred, average.argmax(-1))
    assert torch.allclose(got.nll, -average.gather(1, val[1][:, None]).squeeze(1), atol=1e-6)
    assert {r["model"]: (r["loss"], r["role"]) for r in run.rows("val")}["T+CE"] == ("ensemble", "ensemble")


def test_pretrained_teacher_is_used_as_given(blobs, tiny_config, mlp_fn):
    train, val, _ = blobs
    teacher = mlp_fn()
    before = flat_params(teacher).clone()
    run = born_again(mlp_fn, train, val, ban=BornAgainConfig(generations=1), teacher=teacher, optim=tiny_config)
    assert torch.equal(flat_params(run.models["teacher"]), before)
    assert run.results[0].histories["teacher"] == []


def test_teacher_of_another_architecture(blobs, tiny_config, mlp_fn):
    train, val, _ = blobs
    wide = lambda: create_model("mlp", in_features=8, num_classes=4, hidden=(64, 64))  # noqa: E731
    run = born_again(mlp_fn, train, val, ban=BornAgainConfig(generations=1), teacher_fn=wide, optim=tiny_config)
    sizes = {name: sum(p.numel() for p in m.parameters()) for name, m in run.models.items()}
    assert sizes["teacher"] > sizes["BAN-1"]


def test_born_again_accepts_dataloaders_datasets_dicts_and_numpy(blobs, tiny_config, mlp_fn):
    from torch.utils.data import DataLoader, TensorDataset

    train, val, _ = blobs
    loader = DataLoader(TensorDataset(*train), batch_size=64, shuffle=True)
    run = born_again(mlp_fn, loader, TensorDataset(*val), ban=BornAgainConfig(generations=1), optim=tiny_config)
    assert len(run.results[0].predictions["val"]["BAN-1"].labels) == 128
    dicts = [{"image": train[0][i:i + 64], "label": train[1][i:i + 64]} for i in range(0, 256, 64)]
    numpy_val = (val[0].numpy().astype("float64"), val[1].numpy())
    run = born_again(mlp_fn, dicts, numpy_val, ban=BornAgainConfig(generations=1), optim=tiny_config)
    assert run.rows("val")[0]["error"] < 75.0


def test_auto_generations_stop_when_the_last_did_not_beat_its_teacher_and_say_why(blobs, tiny_config, mlp_fn, tmp_path,
                                                                                 monkeypatch):
    """BAN-1 beat the teacher beyond noise, BAN-2 did not beat BAN-1: BAN-3 and later are never trained, the ensembles
    hold trained generations only, the seed directory and the report say why, and a resume trains nothing more."""
    gains = {("BAN-1", "teacher"): (-2.0, -3.0, -1.0), ("BAN-2", "BAN-1"): (0.25, -0.5, 1.0)}
    asked = []

    def gain(self, student, teacher):
        asked.append((student, teacher))
        return gains[(student, teacher)]

    monkeypatch.setattr(Driver, "gain", gain)
    train, val, _ = blobs
    ban = BornAgainConfig(generations="auto", max_generations=4, controls={"CE": {}})
    run = born_again(mlp_fn, train, val, ban=ban, optim=tiny_config, out=tmp_path / "run")
    assert set(run.models) == {"teacher", "BAN-1", "BAN-2", "CE"}
    assert asked == [("BAN-1", "teacher"), ("BAN-2", "BAN-1")]
    assert run.results[0].ensembles == {"Ens*2": ["BAN-1", "BAN-2"], "T+CE": ["teacher", "CE"]}
    reason = ("ban.generations=auto stopped after BAN-2: it did not beat BAN-1 on validation beyond noise "
              "(+0.25 points of error [-0.5, +1])")
    manifest = (tmp_path / "run" / "seed-0" / "manifest.json").read_text()
    assert reason in manifest and '"BAN-3"' not in manifest
    assert f"- seed-0: {reason}" in (tmp_path / "run" / "report" / "report.md").read_text()
    again = born_again(mlp_fn, train, val, ban=ban, optim=tiny_config, out=tmp_path / "run", resume=True)
    assert set(again.models) == {"teacher", "BAN-1", "BAN-2", "CE"}
    assert torch.equal(flat_params(again.models["BAN-2"]), flat_params(run.models["BAN-2"]))


def test_the_gain_that_decides_is_the_paired_validation_difference_with_its_interval(blobs, tiny_config, mlp_fn):
    train, val, _ = blobs
    run = born_again(mlp_fn, train, val, ban=BornAgainConfig(generations=1), optim=tiny_config)
    data = Data(train=[], val=[val])
    driver = Driver(Setup(mlp_fn, data), tiny_config, BornAgainConfig(), torch.device("cpu"),
                    models={"trained": run.models["teacher"], "untrained": mlp_fn()})
    mean, low, high = driver.gain("trained", "untrained")
    assert high < 0 and low <= mean <= high  # a trained model beats an untrained one beyond noise
    errors = [((m(val[0]).argmax(1) != val[1]).double().mean().item() * 100) for m in
              (run.models["teacher"], driver.models["untrained"])]
    assert mean == pytest.approx(errors[0] - errors[1])
    assert driver.gain("trained", "trained") == (0.0, 0.0, 0.0)


def test_a_plain_control_brings_the_plain_ensemble_of_equal_cost_unless_turned_off():
    controls = {"CE": {}, "LS": {"label_smoothing": 0.1}}
    plan = plan_generations(BornAgainConfig(generations=1, controls=controls))
    assert plan_ensembles(plan, BornAgainConfig(generations=1, controls=controls)) == {"T+CE": ["teacher", "CE"]}
    off = BornAgainConfig(generations=1, controls=controls, plain_ensemble=False)
    assert plan_ensembles(plan, off) == {}
    named = BornAgainConfig(generations=1, controls=controls, ensembles={"T+CE": ["teacher", "LS"]})
    assert plan_ensembles(plan, named) == {"T+CE": ["teacher", "LS"]}  # a name you gave stays yours


def test_a_finished_auto_run_resumes_to_nothing(tmp_path, monkeypatch):
    """Where ban.generations=auto stopped is recorded; a resume of the finished run neither trains nor evaluates."""
    from banets.cli import main
    from tiny import tiny

    monkeypatch.setattr(Driver, "gain", lambda self, student, teacher: (0.5, -1.0, 2.0))  # BAN-1 did not beat it
    out = tmp_path / "run"
    assert main(["run", "demo", *tiny(), "--set", "ban.generations=auto", "--set", "ban.max_generations=3",
                 "--out", str(out)]) == 0
    seed = out / "seed-0"
    assert '"after": "BAN-1"' in (seed / "manifest.json").read_text() and not (seed / "checkpoints" / "BAN-2.pt").exists()
    results = (seed / "results.json").stat().st_mtime_ns
    assert main(["resume", str(out)]) == 0
    assert (seed / "results.json").stat().st_mtime_ns == results  # nothing to do: not evaluated again
