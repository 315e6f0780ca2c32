"""Word-level LSTM language model of Zaremba et al. (2014) with weight tying (Press & Wolf, 2017).

Interface of every language model here: ``model(x)`` maps word ids ``(B, T)`` to next-word logits
``(B, T, V)``. The model is stateful, as in Zaremba et al.'s truncated backpropagation through time: it
carries the LSTM state from one call to the next (consecutive ``BpttBatches`` chunks continue the same
streams), detached so that gradients stop at the chunk boundary and the previous chunk's graph is freed.
``reset_state()`` forgets it (call it at the start of every pass over a data set); a batch of another size,
or on another device, starts from zeros. The state is a plain attribute, never part of ``state_dict``.

Which configuration is the paper's "LSTM, 52M" (Table 6)? Sec. 4.2 calls it "a single layer LSTM with 1500
units (Zaremba et al., 2014)" with weight tying; Zaremba et al.'s large model has two layers of 1500 units.
Parameter counts for the PTB vocabulary (10,000 words, embedding 1500, PyTorch's two bias vectors per gate):

    =====================  ===========  ===========
    LSTM of 1500 units      untied       tied
    =====================  ===========  ===========
    1 layer                 48,022,000   33,022,000
    2 layers                66,034,000   51,034,000
    =====================  ===========  ===========

Only two tied layers come near 52M: 51.0M (51,022,000 with a single bias vector per gate, as in Zaremba et
al.'s code; 66M untied is their own count for the large model; one layer gives 48M untied, 33M tied). Table 6's
count thus fits Zaremba et al.'s two layers, tied as Sec. 4.2 states, rather than the text's "single layer", so
``lstm_lm_large`` is Zaremba et al.'s large model with tied weights: 2 x 1500, dropout 0.65, initialisation
uniform in [-0.04, 0.04].
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from banets.models.registry import register_model

LSTMState = tuple[Tensor, Tensor]


class StatefulLSTMLanguageModel(nn.Module):
    """Word features -> multi-layer LSTM carrying its state across calls -> dropout -> linear decoder.

    Subclasses define ``word_features(x)``, the ``(B, T, input_dim)`` LSTM inputs of the word ids ``x``.
    Dropout ``dropout`` acts between LSTM layers and before the decoder, on the non-recurrent connections
    only (Zaremba et al., 2014).
    """

    def __init__(self, input_dim: int, hidden_dim: int, num_layers: int, vocab_size: int, dropout: float):
        super().__init__()
        self.lstm = nn.LSTM(
            input_dim, hidden_dim, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )
        self.output_dropout = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_dim, vocab_size)
        self._state: LSTMState | None = None

    def word_features(self, x: Tensor) -> Tensor:
        """The LSTM inputs ``(B, T, input_dim)`` of the word ids ``x`` ``(B, T)``."""
        raise NotImplementedError

    def reset_state(self) -> None:
        """Forget the carried LSTM state: the next call starts from zeros."""
        self._state = None

    def carried_state(self) -> LSTMState | None:
        """The LSTM state the next chunk starts from, for a checkpoint inside an epoch."""
        return self._state

    def load_carried_state(self, state: LSTMState | None) -> None:
        device = self.decoder.weight.device
        self._state = None if state is None else (state[0].to(device), state[1].to(device))

    def forward(self, x: Tensor) -> Tensor:
        features = self.word_features(x)
        output = self._recurrent(features.float())
        return self.decoder(self.output_dropout(output))  # under autocast when the caller has it on

    def _recurrent(self, features: Tensor) -> Tensor:
        """The LSTM over ``features`` in float32, with autocast off whatever the caller set.

        PyTorch's autocast wrapper for cuDNN RNNs (``aten/src/ATen/cudnn/AutocastRNN.cpp``) casts input, weights
        and state to fp16 whatever the autocast dtype, so under bf16 autocast the LSTM would train in fp16
        without loss scaling. In float32 the recurrence keeps its precision over the 35 unrolled steps; cuDNN
        still uses TF32 tensor cores on Ampere and later (``torch.backends.cudnn.allow_tf32`` is on by default).
        """
        with torch.autocast(features.device.type, enabled=False):
            output, (hidden, cell) = self.lstm(features, self._carried_state(features))
        self._state = hidden.detach(), cell.detach()  # truncated BPTT: no gradient into the previous chunk
        return output

    def _carried_state(self, features: Tensor) -> LSTMState | None:
        """The previous call's state, or None (zeros) if there is none that fits ``features``."""
        if self._state is None:
            return None
        hidden, _ = self._state
        if hidden.size(1) != features.size(0) or hidden.device != features.device:
            return None
        return self._state

    def init_uniform_(self, init_range: float) -> None:
        """Every parameter uniform in ``[-init_range, init_range]``, as Zaremba et al. and Kim et al. do."""
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -init_range, init_range)


class LSTMLanguageModel(StatefulLSTMLanguageModel):
    """Zaremba et al. (2014): word embedding -> dropout -> LSTM -> dropout -> decoder, optionally tied."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden_dim: int,
        num_layers: int,
        dropout: float,
        tie_weights: bool,
        init_range: float,
    ):
        if tie_weights and embed_dim != hidden_dim:
            raise ValueError(f"weight tying needs embed_dim == hidden_dim, got {embed_dim} and {hidden_dim}")
        super().__init__(embed_dim, hidden_dim, num_layers, vocab_size, dropout)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.input_dropout = nn.Dropout(dropout)
        if tie_weights:
            self.decoder.weight = self.embedding.weight  # Press & Wolf (2017): one matrix for input and output
        self.init_uniform_(init_range)

    def word_features(self, x: Tensor) -> Tensor:
        return self.input_dropout(self.embedding(x))


@register_model
def lstm_lm(
    vocab_size: int,
    embed_dim: int = 1500,
    hidden_dim: int = 1500,
    num_layers: int = 2,
    dropout: float = 0.65,
    tie_weights: bool = True,
    init_range: float = 0.04,
) -> nn.Module:
    """Word LSTM LMs (Zaremba et al. 2014); the defaults build lstm_lm_large."""
    return LSTMLanguageModel(vocab_size, embed_dim, hidden_dim, num_layers, dropout, tie_weights, init_range)


@register_model(family=lstm_lm)
def lstm_lm_large(**options: Any) -> nn.Module:
    """Table 6 row LSTM (52M): Zaremba et al.'s large 2 x 1500 LSTM, tied weights."""
    return lstm_lm(**options)


@register_model(family=lstm_lm)
def lstm_lm_small(
    embed_dim: int = 200, hidden_dim: int = 200, dropout: float = 0.0, init_range: float = 0.1, **options: Any
) -> nn.Module:
    """Zaremba et al.'s small 2 x 200 LSTM, tied: preset ptb_paper's CPU-scale model."""
    return lstm_lm(embed_dim=embed_dim, hidden_dim=hidden_dim, dropout=dropout, init_range=init_range, **options)
