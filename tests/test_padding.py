"""Token-level outputs with padding: positions labelled -100 (PyTorch's and Hugging Face's ignore index) reach no loss
and no metric. Training steps and scores do not depend on what the model outputs there, and match hand
computations over the real positions."""

import copy

import pytest
import torch
import torch.nn.functional as F

from banets import BornAgainConfig, TrainConfig, born_again, losses
from banets.engine import Trainer, predict_batches

VOCAB, FEATURES = 6, 4


class PerToken(torch.nn.Module):
    """Logits ``(N, T, V)`` from inputs ``(N, T, F)``, each position on its own."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = torch.nn.Linear(FEATURES, VOCAB)

    def forward(self, x):
        return self.linear(x)


def padded_batch(seed: int = 0):
    """Inputs ``(5, 7, F)`` and labels with -100 at random positions (at least one real label per row)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 7, FEATURES, generator=generator)
    y = torch.randint(0, VOCAB, (5, 7), generator=generator)
    pad = torch.rand(5, 7, generator=generator) < 0.4
    pad[:, 0] = False
    return x, torch.where(pad, torch.full_like(y, losses.IGNORE_INDEX), y)


def step(loss_name: str, x, y) -> dict:
    """The student's weights after one training step on ``(x, y)``, taught by a fixed per-token teacher."""
    trainer = Trainer(PerToken(0), losses.get(loss_name), TrainConfig(lr=0.5, progress="none"), seed=0,
                      device=torch.device("cpu"), teacher=PerToken(1))
    torch.manual_seed(0)  # dkpp's permutations
    trainer._step(x, y, padded=True)
    return copy.deepcopy(trainer.model.state_dict())


@pytest.mark.parametrize("name", ["ce", "ban", "ban+l", "kd", "cwtm", "dkpp"])
def test_a_training_step_does_not_see_padded_positions(name):
    x, y = padded_batch()
    garbage = torch.where((y == losses.IGNORE_INDEX)[..., None], torch.randn_like(x) * 100, x)  # padding differs
    before, after = step(name, x, y), step(name, garbage, y)
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["linear.weight"], PerToken(0).state_dict()["linear.weight"])  # it did learn


def test_the_ce_step_is_the_mean_over_real_tokens_computed_by_hand():
    x, y = padded_batch(3)
    model = PerToken(0)
    expected = F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1), ignore_index=-100)  # mean over real ones
    gradient = torch.autograd.grad(expected, model.linear.weight)[0]
    trained = Trainer(PerToken(0), losses.get("ce"), TrainConfig(lr=1.0, momentum=0.0, weight_decay=0.0,
                                                                 progress="none"), seed=0, device=torch.device("cpu"))
    logits, labels, loss, _ = trained._step(x, y, padded=True)
    assert loss.item() == pytest.approx(expected.item())
    assert len(labels) == int((y != -100).sum()) == len(logits)
    torch.testing.assert_close(trained.model.linear.weight, model.linear.weight - gradient)


def test_scores_count_real_tokens_only():
    x, y = padded_batch(5)
    model = PerToken(0)
    [(log_probs, labels)] = list(predict_batches([model], [(x, y)], torch.device("cpu"), TrainConfig()))
    real = y != -100
    assert torch.equal(labels, y[real])
    torch.testing.assert_close(log_probs[0], model(x)[real].log_softmax(-1))


def test_born_again_trains_a_token_classifier_with_padding_and_scores_real_tokens(tmp_path):
    x, y = padded_batch(7)
    val = padded_batch(8)
    run = born_again(lambda: PerToken(0), (x, y), val, optim=TrainConfig(epochs=1, progress="none"),
                     ban=BornAgainConfig(generations=1), batch_size=5)
    predictions = run.results[0].predictions["val"]["BAN-1"]
    assert len(predictions.labels) == int((val[1] != -100).sum())
    assert torch.equal(predictions.labels, val[1][val[1] != -100])
