"""Residual blocks and stacks of mixers: the trunk every domain model is built on."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import create_mixer


class MLP(nn.Module):
    """Position-wise feed-forward: x [B, L, D] -> [B, L, D] (GELU, hidden = ratio * D)."""

    def __init__(self, d_model: int, ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(d_model * ratio)
        self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MixerBlock(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x)), then x + mlp(norm(x)) when mlp_ratio > 0."""

    def __init__(self, d_model: int, mixer: dict, *, causal: bool = True, mlp_ratio: float = 4.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        hparams = {k: v for k, v in mixer.items() if k != "name"}
        self.norm1 = nn.LayerNorm(d_model)
        self.mixer = create_mixer(mixer["name"], d_model, causal=causal, **hparams)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model) if mlp_ratio > 0 else None
        self.mlp = MLP(d_model, mlp_ratio, dropout) if mlp_ratio > 0 else None

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"context": context} if context is not None else {}
        x = x + self.drop(self.mixer(self.norm1(x), **kwargs))
        if self.mlp is not None:
            x = x + self.drop(self.mlp(self.norm2(x)))
        return x

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """x_t: [B, D] -> ([B, D], state)."""
        y, state = self.mixer.step(self.norm1(x_t), state)
        x_t = x_t + y
        if self.mlp is not None:
            x_t = x_t + self.mlp(self.norm2(x_t))
        return x_t, state


class MixerStack(nn.Module):
    """n_layers MixerBlocks and a final norm: x [B, L, D] -> [B, L, D]; streams with init_state/step."""

    def __init__(self, d_model: int, n_layers: int, mixer: dict, *, causal: bool = True,
                 mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            MixerBlock(d_model, mixer, causal=causal, mlp_ratio=mlp_ratio, dropout=dropout)
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, context=context)
        return self.norm(x)

    def init_state(self, batch_size: int, device=None, dtype=None) -> list:
        return [b.mixer.init_state(batch_size, device=device, dtype=dtype) for b in self.blocks]

    def step(self, x_t: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        new_state = []
        for block, s in zip(self.blocks, state):
            x_t, s = block.step(x_t, s)
            new_state.append(s)
        return self.norm(x_t), new_state
