"""LongVQ: softmax attention over vector-quantised keys, linear in L, beside a local causal-conv branch.

Keys are snapped to a per-head codebook C [H, S, P] (S = ``codebook_size``). The score of query i against
key j then depends on j only through its code z_j, so attention over all keys collapses onto the codes
(Transformer-VQ; LongVQ, arXiv 2404.11163)::

    sum_{j allowed} e^{q_i . c_{z_j}} v_j / sum_{j allowed} e^{q_i . c_{z_j}}
        = sum_m e^{q_i . c_m} Phi_m / sum_m e^{q_i . c_m} n_m,

with Phi_m = sum of v_j over the allowed j with z_j = m and n_m their count (the 1/sqrt(P) scale sits on q).
``codebook_attention`` computes it in blocks of T tokens: exact softmax scores against the quantised keys
inside a query's own block, and the codebook form for all other allowed blocks (every earlier block when
causal, every other block when not), one joint softmax across both. Cost O(L * (S + T) * P), memory
O(L * (S + T)), and the result equals explicit softmax attention over the quantised keys, counts included.

Block (x [B, L, D] -> [B, L, D]; MEGA-like, with a short causal conv standing in for MEGA's EMA)::

    h = SiLU(causal depthwise conv(x))            local branch, ``conv_size`` taps
    z = SiLU(W_z h);  q = g_q * z + b_q;  k = g_k * z + b_k      (per-channel affine, split into heads)
    v = SiLU(W_v x);  g = sigmoid(W_g h)
    y = W_o(g * attn(q, VQ(k), v) + (1 - g) * h)

Quantisation: z_j = argmin_m |k_j - c_m|^2 (distances in float32 or better); the straight-through estimate
k_hat = c_z + (k - sg(k)) lets gradients reach k through the in-block scores. Keys reach the other blocks
only through the codebook. ``self.last_aux_loss`` holds the commitment loss beta * mean |k - sg(c_z)|^2 of
the last forward, for the caller to add to its objective.

Codebook (buffers, not parameters): exponential moving averages of per-code key sums and counts with decay
``ema_decay``; c_m = sum_m / max(count_m, 0.01); a code whose average count falls below 1 key per batch is
reseeded to a random key of the batch. A training forward's statistics are folded in when its backward
reaches the keys, so forward-only calls (evaluation, streaming checks) never move the codebook. Statistics
are per process (not all-reduced across data-parallel ranks).

Streaming state: Phi [B, H, S, P], n [B, H, S] over every past token, and the conv's last K-1 inputs: O(S)
memory however long the stream, and ``step`` reproduces ``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmseq.kernels import causal_conv1d, causal_conv1d_update

from .base import Mixer, register_mixer


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def quantize(k: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest code per key: k [B, H, L, P], codebook [H, S, P] -> z [B, H, L] (int64), in >= float32."""
    dtype = _compute_dtype(k)
    kf, cf = k.detach().to(dtype), codebook.detach().to(dtype)
    dist = (cf.square().sum(-1)[None, :, None, :]
            - 2 * torch.einsum("bhlp,hsp->bhls", kf, cf))  # |k|^2 is the same for every code
    return dist.argmin(-1)


def lookup(codebook: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """codebook [H, S, P], z [B, H, L] -> the codes c_z [B, H, L, P]."""
    return codebook[torch.arange(codebook.shape[0], device=z.device)[None, :, None], z]


def codebook_attention(
    q: torch.Tensor,
    k_hat: torch.Tensor,
    v: torch.Tensor,
    z: torch.Tensor,
    codebook: torch.Tensor,
    *,
    causal: bool = True,
    block_len: int = 64,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention over quantised keys, through the codebook outside each query's block.

    Args:
        q: [B, H, L, P] queries.
        k_hat: [B, H, L, P] quantised keys, equal in value to ``codebook[h, z]`` (may carry straight-through
            gradients; used for the in-block scores).
        v: [B, H, L, Pv] values.
        z: [B, H, L] int64 code of each key.
        codebook: [H, S, P].
        causal: query i sees keys j <= i; else every key.
        block_len: T, the block of exact in-block scores (the last block may be shorter).
        scale: score scale, default 1 / sqrt(P).

    Returns [B, H, L, Pv], equal to ``softmax(scale * q k_hat^T (masked)) v``.
    """
    B, H, L, P = q.shape
    S, Pv = codebook.shape[1], v.shape[-1]
    scale = P ** -0.5 if scale is None else scale
    T = max(1, min(block_len, L))
    nb = -(-L // T)
    pad = nb * T - L

    def blocks(t: torch.Tensor) -> torch.Tensor:  # [B, H, L, X] -> [B, H, nb, T, X]
        return F.pad(t, (0, 0, 0, pad)).view(B, H, nb, T, t.shape[-1])

    qb, kb, vb = blocks(q), blocks(k_hat), blocks(v)
    onehot = blocks(F.one_hot(z, S).to(v.dtype))  # padded positions have no code
    phi_blk = onehot.transpose(-1, -2) @ vb  # [B, H, nb, S, Pv]: per-block value sums per code
    n_blk = onehot.sum(-2)  # [B, H, nb, S]
    if causal:  # earlier blocks only
        phi, n = phi_blk.cumsum(2) - phi_blk, n_blk.cumsum(2) - n_blk
    else:  # every other block
        phi, n = phi_blk.sum(2, keepdim=True) - phi_blk, n_blk.sum(2, keepdim=True) - n_blk

    s_code = torch.einsum("bhntp,hsp->bhnts", qb, codebook.to(q.dtype)) * scale  # [B, H, nb, T, S]
    s_code = s_code.masked_fill((n == 0)[:, :, :, None, :], float("-inf"))
    s_loc = (qb @ kb.transpose(-1, -2)) * scale  # [B, H, nb, T, T]
    pos = torch.arange(nb * T, device=q.device).view(nb, T)
    allowed = (pos < L)[:, None, :]  # [nb, 1, T]: real keys
    if causal:
        allowed = allowed & (pos[:, None, :] <= pos[:, :, None])
    s_loc = s_loc.masked_fill(~allowed, float("-inf"))  # every row keeps a key: causal j = i, or block start

    m = torch.maximum(s_code.amax(-1), s_loc.amax(-1)).detach()[..., None]
    e_code, e_loc = (s_code - m).exp(), (s_loc - m).exp()
    num = e_code @ phi + e_loc @ vb  # [B, H, nb, T, Pv]
    den = (e_code * n[:, :, :, None, :]).sum(-1) + e_loc.sum(-1)
    return (num / den[..., None]).reshape(B, H, nb * T, Pv)[:, :, :L]


@dataclass
class VQState:
    """Streaming state: per-code value sums Phi [B, H, S, P] and counts n [B, H, S], conv inputs [B, D, K-1]."""

    phi: torch.Tensor
    n: torch.Tensor
    conv: torch.Tensor


@register_mixer("longvq")
class LongVQ(Mixer):
    """LongVQ mixer: codebook attention (linear in L) plus a gated local causal-conv branch.

    Args:
        codebook_size: S codes per head (default 64).
        n_heads: heads (default 4); d_model must be divisible by it. Head dim P = d_model / n_heads.
        block_len: T, tokens scored exactly (against their quantised keys) within a block (default 64).
        conv_size: taps of the local causal depthwise conv (default 4).
        ema_decay: decay gamma of the codebook's moving averages (default 0.99).
        commitment: beta of the commitment loss in ``last_aux_loss`` (default 1e-4).
    """

    test_hparams = {"codebook_size": 8, "n_heads": 2, "block_len": 4, "conv_size": 3}

    def __init__(self, d_model: int, *, causal: bool = True, codebook_size: int = 64, n_heads: int = 4,
                 block_len: int = 64, conv_size: int = 4, ema_decay: float = 0.99,
                 commitment: float = 1e-4) -> None:
        super().__init__(d_model, causal=causal)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        for name, value in (("codebook_size", codebook_size), ("block_len", block_len), ("conv_size", conv_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.codebook_size, self.block_len, self.conv_size = codebook_size, block_len, conv_size
        self.ema_decay, self.commitment = ema_decay, commitment

        self.conv_weight = nn.Parameter(torch.randn(d_model, conv_size) / conv_size ** 0.5)
        self.conv_bias = nn.Parameter(torch.zeros(d_model))
        self.z_proj = nn.Linear(d_model, d_model)
        self.qk_gamma = nn.Parameter(torch.ones(2, d_model))  # per-channel affine from the shared z
        self.qk_beta = nn.Parameter(torch.zeros(2, d_model))
        self.v_proj = nn.Linear(d_model, d_model)
        self.g_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

        H, S, P = n_heads, codebook_size, self.head_dim
        codebook = torch.randn(H, S, P)
        self.register_buffer("codebook", codebook)
        self.register_buffer("ema_count", torch.ones(H, S))
        self.register_buffer("ema_sum", codebook.clone())
        self.last_aux_loss: torch.Tensor | None = None

    # ------------------------------------------------------------------------------------------------------
    # codebook
    # ------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _batch_stats(self, k: torch.Tensor, z: torch.Tensor):
        """This batch's per-code key counts [H, S] and sums [H, S, P], and random keys [H, S, P] for reseeding."""
        B, H, L, P = k.shape
        kf = k.detach().to(self.ema_sum.dtype)
        onehot = F.one_hot(z, self.codebook_size).to(kf.dtype)  # [B, H, L, S]
        count, total = onehot.sum((0, 2)), torch.einsum("bhls,bhlp->hsp", onehot, kf)
        pick = torch.randint(0, B * L, (H, self.codebook_size), device=k.device)
        keys = torch.gather(kf.transpose(0, 1).reshape(H, B * L, P), 1, pick[..., None].expand(-1, -1, P))
        return count, total, keys

    @torch.no_grad()
    def _ema_update(self, count: torch.Tensor, total: torch.Tensor, keys: torch.Tensor) -> None:
        """Fold one batch's statistics into the moving averages; reseed codes averaging < 1 key per batch."""
        g = self.ema_decay
        self.ema_count.mul_(g).add_(count, alpha=1 - g)
        self.ema_sum.mul_(g).add_(total, alpha=1 - g)
        dead = self.ema_count < 1.0
        self.ema_sum.copy_(torch.where(dead[..., None], keys, self.ema_sum))
        self.ema_count.masked_fill_(dead, 1.0)
        self.codebook.copy_(self.ema_sum / self.ema_count.clamp(min=0.01)[..., None])

    # ------------------------------------------------------------------------------------------------------
    # projections
    # ------------------------------------------------------------------------------------------------------

    def _branches(self, x: torch.Tensor, h: torch.Tensor):
        """x, h [..., D] -> q, k, v [..., H, P] and the gate g [..., D]."""
        zz = F.silu(self.z_proj(h))
        q = zz * self.qk_gamma[0] + self.qk_beta[0]
        k = zz * self.qk_gamma[1] + self.qk_beta[1]
        v = F.silu(self.v_proj(x))
        g = torch.sigmoid(self.g_proj(h))
        split = lambda t: t.unflatten(-1, (self.n_heads, self.head_dim))
        return split(q), split(k), split(v), g

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        if context is not None:
            raise ValueError("longvq is a self-attention mixer; it takes no context")
        h = causal_conv1d(x.transpose(1, 2), self.conv_weight, self.conv_bias, activation="silu").transpose(1, 2)
        q, k, v, g = self._branches(x, h)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, P]
        dtype = _compute_dtype(q)
        codebook = self.codebook.to(dtype, copy=True)  # a copy: the EMA update below rewrites the buffer
        z = quantize(k, codebook)
        with torch.autocast(x.device.type, enabled=False):  # counts and sums need float32 or better
            kf = k.to(dtype)
            c_z = lookup(codebook, z)
            k_hat = c_z + (kf - kf.detach())  # straight-through: value c_z, gradient to k
            a = codebook_attention(q.to(dtype), k_hat, v.to(dtype), z, codebook,
                                   causal=self.causal, block_len=self.block_len)
            self.last_aux_loss = self.commitment * (kf - c_z).square().mean()
        if self.training and k.requires_grad:
            # The codebook moves when this forward's backward runs (a training step), never on forward alone.
            stats = self._batch_stats(k, z)
            k.register_hook(lambda grad: self._ema_update(*stats))
        a = a.transpose(1, 2).flatten(2).to(g.dtype)  # [B, L, D]
        return self.out_proj(g * a + (1 - g) * h)

    # ------------------------------------------------------------------------------------------------------
    # streaming
    # ------------------------------------------------------------------------------------------------------

    def init_state(self, batch_size: int, device=None, dtype=None) -> VQState:
        if not self.causal:
            raise NotImplementedError("step() needs a causal longvq mixer")
        p = self.z_proj.weight
        device, dtype = device or p.device, dtype or p.dtype
        H, S, P = self.n_heads, self.codebook_size, self.head_dim
        sdtype = torch.float64 if dtype == torch.float64 else torch.float32
        return VQState(
            phi=torch.zeros(batch_size, H, S, P, device=device, dtype=sdtype),
            n=torch.zeros(batch_size, H, S, device=device, dtype=sdtype),
            conv=torch.zeros(batch_size, self.d_model, self.conv_size - 1, device=device, dtype=dtype),
        )

    def step(self, x_t: torch.Tensor, state: VQState) -> tuple[torch.Tensor, VQState]:
        """x_t [B, D] -> y_t [B, D]; adds this token's value to its code's sum and count (state updated)."""
        h = causal_conv1d_update(x_t, state.conv, self.conv_weight, self.conv_bias, activation="silu")
        q, k, v, g = self._branches(x_t, h)  # [B, H, P]
        z = quantize(k[:, :, None], self.codebook)[:, :, 0]  # [B, H]
        dtype = state.phi.dtype
        onehot = F.one_hot(z, self.codebook_size).to(dtype)  # [B, H, S]
        state.phi = state.phi + onehot[..., None] * v.to(dtype)[:, :, None, :]
        state.n = state.n + onehot
        s = torch.einsum("bhp,hsp->bhs", q.to(dtype), self.codebook.to(dtype)) * self.head_dim ** -0.5
        s = s.masked_fill(state.n == 0, float("-inf"))
        e = (s - s.amax(-1, keepdim=True)).exp()
        a = (e[:, :, None, :] @ state.phi)[:, :, 0] / (e * state.n).sum(-1)[..., None]  # [B, H, P]
        a = a.flatten(1).to(g.dtype)
        return self.out_proj(g * a + (1 - g) * h), state
