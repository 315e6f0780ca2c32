"""Token files (``banets tokenize``, the ``tokens`` dataset): the text dataset's batches exactly, read from disk a
batch's rows at a time; a truncated file refused; a folder of token files never overwritten."""

import json
import os

import numpy as np
import pytest
import torch

from banets.cli import main
from banets.config import DataConfig
from banets.data.registry import DataError, build_dataset
from banets.data.tokens import write_token_files
from test_lm_pipeline import write_markov_text
from tiny import snapshot, tiny_lm


@pytest.fixture
def corpus(tmp_path):
    write_markov_text(tmp_path / "corpus")
    return tmp_path / "corpus"


def test_token_files_give_the_text_datasets_batches_exactly(corpus, tmp_path, capsys):
    assert main(["tokenize", str(corpus), "--out", str(tmp_path / "tokens"), "--max-vocab", "25"]) == 0
    assert "train with --set data.dataset=tokens" in capsys.readouterr().out
    record = json.loads((tmp_path / "tokens" / "tokens.json").read_text())
    assert record["dtype"] == "<u2" and (tmp_path / "tokens" / "train.bin").stat().st_size == 2 * record["tokens"]["train"]
    sizes = {"batch_size": 6, "eval_batch_size": 4, "bptt": 7, "train_subset": 500}
    text = build_dataset(DataConfig(dataset="text", path=str(corpus), max_vocab=25, **sizes))
    tokens = build_dataset(DataConfig(dataset="tokens", path=str(tmp_path / "tokens"), **sizes))
    assert tokens.model_options == text.model_options and tokens.metric == "perplexity" and tokens.block == 7
    for ours, theirs in ((tokens.train, text.train), (tokens.val, text.val), (tokens.test, text.test)):
        assert len(ours) == len(theirs)
        for (x, y), (x_text, y_text) in zip(ours, theirs, strict=True):
            assert torch.equal(x, x_text) and torch.equal(y, y_text) and x.dtype == torch.int64
    later = list(tokens.train.from_step(3))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(later, list(text.train)[3:], strict=True))


def test_the_first_training_tokens_as_many_as_validation_holds_are_scored_for_the_gap(corpus, tmp_path):
    """The teacher's generalisation gap in the report: as many training tokens as validation has, scored as the text
    dataset scores them (the whole training text of a large corpus would cost an epoch)."""
    assert main(["tokenize", str(corpus), "--out", str(tmp_path / "tokens"), "--max-vocab", "25"]) == 0
    valid = json.loads((tmp_path / "tokens" / "tokens.json").read_text())["tokens"]["valid"]
    sizes = {"batch_size": 6, "eval_batch_size": 4, "bptt": 7}
    tokens = build_dataset(DataConfig(dataset="tokens", path=str(tmp_path / "tokens"), **sizes))
    text = build_dataset(DataConfig(dataset="text", path=str(corpus), max_vocab=25, train_subset=valid, **sizes))
    scored = list(tokens.train_eval)
    assert len(scored) == len(tokens.val)
    for (x, y), (x_text, y_text) in zip(scored, text.train_eval, strict=True):
        assert torch.equal(x, x_text) and torch.equal(y, y_text)
    small = build_dataset(DataConfig(dataset="tokens", path=str(tmp_path / "tokens"), train_subset=100, **sizes))
    assert sum(y.numel() for _, y in small.train_eval) == (100 // 4 - 1) * 4  # no more than it trained on
    short = build_dataset(DataConfig(dataset="tokens", path=str(tmp_path / "tokens"), train_subset=30, batch_size=2,
                                     eval_batch_size=20, bptt=7))  # trains, so it is scored: in 15 streams, not 20
    assert sum(y.numel() for _, y in short.train_eval) == 15


def test_a_step_reads_only_its_rows(corpus, tmp_path, monkeypatch):
    write_token_files(corpus, tmp_path / "tokens")
    data = build_dataset(DataConfig(dataset="tokens", path=str(tmp_path / "tokens"), batch_size=5, eval_batch_size=5,
                                    bptt=6))
    reads = []
    pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, offset: reads.append(n) or pread(fd, n, offset))
    next(iter(data.train))
    assert reads == [2 * 7] * 5  # five rows of bptt + 1 uint16 ids, nothing else


def test_a_vocabulary_over_65536_words_is_written_as_uint32(tmp_path):
    (tmp_path / "big").mkdir()
    words = [f"w{i}" for i in range(70_000)]
    for split in ("train", "valid", "test"):
        (tmp_path / "big" / f"big.{split}.txt").write_text("\n".join(" ".join(words[i:i + 10]) for i in range(0, 70_000, 10)))
    record = write_token_files(tmp_path / "big", tmp_path / "tokens", max_vocab=None)
    ids = np.fromfile(tmp_path / "tokens" / "train.bin", dtype=record["dtype"])
    assert record["dtype"] == "<u4" and ids.max() == 70_001 and len(ids) == 77_000  # 70,000 words and 7,000 <eos>


def test_a_truncated_token_file_is_refused_on_resume_and_nothing_is_overwritten(corpus, tmp_path, capsys):
    assert main(["tokenize", str(corpus), "--out", str(tmp_path / "tokens")]) == 0
    args = ["run", "wap_quick", *tiny_lm(), "--set", "data={dataset: tokens, batch_size: 4, eval_batch_size: 4, bptt: 5}",
            "--data-dir", str(tmp_path / "tokens"), "--out", str(tmp_path / "out")]
    assert main(args) == 0
    before = snapshot(tmp_path / "out")
    train = tmp_path / "tokens" / "train.bin"
    train.write_bytes(train.read_bytes()[:-2])
    capsys.readouterr()
    assert main(["resume", str(tmp_path / "out"), "--set", "ban.ensembles={T+B: [teacher, BAN+L-1]}"]) == 1
    err = capsys.readouterr().err
    assert "train.bin has" in err and "truncated or replaced?" in err and err.count("\n") == 1
    assert snapshot(tmp_path / "out") == before
    tokens_before = snapshot(tmp_path / "tokens")
    assert main(["tokenize", str(corpus), "--out", str(tmp_path / "tokens")]) == 1
    assert "already holds token files" in capsys.readouterr().err and snapshot(tmp_path / "tokens") == tokens_before


def test_a_folder_without_token_files_names_the_command_that_writes_them(tmp_path):
    with pytest.raises(DataError, match="write the token files with `banets tokenize CORPUS_FOLDER --out"):
        build_dataset(DataConfig(dataset="tokens", path=str(tmp_path)))


@pytest.mark.parametrize("args, message", [
    (["--max-vocab", "2"], "--max-vocab 2 leaves no room for words beside <unk> and <eos>; give 3 or more"),
    (["--tokenizer", "bytes"], "unknown tokenizer 'bytes'; choose one of whitespace, words"),
])
def test_bad_tokenize_arguments_are_one_line_and_write_nothing(corpus, tmp_path, capsys, args, message):
    before = snapshot(corpus)
    assert main(["tokenize", str(corpus), "--out", str(tmp_path / "tokens"), *args]) == 1
    err = capsys.readouterr().err
    assert err == f"banets: error: {message}\n" and not (tmp_path / "tokens").exists() and snapshot(corpus) == before
