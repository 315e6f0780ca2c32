"""The training engine: per-epoch seeding and resume, divergence, schedules, evaluation."""

import pytest
import torch

from banets import distributed, losses
from banets.data.batches import TensorBatches
from banets.teacher import FrozenTeacher
from banets.engine import (
    DivergedError,
    TrainConfig,
    Trainer,
    autocast_dtype,
    choose_precision,
    device_precision,
    evaluate,
    make_scheduler,
)


def make_trainer(mlp_fn, config, seed=0, loss="ce"):
    torch.manual_seed(seed)
    return Trainer(mlp_fn(), losses.get(loss), config, seed=seed, device=torch.device("cpu"))


class Crash(Exception):
    pass


def crash_after(epochs):
    """A callback that stops training after ``epochs`` epochs, as a kill between epochs would."""

    def crash(trainer, record):
        if trainer.epoch == epochs:
            raise Crash

    return crash


def test_resume_from_epoch_state_is_bitwise_identical(blobs, mlp_fn):
    train, val, _ = blobs
    batches = TensorBatches(*train, batch_size=32, shuffle=True)
    config = TrainConfig(epochs=4, lr=0.1, milestones=[0.5], progress="none")
    straight = make_trainer(mlp_fn, config)
    straight.fit(batches, TensorBatches(*val, batch_size=64))

    interrupted = make_trainer(mlp_fn, config)
    interrupted.callbacks.append(crash_after(2))
    with pytest.raises(Crash):
        interrupted.fit(batches, TensorBatches(*val, batch_size=64))
    state = interrupted.state_dict()
    resumed = make_trainer(mlp_fn, config, seed=0)
    resumed.load_state_dict(state)
    resumed.fit(batches, TensorBatches(*val, batch_size=64))

    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert [h["val_error"] for h in straight.history] == [h["val_error"] for h in resumed.history]


def test_diverging_loss_stops_with_a_clear_error(blobs, mlp_fn):
    train, _, _ = blobs
    config = TrainConfig(epochs=2, lr=1e12, momentum=0.0, weight_decay=0.0, progress="none")
    trainer = make_trainer(mlp_fn, config)
    with pytest.raises(DivergedError, match=r"loss became (nan|inf).*lower the learning rate"):
        trainer.fit(TensorBatches(*train, batch_size=32, shuffle=True))
    assert trainer.epoch == 0


def test_multistep_schedule_uses_fractions_of_the_epochs(mlp_fn):
    config = TrainConfig(epochs=10, lr=1.0, milestones=[0.3, 0.6, 0.8], gamma=0.2)
    optimizer = torch.optim.SGD(mlp_fn().parameters(), lr=1.0)
    scheduler = make_scheduler(optimizer, config)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1, 1, 1, 0.2, 0.2, 0.2, 0.04, 0.04, 0.008, 0.008])


def test_plateau_schedule_cuts_when_perplexity_stalls(blobs, mlp_fn):
    train, val, _ = blobs
    config = TrainConfig(epochs=3, lr=0.01, schedule="plateau", gamma=0.25, plateau_threshold=1e3, progress="none")
    trainer = make_trainer(mlp_fn, config)
    timed = []
    trainer.callbacks.append(lambda t, record: timed.append(record))
    trainer.fit(TensorBatches(*train, batch_size=64), TensorBatches(*val, batch_size=64))
    assert [h["lr"] for h in trainer.history] == pytest.approx([0.01, 0.01, 0.0025])
    assert all(0 < r["seconds"] < 60 for r in timed)  # each epoch's wall clock, validation included, told to the callbacks
    assert not any("seconds" in h for h in trainer.history)  # and kept out of the history that checkpoints hold


def test_evaluate_counts_every_example_once(blobs, mlp_fn):
    _, val, _ = blobs
    predictions = evaluate(mlp_fn(), TensorBatches(*val, batch_size=50), torch.device("cpu"), TrainConfig())
    assert len(predictions.labels) == 128
    assert torch.equal(predictions.labels, val[1])


def test_frozen_parameters_are_left_out_of_the_optimizer(mlp_fn):
    model = mlp_fn()
    model[1].requires_grad_(False)
    trainer = Trainer(model, losses.get("ce"), TrainConfig(), seed=0, device=torch.device("cpu"))
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert id(model[1].weight) not in optimised and id(model[-1].weight) in optimised


# -- mixed precision -----------------------------------------------------------------------------------------


def test_auto_precision_is_bf16_from_ampere_fp16_before_it_and_fp32_off_cuda(monkeypatch):
    assert [choose_precision("auto", "cuda", capability) for capability in ((9, 0), (8, 0), (7, 5), (6, 0))] == \
        ["bf16", "bf16", "fp16", "fp16"]
    assert [choose_precision("auto", device) for device in ("cpu", "mps")] == ["fp32", "fp32"]
    assert choose_precision("bf16", "cuda", (7, 0)) == "bf16" and choose_precision("fp16", "cpu") == "fp16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (7, 0))  # a V100, without a GPU here
    assert device_precision("auto", torch.device("cuda")) == "fp16"
    assert autocast_dtype("auto", torch.device("cuda")) == torch.float16 and autocast_dtype("auto", torch.device("cpu")) is None


def overflow_at(steps, start=0):
    """Cross-entropy that is infinite at the given calls (counted from ``start``): a fake fp16 overflow."""
    calls = iter(range(start, 10**6))

    def loss(student_logits, teacher_logits, labels):
        value = losses.ce(student_logits, teacher_logits, labels)
        return value * float("inf") if next(calls) in steps else value

    return loss


def fp16_trainer(mlp_fn, loss, **options):
    torch.manual_seed(0)
    config = TrainConfig(**{"epochs": 2, "lr": 0.1, "precision": "fp16", "progress": "none", **options})
    return Trainer(mlp_fn(), loss, config, seed=0, device=torch.device("cpu"))


def weights(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_fp16_skips_an_overflowed_step_halves_the_scale_and_trains_on(blobs, mlp_fn):
    (x, y), _, _ = blobs
    trainer = fp16_trainer(mlp_fn, overflow_at({2}))
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() == 2.0**16
    trainer._step(x[:32], y[:32])  # its fp16 gradients overflow at the initial scale: skipped, the scale halves
    assert trainer.scaler.get_scale() == 2.0**15
    before = weights(trainer)
    trainer._step(x[32:64], y[32:64])
    after = weights(trainer)
    assert not any(torch.equal(a, b) for a, b in zip(before, after)) and trainer.scaler.get_scale() == 2.0**15
    trainer._step(x[64:96], y[64:96])  # the loss is inf: no update, the scale halves again
    assert all(torch.equal(a, b) for a, b in zip(after, weights(trainer)))
    assert trainer.scaler.get_scale() == 2.0**14
    trainer._step(x[96:128], y[96:128])
    assert not any(torch.equal(a, b) for a, b in zip(after, weights(trainer)))


def test_fp16_epoch_survives_a_skipped_overflow_but_not_a_run_of_them(blobs, mlp_fn):
    train, _, _ = blobs
    batches = TensorBatches(*train, batch_size=32, shuffle=True)  # 8 steps per epoch
    clean, overflowed = fp16_trainer(mlp_fn, losses.get("ce")), fp16_trainer(mlp_fn, overflow_at({3}))
    clean.fit(batches)
    history = overflowed.fit(batches)
    assert all(0 < record["train_loss"] < 2 for record in history)  # the skipped step is left out of the mean
    assert overflowed.scaler.get_scale() == clean.scaler.get_scale() / 2
    runaway = fp16_trainer(mlp_fn, overflow_at(set(range(12, 100))), epochs=4)  # from epoch 2 on, every step
    with pytest.raises(DivergedError, match=r"loss became inf for more than 10 consecutive steps \(each skipped by "
                                            r"fp16's loss scaler\) at epoch 3 .*optim.precision=fp32"):
        runaway.fit(batches)
    assert runaway.epoch == 2
    fp32 = fp16_trainer(mlp_fn, overflow_at({3}), precision="fp32")
    with pytest.raises(DivergedError, match=r"loss became (nan|inf) at epoch 1 \(at the end of the epoch\)"):  # no scaler: at once
        fp32.fit(batches)


def test_fp16_clips_the_unscaled_gradients(blobs, mlp_fn):
    (x, y), _, _ = blobs
    updates = {}
    for precision in ("fp32", "fp16"):
        trainer = fp16_trainer(mlp_fn, losses.get("ce"), precision=precision, grad_clip=0.05, momentum=0.0, weight_decay=0.0)
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=precision == "fp16")  # these fit fp16
        before = weights(trainer)
        trainer._step(x[:64], y[:64])
        updates[precision] = torch.cat([(a - b).flatten() for a, b in zip(weights(trainer), before)])
    assert updates["fp32"].norm() == pytest.approx(0.1 * 0.05, rel=1e-5)  # clipped: lr x max norm
    torch.testing.assert_close(updates["fp16"], updates["fp32"], rtol=0.02, atol=2e-5)  # not 65536 times smaller


def test_fp16_resume_restores_the_loss_scale_and_is_bitwise_identical(blobs, mlp_fn):
    train, _, _ = blobs
    batches = TensorBatches(*train, batch_size=32, shuffle=True)
    straight = fp16_trainer(mlp_fn, overflow_at({2}), epochs=3)
    straight.fit(batches)
    interrupted = fp16_trainer(mlp_fn, overflow_at({2}), epochs=3)
    interrupted.callbacks.append(crash_after(1))
    with pytest.raises(Crash):
        interrupted.fit(batches)
    state = interrupted.state_dict()
    assert state["scaler"]["scale"] == 2.0**14  # the first step's overflow and the fake one
    resumed = fp16_trainer(mlp_fn, overflow_at({2}, start=8), epochs=3)
    resumed.load_state_dict(state)
    resumed.fit(batches)
    assert resumed.scaler.get_scale() == straight.scaler.get_scale() == 2.0**14
    assert all(torch.equal(a, b) for a, b in zip(weights(straight), weights(resumed)))
    assert fp16_trainer(mlp_fn, losses.get("ce"), precision="fp32").state_dict()["scaler"] == {}


def test_compile_wraps_the_model_before_data_parallel(monkeypatch, mlp_fn):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module: calls.append(("compile", module)) or ("compiled", module))
    monkeypatch.setattr(distributed, "data_parallel", lambda module, device: calls.append(("data_parallel", module)) or module)
    trainer = Trainer(mlp_fn(), losses.get("ce"), TrainConfig(compile=True), seed=0, device=torch.device("cpu"))
    assert calls == [("compile", trainer.model), ("data_parallel", ("compiled", trainer.model))]
    assert trainer.forward == ("compiled", trainer.model)


@pytest.mark.parametrize("loss, options", [("ban+l", {"label_weight": 0.5, "normalize": True}),
                                           ("kd", {"temperature": 2.0, "label_weight": 0.3})])
def test_a_loss_of_named_terms_logs_each_term_and_their_sum_as_the_loss(blobs, mlp_fn, loss, options):
    train, val, _ = blobs
    teacher = make_trainer(mlp_fn, TrainConfig(epochs=1, lr=0.1, progress="none"))
    teacher.fit(TensorBatches(*train, batch_size=32))
    torch.manual_seed(1)
    student = Trainer(mlp_fn(), losses.get(loss, **options), TrainConfig(epochs=2, lr=0.1, progress="none"), seed=1,
                      device=torch.device("cpu"), teacher=FrozenTeacher(teacher.model))
    history = student.fit(TensorBatches(*train, batch_size=32, shuffle=True), TensorBatches(*val, batch_size=64))
    for record in history:
        assert record["train_loss_teacher"] > 0 and record["train_loss_label"] > 0
        assert record["train_loss_teacher"] + record["train_loss_label"] == pytest.approx(record["train_loss"], rel=1e-5)
    plain = make_trainer(mlp_fn, TrainConfig(epochs=1, lr=0.1, progress="none"))
    assert not [k for k in plain.fit(TensorBatches(*train, batch_size=32))[0] if k.startswith("train_loss_")]
