"""``textclass``: labelled texts from a CSV or JSON Lines file, tokenized once, in batches padded to their longest text.

Each row has a text column and a label column (``data.text_column``, ``data.label_column``). Labels that are all
integers are the classes; otherwise the label names, sorted, are classes 0 .. K-1 (recorded in ``classes.json``).
``data.tokenizer`` is ``words`` (banets' word tokenizer and a vocabulary of the training texts' ``data.max_vocab``
most frequent words), ``whitespace``, or ``hf:<path>``: a Hugging Face fast tokenizer's ``tokenizer.json`` (or the
folder holding it), read with the ``tokenizers`` library, special tokens included. Texts longer than
``data.max_length`` tokens are cut. A batch is a dict of ``input_ids``, ``attention_mask`` and ``labels``, as a
Hugging Face model takes it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from banets.config import HF, DataConfig
from banets.data.batches import check_two_classes, checked_split, data_record
from banets.data.registry import Batch, Data, DataError, register_dataset
from banets.data.text import TOKENIZERS, Vocabulary

Encode = Callable[[list[str]], list[list[int]]]


class PaddedBatches:
    """Batches of ``batch_size`` token sequences, each padded with ``pad_id`` to the longest of its batch, with their
    attention mask and labels; shuffled from torch's global generator when ``shuffle`` (as ``TensorBatches``)."""

    def __init__(self, sequences: list[Tensor], labels: Tensor, *, batch_size: int, pad_id: int, shuffle: bool = False):
        self.sequences, self.labels = sequences, labels
        self.batch_size, self.pad_id, self.shuffle = batch_size, pad_id, shuffle

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self.from_step(0)

    def from_step(self, step: int) -> Iterator[Batch]:
        """The epoch's batches from batch ``step`` on (the order drawn as for the whole epoch)."""
        order = torch.randperm(len(self.labels)) if self.shuffle else torch.arange(len(self.labels))
        for start in range(step * self.batch_size, len(self.labels), self.batch_size):
            rows = order[start : start + self.batch_size].tolist()
            parts = [self.sequences[i] for i in rows]
            lengths = torch.tensor([len(part) for part in parts])
            ids = pad_sequence(parts, batch_first=True, padding_value=self.pad_id)
            mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
            yield {"input_ids": ids, "attention_mask": mask}, self.labels[rows]


def read_rows(path: str, cfg: DataConfig) -> tuple[list[str], list[str | int]]:
    """The texts and labels of a ``.csv`` (with a header row) or ``.jsonl`` file."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"textclass: no file {file}; pass a .csv or .jsonl file of texts and labels")
    if file.suffix not in (".csv", ".jsonl"):
        raise DataError(f"textclass: {file.name} is neither .csv nor .jsonl; save the texts and labels as one of them")
    columns = (cfg.text_column, cfg.label_column)
    with file.open(encoding="utf-8-sig", newline="") as handle:  # -sig: a spreadsheet's byte order mark
        if file.suffix == ".csv":
            reader = csv.DictReader(handle)
            if reader.fieldnames:  # an empty file has none: it holds no rows
                check_header(list(reader.fieldnames), columns, file)
            rows = list(reader)
        else:
            rows = [json_row(line, file, n) for n, line in enumerate(handle, 1) if line.strip()]
    if not rows:
        raise DataError(f"textclass: {file.name} holds no rows; write one text and label per row")
    for number, row in enumerate(rows, 2 if file.suffix == ".csv" else 1):  # a CSV's first line is its header
        missing = [c for c in columns if row.get(c) is None]
        if missing:
            found = ", ".join(k for k, v in row.items() if k is not None and v is not None)
            raise DataError(f"textclass: line {number} of {file.name} has no {' or '.join(map(repr, missing))} (it has "
                            f"{found}); set data.text_column and data.label_column, or fill the row")
        if not str(row[cfg.label_column]).strip():
            raise DataError(f"textclass: line {number} of {file.name} has an empty label; fill it or remove the row")
    return [str(row[cfg.text_column]) for row in rows], [row[cfg.label_column] for row in rows]


def check_header(header: list[str], columns: tuple[str, str], file: Path) -> None:
    """A CSV's header names the text and label columns."""
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"textclass: the header of {file.name} has no {' or '.join(map(repr, missing))} column (it "
                        f"has {', '.join(header) or 'none'}); set data.text_column and data.label_column")


def json_row(line: str, file: Path, number: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"textclass: line {number} of {file.name} is not JSON ({error.msg}); write one object per "
                        f"line") from None
    if not isinstance(row, dict):
        raise DataError(f"textclass: line {number} of {file.name} is not a JSON object; one object per line")
    return row


def class_ids(labels: list[list[str | int]]) -> tuple[list[Tensor], list[str] | None]:
    """Each split's labels as class ids, and the class names when the labels are names (sorted, over all splits)."""
    every = [label for split in labels for label in split]
    if all(isinstance(v, int) or (isinstance(v, str) and v.strip().isdigit()) for v in every):
        return [torch.tensor([int(v) for v in split], dtype=torch.long) for split in labels], None
    names = sorted({str(v) for v in every})
    index = {name: i for i, name in enumerate(names)}
    return [torch.tensor([index[str(v)] for v in split], dtype=torch.long) for split in labels], names


def tokenizer_of(cfg: DataConfig, train_texts: list[str]) -> tuple[Encode, int, int, dict[str, str]]:
    """How texts become ids, the vocabulary size, the padding id and the files that record the tokenizer."""
    if cfg.tokenizer.startswith(HF):
        return hf_tokenizer(cfg.tokenizer[len(HF):], cfg.max_length)
    split = TOKENIZERS[cfg.tokenizer]
    vocab = Vocabulary.build((split(text) for text in train_texts), cfg.max_vocab)

    def encode(texts: list[str]) -> list[list[int]]:
        return [vocab.encode(split(text)[: cfg.max_length]).tolist() or [vocab.unk_id] for text in texts]

    return encode, len(vocab), vocab.unk_id, {"vocab.json": vocab.to_json()}  # padding is masked: any id will do


def hf_tokenizer(path: str, max_length: int) -> tuple[Encode, int, int, dict[str, str]]:
    """A Hugging Face fast tokenizer from its local ``tokenizer.json``."""
    file = Path(path).expanduser()
    file = file / "tokenizer.json" if file.is_dir() else file
    if not file.is_file():
        raise DataError(f"textclass: no tokenizer.json at {path}; save the tokenizer there with "
                        f"tokenizer.save_pretrained(DIR) (a fast tokenizer) and set data.tokenizer=hf:DIR")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DataError('data.tokenizer=hf:... needs tokenizers: pip install "banets[hf]"') from None
    tokenizer = Tokenizer.from_file(str(file))
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    pad_id = next((i for t in ("[PAD]", "<pad>", "<|pad|>") if (i := tokenizer.token_to_id(t)) is not None), 0)

    def encode(texts: list[str]) -> list[list[int]]:  # an empty text is one padding token, not a row of none
        return [encoding.ids or [pad_id] for encoding in tokenizer.encode_batch(texts)]

    return encode, tokenizer.get_vocab_size(), pad_id, {"tokenizer.json": file.read_text(encoding="utf-8")}


@register_dataset("textclass", options={"path", "val_path", "test_path", "val_size", "split_seed", "train_subset",
                                        "text_column", "label_column", "tokenizer", "max_vocab", "max_length"})
def textclass_data(cfg: DataConfig) -> Data:
    """Labelled texts: a .csv or .jsonl file (text and label columns), with optional validation and test files."""
    if cfg.path is None:
        raise DataError("textclass: no file; pass --data-dir FILE (a .csv or .jsonl of texts and labels)")
    splits = [read_rows(path, cfg) for path in (cfg.path, cfg.val_path, cfg.test_path) if path]
    if not cfg.val_path:  # carve the validation texts from the training file
        texts, labels = splits[0]
        carved = checked_split(len(labels), cfg.val_size, cfg.split_seed, f"the training file {cfg.path}")
        splits[:1] = [([texts[i] for i in rows], [labels[i] for i in rows]) for rows in map(Tensor.tolist, carved)]
    splits[0] = (splits[0][0][: cfg.train_subset], splits[0][1][: cfg.train_subset])
    ids, classes = class_ids([labels for _, labels in splits])
    check_two_classes(ids[0], "check data.label_column" + (" and data.train_subset" if cfg.train_subset else ""),
                      classes)
    encode, vocab_size, pad_id, files = tokenizer_of(cfg, splits[0][0])
    sequences = [[torch.tensor(s, dtype=torch.long) for s in encode(texts)] for texts, _ in splits]

    def batches(split: int, size: int, shuffle: bool = False) -> PaddedBatches:
        return PaddedBatches(sequences[split], ids[split], batch_size=size, pad_id=pad_id, shuffle=shuffle)

    flat = {name: (torch.cat(sequences[i]), torch.tensor([len(s) for s in sequences[i]]), ids[i])
            for i, name in enumerate(("train", "val", "test")[: len(splits)])}
    return Data(
        train=batches(0, cfg.batch_size, shuffle=True),
        val=batches(1, cfg.eval_batch_size),
        test=batches(2, cfg.eval_batch_size) if len(splits) == 3 else None,
        train_eval=batches(0, cfg.eval_batch_size),
        model_options={"num_classes": int(torch.cat(ids).max()) + 1, "vocab_size": vocab_size,
                       "max_length": cfg.max_length},
        files={**files, **({"classes.json": json.dumps(classes)} if classes else {}), **data_record(**flat)},
    )

