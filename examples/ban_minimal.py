"""Born Again Neural Networks (Furlanello et al., 2018) in one plain loop, without the framework.

A teacher is trained on labels (Eq. 1); generation k, a fresh network of the same architecture, is trained to
match generation k-1's predictions (Eq. 2-3, ``banets.losses.ban``); the generations are then averaged (BANE,
Eq. 4, ``banets.ensemble.average_log_probs``). Data: scikit-learn's handwritten digits, 8x8 pixels, offline.

    python examples/ban_minimal.py --generations 3 --epochs 30

banets itself adds what this file leaves out: seeds and confidence intervals, controls, checks before training,
resumable run directories and reports.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
from sklearn.datasets import load_digits

from banets.ensemble import average_log_probs
from banets.losses import ban, ce


def digits(seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(train, validation) splits of the 1,797 digits, pixels scaled to [0, 1]."""
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    val, train = order[:360], order[360:]
    return (x[train], y[train]), (x[val], y[val])


def new_network(seed: int) -> nn.Module:
    """The architecture every generation shares; each generation starts from its own random initialisation."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def train(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], teacher: nn.Module | None, epochs: int,
          seed: int) -> nn.Module:
    """Plain SGD. With a teacher, the loss is BAN's (the teacher's softmax as the target, labels unused);
    without one, cross-entropy on the labels. The teacher is frozen: eval mode, no gradients."""
    x, y = data
    loss_fn = ban if teacher is not None else ce
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(y), generator=generator).split(64):
            student_logits = model(x[batch])
            with torch.no_grad():
                teacher_logits = teacher(x[batch]) if teacher is not None else None
            loss = loss_fn(student_logits, teacher_logits, y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval().requires_grad_(False)


def error(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (log_probs.argmax(-1) != labels).float().mean().item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train_data, (x_val, y_val) = digits(args.seed)

    models = {"teacher": train(new_network(args.seed), train_data, None, args.epochs, args.seed)}
    for k in range(1, args.generations + 1):  # generation k learns from generation k-1 (the teacher for k = 1)
        previous = list(models.values())[-1]
        models[f"BAN-{k}"] = train(new_network(args.seed + k), train_data, previous, args.epochs, args.seed + k)

    with torch.no_grad():
        log_probs = {name: model(x_val).log_softmax(-1) for name, model in models.items()}
    generations = [log_probs[f"BAN-{k}"] for k in range(1, args.generations + 1)]
    for k in range(2, args.generations + 1):  # BANE: the average of generations 1..k's predicted probabilities
        log_probs[f"Ens*{k}"] = average_log_probs(generations[:k])
    errors = {name: error(lp, y_val) for name, lp in log_probs.items()}
    for name, value in errors.items():
        print(f"{name:8s} validation error {value:5.2f}%")
    return errors


if __name__ == "__main__":
    main()
