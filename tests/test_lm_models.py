"""Language models: the (B, T) -> (B, T, V) interface, the carried LSTM state, tying, parameter counts."""

from __future__ import annotations

import copy
import math
import random
import string
from itertools import product
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from banets.data.text import BpttBatches, load_corpus
from banets.models import create_model, list_models
from banets.models.cnn_lstm import spell_words
from banets.models.lstm_lm import StatefulLSTMLanguageModel

VOCAB_SIZE = 40
WORDS = ["<unk>", "<eos>", *("".join(letters) for letters in product("abcdefg", repeat=2))][:VOCAB_SIZE]


def tiny_model(family: str, **overrides) -> StatefulLSTMLanguageModel:
    torch.manual_seed(0)
    if family == "lstm_lm":
        kwargs = dict(vocab_size=VOCAB_SIZE, embed_dim=16, hidden_dim=16, num_layers=2, dropout=0.2)
    else:
        kwargs = dict(words=WORDS, char_dim=5, widths=(1, 2, 3), filters=(4, 6, 6), highway_layers=1, hidden_dim=16)
    return create_model(family, **{**kwargs, **overrides})


def tokens(batch_size: int, steps: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(VOCAB_SIZE, (batch_size, steps), generator=torch.Generator().manual_seed(seed))


FAMILIES = ["lstm_lm", "cnn_lstm"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only spins on shared cores


def test_registered_names() -> None:
    assert {"lstm_lm", "lstm_lm_large", "lstm_lm_small", "cnn_lstm", "cnn_lstm_large", "cnn_lstm_small"} <= set(
        list_models()
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_backward_shapes(family: str) -> None:
    model = tiny_model(family).train()
    logits = model(tokens(3, 7))
    assert logits.shape == (3, 7, VOCAB_SIZE) and torch.isfinite(logits).all()
    F.cross_entropy(logits.flatten(0, 1), tokens(3, 7, seed=2).flatten()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("family", FAMILIES)
def test_state_carries_across_calls_and_reset_forgets(family: str) -> None:
    model = tiny_model(family).eval()
    x = tokens(2, 12)
    with torch.no_grad():
        whole = model(x)
        model.reset_state()
        halves = torch.cat([model(x[:, :5]), model(x[:, 5:])], dim=1)
        model.reset_state()
        fresh_second_half = model(x[:, 5:])
    torch.testing.assert_close(halves, whole, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fresh_second_half, whole[:, 5:], atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_new_batch_size_starts_from_zeros(family: str) -> None:
    model = tiny_model(family).eval()
    x = tokens(2, 6)
    with torch.no_grad():
        model(tokens(3, 6, seed=5))
        after_other_batch = model(x)
        model.reset_state()
        from_zeros = model(x)
    torch.testing.assert_close(after_other_batch, from_zeros)


@pytest.mark.parametrize("family", FAMILIES)
def test_state_is_not_in_state_dict(family: str) -> None:
    model = tiny_model(family)
    keys = set(model.state_dict())
    model(tokens(2, 4))
    assert set(model.state_dict()) == keys
    assert not any("state" in key for key in keys)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_stops_at_the_chunk_boundary(family: str) -> None:
    model = tiny_model(family).eval()  # eval: no dropout, so the two copies compute the same thing
    reference = copy.deepcopy(model)
    first, second = tokens(2, 5), tokens(2, 5, seed=3)
    model(first)  # its graph is kept: a carried state that were not detached would lead back into it
    model(second).sum().backward()
    with torch.no_grad():
        reference(first)
    reference(second).sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_weight_tying_shares_one_parameter() -> None:
    model = tiny_model("lstm_lm")
    assert model.decoder.weight is model.embedding.weight
    assert tiny_model("lstm_lm", tie_weights=False).decoder.weight is not model.embedding.weight
    with pytest.raises(ValueError, match="embed_dim == hidden_dim"):
        tiny_model("lstm_lm", embed_dim=8)


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_model_has_perplexity_of_the_vocabulary_size(family: str) -> None:
    model = tiny_model(family, **({"tie_weights": False} if family == "lstm_lm" else {}))
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.zero_()
        logits = model(tokens(2, 9))
    loss = F.cross_entropy(logits.flatten(0, 1), tokens(2, 9, seed=4).flatten())
    assert math.exp(loss.item()) == pytest.approx(VOCAB_SIZE, rel=1e-5)


def test_autocast_state_carries_between_precisions() -> None:
    model = tiny_model("lstm_lm").eval()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(tokens(2, 4))
            assert torch.isfinite(model(tokens(2, 4)).float()).all()
        assert model(tokens(2, 4)).dtype == torch.float32


def test_spellings_mark_word_boundaries_and_special_words() -> None:
    table = spell_words(["<unk>", "<eos>", "ab", "b"], min_length=5)
    # characters: 0 padding, 1 begin, 2 end, then <eos>=3, <unk>=4, a=5, b=6 (sorted)
    assert table.tolist() == [[1, 4, 2, 0, 0], [1, 3, 2, 0, 0], [1, 5, 6, 2, 0], [1, 6, 2, 0, 0]]


def write_markov_corpus(folder: Path, seed: int = 0) -> None:
    """Sentences from a made-up first-order Markov chain, in PTB's format (learnable, unlike uniform noise)."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=4)) for _ in range(30)]
    successors = {word: rng.sample(words, 2) for word in words}
    folder.mkdir()
    for split, n_lines in (("train", 150), ("valid", 20), ("test", 20)):
        lines = []
        for _ in range(n_lines):
            sentence = [rng.choice(words)]
            while len(sentence) < rng.randint(4, 12):
                sentence.append(rng.choice(successors[sentence[-1]]))
            lines.append(" ".join(sentence))
        (folder / f"ptb.{split}.txt").write_text("\n".join(lines) + "\n")


def test_training_perplexity_falls(tmp_path: Path) -> None:
    write_markov_corpus(tmp_path / "ptb")
    corpus = load_corpus(tmp_path / "ptb")
    torch.manual_seed(0)
    model = create_model("lstm_lm", vocab_size=len(corpus.vocab), embed_dim=32, hidden_dim=32, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    batches = BpttBatches(corpus.train, batch_size=8, bptt=20)
    perplexities = []
    for _ in range(5):  # 7 chunks an epoch
        model.reset_state()
        for x, y in batches:
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            perplexities.append(math.exp(loss.item()))
    assert len(perplexities) == 35
    assert perplexities[0] == pytest.approx(len(corpus.vocab), rel=0.2)
    assert sum(perplexities[-5:]) / 5 < 0.6 * perplexities[0]


@pytest.mark.parametrize(
    "num_layers, tie_weights, expected",
    [(1, False, 48_022_000), (1, True, 33_022_000), (2, False, 66_034_000), (2, True, 51_034_000)],
)
def test_lstm_parameter_counts(num_layers: int, tie_weights: bool, expected: int) -> None:
    model = create_model("lstm_lm", vocab_size=10000, num_layers=num_layers, tie_weights=tie_weights)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_named_configuration_parameter_counts() -> None:
    letter_words = ["<unk>", "<eos>", *("".join(w) for w in product(string.ascii_lowercase, repeat=3))][:10000]
    counts = {
        "lstm_lm_large": create_model("lstm_lm_large", vocab_size=10000),
        "lstm_lm_small": create_model("lstm_lm_small", vocab_size=10000),
        "cnn_lstm_large": create_model("cnn_lstm_large", words=letter_words),
        "cnn_lstm_small": create_model("cnn_lstm_small", words=letter_words),
    }
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in counts.items()}
    assert counts == {
        "lstm_lm_large": 51_034_000,  # the paper's "LSTM, 52M"
        "lstm_lm_small": 2_653_200,
        "cnn_lstm_large": 19_372_865,  # the paper's "ConvLSTM, 19M"
        "cnn_lstm_small": 5_312_215,
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_lstm_runs_in_float32_with_autocast_off_and_the_decoder_under_autocast(family: str) -> None:
    """cuDNN's autocast wrapper would run the LSTM in fp16 under any autocast dtype: the model turns autocast off."""
    model = tiny_model(family)
    seen = []
    model.lstm.register_forward_hook(lambda module, inputs, output: seen.append(
        (torch.is_autocast_enabled("cpu"), inputs[0].dtype, output[0].dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(tokens(2, 5))
        model(tokens(2, 5))  # with the carried state
    assert seen == [(False, torch.float32, torch.float32)] * 2
    assert logits.dtype == torch.bfloat16  # the decoder stays under autocast
    assert all(state.dtype == torch.float32 for state in model._state)


def test_cnn_lstm_spells_every_token_without_torch_unique(monkeypatch) -> None:
    """Word vectors per token equal those computed once per distinct word (the sync-free path gives the same values)."""
    model = tiny_model("cnn_lstm")
    x = tokens(3, 7)
    distinct, positions = torch.unique(x, return_inverse=True)
    expected = model.highways(model.char_cnn(model.spellings[distinct]))[positions]
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), model.char_cnn.embedding.weight)

    def no_unique(*args, **kwargs):
        raise AssertionError("torch.unique waits for the GPU")

    monkeypatch.setattr(torch, "unique", no_unique)
    features = model.word_features(x)
    (grad,) = torch.autograd.grad(features.square().sum(), model.char_cnn.embedding.weight)
    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(grad, expected_grad)
