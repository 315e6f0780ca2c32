"""Text corpora, vocabularies and Zaremba batches, on a small generated corpus in PTB's format."""

from __future__ import annotations

import hashlib
import io
import json
import random
import string
from collections import Counter
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

from banets.data import text
from banets.data.cifar import DataError
from banets.data.text import EOS, UNK, BpttBatches, Vocabulary, batchify, load_corpus, tokenize_words


def made_up_words(count: int, rng: random.Random) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 8)))
        if word not in words:
            words.append(word)
    return words


def write_corpus(folder: Path, prefix: str = "ptb", n_words: int = 300, seed: int = 0) -> None:
    """Sentences of Zipf-distributed made-up words, one per line, in ``prefix.{train,valid,test}.txt``."""
    rng = random.Random(seed)
    words = made_up_words(n_words, rng)
    zipf = [1 / rank for rank in range(1, n_words + 1)]
    folder.mkdir(parents=True, exist_ok=True)
    for split, n_lines in (("train", 400), ("valid", 60), ("test", 60)):
        lines = [" " + " ".join(rng.choices(words, zipf, k=rng.randint(3, 15))) + " " for _ in range(n_lines)]
        (folder / f"{prefix}.{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def ptb_folder(tmp_path: Path) -> Path:
    write_corpus(tmp_path / "ptb")
    return tmp_path / "ptb"


def test_round_trip_and_saved_vocabulary(ptb_folder: Path, tmp_path: Path) -> None:
    corpus = load_corpus(ptb_folder, max_vocab=None)
    lines = (ptb_folder / "ptb.train.txt").read_text().splitlines()  # every word in the uncapped vocabulary
    assert corpus.vocab.decode(corpus.train) == [w for line in lines for w in (*line.split(), EOS)]
    assert corpus.vocab.decode(corpus.vocab.encode(lines[0].split())) == lines[0].split()
    assert corpus.train.dtype == torch.long and corpus.train.dim() == 1

    (tmp_path / "vocab.json").write_text(corpus.vocab.to_json(), encoding="utf-8")  # as a run directory records it
    reloaded = Vocabulary.load(tmp_path / "vocab.json")
    assert reloaded == corpus.vocab
    again = load_corpus(ptb_folder, vocab=reloaded)
    assert torch.equal(again.test, corpus.test)


def test_vocabulary_capping_keeps_the_most_frequent(ptb_folder: Path) -> None:
    corpus = load_corpus(ptb_folder, max_vocab=50)
    vocab = corpus.vocab
    assert len(vocab) == 50 and vocab.words[:2] == [UNK, EOS]
    counts = Counter((ptb_folder / "ptb.train.txt").read_text().split())
    ranked = sorted(counts, key=counts.__getitem__, reverse=True)
    assert vocab.words[2] == ranked[0]
    assert min(counts[w] for w in vocab.words[2:]) >= max(counts[w] for w in counts if w not in vocab)
    rare_word = ranked[-1]
    assert rare_word not in vocab and vocab.encode([rare_word]).tolist() == [vocab.unk_id]
    n_unk = sum(n for w, n in counts.items() if w not in vocab)
    assert int((corpus.train == vocab.unk_id).sum()) == n_unk


def test_ties_are_broken_by_first_occurrence() -> None:
    vocab = Vocabulary.build([["b", "a", "c"], ["c", "a", UNK]], max_size=4)
    assert vocab.words == [UNK, EOS, "a", "c"]


def test_autodetects_any_prefix_and_explicit_files(tmp_path: Path) -> None:
    write_corpus(tmp_path / "wap", prefix="wap")
    assert len(load_corpus(tmp_path / "wap").train) > 0
    (tmp_path / "wap" / "wap.train.txt").rename(tmp_path / "wap" / "novel-train.txt")
    files = {"train": "novel-train.txt", "valid": "wap.valid.txt", "test": "wap.test.txt"}
    assert len(load_corpus(tmp_path / "wap", files=files).valid) > 0


def test_words_tokenizer_on_raw_text(tmp_path: Path) -> None:
    assert tokenize_words("“Don’t tease! Well,” said the wound-up Prince.") == [
        "“", "don’t", "tease", "!", "well", ",", "”", "said", "the", "wound-up", "prince", ".",
    ]
    for split in ("train", "valid", "test"):
        (tmp_path / f"novel.{split}.txt").write_text("Well, Prince.\n\n  \nSo Genoa!\n", encoding="utf-8")
    corpus = load_corpus(tmp_path, tokenizer="words")
    assert corpus.vocab.decode(corpus.train) == ["well", ",", "prince", ".", EOS, "so", "genoa", "!", EOS]


@pytest.mark.parametrize(
    "prepare, message",
    [
        (lambda folder: (folder / "ptb.test.txt").unlink(), "missing corpus file"),
        (lambda folder: (folder / "ptb.valid.txt").write_text("\n \n"), "holds no text"),
        (lambda folder: write_corpus(folder, prefix="other"), "expected one *.train.txt"),
        (lambda folder: (folder / "ptb.train.txt").unlink(), "holds no *.train.txt; a corpus is prefix.train.txt"),
    ],
)
def test_missing_or_empty_files_are_one_line_errors(ptb_folder: Path, prepare, message: str) -> None:
    prepare(ptb_folder)
    with pytest.raises(DataError, match=message.replace("*", r"\*")) as error:
        load_corpus(ptb_folder)
    assert "\n" not in str(error.value)


def test_download_failure_tells_to_pass_a_local_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, timeout: float):
        raise URLError("no network")

    monkeypatch.setattr(text, "urlopen", offline)
    with pytest.raises(DataError, match="pass a local folder") as error:
        load_corpus(tmp_path / "ptb", download=True)
    assert "\n" not in str(error.value) and not list((tmp_path / "ptb").iterdir())


def test_download_writes_the_ptb_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[str] = []

    def fake_urlopen(url: str, timeout: float):
        served.append(url)
        return io.BytesIO(b" the cat <unk> \n a dog \n")

    monkeypatch.setattr(text, "urlopen", fake_urlopen)
    pinned = hashlib.md5(b" the cat <unk> \n a dog \n").hexdigest()
    monkeypatch.setattr(text, "PTB_MD5", {split: pinned for split in ("train", "valid", "test")})
    corpus = load_corpus(tmp_path / "ptb", download=True)
    assert [u.rsplit("/", 1)[1] for u in served] == ["ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"]
    assert corpus.vocab.decode(corpus.test) == ["the", "cat", UNK, EOS, "a", "dog", EOS]


def test_a_download_whose_checksum_differs_is_refused_and_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "urlopen", lambda url, timeout: io.BytesIO(b"tampered text\n"))
    with pytest.raises(DataError, match=r"has md5 [0-9a-f]{32}, expected f26c4b92c5fdc7b3f8c7cdcb991d8420; retry"):
        load_corpus(tmp_path / "ptb", download=True)
    assert not list((tmp_path / "ptb").iterdir())  # neither the file nor its partial download stays


def test_batchify_cuts_contiguous_streams() -> None:
    ids = torch.arange(103)
    streams = batchify(ids, 4)
    assert streams.shape == (4, 25)
    for row in range(4):
        assert torch.equal(streams[row], ids[row * 25 : (row + 1) * 25])


def test_bptt_batches_shift_and_carry_over() -> None:
    ids = torch.arange(1000) * 7 % 101
    batches = BpttBatches(ids, batch_size=5, bptt=35)
    chunks = list(batches)
    assert len(batches) == len(chunks) == 6  # 199 inputs per stream: 5 chunks of 35 and one of 24
    assert [x.shape for x, _ in chunks] == [(5, 35)] * 5 + [(5, 24)]
    streams = batchify(ids, 5)
    assert torch.equal(torch.cat([x for x, _ in chunks], dim=1), streams[:, :-1])
    assert torch.equal(torch.cat([y for _, y in chunks], dim=1), streams[:, 1:])
    assert all(x.dtype == y.dtype == torch.long for x, y in chunks)
    assert batches.n_targets == 5 * 199


def test_bptt_batches_exact_multiple_and_too_short() -> None:
    assert len(BpttBatches(torch.arange(71), batch_size=1, bptt=35)) == 2
    with pytest.raises(ValueError):
        batchify(torch.arange(5), batch_size=4)


def test_train_subset_keeps_the_first_training_tokens_and_the_whole_vocabulary(ptb_folder: Path) -> None:
    from banets.config import DataConfig
    from banets.data.registry import build_dataset

    full = load_corpus(ptb_folder)
    cfg = DataConfig(dataset="text", path=str(ptb_folder), train_subset=40, batch_size=2, eval_batch_size=2, bptt=5)
    data = build_dataset(cfg)
    assert torch.equal(data.train.streams.reshape(-1), full.train[:40])  # 2 streams of 20: the first 40 tokens, in order
    assert data.model_options["vocab_size"] == len(full.vocab)  # the vocabulary still comes from the whole training split
    assert data.metric == "perplexity" and json.loads(data.files["vocab.json"])["words"] == full.vocab.words
    with pytest.raises(DataError, match=f"data.train_subset=100000 is more than the {full.train.numel()} training tokens"):
        build_dataset(DataConfig(dataset="text", path=str(ptb_folder), train_subset=100_000))
