"""The fine-tuning recipe: AdamW without decay on biases and norms, schedules moved every step after a linear warmup,
gradient accumulation equal to one large batch, and all of it resumed bitwise inside an epoch."""

import copy
import math

import pytest
import torch

from banets import losses
from banets.config import TrainConfig
from banets.data.batches import TensorBatches
from banets.engine import Trainer, make_optimizer, step_factor


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.LayerNorm(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def data(batch_size: int) -> TensorBatches:
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(48, 5, generator=generator), torch.randint(0, 3, (48,), generator=generator)
    return TensorBatches(x, y, batch_size=batch_size, shuffle=True)


def trainer(config: TrainConfig, **kwargs) -> Trainer:
    return Trainer(net(), losses.get("ce"), config, seed=0, device=torch.device("cpu"), **kwargs)


def test_adamw_decays_weight_matrices_only_and_decoupled_from_the_gradient():
    model = net()
    optimizer = make_optimizer(model, TrainConfig(optimizer="adamw", lr=0.1, weight_decay=0.5))
    before = copy.deepcopy(model.state_dict())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the decay moves a parameter
    optimizer.step()
    after = model.state_dict()
    for name, value in before.items():
        expected = value * (1 - 0.1 * 0.5) if value.dim() >= 2 else value  # biases and LayerNorm's scale: none
        torch.testing.assert_close(after[name], expected, rtol=0, atol=1e-7, msg=name)


def test_step_schedules_warm_up_linearly_then_decay_over_the_remaining_steps():
    config = TrainConfig(schedule="linear", schedule_every="step", warmup_steps=4)
    assert [step_factor(s, config, 12) for s in (0, 2, 4, 8, 12)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    cosine = TrainConfig(schedule="cosine", schedule_every="step", warmup_steps=2)
    assert step_factor(2 + 5, cosine, 12) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    multistep = TrainConfig(schedule="multistep", schedule_every="step", milestones=[0.5], gamma=0.1)
    assert [step_factor(s, multistep, 10) for s in (4, 5)] == [1.0, pytest.approx(0.1)]


def test_a_trainer_moves_a_step_schedule_after_every_optimiser_step():
    lrs = []
    config = TrainConfig(epochs=2, lr=0.4, optimizer="adamw", schedule="linear", schedule_every="step",
                         warmup_steps=2, accumulate=2, progress="none")
    model = trainer(config)
    original = model._update

    def update():
        lrs.append(model.optimizer.param_groups[0]["lr"])
        original()

    model._update = update
    model.fit(data(batch_size=8))  # 6 batches an epoch, 3 optimiser steps; 6 in all
    expected = [0.4 * step_factor(s, config, 6) for s in range(6)]
    assert lrs == pytest.approx(expected) and expected[:3] == pytest.approx([0.0, 0.2, 0.4])


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_accumulating_batches_takes_the_step_of_one_batch_of_their_rows(optimizer):
    config = TrainConfig(epochs=2, lr=0.05, optimizer=optimizer, schedule="constant", progress="none")
    large = trainer(config)
    large.fit(data(batch_size=12))  # 4 steps an epoch
    small = trainer(TrainConfig(**{**vars(config), "accumulate": 3}))
    small.fit(data(batch_size=4))  # 12 batches an epoch, the same rows in the same order, 3 to a step
    for name, value in large.model.state_dict().items():
        torch.testing.assert_close(small.model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_a_trailing_group_of_fewer_batches_is_the_step_of_a_smaller_last_batch():
    config = TrainConfig(epochs=1, lr=0.05, schedule="constant", progress="none")
    large = trainer(config)
    large.fit(data(batch_size=20))  # 48 rows: steps of 20, 20 and 8
    small = trainer(TrainConfig(**{**vars(config), "accumulate": 5}))
    small.fit(data(batch_size=4))  # 12 batches in groups of 5, 5 and 2
    for name, value in large.model.state_dict().items():
        torch.testing.assert_close(small.model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_accumulation_and_a_step_schedule_resume_bitwise_inside_an_epoch():
    config = TrainConfig(epochs=2, lr=0.02, optimizer="adamw", schedule="cosine", schedule_every="step",
                         warmup_steps=3, accumulate=2, checkpoint_every=2, progress="none")
    saved = []
    straight = trainer(config, on_checkpoint=lambda t: saved.append(copy.deepcopy(t.state_dict())))
    straight.fit(data(batch_size=4))  # 12 batches an epoch, 6 steps; checkpoints after steps 2 and 4 of each
    inside = next(state for state in saved if state["epoch"] == 1)  # in the second epoch, after 4 batches
    assert inside["position"]["step"] == 4
    resumed = trainer(config)
    resumed.load_state_dict(inside)
    resumed.fit(data(batch_size=4))
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]


def own_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """A recipe of one's own: Adam with a smaller rate for the first layer."""
    first, rest = list(model[0].parameters()), [p for layer in list(model)[1:] for p in layer.parameters()]
    return torch.optim.Adam([{"params": first, "lr": 0.001}, {"params": rest}], lr=0.01)


def own_schedule(optimizer: torch.optim.Optimizer, total: int):
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[0.002, 0.02], total_steps=total)


def test_your_own_optimizer_and_scheduler_train_and_resume_bitwise_inside_an_epoch():
    config = TrainConfig(epochs=2, optimizer=own_optimizer, schedule=own_schedule, schedule_every="step",
                         checkpoint_every=2, progress="none")
    saved, lrs = [], []
    straight = trainer(config, on_checkpoint=lambda t: saved.append(copy.deepcopy(t.state_dict())))
    original = straight._update
    straight._update = lambda: (lrs.append([g["lr"] for g in straight.optimizer.param_groups]), original())[1]
    straight.fit(data(batch_size=8))  # 6 steps an epoch
    assert isinstance(straight.scheduler, torch.optim.lr_scheduler.OneCycleLR) and len(lrs) == 12
    reference = torch.optim.lr_scheduler.OneCycleLR(own_optimizer(net()), max_lr=[0.002, 0.02], total_steps=12)
    expected = []
    for _ in range(12):
        expected.append([g["lr"] for g in reference.optimizer.param_groups])
        reference.optimizer.step()
        reference.step()
    torch.testing.assert_close(torch.tensor(lrs), torch.tensor(expected))  # 12 steps in all, one move a step
    inside = next(state for state in saved if state["epoch"] == 1)
    resumed = trainer(config)
    resumed.load_state_dict(inside)
    resumed.fit(data(batch_size=8))
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def test_your_own_optimizer_by_module_function_name_is_recorded_and_refused_when_it_builds_no_optimizer(tmp_path):
    from banets import BornAgainConfig, born_again
    from banets.config import UserError

    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 5, generator=generator), torch.randint(0, 3, (32,), generator=generator)
    config = TrainConfig(epochs=1, optimizer="test_recipe:own_optimizer", progress="none")
    born_again(net, (x, y), (x, y), optim=config, ban=BornAgainConfig(generations=1), out=tmp_path / "run")
    recorded = (tmp_path / "run" / "seed-0" / "config.yaml").read_text()
    assert "optimizer: test_recipe:own_optimizer" in recorded
    born_again(net, (x, y), (x, y), optim=TrainConfig(epochs=1, optimizer=own_optimizer, progress="none"),
               ban=BornAgainConfig(generations=1), out=tmp_path / "callable")
    assert "optimizer: test_recipe:own_optimizer" in (tmp_path / "callable" / "seed-0" / "config.yaml").read_text()
    with pytest.raises(UserError) as error:
        born_again(net, (x, y), (x, y), optim=TrainConfig(optimizer=lambda model: model.parameters()),
                   out=tmp_path / "refused")
    assert "returned generator, not a torch.optim.optimizer.Optimizer; return the one it builds" in str(error.value)
    assert not (tmp_path / "refused").exists()
    with pytest.raises(UserError, match=r"optim.schedule test_recipe:.*<lambda> failed \(TypeError: .*\); it is called "
                                        r"as schedule\(optimizer, total\)"):
        born_again(net, (x, y), (x, y), optim=TrainConfig(schedule=lambda optimizer: None), out=tmp_path / "refused")


def test_an_optimizer_named_in_a_run_is_imported_on_resume_only_when_vouched_for(tmp_path, monkeypatch, capsys):
    from banets.cli import main
    from tiny import tiny

    (tmp_path / "my_recipe.py").write_text("import torch\n\n\ndef plain_sgd(model):\n"
                                           "    return torch.optim.SGD(model.parameters(), lr=0.05)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = str(tmp_path / "run")
    assert main(["run", "demo", *tiny(), "--import", "my_recipe", "--set", "optim.optimizer=my_recipe:plain_sgd",
                 "--out", out]) == 0
    (tmp_path / "run" / "seed-0" / "results.json").unlink()  # unfinished: a resume has work to do
    capsys.readouterr()
    assert main(["resume", out]) == 1
    assert "records the module 'my_recipe'" in capsys.readouterr().err
    assert main(["resume", out, "--import", "my_recipe"]) == 0
