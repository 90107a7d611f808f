"""SCOUT: a local mixer (Mamba or sliding-window attention) followed by attention over segment checkpoints.

Shapes in letters: B batch, L length, D d_model, H heads, P = D / H head dim, W segment, n = floor(L / W).

One SCOUT mixer is the paper's layer, each sub-layer inside a pre-RMSNorm residual::

    h = x + local(norm1(x))             Mamba (default) or SWA, any streaming mixer chosen by name
    h = h + mlp1(norm2(h))              SwiGLU, hidden = mlp_ratio * D (skipped when mlp_ratio == 0)
    h = h + scout_attention(norm3(h))
    h = h + mlp2(norm4(h))
    return h - x                        (the enclosing MixerBlock adds x back, as for ``hybrid``)

SCOUT attention: q, k, v are projections of the (normed) hidden states, RoPE (theta 1e6) on q and k. The
checkpoints are the positions W-1, 2W-1, ... (every W-th token). Query t sees its own key and every checkpoint
at a position < t (a checkpoint at t itself is its own key, counted once), one softmax over both::

    a_t = softmax([q_t . k_t, q_t . k_c for checkpoints c < t] / sqrt(P)) . [v_t, v_c ...]

Cost: the scores are [B, H, L, n] (plus the diagonal), i.e. O(L^2 / W) time and memory; K/V are built for the
checkpoints only (a strided slice), never an L x L matrix. Segment 1 makes every earlier token a checkpoint,
i.e. full causal attention.

Streaming: the local mixer's own state plus the checkpoint keys/values, one appended every W tokens, so after
L tokens the attention cache holds floor(L / W) entries; ``step`` reproduces ``forward``. Causal only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import MIXERS, Mixer, create_mixer, register_mixer
from .rotary import Rotary


def check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def build_local_mixer(owner: str, name: str, d_model: int, hparams: dict | None) -> Mixer:
    """The causal, streaming sub-mixer ``name`` that SCOUT / HAX run before their attention."""
    if not isinstance(name, str) or name not in MIXERS:
        raise ValueError(f"{owner}: local: {MIXERS.unknown_message(str(name))}")
    if name in ("scout", "hax", "hybrid"):
        raise ValueError(f"{owner}: local may not be {name!r} (a mixer that itself wraps a local mixer)")
    if hparams is not None and not isinstance(hparams, dict):
        raise ValueError(f"{owner}: local_hparams must be a dict or None, got {hparams!r}")
    return create_mixer(name, d_model, causal=True, **dict(hparams or {}))


class SwiGLU(nn.Module):
    """x [..., D] -> down(SiLU(gate(x)) * up(x)) [..., D], hidden = int(ratio * D) (the Llama-style MLP)."""

    def __init__(self, d_model: int, ratio: float) -> None:
        super().__init__()
        hidden = max(1, int(ratio * d_model))
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class ScoutAttention(nn.Module):
    """Self + checkpoint attention: x [B, L, D] -> [B, L, D] (projections named as in ``attention``)."""

    def __init__(self, d_model: int, n_heads: int, segment: int, rope_theta: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads, self.head_dim, self.segment = n_heads, d_model // n_heads, segment
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.kv_proj = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.rotary = Rotary(self.head_dim, base=rope_theta)

    def qkv(self, x: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, D] -> q, k, v [B, H, L, P], RoPE from position ``offset``."""
        heads = lambda t: t.unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2)  # noqa: E731
        q = heads(self.q_proj(x))
        k, v = (heads(t) for t in self.kv_proj(x).chunk(2, dim=-1))
        q, k = self.rotary(q, offset=offset), self.rotary(k, offset=offset)
        return q, k.to(q.dtype), v.to(q.dtype)

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        return self.out_proj(y.transpose(1, 2).flatten(2))  # [B, H, L, P] -> [B, L, D]

    def attend(self, q, k, v, kc, vc, allowed) -> torch.Tensor:
        """q, k, v [B, H, L, P] (own token), kc, vc [B, H, n, P] checkpoints, allowed [L, n] -> [B, H, L, P].

        Computed in float32 or better; one softmax over [self, allowed checkpoints]."""
        dtype = torch.promote_types(q.dtype, torch.float32)
        q, k, v, kc, vc = (t.to(dtype) for t in (q, k, v, kc, vc))
        scale = self.head_dim ** -0.5
        s_self = (q * k).sum(-1, keepdim=True) * scale  # [B, H, L, 1]
        s_ck = (q @ kc.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))  # [B, H, L, n]
        p = torch.softmax(torch.cat([s_self, s_ck], dim=-1), dim=-1)  # the self score is always finite
        return p[..., :1] * v + p[..., 1:] @ vc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L, W = x.shape[1], self.segment
        q, k, v = self.qkv(x)
        kc, vc = k[:, :, W - 1::W], v[:, :, W - 1::W]  # checkpoints at positions W-1, 2W-1, ...
        pos_c = torch.arange(kc.shape[2], device=x.device) * W + (W - 1)  # none while L < W
        allowed = pos_c[None, :] < torch.arange(L, device=x.device)[:, None]  # [L, n]: strictly before t
        return self.merge(self.attend(q, k, v, kc, vc, allowed).to(x.dtype))


@dataclass
class ScoutState:
    """Streaming state: the local mixer's state, the checkpoint keys/values [B, H, n, P] and the position t."""

    local: Any
    k: torch.Tensor
    v: torch.Tensor
    t: int = 0


@register_mixer("scout")
class Scout(Mixer):
    """SCOUT layer: local mixer -> MLP -> segment-checkpoint attention -> MLP, each pre-RMSNorm + residual.

    Args:
        local: name of the local (streaming, causal) mixer, default "mamba"; "swa" gives the SWA variant.
        local_hparams: its hyperparameters (e.g. ``{"window": 1024}`` for swa), default its own defaults.
        segment: W, the checkpoint stride (the paper's ``selection_window_size``, default 10).
        n_heads: attention heads (default 4); d_model must be divisible by it.
        rope_theta: RoPE base (default 1e6, as in the paper).
        mlp_ratio: SwiGLU hidden width / D for both MLPs (default 2.75, the 430M model's 2816 / 1024); 0 drops them.
    """

    supports_noncausal = False
    test_hparams = {"local": "mamba", "local_hparams": {"d_state": 4, "expand": 1}, "segment": 3, "n_heads": 2,
                    "mlp_ratio": 1.0}

    def __init__(self, d_model: int, *, causal: bool = True, local: str = "mamba", local_hparams: dict | None = None,
                 segment: int = 10, n_heads: int = 4, rope_theta: float = 1e6, mlp_ratio: float = 2.75) -> None:
        super().__init__(d_model, causal=causal)
        if not causal:
            raise ValueError("scout is causal only (causal=False is not supported)")
        check_int("segment", segment, 1)
        check_int("n_heads", n_heads, 1)
        if mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be >= 0 (0 drops the MLPs), got {mlp_ratio}")
        self.segment = segment
        self.norm1 = nn.RMSNorm(d_model)
        self.local = build_local_mixer("scout", local, d_model, local_hparams)
        self.norm3 = nn.RMSNorm(d_model)
        self.attn = ScoutAttention(d_model, n_heads, segment, rope_theta)
        self.norm2 = nn.RMSNorm(d_model) if mlp_ratio > 0 else None
        self.mlp1 = SwiGLU(d_model, mlp_ratio) if mlp_ratio > 0 else None
        self.norm4 = nn.RMSNorm(d_model) if mlp_ratio > 0 else None
        self.mlp2 = SwiGLU(d_model, mlp_ratio) if mlp_ratio > 0 else None

    def _mlp(self, h: torch.Tensor, which: int) -> torch.Tensor:
        mlp, norm = (self.mlp1, self.norm2) if which == 1 else (self.mlp2, self.norm4)
        return h if mlp is None else h + mlp(norm(h))

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        if context is not None:
            raise ValueError("scout is a self mixer; it takes no context")
        h = x + self.local(self.norm1(x))
        h = self._mlp(h, 1)
        h = h + self.attn(self.norm3(h))
        return self._mlp(h, 2) - x

    def init_state(self, batch_size: int, device=None, dtype=None) -> ScoutState:
        p = self.attn.q_proj.weight
        device, dtype = device or p.device, dtype or p.dtype
        empty = torch.zeros(batch_size, self.attn.n_heads, 0, self.attn.head_dim, device=device, dtype=dtype)
        return ScoutState(local=self.local.init_state(batch_size, device=device, dtype=dtype), k=empty,
                          v=empty.clone())

    def step(self, x_t: torch.Tensor, state: ScoutState) -> tuple[torch.Tensor, ScoutState]:
        """x_t [B, D] -> y_t [B, D]; appends this token's key/value to the cache when it is a checkpoint."""
        y, local = self.local.step(self.norm1(x_t), state.local)
        h = self._mlp(x_t + y, 1)
        q, k, v = self.attn.qkv(self.norm3(h)[:, None, :], offset=state.t)
        allowed = torch.ones(1, state.k.shape[2], dtype=torch.bool, device=x_t.device)  # every cached one is < t
        a = self.attn.attend(q, k, v, state.k, state.v, allowed).to(h.dtype)
        h = h + self.attn.merge(a)[:, 0]
        kc, vc = state.k, state.v
        if (state.t + 1) % self.segment == 0:
            kc, vc = torch.cat([kc, k.to(kc.dtype)], dim=2), torch.cat([vc, v.to(vc.dtype)], dim=2)
        return self._mlp(h, 2) - x_t, ScoutState(local=local, k=kc, v=vc, t=state.t + 1)
