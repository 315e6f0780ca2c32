"""Character-aware language model of Kim et al. (2016), the paper's "ConvLSTM, 19M" (Table 6).

Each word is spelled as characters between begin- and end-of-word markers; 15-dimensional character
embeddings pass through convolutions of several widths, max-over-time pooling and tanh, then highway layers
(Srivastava et al., 2015), and the resulting word vectors feed a 2-layer LSTM whose output predicts the next
word over the word vocabulary. The input is still word ids: the model holds each word's spelling in a buffer
built from the vocabulary's word list, so data and training loop are those of the word LSTM, and it carries
its state across calls the same way (``StatefulLSTMLanguageModel``).

Kim et al.'s configurations (their Table 2), both with dropout 0.5 on the LSTM's non-recurrent connections
except the highway-to-LSTM input, parameters uniform in [-0.05, 0.05] and highway gate biases at -2:

- large: widths 1-7 with min(200, 50 w) filters (50, 100, 150, 200, 200, 200, 200: 1100 in all), 2 highway
  layers, 2 x 650 LSTM. Kim et al. report 19M parameters on PTB; here, for 10,000 words, 19,372,400 plus 15 per
  character of the character table (3 markers, the letters, one per special word): 19,372,865 for a
  10,000-word vocabulary over a-z with ``<unk>`` and ``<eos>`` (31 characters).
- small: widths 1-6 with 25 w filters (525 in all), 1 highway layer, 2 x 300 LSTM. Kim et al. report 5M;
  here 5,311,750 plus 15 per character (5,312,215 for the same 31 characters).

Words written ``<like this>`` (the vocabulary's ``<unk>`` and ``<eos>``) are spelled as one reserved
character each, as Kim et al.'s code spells ``<unk>`` as ``|`` and the end of sentence as ``+``.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from banets.models.lstm_lm import StatefulLSTMLanguageModel
from banets.models.registry import register_model

PADDING, BEGIN_OF_WORD, END_OF_WORD = 0, 1, 2


def spell_words(words: Sequence[str], min_length: int = 1) -> Tensor:
    """Character ids of ``words``, ``(len(words), L)``: begin-of-word, the characters, end-of-word, then padding
    up to the longest spelling (at least ``min_length``). A ``<special>`` word is one character of its own."""
    spellings = [_spelling(word) for word in words]
    char_ids = {char: i for i, char in enumerate(alphabet(words), start=END_OF_WORD + 1)}
    length = max(min_length, 2 + max(map(len, spellings)))
    table = torch.full((len(words), length), PADDING, dtype=torch.long)
    for row, spelling in enumerate(spellings):
        table[row, : len(spelling) + 2] = torch.tensor([BEGIN_OF_WORD, *map(char_ids.get, spelling), END_OF_WORD])
    return table


def alphabet(words: Sequence[str]) -> list[str]:
    """The characters of the spellings of ``words``, sorted: ``spell_words`` numbers them from ``END_OF_WORD + 1``."""
    return sorted({char for word in words for char in _spelling(word)})


def _spelling(word: str) -> list[str]:
    """The characters of ``word``, or the word itself for a ``<special>`` word (one character of its own)."""
    return [word] if len(word) > 2 and word.startswith("<") and word.endswith(">") else list(word)


class CharCNN(nn.Module):
    """Character embeddings -> one convolution per width -> max over time -> tanh, concatenated (Kim et al.)."""

    def __init__(self, num_chars: int, char_dim: int, widths: Sequence[int], filters: Sequence[int]):
        super().__init__()
        if len(widths) != len(filters):
            raise ValueError(f"one filter count per width: {len(widths)} widths, {len(filters)} filter counts")
        self.embedding = nn.Embedding(num_chars, char_dim, padding_idx=PADDING)
        self.convolutions = nn.ModuleList(nn.Conv1d(char_dim, count, width) for width, count in zip(widths, filters))
        self.output_dim = sum(filters)

    def forward(self, spellings: Tensor) -> Tensor:
        chars = self.embedding(spellings).transpose(1, 2)  # (N, char_dim, L)
        # tanh is increasing, so tanh after the max equals Kim et al.'s max of tanh, on fewer values
        return torch.cat([torch.tanh(conv(chars).amax(dim=2)) for conv in self.convolutions], dim=1)


class Highway(nn.Module):
    """``t * relu(W_H y + b_H) + (1 - t) * y`` with the transform gate ``t = sigmoid(W_T y + b_T)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.transform = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, dim)

    def forward(self, y: Tensor) -> Tensor:
        gate = torch.sigmoid(self.gate(y))
        return gate * F.relu(self.transform(y)) + (1 - gate) * y


class CharacterAwareLanguageModel(StatefulLSTMLanguageModel):
    """Kim et al. (2016): word spellings -> CharCNN -> highway layers -> LSTM -> dropout -> decoder."""

    spellings: Tensor  # a buffer: each word's characters, padded

    def __init__(
        self,
        words: Sequence[str],
        char_dim: int,
        widths: Sequence[int],
        filters: Sequence[int],
        highway_layers: int,
        hidden_dim: int,
        num_layers: int,
        dropout: float,
        init_range: float,
    ):
        spellings = spell_words(words, min_length=max(widths))
        # the table's largest id + 1, counted without reading the table, so that the model builds on the meta device
        char_cnn = CharCNN(END_OF_WORD + 1 + len(alphabet(words)), char_dim, widths, filters)
        super().__init__(char_cnn.output_dim, hidden_dim, num_layers, len(words), dropout)
        self.register_buffer("spellings", spellings)
        self.char_cnn = char_cnn
        self.highways = nn.Sequential(*(Highway(char_cnn.output_dim) for _ in range(highway_layers)))
        self.init_uniform_(init_range)
        with torch.no_grad():
            char_cnn.embedding.weight[PADDING].zero_()
            for highway in self.highways:  # carry the input through at first (Kim et al.'s code)
                typing.cast(Highway, highway).gate.bias.fill_(-2.0)

    def word_features(self, x: Tensor) -> Tensor:
        """Word vectors of ``x``, one per token. Computing them once per distinct word would need ``torch.unique``,
        whose data-dependent size makes the host wait for the GPU at every step; spelling every token instead costs
        about 12% more CPU time per step of ``cnn_lstm_small`` on PTB-like batches (383 distinct words in 700
        tokens) and little on a GPU, and gives the same vectors."""
        return self.highways(self.char_cnn(self.spellings[x.reshape(-1)])).view(*x.shape, -1)


@register_model
def cnn_lstm(
    words: Sequence[str],
    char_dim: int = 15,
    widths: Sequence[int] = (1, 2, 3, 4, 5, 6, 7),
    filters: Sequence[int] = (50, 100, 150, 200, 200, 200, 200),
    highway_layers: int = 2,
    hidden_dim: int = 650,
    num_layers: int = 2,
    dropout: float = 0.5,
    init_range: float = 0.05,
) -> nn.Module:
    """Character-aware LMs (Kim et al. 2016); the defaults build cnn_lstm_large.

    The vocabulary ``words`` is in id order."""
    return CharacterAwareLanguageModel(
        words, char_dim, tuple(widths), tuple(filters), highway_layers, hidden_dim, num_layers, dropout, init_range
    )


@register_model(family=cnn_lstm)
def cnn_lstm_large(**options: Any) -> nn.Module:
    """Table 6 row ConvLSTM (19M): Kim et al.'s LSTM-Char-Large."""
    return cnn_lstm(**options)


@register_model(family=cnn_lstm)
def cnn_lstm_small(
    widths: Sequence[int] = (1, 2, 3, 4, 5, 6),
    filters: Sequence[int] = (25, 50, 75, 100, 125, 150),
    highway_layers: int = 1,
    hidden_dim: int = 300,
    **options: Any,
) -> nn.Module:
    """Kim et al.'s LSTM-Char-Small (5M): a CPU-scale ConvLSTM; not in the paper."""
    return cnn_lstm(widths=widths, filters=filters, highway_layers=highway_layers, hidden_dim=hidden_dim, **options)
