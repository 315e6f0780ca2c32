"""The teacher-output cache: same students as without it, one teacher pass, refusals that say why."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from banets import born_again
from banets.config import BornAgainConfig
from banets.data.text import BpttBatches
from banets.engine import TrainConfig
from banets.models import create_model
from banets.teacher_cache import CachedTeacher, CacheError, free_memory

VOCAB = 12


class CountingTeacher(nn.Module):
    """A fixed random 'language model' that counts its forward calls; its logits are in ``dtype``."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.table = nn.Embedding(VOCAB, VOCAB)
        self.calls, self.dtype = 0, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.table(x).to(self.dtype)


def stream(seed: int, length: int = 600) -> torch.Tensor:
    return torch.randint(VOCAB, (length,), generator=torch.Generator().manual_seed(seed))


def epochs(cache: nn.Module, batches, n: int) -> list[list[torch.Tensor]]:
    outputs = []
    for _ in range(n):
        cache.reset_state()
        outputs.append([cache(x) for x, _ in batches])
    return outputs


def test_cache_runs_the_teacher_in_the_first_epoch_only():
    batches = BpttBatches(stream(0), batch_size=4, bptt=10)
    teacher = CountingTeacher()
    cache = CachedTeacher(teacher, len(batches), "fp32")
    first, *later = epochs(cache, batches, 3)
    assert teacher.calls == len(batches) == 15
    for outputs in later:
        assert all(torch.equal(a, b) for a, b in zip(first, outputs))
    assert epochs(CachedTeacher(CountingTeacher(), len(batches), "bf16"), batches, 1)[0][0].dtype == torch.bfloat16


def test_changed_batches_are_refused():
    batches = BpttBatches(stream(0), batch_size=4, bptt=10)
    cache = CachedTeacher(CountingTeacher(), len(batches))
    epochs(cache, batches, 1)
    cache.reset_state()
    with pytest.raises(CacheError, match="batch 0 differs"):
        cache(next(iter(BpttBatches(stream(1), batch_size=4, bptt=10)))[0])


def test_contents_are_compared_once_per_pass_and_shapes_at_every_batch(monkeypatch):
    batches = BpttBatches(stream(0), batch_size=4, bptt=10)
    cache = CachedTeacher(CountingTeacher(), len(batches))
    epochs(cache, batches, 1)
    comparisons = []
    equal = torch.equal
    monkeypatch.setattr(torch, "equal", lambda a, b: comparisons.append(a.shape) or equal(a, b))
    epochs(cache, batches, 2)
    assert len(comparisons) == 2  # one per replayed pass: no host sync at the other 14 batches
    cache.reset_state()
    inputs = [x for x, _ in batches]
    for x in inputs[:3]:
        cache(x)
    with pytest.raises(CacheError, match="batch 3 differs"):
        cache(inputs[3][:, :5])  # another shape, caught without comparing contents


def test_a_cache_never_stores_more_precision_than_the_teacher_computes():
    batches = BpttBatches(stream(0), batch_size=4, bptt=10)
    cache = CachedTeacher(CountingTeacher(torch.bfloat16), len(batches), "fp32", max_bytes=1000)
    with pytest.warns(UserWarning, match=r"x 12 classes x 2 B = "):  # estimated at bf16's 2 bytes, not fp32's 4
        epochs(cache, batches, 1)
    stored = CachedTeacher(CountingTeacher(torch.bfloat16), len(batches), "fp32")
    assert epochs(stored, batches, 1)[0][0].dtype == torch.bfloat16
    assert CachedTeacher(CountingTeacher(), len(batches), "fp16").stored_dtype(torch.float32) == torch.float16


def test_gpu_memory_reserved_by_pytorch_but_unused_counts_as_free(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3_000, 10_000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 5_000)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 1_500)
    assert free_memory(torch.device("cuda", 0)) == 3_000 + 5_000 - 1_500


def test_a_cache_over_budget_warns_and_keeps_nothing():
    batches = BpttBatches(stream(0), batch_size=4, bptt=10)
    teacher = CountingTeacher()
    cache = CachedTeacher(teacher, len(batches), "fp32", max_bytes=1000)  # one epoch needs 15 x 40 x 12 x 4 B = 28.8 kB
    with pytest.warns(UserWarning, match=r"15 batches x 40 tokens x 12 classes x 4 B = 0.00 GB exceeds"):
        epochs(cache, batches, 2)
    assert teacher.calls == 30 and cache.logits == []


def test_cached_and_uncached_distillation_give_identical_students(monkeypatch):
    torch.set_num_threads(1)
    replayed = []
    replay = CachedTeacher._replay
    monkeypatch.setattr(CachedTeacher, "_replay", lambda self, x: replayed.append(x) or replay(self, x))
    data = [BpttBatches(stream(seed), batch_size=4, bptt=10) for seed in (0, 1)]
    config = TrainConfig(epochs=2, lr=1.0, momentum=0.0, weight_decay=0.0, schedule="constant", grad_clip=1.0, progress="none")

    def model():
        return create_model("lstm_lm", vocab_size=VOCAB, embed_dim=8, hidden_dim=8, num_layers=1, dropout=0.2)

    runs = [born_again(model, data[0], data[1], ban=BornAgainConfig(generations=1, loss="ban+l", extra_losses=["ban"],
                                                                    cache_teacher=cache), optim=config, device="cpu")
            for cache in (None, "fp32")]
    assert set(runs[0].models) == {"teacher", "BAN+L-1", "BAN"}
    assert len(replayed) == 2 * 15  # two students, epoch 2 from the cache, 15 batches each
    for name, uncached in runs[0].models.items():
        cached = runs[1].models[name].state_dict()
        assert all(torch.equal(value, cached[key]) for key, value in uncached.state_dict().items()), name


def test_a_frozen_teacher_stays_in_eval_mode_without_gradients_and_is_a_copy():
    from banets.teacher import FrozenTeacher

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    teacher = FrozenTeacher(model)
    teacher.train()  # what a student's training switches on every module it reaches
    x = torch.randn(16, 4)
    first, again = teacher(x), teacher(x)
    assert not teacher.training and torch.equal(first, again)  # dropout off
    assert not first.requires_grad and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        model[0].weight.zero_()  # the student's later changes to the original do not reach the teacher
    assert torch.equal(teacher(x), first)
