"""Per-example metrics, BANE averaging and bootstrap intervals."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from banets.ensemble import average_log_probs
from banets.metrics import Predictions, bootstrap_paired_difference


def test_predictions_error_nll_agreement():
    log_probs = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4], [0.2, 0.2, 0.6]]))
    labels = torch.tensor([0, 1, 2, 2])
    p = Predictions.from_log_probs(log_probs, labels)
    assert p.error() == 25.0
    assert math.isclose(p.mean_nll(), -float(np.mean(np.log([0.7, 0.6, 0.4, 0.6]))), rel_tol=1e-6)
    other = Predictions.from_log_probs(log_probs.flip(0), labels)
    assert p.agreement(other) == 0.0 and p.agreement(p) == 100.0


def test_uniform_predictions_have_perplexity_equal_to_the_class_count():
    labels = torch.randint(0, 50, (200,))
    p = Predictions.from_log_probs(torch.full((200, 50), -math.log(50)), labels)
    assert math.isclose(p.perplexity(), 50.0, rel_tol=1e-5)


def test_ece_of_a_calibrated_and_an_overconfident_model():
    labels = torch.zeros(1000, dtype=torch.long)
    half = torch.tensor([[math.log(0.5), math.log(0.5)]]).repeat(1000, 1)
    calibrated = Predictions.from_log_probs(half, labels)
    calibrated.pred = torch.arange(1000) % 2  # right half the time at confidence 0.5
    assert calibrated.ece() < 1e-4
    sure = Predictions.from_log_probs(torch.log(torch.tensor([[0.99, 0.01]])).repeat(1000, 1), 1 - labels)
    assert math.isclose(sure.ece(), 99.0, rel_tol=1e-4)


def test_average_log_probs_is_log_of_mean_probabilities():
    logits = [torch.randn(5, 7) for _ in range(3)]
    expected = torch.stack([F.softmax(z, -1) for z in logits]).mean(0).log()
    torch.testing.assert_close(average_log_probs([z.log_softmax(-1) for z in logits]), expected)


def test_bootstrap_interval_covers_the_true_difference_and_excludes_zero_for_a_clear_gain():
    rng = np.random.default_rng(0)
    a = 100.0 * (rng.random(4000) < 0.20)
    b = 100.0 * (rng.random(4000) < 0.30)
    mean, low, high = bootstrap_paired_difference(a, b, samples=500)
    assert low < mean < high < 0
    assert low < -10.0 < high
    same_mean, same_low, same_high = bootstrap_paired_difference(a, a.copy(), samples=200)
    assert same_mean == same_low == same_high == 0.0


def test_bootstrap_over_seeds_and_examples_is_wider_than_one_seed():
    rng = np.random.default_rng(1)
    seeds_a = 100.0 * (rng.random((3, 2000)) < np.array([[0.2], [0.3], [0.25]]))
    seeds_b = 100.0 * (rng.random((3, 2000)) < 0.25)
    _, low1, high1 = bootstrap_paired_difference(seeds_a[:1], seeds_b[:1], samples=300)
    _, low3, high3 = bootstrap_paired_difference(seeds_a, seeds_b, samples=300)
    assert high3 - low3 > (high1 - low1) * 0.9


def test_block_bootstrap_widens_the_interval_of_correlated_examples_and_block_1_is_the_plain_one():
    rng = np.random.default_rng(2)
    per_block = rng.normal(0.0, 1.0, 100)
    a = np.repeat(per_block, 35)[:3490]  # 100 runs of 35 equal examples, the last one cut short
    b = np.zeros_like(a)
    mean, low, high = bootstrap_paired_difference(a, b, samples=400)
    block_mean, block_low, block_high = bootstrap_paired_difference(a, b, samples=400, block=35)
    assert block_mean == mean == pytest.approx(a.mean())
    assert (block_high - block_low) > 4 * (high - low)  # about sqrt(35) times wider
    reference, draw = [], np.random.default_rng(0)  # block 1: the plain resampling of single examples
    for _ in range(50):
        rows, cols = draw.integers(0, 1, 1), draw.integers(0, len(a), len(a))
        reference.append((a - b)[None][rows][:, cols].mean())
    assert bootstrap_paired_difference(a, b, samples=50)[1:] == pytest.approx(tuple(np.quantile(reference, [0.025, 0.975])))


def test_the_interval_can_resample_seeds_or_examples_alone():
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, (4, 300)) + np.array([[-1.0], [0.0], [1.0], [2.0]])  # seeds differ a lot
    b = np.zeros_like(a)
    mean, low, high = bootstrap_paired_difference(a, b, resample=(False, False))
    assert low == high == pytest.approx(mean)
    both = bootstrap_paired_difference(a, b)
    seeds_only = bootstrap_paired_difference(a, b, resample=(True, False))
    examples_only = bootstrap_paired_difference(a, b, resample=(False, True))
    width = lambda ci: ci[2] - ci[1]  # noqa: E731
    assert width(examples_only) < width(seeds_only) <= width(both) * 1.1  # here the seeds make the interval
