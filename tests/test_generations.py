"""The generation driver (Section 3.1) and the ``born_again`` API."""

import pytest
import torch

from banets.engine import TrainConfig
from banets.ensemble import Ensemble
from banets.generations import born_again, plan_ensembles, plan_generations
from banets.models import create_model


def flat_params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_plan_orders_teacher_generations_students_and_controls():
    plan = plan_generations(3, "ban", seed=5, extra_losses=["ban+l", "cwtm"], controls={"LS": {"label_smoothing": 0.1}})
    assert [s.name for s in plan] == ["teacher", "BAN-1", "BAN-2", "BAN-3", "BAN+L", "CWTM", "LS"]
    assert [s.teacher for s in plan] == [None, "teacher", "BAN-1", "BAN-2", "teacher", "teacher", None]
    assert [s.generation for s in plan[:4]] == [0, 1, 2, 3]
    seeds = [s.seed for s in plan]
    assert len(set(seeds)) == len(seeds) and seeds[0] == 5
    assert plan_ensembles(plan) == {"Ens*2": ["BAN-1", "BAN-2"], "Ens*3": ["BAN-1", "BAN-2", "BAN-3"]}
    with_teacher = plan_ensembles(plan, include_teacher=True)
    assert with_teacher["T+Ens*3"] == ["teacher", "BAN-1", "BAN-2"]


def test_each_generation_is_taught_by_a_frozen_copy_of_the_previous(blobs, tiny_config, mlp_fn):
    """The teacher runs in eval mode without gradients, is not the student, and its weights never change."""
    seen = []

    def model_fn():
        model = mlp_fn()
        model.register_forward_hook(lambda m, i, o: seen.append((id(m), m.training, torch.is_grad_enabled())))
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
        def on_finished(self, spec, trainer): pass

    result = born_again(model_fn, train, val, generations=2, config=tiny_config, batch_size=64, store=Recorder())
    teacher_final = flat_params(result.models["teacher"])
    assert all(torch.equal(s, teacher_final) for s in snapshots["BAN-1"])
    assert all(torch.equal(s, flat_params(result.models["BAN-1"])) for s in snapshots["BAN-2"])
    student_calls = [(t, g) for (_, t, g) in seen]
    assert (False, False) in student_calls  # the frozen teacher: eval mode, no grad
    assert not any(t and not g for t, g in student_calls)  # nothing trains without gradients


def test_generations_get_distinct_recorded_seeds_and_distinct_weights(blobs, mlp_fn):
    train, val, _ = blobs
    result = born_again(mlp_fn, train, val, generations=2, config=TrainConfig(epochs=0, progress="none"))
    seeds = {s.name: s.seed for s in result.plan}
    assert len(set(seeds.values())) == 3
    assert not torch.equal(flat_params(result.models["teacher"]), flat_params(result.models["BAN-1"]))


def test_init_from_teacher_starts_generation_one_from_the_teacher(blobs, mlp_fn):
    train, val, _ = blobs
    config = TrainConfig(epochs=0, progress="none")
    result = born_again(mlp_fn, train, val, generations=2, init_from_teacher=True, config=config)
    assert torch.equal(flat_params(result.models["teacher"]), flat_params(result.models["BAN-1"]))
    assert not torch.equal(flat_params(result.models["BAN-1"]), flat_params(result.models["BAN-2"]))


def test_same_seed_same_models_on_cpu(blobs, tiny_config, mlp_fn):
    train, val, _ = blobs
    runs = [born_again(mlp_fn, train, val, generations=1, config=tiny_config, seed=3) for _ in range(2)]
    for name in ("teacher", "BAN-1"):
        assert torch.equal(flat_params(runs[0].models[name]), flat_params(runs[1].models[name]))


def test_students_learn_and_results_cover_models_and_ensembles(blobs, mlp_fn):
    train, val, test = blobs
    config = TrainConfig(epochs=8, lr=0.1, weight_decay=1e-4, progress="none")
    result = born_again(mlp_fn, train, val, test, generations=2, extra_losses=["cwtm", "dkpp"], config=config)
    rows = {r["model"]: r for r in result.rows("val")}
    assert set(rows) == {"teacher", "BAN-1", "BAN-2", "CWTM", "DKPP", "Ens*2"}
    assert all(r["error"] < 25.0 for r in rows.values()), rows  # chance is 75%
    assert rows["BAN-2"]["agreement"] > 80.0
    assert set(result.predictions) == {"val", "test"}
    assert len(result.predictions["test"]["Ens*2"].labels) == 128


def test_named_ensembles_average_any_trained_models(blobs, tiny_config, mlp_fn):
    train, val, _ = blobs
    result = born_again(mlp_fn, train, val, generations=1, controls={"CE": {}}, ensembles={"T+CE": ["teacher", "CE"]},
                        config=tiny_config)
    assert result.ensembles == {"T+CE": ["teacher", "CE"]}  # one generation: no Ens*k
    x = val[0]
    with torch.no_grad():
        average = Ensemble([result.models["teacher"].eval(), result.models["CE"].eval()])(x)
    got = result.predictions["val"]["T+CE"]
    assert torch.equal(got.pred, average.argmax(-1))
    assert torch.allclose(got.nll, -average.gather(1, val[1][:, None]).squeeze(1), atol=1e-6)
    assert {r["model"]: r["loss"] for r in result.rows("val")}["T+CE"] == "ensemble"


def test_pretrained_teacher_is_used_as_given(blobs, tiny_config, mlp_fn):
    train, val, _ = blobs
    teacher = mlp_fn()
    before = flat_params(teacher).clone()
    result = born_again(mlp_fn, train, val, generations=1, teacher=teacher, config=tiny_config)
    assert torch.equal(flat_params(result.models["teacher"]), before)


def test_teacher_of_another_architecture(blobs, tiny_config, mlp_fn):
    train, val, _ = blobs
    wide = lambda: create_model("mlp", in_features=8, num_classes=4, hidden=(64, 64))  # noqa: E731
    result = born_again(mlp_fn, train, val, generations=1, teacher_fn=wide, config=tiny_config)
    sizes = {name: sum(p.numel() for p in m.parameters()) for name, m in result.models.items()}
    assert sizes["teacher"] > sizes["BAN-1"]


def test_teacher_student_class_mismatch_is_a_clear_error(blobs, tiny_config, mlp_fn):
    train, val, _ = blobs
    five_classes = lambda: create_model("mlp", in_features=8, num_classes=5, hidden=(16,))  # noqa: E731
    with pytest.raises(ValueError, match="teacher outputs .* but student outputs"):
        born_again(mlp_fn, train, val, generations=1, teacher_fn=five_classes, config=tiny_config)


def test_born_again_accepts_dataloaders_and_datasets(blobs, tiny_config, mlp_fn):
    from torch.utils.data import DataLoader, TensorDataset

    train, val, _ = blobs
    loader = DataLoader(TensorDataset(*train), batch_size=64, shuffle=True)
    result = born_again(mlp_fn, loader, TensorDataset(*val), generations=1, config=tiny_config)
    assert len(result.predictions["val"]["BAN-1"].labels) == 128
