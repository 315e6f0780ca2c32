"""Batches with named inputs (dicts, Hugging Face ``BatchEncoding``): the labels are taken out, the rest reach the
model as ``model(**inputs)``, and what a model returns may be a tensor, a tuple or an object with ``.logits``.
A run on named inputs trains and scores exactly as the same run on one packed tensor does."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from banets import BornAgainConfig, TrainConfig, born_again, distributed
from banets.config import UserError
from banets.data.batches import to_batch
from banets.teacher_cache import CacheError, CachedTeacher

VOCAB, LENGTH, CLASSES = 12, 6, 3
ONE_EPOCH = TrainConfig(epochs=2, lr=0.1, progress="none")


@dataclass
class Output:  # as a Hugging Face ModelOutput holds them
    logits: torch.Tensor
    hidden: torch.Tensor | None = None


class Pooled(nn.Module):
    """Mean of the embeddings of the positions ``attention_mask`` keeps, then a linear classifier."""

    def __init__(self, returns: str = "object"):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head, self.returns = nn.Embedding(VOCAB, 8), nn.Linear(8, CLASSES), returns

    def forward(self, input_ids, attention_mask):
        mask = attention_mask[..., None].float()
        logits = self.head((self.embed(input_ids) * mask).sum(1) / mask.sum(1))
        return {"object": Output(logits), "tuple": (logits, None), "tensor": logits}[self.returns]


class Packed(Pooled):
    """The same model on one tensor ``(N, 2, L)``: the ids and the mask packed, as users had to do before."""

    def forward(self, x):
        return super().forward(x[:, 0], x[:, 1])


def examples(count: int, seed: int):
    """Token ids padded with 0 to ``LENGTH`` (the mask says where), labels from the first token."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (count, LENGTH), generator=generator)
    lengths = torch.randint(2, LENGTH + 1, (count,), generator=generator)
    mask = (torch.arange(LENGTH) < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}, ids[:, 0] % CLASSES


def as_dicts(named, labels, batch: int = 8):
    return [{**{k: v[i : i + batch] for k, v in named.items()}, "labels": labels[i : i + batch]}
            for i in range(0, len(labels), batch)]


def packed(named, labels, batch: int = 8):
    x = torch.stack([named["input_ids"], named["attention_mask"]], 1)
    return [(x[i : i + batch], labels[i : i + batch]) for i in range(0, len(labels), batch)]


def train(model_fn, train_data, val_data, **options):
    ban = options.pop("ban", BornAgainConfig(generations=1))
    return born_again(model_fn, train_data, val_data, optim=options.pop("optim", ONE_EPOCH), ban=ban, **options)


@pytest.mark.parametrize("returns", ["object", "tuple", "tensor"])
def test_named_inputs_train_exactly_as_the_same_inputs_packed_in_one_tensor(returns):
    train_set, val_set = examples(40, 0), examples(16, 1)
    named = train(lambda: Pooled(returns), as_dicts(*train_set), as_dicts(*val_set))
    tensor = train(lambda: Packed(), packed(*train_set), packed(*val_set))
    for name in ("teacher", "BAN-1"):
        for key, value in named.models[name].state_dict().items():
            torch.testing.assert_close(value, tensor.models[name].state_dict()[key], rtol=0, atol=0)
    ours, theirs = (run.results[0].predictions["val"]["BAN-1"] for run in (named, tensor))
    torch.testing.assert_close(ours.nll, theirs.nll, rtol=0, atol=0)
    assert len(ours.labels) == 16


def test_the_attention_mask_reaches_the_model():
    named, labels = examples(8, 2)
    x, _ = to_batch({**named, "labels": labels})
    unmasked = {**named, "attention_mask": torch.ones_like(named["attention_mask"])}
    model = Pooled("tensor")
    assert not torch.allclose(model(**x), model(**unmasked))


def test_a_batch_encoding_pair_and_a_label_key_of_its_own(tmp_path):
    transformers = pytest.importorskip("transformers")
    (named, labels), (val_named, val_labels) = examples(24, 3), examples(8, 4)
    encoding = transformers.BatchEncoding(named)  # what a tokenizer returns with return_tensors="pt"
    run = train(lambda: Pooled(), (encoding, labels), (transformers.BatchEncoding(val_named), val_labels),
                batch_size=8, out=tmp_path / "run")
    assert torch.equal(run.results[0].predictions["val"]["BAN-1"].labels, val_labels)
    # a dict whose labels are under a key of its own
    renamed = [{**{k: v for k, v in b.items() if k != "labels"}, "sentiment": b["labels"]} for b in as_dicts(named, labels)]
    val_renamed = [{**{k: v for k, v in b.items() if k != "labels"}, "sentiment": b["labels"]}
                   for b in as_dicts(val_named, val_labels)]
    keyed = train(lambda: Pooled(), renamed, val_renamed, label_key="sentiment")
    assert torch.equal(keyed.results[0].predictions["val"]["BAN-1"].labels, val_labels)


def test_a_named_input_the_model_does_not_take_is_refused_by_name(tmp_path):
    named, labels = examples(16, 5)
    extra = [{**b, "token_type_ids": torch.zeros_like(b["input_ids"])} for b in as_dicts(named, labels)]
    with pytest.raises(UserError) as error:
        train(lambda: Pooled(), extra, extra, out=tmp_path / "run")
    assert str(error.value) == (
        "the batches' 'token_type_ids' is not an argument of the model's forward (Pooled takes input_ids, "
        "attention_mask); leave it out of the batches (e.g. in the collate_fn), or name the labels with label_key="
    )
    assert not (tmp_path / "run").exists()

    class TakesAnything(Pooled):
        def forward(self, input_ids, attention_mask, **unused):
            return super().forward(input_ids, attention_mask)

    train(lambda: TakesAnything(), extra, extra)  # a forward with **kwargs takes any name


@pytest.mark.parametrize("batch, message", [
    ({"input_ids": torch.zeros(2, 3)}, "a dict batch needs its labels under labels/label/y/target/targets"),
    ({"labels": torch.zeros(2)}, "a dict batch holds only its labels ('labels'); add the inputs under their names"),
    ({"input_ids": torch.zeros(2, 3), "text": ["a", "b"], "labels": torch.zeros(2)},
     "its text (list) is not (drop what the model does not take, e.g. raw text, in the collate_fn)"),
])
def test_a_dict_batch_without_labels_inputs_or_tensors_is_one_line(batch, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        to_batch(batch)


def test_a_model_returning_no_logits_is_refused_before_training():
    class Strings(Pooled):
        def forward(self, input_ids, attention_mask):
            return "logits"

    named, labels = examples(8, 6)
    with pytest.raises(UserError, match="the model returned str; a model must return its logits: a tensor, a tuple"):
        train(lambda: Strings(), as_dicts(named, labels), as_dicts(named, labels))


def test_a_transform_with_named_inputs_is_refused():
    named, labels = examples(8, 6)
    with pytest.raises(UserError, match="a transform takes one input tensor, but the batches have named inputs "
                                        r"\(input_ids, attention_mask\)"):
        train(lambda: Pooled(), as_dicts(named, labels), as_dicts(named, labels), transform=lambda x, g, t: x)


def test_the_teacher_cache_replays_named_inputs_and_refuses_a_changed_batch():
    named, labels = examples(16, 7)
    batches = as_dicts(named, labels)
    cached = CachedTeacher(Pooled(), batches_per_pass=2)
    first = [cached({k: v for k, v in b.items() if k != "labels"}) for b in batches]
    cached.reset_state()
    again = [cached({k: v for k, v in b.items() if k != "labels"}) for b in batches]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    cached.reset_state()
    cached({k: v for k, v in batches[0].items() if k != "labels"})
    changed = {k: v.clone() for k, v in batches[1].items() if k != "labels"}
    changed["attention_mask"][0, -1] = 1 - changed["attention_mask"][0, -1]  # same shape, another mask
    cached(changed)
    with pytest.raises(CacheError, match="batch 1 of the last epoch differs"):
        cached.reset_state()


def test_a_cached_teacher_trains_the_student_as_an_uncached_one():
    train_set, val_set = examples(24, 8), examples(8, 9)
    runs = [train(lambda: Pooled(), as_dicts(*train_set), as_dicts(*val_set),
                  ban=BornAgainConfig(generations=1, cache_teacher=cache)) for cache in (None, "fp32")]
    for key, value in runs[0].models["BAN-1"].state_dict().items():
        torch.testing.assert_close(value, runs[1].models["BAN-1"].state_dict()[key], rtol=0, atol=0)


def test_named_inputs_split_over_processes_row_by_row(monkeypatch):
    named, labels = examples(10, 10)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    parts = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        parts.append(distributed.split_batch(copy.deepcopy(named), labels))
    for key in named:
        assert torch.equal(torch.cat([part[0][key] for part in parts]), named[key])
    assert torch.equal(torch.cat([part[1] for part in parts]), labels)
    assert sum(part[2] for part in parts) == pytest.approx(2.0)
