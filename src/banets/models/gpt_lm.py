"""A small GPT-style causal transformer language model, in the shape of nanoGPT's ``model.py``.

Interface of every language model here: ``model(x)`` maps word ids ``(B, T)`` to next-word logits ``(B, T, V)``.
Unlike the LSTMs it carries nothing from one call to the next: each BPTT chunk is its own context of ``T`` words,
attended causally (``scaled_dot_product_attention`` with ``is_causal``). Pre-norm blocks, learned positions, GELU
MLPs of 4x the width, the output layer tied to the word embedding (Press & Wolf, 2017), and GPT-2's initialisation
(normal 0.02, the residual projections scaled by 1/sqrt(2 x layers)).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from banets.models.registry import register_model


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in self.qkv(x).split(width, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """x + attention(norm(x)), then x + MLP(norm(x)), dropout on each residual branch."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(width), CausalSelfAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attention(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class GPTLanguageModel(nn.Module):
    def __init__(self, vocab_size: int, layers: int, heads: int, width: int, context: int, dropout: float):
        super().__init__()
        self.words, self.positions = nn.Embedding(vocab_size, width), nn.Embedding(context, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.decoder = nn.Linear(width, vocab_size, bias=False)
        self.decoder.weight = self.words.weight  # tied
        for name, parameter in self.named_parameters():
            if name.endswith("weight") and parameter.dim() == 2:
                residual = name.endswith(("attention.out.weight", "mlp.2.weight"))
                nn.init.normal_(parameter, std=0.02 / math.sqrt(2 * layers) if residual else 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(parameter)

    def forward(self, x: Tensor) -> Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        hidden = self.drop(self.words(x) + self.positions(positions))
        for block in self.blocks:
            hidden = block(hidden)
        return self.decoder(self.norm(hidden))


@register_model
def gpt_lm(vocab_size: int, layers: int = 2, heads: int = 4, width: int = 128, context: int = 128,
           dropout: float = 0.0) -> nn.Module:
    """GPT-style causal transformer LM, tied; each BPTT chunk is its whole context."""
    return GPTLanguageModel(vocab_size, layers, heads, width, context, dropout)
