"""SambaY: a decoder-hybrid-decoder whose cross-decoder re-uses the self-decoder's SSM readout through Gated
Memory Units (Ren et al., 2025, "Decoder-Hybrid-Decoder Architecture for Efficient Reasoning with Long Generation").

Shapes in letters: B batch, L length, D d_model, E = expand * D (the memory width), H heads, P = D / H.

With n = n_layers (a multiple of 4, at least 8), every layer a pre-norm residual sub-layer followed by an MLP:

    layers 0 .. n/2 - 1     self-decoder (Samba): Mamba on even layers, sliding-window attention on odd ones
    layer  n/2              Mamba whose readout before its z gate, m [B, L, E], is the memory
    layer  n/2 + 1          the one full causal attention layer; its keys/values are the only KV cache
    layers n/2 + 2 .. n - 1 cross-decoder: even layers are GMUs, y = W_out(SiLU(W_in x) * m);
                            odd layers attend (causally) to the cache of layer n/2 + 1 with their own queries

Decoding keeps one KV cache however deep the model, and a GMU costs O(D * E) a token with no cache at all.
``prefill(x)`` processes a prompt in one parallel pass whose cost is linear in L apart from the last query:
the self-decoder and the memory layer run their linear-time forwards, the cache is one projection, and the
full-attention layer and the cross-decoder run for the last position only (their outputs at earlier positions
feed nothing later). ``step`` then continues from the returned state.

As a mixer it returns the sum of its residual updates, h - x (the enclosing block adds x back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Mixer, create_mixer, register_mixer
from .blocks import MLP
from .mamba import MambaMixer


class GatedMemoryUnit(nn.Module):
    """y = W_out(SiLU(W_in x) * m): x [B, L, D], m [B, L, E] -> [B, L, D] (no biases, as in SambaY)."""

    def __init__(self, d_model: int, d_memory: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(d_model, d_memory, bias=False)
        self.out_proj = nn.Linear(d_memory, d_model, bias=False)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return self.out_proj(F.silu(self.in_proj(x)) * memory.to(x.dtype))


class _Heads(nn.Module):
    """Head split/merge and causal SDPA shared by the cache-producing layer and the cross-decoder's attention."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def split(self, t: torch.Tensor) -> torch.Tensor:
        B, L, _ = t.shape
        return t.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, L, P]

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offset: int) -> torch.Tensor:
        """Queries from x [B, Lq, D] at positions offset .. offset + Lq - 1 over keys/values [B, H, Lk, P] at
        positions 0 .. Lk - 1, causally -> [B, Lq, D]."""
        q = self.split(self.q_proj(x))
        Lq, Lk = q.shape[2], k.shape[2]
        pos_q = torch.arange(offset, offset + Lq, device=q.device)[:, None]
        mask = torch.arange(Lk, device=q.device)[None, :] <= pos_q  # [Lq, Lk]
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)
        B, H, L, P = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, L, H * P))


class SharedCacheAttention(_Heads):
    """The full-attention layer n/2 + 1: causal self-attention whose keys/values become the shared cache."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__(d_model, n_heads)
        self.kv_proj = nn.Linear(d_model, 2 * d_model, bias=False)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, L, D] -> k, v [B, H, L, P]."""
        k, v = self.kv_proj(x).chunk(2, dim=-1)
        return self.split(k), self.split(v)


@dataclass
class SambaYState:
    """Decoding state: each self-decoder layer's state, the memory layer's Mamba state, the shared KV cache."""

    layers: list[Any]
    memory: Any
    k: torch.Tensor  # [B, H, t, P]: the shared cache, written by layer n/2 + 1, read by the cross-decoder
    v: torch.Tensor
    t: int = 0


class _Layer(nn.Module):
    """One pre-norm residual sub-layer and its MLP: the norms and MLP every SambaY layer has."""

    def __init__(self, d_model: int, op: nn.Module, mlp_ratio: float) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.op = op
        self.mlp_norm = nn.RMSNorm(d_model, eps=1e-5)
        self.mlp = MLP(d_model, mlp_ratio)

    def finish(self, h: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """h + update, then its MLP residual."""
        h = h + update
        return h + self.mlp(self.mlp_norm(h))


@register_mixer("sambay")
class SambaYMixer(Mixer):
    """SambaY as one mixer: x [B, L, D] -> [B, L, D] (the sum of its layers' residual updates). Causal only.

    Args:
        n_layers: a multiple of 4, >= 8 (the paper's Phi4-mini-flash has 32).
        n_heads: heads of every attention layer. window: the self-decoder's sliding window (paper: 512).
        d_state, expand: of the Mamba layers; the memory width is E = expand * d_model (paper: 2D).
        mlp_ratio: hidden width of each layer's MLP over d_model (paper: 4).

    Positions: no position embedding in the full-attention and cross-attention layers (NoPE, as the paper's
    model); the sliding-window layers keep ``swa``'s rotary embedding.
    """

    supports_noncausal = False
    test_hparams = {"n_layers": 8, "n_heads": 2, "window": 4, "d_state": 4, "mlp_ratio": 2.0}

    def __init__(self, d_model: int, *, causal: bool = True, n_layers: int = 8, n_heads: int = 4,
                 window: int = 512, d_state: int = 16, expand: float = 2, mlp_ratio: float = 4.0) -> None:
        super().__init__(d_model, causal=causal)
        if not causal:
            raise ValueError("sambay is causal only (a decoder); causal=False is not supported")
        if n_layers < 8 or n_layers % 4:
            raise ValueError(f"n_layers must be a multiple of 4 and >= 8 (self-decoder, memory layer, "
                             f"full attention, cross-decoder), got {n_layers}")
        half = n_layers // 2

        def mamba() -> MambaMixer:
            return create_mixer("mamba", d_model, d_state=d_state, expand=expand)

        self.self_decoder = nn.ModuleList(
            _Layer(d_model, mamba() if i % 2 == 0 else
                   create_mixer("swa", d_model, window=window, n_heads=n_heads), mlp_ratio)
            for i in range(half)
        )
        self.memory_layer = _Layer(d_model, mamba(), mlp_ratio)
        self.cache_layer = _Layer(d_model, SharedCacheAttention(d_model, n_heads), mlp_ratio)
        d_memory = self.memory_layer.op.d_inner
        self.cross_decoder = nn.ModuleList(
            _Layer(d_model, GatedMemoryUnit(d_model, d_memory) if i % 2 == 0 else _Heads(d_model, n_heads), mlp_ratio)
            for i in range(half + 2, n_layers)
        )
        self.n_heads, self.head_dim = n_heads, d_model // n_heads

    # -- the cross-decoder, shared by forward, prefill and step ----------------------------------------------

    def _decode_top(self, h: torch.Tensor, memory: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    offset: int) -> torch.Tensor:
        """Layers n/2 + 1 .. n - 1 for the positions of h [B, Lq, D] (starting at ``offset``), given the memory
        [B, Lq, E] of those positions and the cache k, v [B, H, Lk, P] -> h [B, Lq, D]."""
        layer = self.cache_layer
        h = layer.finish(h, layer.op.attend(layer.norm(h), k, v, offset))
        for layer in self.cross_decoder:
            x = layer.norm(h)
            update = layer.op(x, memory) if isinstance(layer.op, GatedMemoryUnit) else layer.op.attend(x, k, v, offset)
            h = layer.finish(h, update)
        return h

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        if context is not None:
            raise ValueError("sambay is a self mixer; it takes no context")
        h = x
        for layer in self.self_decoder:
            h = layer.finish(h, layer.op(layer.norm(h)))
        y, _, memory = self.memory_layer.op.forward_with_state(self.memory_layer.norm(h))
        h = self.memory_layer.finish(h, y)
        k, v = self.cache_layer.op.keys_values(self.cache_layer.norm(h))
        return self._decode_top(h, memory, k, v, offset=0) - x

    # -- decoding ---------------------------------------------------------------------------------------------

    def init_state(self, batch_size: int, device=None, dtype=None) -> SambaYState:
        p = self.cache_layer.op.q_proj.weight
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device or p.device,
                            dtype=dtype or p.dtype)
        return SambaYState(
            layers=[layer.op.init_state(batch_size, device=device, dtype=dtype) for layer in self.self_decoder],
            memory=self.memory_layer.op.init_state(batch_size, device=device, dtype=dtype),
            k=empty, v=empty.clone(),
        )

    def step(self, x_t: torch.Tensor, state: SambaYState) -> tuple[torch.Tensor, SambaYState]:
        """x_t [B, D] -> (y_t [B, D], state). The self-decoder states and the shared cache grow; no other cache."""
        h = x_t
        layers = []
        for layer, s in zip(self.self_decoder, state.layers):
            y, s = layer.op.step(layer.norm(h), s)
            h = layer.finish(h, y)
            layers.append(s)
        y, memory_state, m = self.memory_layer.op.step_with_memory(self.memory_layer.norm(h), state.memory)
        h = self.memory_layer.finish(h, y)
        k, v = self.cache_layer.op.keys_values(self.cache_layer.norm(h)[:, None])
        k, v = torch.cat([state.k, k.to(state.k.dtype)], dim=2), torch.cat([state.v, v.to(state.v.dtype)], dim=2)
        h = self._decode_top(h[:, None], m[:, None], k, v, offset=state.t)[:, 0]
        return h - x_t, SambaYState(layers=layers, memory=memory_state, k=k, v=v, t=state.t + 1)

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, SambaYState]:
        """Read a prompt x [B, L, D] in one pass -> (the output at its last position [B, D], the state ``step``
        continues from). Only the last position goes through the full-attention layer and the cross-decoder."""
        self.check_input(x)
        L = x.shape[1]
        h = x
        layers = []
        for layer in self.self_decoder:  # Mamba and sliding-window layers, each its parallel pass and final state
            y, s, *_ = layer.op.forward_with_state(layer.norm(h))
            h = layer.finish(h, y)
            layers.append(s)
        y, memory_state, memory = self.memory_layer.op.forward_with_state(self.memory_layer.norm(h))
        h = self.memory_layer.finish(h, y)
        k, v = self.cache_layer.op.keys_values(self.cache_layer.norm(h))
        top = self._decode_top(h[:, -1:], memory[:, -1:], k, v, offset=L - 1)[:, 0]
        return top - x[:, -1], SambaYState(layers=layers, memory=memory_state, k=k, v=v, t=L)
