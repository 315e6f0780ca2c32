"""Per-example predictions and the numbers computed from them: error, NLL, calibration, agreement, intervals.

Everything is kept per example (not as batch averages) so that ensembles, agreement between models and
paired bootstrap intervals over examples can be computed after the fact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor


@dataclass
class Predictions:
    """One model's predictions on one split: per-example NLL, argmax, its probability, and the label."""

    nll: Tensor
    pred: Tensor
    confidence: Tensor
    labels: Tensor

    @classmethod
    def from_log_probs(cls, log_probs: Tensor, labels: Tensor) -> Predictions:
        log_probs = log_probs.float()
        best = log_probs.max(dim=-1)
        return cls(
            nll=-log_probs.gather(1, labels[:, None]).squeeze(1),
            pred=best.indices,
            confidence=best.values.exp(),
            labels=labels,
        )

    @classmethod
    def concat(cls, parts: list[Predictions]) -> Predictions:
        return cls(*(torch.cat([getattr(p, f) for p in parts]).cpu() for f in ("nll", "pred", "confidence", "labels")))

    @property
    def correct(self) -> Tensor:
        return self.pred == self.labels

    def error(self) -> float:
        """Top-1 error in percent."""
        return 100.0 * (1.0 - self.correct.float().mean().item())

    def mean_nll(self) -> float:
        return self.nll.double().mean().item()

    def perplexity(self) -> float:
        """``exp`` of the mean NLL: the language models' metric (a uniform model scores the vocabulary size)."""
        return math.exp(self.mean_nll())

    def scores(self, metric: str) -> np.ndarray:
        """Per-example scores whose mean is the ``metric`` (``error``: 100 per mistake, in points; ``perplexity``:
        each token's NLL, whose mean is the log-perplexity): what a paired bootstrap resamples."""
        return 100.0 * (~self.correct).double().numpy() if metric == "error" else self.nll.double().numpy()

    def ece(self, bins: int = 15) -> float:
        """Expected calibration error in percent, with equal-width confidence bins (Guo et al., 2017)."""
        edges = torch.linspace(0, 1, bins + 1)
        bin_of = torch.bucketize(self.confidence, edges[1:-1])
        total = 0.0
        for b in range(bins):
            in_bin = bin_of == b
            if in_bin.any():
                gap = self.confidence[in_bin].mean() - self.correct[in_bin].float().mean()
                total += in_bin.float().mean().item() * abs(gap.item())
        return 100.0 * total

    def agreement(self, other: Predictions) -> float:
        """Percent of examples where both models predict the same class (fidelity to a teacher)."""
        return 100.0 * (self.pred == other.pred).float().mean().item()

    def summary(self) -> dict[str, float]:
        return {"error": self.error(), "nll": self.mean_nll(), "ece": self.ece()}


def bootstrap_paired_difference(
    a: ArrayLike, b: ArrayLike, samples: int = 2000, level: float = 0.95, seed: int = 0, block: int = 1,
    resample: tuple[bool, bool] = (True, True),
) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its percentile bootstrap interval, resampling examples (rows) jointly.

    ``a`` and ``b`` hold per-example scores of two models on the same examples (e.g. 100 * error
    indicators), shaped ``(examples,)`` or ``(seeds, examples)``; with several seeds each bootstrap draw
    resamples seeds and examples, so the interval covers both sources of variation. With ``block > 1`` the
    draws take runs of ``block`` consecutive examples (the last one may be shorter) instead of single examples:
    a block bootstrap, for examples correlated with their neighbours, such as the tokens of a text. ``resample``
    says whether draws resample (seeds, examples); turning one off shows how much of the interval the other gives.
    """
    diff = np.atleast_2d(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    rng = np.random.default_rng(seed)
    seeds, examples = diff.shape
    starts = np.arange(0, examples, block)
    block_sums = np.add.reduceat(diff, starts, axis=1)  # (seeds, blocks)
    block_sizes = np.diff(np.append(starts, examples))
    draws = np.empty(samples)
    for i in range(samples):
        rows = rng.integers(0, seeds, seeds) if resample[0] else np.arange(seeds)
        cols = rng.integers(0, len(starts), len(starts)) if resample[1] else np.arange(len(starts))
        times_row, times_col = np.bincount(rows, minlength=seeds), np.bincount(cols, minlength=len(starts))
        draws[i] = times_row @ block_sums @ times_col / (seeds * (block_sizes @ times_col))  # sum of the drawn cells
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return float(diff.mean()), float(low), float(high)
