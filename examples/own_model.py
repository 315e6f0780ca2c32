"""Does born-again training help *your* model? A model and a dataset of your own, into a run directory, then the
report: `python examples/own_model.py --out runs/own` (about a minute on a CPU; `banets report runs/own` again later)."""

import argparse
import math

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from banets import BornAgainConfig, TrainConfig, born_again
from banets.report import read_runs, summary_table


class Spirals(Dataset):
    """Three interleaved noisy spirals in the plane, as dicts with "x" and "label" keys."""

    def __init__(self, rows: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.label = torch.randint(0, 3, (rows,), generator=gen)
        radius = torch.rand(rows, generator=gen)
        angle = 4.0 * radius + 2 * math.pi * self.label / 3 + 0.3 * torch.randn(rows, generator=gen)
        self.x = torch.stack([radius * angle.cos(), radius * angle.sin()], 1)

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "label": self.label[i]}


class ResidualMLP(nn.Module):
    def __init__(self, width: int = 64, classes: int = 3):
        super().__init__()
        self.stem, self.block, self.head = nn.Linear(2, width), nn.Sequential(nn.ReLU(), nn.Linear(width, width)), nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(torch.relu(h + self.block(h)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/own-model")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    born_again(lambda: ResidualMLP(), Spirals(args.rows, seed=0), Spirals(args.rows // 4, seed=1),
               ban=BornAgainConfig(generations=2, extra_losses=["ban+l"], controls={"CE": {}}),
               optim=TrainConfig(epochs=args.epochs, lr=0.05, schedule="cosine"), seeds=[0, 1], batch_size=64, out=args.out)
    print(summary_table(read_runs([args.out])[0], legend=True))


if __name__ == "__main__":
    main()
