"""Token files: a text corpus tokenized once into arrays of word ids on disk, read a few hundred bytes a step.

``banets tokenize CORPUS --out DIR`` (:func:`write_token_files`) reads ``prefix.{train,valid,test}.txt`` line by
line, twice for the training split (the vocabulary, then the ids), and writes ``{train,valid,test}.bin`` (the ids as
little-endian uint16, or uint32 for vocabularies over 65,536 words), ``vocab.json`` and ``tokens.json`` (the
format, the dtype, each split's token count). The ``tokens`` dataset reads them with ``os.pread``: each step reads
its batch's rows and nothing else, so a corpus of many GB trains with memory that does not grow with it (a memory
map would count every page it touched as resident until the kernel reclaims it). Batches are those the ``text``
dataset makes from the same corpus, by the same :class:`~banets.data.text.BpttBatches` over rows read from disk.
What a resume compares is read from the file system: each file's size and modification time; a file whose size is
not its recorded count is refused as truncated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from banets.config import DataConfig
from banets.data.batches import listing_digest
from banets.data.registry import Data, DataError, register_dataset
from banets.data.text import (
    SPLITS,
    TOKENIZERS,
    BpttBatches,
    Vocabulary,
    check_stream_count,
    check_token_subset,
    corpus_files,
    iter_sentences,
    scoring_streams,
)

FORMAT = "banets-tokens-1"
CHUNK = 1 << 20  # ids encoded and written at a time


def write_token_files(corpus: Path, out: Path, tokenizer: str = "whitespace", max_vocab: int | None = 10000) -> dict:
    """Tokenize the corpus folder ``corpus`` into ``out``; returns what ``tokens.json`` records."""
    if (out / "tokens.json").exists():
        raise DataError(f"{out} already holds token files; give another --out, or remove them to write them again")
    if max_vocab is not None and max_vocab < 3:
        raise DataError(f"--max-vocab {max_vocab} leaves no room for words beside <unk> and <eos>; give 3 or more")
    if tokenizer not in TOKENIZERS:
        raise DataError(f"unknown tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}")
    files, tokenize = corpus_files(corpus), TOKENIZERS[tokenizer]
    vocab = Vocabulary.build(iter_sentences(files["train"], tokenize), max_vocab)
    dtype = np.dtype("<u2") if len(vocab) <= 1 << 16 else np.dtype("<u4")
    out.mkdir(parents=True, exist_ok=True)
    counts = {split: write_ids(iter_sentences(files[split], tokenize), vocab, dtype, out / f"{split}.bin")
              for split in SPLITS}
    (out / "vocab.json").write_text(vocab.to_json(), encoding="utf-8")
    record = {"format": FORMAT, "dtype": dtype.str, "tokens": counts, "tokenizer": tokenizer}
    (out / "tokens.json").write_text(json.dumps(record, indent=1), encoding="utf-8")  # last: marks the folder whole
    return record


def write_ids(sentences: Iterable[list[str]], vocab: Vocabulary, dtype: np.dtype, path: Path) -> int:
    """Each sentence's ids and ``<eos>`` into ``path``, ``CHUNK`` ids at a time; returns how many."""
    count, buffer = 0, []
    with open(path, "wb") as file:
        for sentence in sentences:
            buffer += [vocab.id(word) for word in sentence]
            buffer.append(vocab.eos_id)
            if len(buffer) >= CHUNK:
                count += write_chunk(buffer, dtype, file)
        count += write_chunk(buffer, dtype, file)
    return count


def write_chunk(buffer: list[int], dtype: np.dtype, file) -> int:
    np.asarray(buffer, dtype=dtype).tofile(file)
    written = len(buffer)
    buffer.clear()
    return written


class TokenFile:
    """The ids of one split on disk: ``read(start, count)`` without loading the rest."""

    def __init__(self, path: Path, dtype: np.dtype, count: int):
        size = path.stat().st_size if path.is_file() else None
        if size != count * dtype.itemsize:
            found = "is missing" if size is None else f"has {size:,} bytes"
            raise DataError(f"token file {path} {found}, not the {count * dtype.itemsize:,} of the {count:,} tokens "
                            f"tokens.json records (truncated or replaced?); write it again with banets tokenize")
        self.path, self.dtype, self.count = path, dtype, count
        self._fd: int | None = None

    def read(self, start: int, count: int) -> np.ndarray:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        data = os.pread(self._fd, count * self.dtype.itemsize, start * self.dtype.itemsize)
        return np.frombuffer(data, dtype=self.dtype)

    def __getstate__(self) -> dict:  # a copy (a worker process) opens its own descriptor
        return {**self.__dict__, "_fd": None}


class FileStreams:
    """A token file as :func:`~banets.data.text.batchify` lays the ids out, ``batch_size`` rows of
    ``row_length``, without reading it: indexing ``[:, start:stop]`` reads those columns, one run per row."""

    def __init__(self, tokens: TokenFile, batch_size: int, limit: int | None = None):
        self.tokens, self.batch_size = tokens, batch_size
        self.row_length = min(tokens.count, limit or tokens.count) // batch_size

    def size(self, dim: int) -> int:
        return (self.batch_size, self.row_length)[dim]

    def __getitem__(self, index: tuple[slice, slice]) -> Tensor:
        start, stop = index[1].start, index[1].stop
        rows = [self.tokens.read(row * self.row_length + start, stop - start) for row in range(self.batch_size)]
        return torch.from_numpy(np.stack(rows).astype(np.int64))


def token_batches(tokens: TokenFile, batch_size: int, bptt: int, split: str, key: str,
                  limit: int | None = None) -> BpttBatches:
    """The ``text`` dataset's :class:`~banets.data.text.BpttBatches` of one split, read from its token file."""
    check_stream_count(min(tokens.count, limit or tokens.count), batch_size, split, key)
    return BpttBatches(FileStreams(tokens, batch_size, limit), batch_size, bptt)


def read_record(folder: Path) -> dict:
    path = folder / "tokens.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise DataError(f"{folder} holds no readable tokens.json; write the token files with "
                        f"`banets tokenize CORPUS_FOLDER --out {folder}`") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("dtype") not in ("<u2", "<u4"):
        raise DataError(f"{path} is not a {FORMAT} record; write the token files again with banets tokenize")
    return record


@register_dataset("tokens", options={"path", "train_subset", "bptt"},
                  summary="a corpus written by `banets tokenize`, read from disk a batch at a time")
def tokens_data(cfg: DataConfig) -> Data:
    """Token files (``banets tokenize``): the ``text`` dataset's batches, read from disk a batch at a time."""
    if cfg.path is None:
        raise DataError("tokens: no folder given; pass --data-dir DIR written by `banets tokenize`")
    folder = Path(cfg.path)
    record, vocab = read_record(folder), Vocabulary.load(folder / "vocab.json")
    dtype = np.dtype(record["dtype"])
    files = {split: TokenFile(folder / f"{split}.bin", dtype, int(record["tokens"][split])) for split in SPLITS}
    limit = cfg.train_subset
    check_token_subset(limit, files["train"].count)
    listing = {split: listing_digest(folder, [file.path]) for split, file in files.items()}
    scored = min(limit or files["train"].count, files["valid"].count)
    return Data(
        train=token_batches(files["train"], cfg.batch_size, cfg.bptt, "train", "batch_size", limit),
        val=token_batches(files["valid"], cfg.eval_batch_size, cfg.bptt, "valid", "eval_batch_size"),
        test=token_batches(files["test"], cfg.eval_batch_size, cfg.bptt, "test", "eval_batch_size"),
        # the first training tokens, as many as validation holds, scored as it is: the teacher's generalisation gap
        # in the report, for what one validation pass costs however large the corpus
        train_eval=token_batches(files["train"], scoring_streams(scored, cfg.eval_batch_size), cfg.bptt, "train",
                                 "eval_batch_size", scored),
        model_options={"vocab_size": len(vocab), "words": vocab.words},
        files={"vocab.json": vocab.to_json(), "data.json": json.dumps({**listing, "tokens": record}, indent=1)},
        metric="perplexity",
        block=cfg.bptt,
        options_in_files={"words": "vocab.json"},
    )
