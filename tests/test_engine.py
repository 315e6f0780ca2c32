"""The training engine: per-epoch seeding and resume, divergence, schedules, evaluation."""

import pytest
import torch

from banets import losses
from banets.data.batches import TensorBatches
from banets.engine import DivergedError, Trainer, TrainConfig, evaluate, make_scheduler


def make_trainer(mlp_fn, config, seed=0, loss="ce"):
    torch.manual_seed(seed)
    return Trainer(mlp_fn(), losses.get(loss), config, seed=seed, device=torch.device("cpu"))


def test_resume_from_epoch_state_is_bitwise_identical(blobs, mlp_fn):
    train, val, _ = blobs
    batches = TensorBatches(*train, batch_size=32, shuffle=True)
    config = TrainConfig(epochs=4, lr=0.1, milestones=[0.5], progress="none")
    straight = make_trainer(mlp_fn, config)
    straight.fit(batches, TensorBatches(*val, batch_size=64))

    class Crash(Exception):
        pass

    def crash_after_two_epochs(trainer, record):
        if trainer.epoch == 2:
            raise Crash

    interrupted = make_trainer(mlp_fn, config)
    interrupted.callbacks.append(crash_after_two_epochs)
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
