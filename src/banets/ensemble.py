"""Born Again Network Ensembles (BANE, Eq. 4): average the predicted probabilities of several models."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from banets.config import TrainConfig
from banets.data.registry import Batch, Transform
from banets.engine import predict_batches
from banets.metrics import Predictions


def average_log_probs(log_probs: Sequence[Tensor]) -> Tensor:
    """``log(mean_i p_i)`` computed stably from the members' log-probabilities (Eq. 4)."""
    return torch.logsumexp(torch.stack(list(log_probs)), dim=0) - math.log(len(log_probs))


def prefix_ensembles(names: Sequence[str], label: str = "Ens*{k}", min_size: int = 2) -> dict[str, list[str]]:
    """Every prefix of ``names`` of at least ``min_size`` members: ``{"Ens*2": names[:2], ...}``."""
    return {label.format(k=k): list(names[:k]) for k in range(min_size, len(names) + 1)}


def evaluate_with_ensembles(
    models: dict[str, nn.Module],
    ensembles: dict[str, list[str]],
    data: Iterable[Batch],
    device: torch.device,
    config: TrainConfig,
    transform: Transform | None = None,
    split: str = "validation",
) -> dict[str, Predictions]:
    """Per-example predictions of every model and every ensemble on ``data`` (the ``split`` named in errors), in
    one pass over it."""
    names = list(models)
    parts: dict[str, list[Predictions]] = {name: [] for name in [*names, *ensembles]}
    for log_probs, labels in predict_batches(list(models.values()), data, device, config, transform, split):
        by_name = dict(zip(names, log_probs))
        for label, members in ensembles.items():
            by_name[label] = average_log_probs([by_name[m] for m in members])
        for name, lp in by_name.items():
            parts[name].append(Predictions.from_log_probs(lp, labels))
    return {name: Predictions.concat(p) for name, p in parts.items()}
