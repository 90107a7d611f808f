"""A token-level sequence model on any registered mixer: embedding, mixer stack, LM head."""

from __future__ import annotations

import torch
from torch import nn

from mmseq.mixers.blocks import MixerStack
from mmseq.runner.pretrained import PretrainedMixin


class SequenceLM(PretrainedMixin, nn.Module):
    """tokens [B, L] (int64) -> logits [B, L, vocab_size]."""

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 2, mixer: dict | None = None,
                 causal: bool = True, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.trunk = MixerStack(d_model, n_layers, dict(mixer or {"name": "attention"}), causal=causal,
                                mlp_ratio=mlp_ratio, dropout=dropout)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(self.embed(tokens)))
