"""Rotary position embeddings (RoPE) for attention mixers."""

from __future__ import annotations

import torch
from torch import nn


class Rotary(nn.Module):
    """Rotates pairs of channels of q/k [B, H, L, P] by position-dependent angles (P must be even)."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary needs an even head dim, got {head_dim}")
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        L = x.shape[-2]
        pos = torch.arange(offset, offset + L, device=x.device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)  # [L, P/2]
        cos, sin = freqs.cos().to(x.dtype), freqs.sin().to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return out.flatten(-2)
