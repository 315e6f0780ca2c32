"""What the checks issue 23 added to training and evaluation cost, next to the work they guard.

    OMP_NUM_THREADS=1 python bench/bench_checks.py

Times one evaluation pass (``engine.predict_batches``) over 10 batches of 20 x 35 tokens through a 2 x 200 LSTM
with a 10,000-word decoder, the NaN check it runs per batch (the label's log-probability finite), the full-pass
check it avoids, the teacher forward the cache replays, and the cache's checksum of a batch. Best of 5 x N calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from banets.engine import TrainConfig, predict_batches
from banets.teacher_cache import checksum


class SmallLM(torch.nn.Module):
    def __init__(self, vocab: int = 10_000, width: int = 200):
        super().__init__()
        self.embed, self.lstm = torch.nn.Embedding(vocab, width), torch.nn.LSTM(width, width, 2, batch_first=True)
        self.decoder = torch.nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.lstm(self.embed(x))[0])


def best(fn: Callable[[], object], calls: int = 20) -> float:
    """The fastest of 5 rounds of ``calls`` calls, in seconds per call."""
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls)
    return min(rounds)


def main() -> None:
    torch.manual_seed(0)
    model, generator = SmallLM().eval(), torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 10_000, (20, 35), generator=generator),) * 2 for _ in range(10)]
    config = TrainConfig(progress="none", precision="fp32")
    evaluation = best(lambda: list(predict_batches([model], batches, torch.device("cpu"), config)), calls=1) / 10
    with torch.no_grad():
        log_probs = model(batches[0][0]).reshape(-1, 10_000).log_softmax(-1)
        forward = best(lambda: model(batches[0][0]), calls=5)
    labels = batches[0][1].reshape(-1)
    rows = {
        "evaluation of one batch (predict_batches)": evaluation,
        "its NaN check: the label's log-probability finite": best(
            lambda: torch.isfinite(log_probs.gather(1, labels[:, None])).all()
        ),
        "a full isnan().any() over the log-probabilities": best(lambda: log_probs.isnan().any()),
        "the teacher's forward on one batch": forward,
        "the teacher cache's checksum of one batch": best(lambda: checksum(batches[0][0])),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n\n| what | ms |\n|---|---|")
    for what, seconds in rows.items():
        print(f"| {what} | {1000 * seconds:.3f} |")


if __name__ == "__main__":
    main()
