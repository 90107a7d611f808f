"""TCNCA: a dilated temporal conv net (TCN) followed by chunked attention, in a MEGA-style gated block.

TCNCA keeps MEGA's block and swaps its damped EMA for a TCN: ``n_levels`` residual depthwise causal convs
with ``kernel_size`` K taps and dilation f^j at level j (f = ``dilation_base``)::

    h_0 = x;   h_{j+1} = h_j + SiLU(dwconv_{K, dilation f^j}(h_j));   x' = h_{n_levels}

whose receptive field is R = 1 + (K - 1)(f^n - 1)/(f - 1) tokens (defaults K = 3, f = 2, n = 4: R = 31), at
cost O(L) instead of the FFT's O(L log L). The paper's exact K, f, depth and chunk could not be read;
these defaults are this library's choice. Then, as in MEGA::

    z = SiLU(W_z x');  q = g_q * z + b_q;  k = g_k * z + b_k  (per-channel affine, split into heads)
    v = SiLU(W_v x);   g = sigmoid(W_g x')
    y = W_o(g * chunked_attention(q, k, v) + (1 - g) * x')

Chunked attention (``mmseq.kernels.attention(chunk=C)``) lets query i see keys of its own chunk only
(j // C == i // C, and j <= i when causal), so an input at t reaches outputs s >= t whose chunk starts
no later than t + R - 1. Non-causal builds centre each conv's taps and attend across the whole chunk.

Streaming: each level keeps its last (K - 1) f^j inputs, and the attention keeps the current chunk's keys
and values (emptied at chunk boundaries); ``step`` reproduces ``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmseq.kernels import attention

from .base import Mixer, register_mixer
from .chunked import ChunkState
from .rotary import Rotary


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


@dataclass
class TCNCAState:
    """Streaming state: per-level conv inputs [B, D, (K-1) f^j] (oldest first) and the chunk's keys/values."""

    convs: list[torch.Tensor]
    attn: ChunkState


@register_mixer("tcnca")
class TCNCA(Mixer):
    """Dilated TCN + chunked attention (gated, MEGA-style).

    Args:
        chunk: attention chunk length C (default 128).
        n_levels: TCN levels n (default 4); level j has dilation dilation_base ** j.
        kernel_size: taps K per TCN conv (default 3).
        dilation_base: f (default 2).
        n_heads: attention heads (default 4); d_model must be divisible by it.
        rotary: rotary positions on q and k (default True).
    """

    test_hparams = {"chunk": 4, "n_levels": 2, "kernel_size": 3, "n_heads": 2}

    def __init__(self, d_model: int, *, causal: bool = True, chunk: int = 128, n_levels: int = 4,
                 kernel_size: int = 3, dilation_base: int = 2, n_heads: int = 4, rotary: bool = True) -> None:
        super().__init__(d_model, causal=causal)
        _check_int("chunk", chunk, 1)
        _check_int("n_levels", n_levels, 0)
        _check_int("kernel_size", kernel_size, 1)
        _check_int("dilation_base", dilation_base, 1)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.chunk, self.kernel_size, self.n_heads, self.head_dim = chunk, kernel_size, n_heads, d_model // n_heads
        self.dilations = [dilation_base ** j for j in range(n_levels)]
        self.receptive_field = 1 + (kernel_size - 1) * sum(self.dilations)

        self.conv_weight = nn.Parameter(torch.randn(n_levels, d_model, kernel_size) * kernel_size ** -0.5)
        self.conv_bias = nn.Parameter(torch.zeros(n_levels, d_model))
        self.z_proj = nn.Linear(d_model, d_model)
        self.qk_gamma = nn.Parameter(torch.ones(2, d_model))
        self.qk_beta = nn.Parameter(torch.zeros(2, d_model))
        self.v_proj = nn.Linear(d_model, d_model)
        self.g_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.rotary = Rotary(self.head_dim) if rotary else None

    def tcn(self, x: torch.Tensor) -> torch.Tensor:
        """The TCN alone: x [B, L, D] -> x' [B, L, D]."""
        h = x.transpose(1, 2)  # [B, D, L]
        for j, d in enumerate(self.dilations):
            span = (self.kernel_size - 1) * d
            left = span if self.causal else span // 2
            w = self.conv_weight[j][:, None, :]  # [D, 1, K]
            conv = F.conv1d(F.pad(h, (left, span - left)), w, self.conv_bias[j], dilation=d, groups=self.d_model)
            h = h + F.silu(conv)
        return h.transpose(1, 2)

    def _branches(self, x: torch.Tensor, xt: torch.Tensor, offset: int = 0):
        """x, x' [B, L, D] -> q, k, v [B, H, L, P] (rotary from ``offset``) and the gate g [B, L, D]."""
        zz = F.silu(self.z_proj(xt))
        heads = lambda t: t.unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2)
        q = heads(zz * self.qk_gamma[0] + self.qk_beta[0])
        k = heads(zz * self.qk_gamma[1] + self.qk_beta[1])
        v = heads(F.silu(self.v_proj(x)))
        if self.rotary is not None:
            q, k = self.rotary(q, offset=offset), self.rotary(k, offset=offset)
        return q, k.to(q.dtype), v.to(q.dtype), torch.sigmoid(self.g_proj(xt))

    def _out(self, a: torch.Tensor, g: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        a = a.transpose(1, 2).flatten(2).to(g.dtype)  # [B, L, D]
        return self.out_proj(g * a + (1 - g) * xt)

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        if context is not None:
            raise ValueError("tcnca is a self-attention mixer; it takes no context")
        xt = self.tcn(x)
        q, k, v, g = self._branches(x, xt)
        return self._out(attention(q, k, v, causal=self.causal, chunk=self.chunk), g, xt)

    def init_state(self, batch_size: int, device=None, dtype=None) -> TCNCAState:
        if not self.causal:
            raise NotImplementedError("step() needs a causal tcnca mixer")
        p = self.z_proj.weight
        device, dtype = device or p.device, dtype or p.dtype
        B, D, K = batch_size, self.d_model, self.kernel_size
        convs = [torch.zeros(B, D, (K - 1) * d, device=device, dtype=dtype) for d in self.dilations]
        empty = torch.zeros(B, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        return TCNCAState(convs=convs, attn=ChunkState(k=empty, v=empty.clone()))

    def step(self, x_t: torch.Tensor, state: TCNCAState) -> tuple[torch.Tensor, TCNCAState]:
        """x_t [B, D] -> y_t [B, D]; shifts each level's input buffer and extends (or restarts) the chunk."""
        h = x_t
        for j, d in enumerate(self.dilations):
            xp = torch.cat([state.convs[j], h[..., None].to(state.convs[j].dtype)], dim=-1)  # [B, D, (K-1)d + 1]
            conv = (xp[..., ::d] * self.conv_weight[j]).sum(-1) + self.conv_bias[j]
            state.convs[j] = xp[..., 1:]
            h = h + F.silu(conv)
        xt = h[:, None, :]
        att = state.attn
        q, k, v, g = self._branches(x_t[:, None, :], xt, offset=att.t)
        if att.t % self.chunk == 0:
            att.k, att.v = att.k[:, :, :0], att.v[:, :, :0]
        att.k = torch.cat([att.k, k.to(att.k.dtype)], dim=2)
        att.v = torch.cat([att.v, v.to(att.v.dtype)], dim=2)
        att.t += 1
        a = F.scaled_dot_product_attention(q, att.k.to(q.dtype), att.v.to(q.dtype))
        return self._out(a, g, xt)[:, 0], state
