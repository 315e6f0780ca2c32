"""A small transformer encoder for labelled texts (the ``textclass`` dataset's named inputs)."""

from __future__ import annotations

import torch
import torch.nn as nn

from banets.models.registry import register_model


class TransformerClassifier(nn.Module):
    """Token and learned position embeddings, ``layers`` pre-norm encoder layers (PyTorch's), the mean over the
    positions the attention mask keeps, then a linear classifier."""

    def __init__(self, vocab_size: int, num_classes: int, dim: int = 64, layers: int = 2, heads: int = 4,
                 dropout: float = 0.1, max_length: int = 512):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab_size, dim), nn.Embedding(max_length, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True)
        # no nested tensors: the same arithmetic in training and evaluation, whatever the padding
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        keep = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.encoder(self.tokens(input_ids) + self.positions(positions), src_key_padding_mask=keep == 0)
        weights = keep[..., None].to(hidden.dtype)
        return self.head(self.norm((hidden * weights).sum(1) / weights.sum(1).clamp(min=1)))


@register_model
def transformer_classifier(vocab_size: int, num_classes: int = 2, dim: int = 64, layers: int = 2, heads: int = 4,
                           dropout: float = 0.1, max_length: int = 512) -> nn.Module:
    """Transformer encoder for labelled texts (the textclass dataset's named inputs)."""
    return TransformerClassifier(vocab_size, num_classes, dim, layers, heads, dropout, max_length)
