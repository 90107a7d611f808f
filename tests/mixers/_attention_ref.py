"""Attention written out for the mixer tests, independent of the mixers' code: rotary as an explicit 2x2
rotation per channel pair, projections from the mixer's weight matrices, a masked softmax, all in float64.

Test files import it as ``from tests.mixers._attention_ref import ...`` (pytest imports ``tests`` as a package).
"""

from __future__ import annotations

import math

import torch


def rotate(x: torch.Tensor, offset: int = 0, base: float = 10000.0) -> torch.Tensor:
    """RoPE by its definition: at position p = offset + l, channels (2i, 2i+1) of x [..., L, P] turn by the angle
    p * base^(-2i/P): (a, b) -> (a cos - b sin, a sin + b cos). One 2x2 rotation at a time, in float64."""
    L, P = x.shape[-2:]
    x = x.double()
    out = torch.empty_like(x)
    for l in range(L):
        for i in range(P // 2):
            theta = (offset + l) * base ** (-2 * i / P)
            c, s = math.cos(theta), math.sin(theta)
            a, b = x[..., l, 2 * i], x[..., l, 2 * i + 1]
            out[..., l, 2 * i] = c * a - s * b
            out[..., l, 2 * i + 1] = s * a + c * b
    return out


def _linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    y = x.double() @ layer.weight.double().T
    return y if layer.bias is None else y + layer.bias.double()


def _heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, L, H*P] -> [B, H, L, P]: head h owns channels h*P .. (h+1)*P - 1."""
    B, L, D = t.shape
    return t.reshape(B, L, n_heads, D // n_heads).permute(0, 2, 1, 3)


def project(m, x: torch.Tensor, context: torch.Tensor | None = None, rotary: bool = True):
    """q from x, k and v from ``context`` (default x) with the mixer's q_proj / kv_proj weights (kv_proj's
    output is [k | v]); rotary on q and k when asked. -> q, k, v [B, H, L, P] in float64."""
    src = x if context is None else context
    q = _heads(_linear(m.q_proj, x), m.n_heads)
    kv = _linear(m.kv_proj, src)
    D = kv.shape[-1] // 2
    k, v = _heads(kv[..., :D], m.n_heads), _heads(kv[..., D:], m.n_heads)
    if rotary:
        q, k = rotate(q), rotate(k)
    return q, k, v


def softmax_attention(q, k, v, allowed: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(P), masked to ``allowed`` [Lq, Lk]) v, in float64."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


def merge(m, y: torch.Tensor) -> torch.Tensor:
    """[B, H, L, P] -> the mixer's out_proj of the concatenated heads, [B, L, D]."""
    B, H, L, P = y.shape
    return _linear(m.out_proj, y.permute(0, 2, 1, 3).reshape(B, L, H * P))
