"""HAX: an SSM (any streaming mixer by name, default Mamba) followed by HAX attention, i.e. LSH attention plus
key selection (KS), both context-dependent sparse patterns, in one softmax.

Shapes in letters: B batch, L length, D d_model, H heads, P = D / H head dim, R ``n_hashes``, K ``top_k``.

    h = x + local(norm1(x))
    h = h + hax_attention(norm2(h))
    return h - x                        (the enclosing MixerBlock adds x back, as for ``hybrid``)

HAX attention, per head, with q, k, v projections of the normed hidden state:

- LSH: fixed random hyperplanes (a buffer [R, H, P, log2 n_buckets], drawn at construction and saved with the
  weights) hash q_t and k_j by the signs of their projections into ``n_buckets`` buckets, in each of R rounds.
  Query t sees key j <= t when they share a bucket in any round. Hashing uses the un-rotated q / k (content).
- KS: a learned scalar score per key, s_j = score_proj(x_j) (one per head). Query t also sees the ``top_k`` keys
  of highest score among the keys j <= t (all of them while t < top_k; keys tied with the top_k-th score are
  all taken, so the choice never depends on a tie-break).
- Query t always sees its own key, so no row is empty.

The allowed keys (the union of the sets: a key in both is counted once) share one softmax of q . k / sqrt(P).
Top-k is not differentiable; the score learns through a straight-through term: selected keys' logits get
log sigmoid(s_j) - sg(log sigmoid(s_j)), zero in value, so the output is exactly the softmax above while the
score receives the gradient of a sigmoid gate on the key's weight. ``select_all=True`` (or top_k >= L) makes
every causal key selected: full causal attention with the same projections.

Cost (the masked path implemented here): queries run in blocks of ``block`` rows against all earlier keys, so
time is O(L^2 * H * P) like full attention and peak memory O(block * L * H) for scores and masks, never L x L at
once (a bucket-sorted, chunked path would bring LSH to O(L * L / n_buckets) and is not implemented). Each
block's top-k runs over its rows' prefixes: O(block * L) per block.

Streaming: the local mixer's state plus every past key/value, its bucket codes [R, B, H, t] and its score
[B, H, t] (KS may pick any past key, so nothing can be dropped); ``step`` reproduces ``forward``. Causal only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Mixer, register_mixer
from .rotary import Rotary
from .scout import build_local_mixer, check_int


class HaxAttention(nn.Module):
    """LSH + key-selection attention: x [B, L, D] -> [B, L, D] (projections named as in ``attention``)."""

    def __init__(self, d_model: int, n_heads: int, n_buckets: int, n_hashes: int, top_k: int, select_all: bool,
                 rotary: bool, block: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if n_buckets & (n_buckets - 1):
            raise ValueError(f"n_buckets must be a power of two (sign bits of random projections), got {n_buckets}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.top_k, self.select_all, self.block = top_k, select_all, block
        self.n_bits = int(math.log2(n_buckets))
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.kv_proj = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.score_proj = nn.Linear(d_model, n_heads)  # s_j per head, for key selection
        self.rotary = Rotary(self.head_dim) if rotary else None
        # Fixed hyperplanes: a buffer (no gradient), saved so that a reloaded model hashes the same way.
        self.register_buffer("planes", torch.randn(n_hashes, n_heads, self.head_dim, self.n_bits))
        self.register_buffer("bit_values", 2 ** torch.arange(self.n_bits), persistent=False)

    def project(self, x: torch.Tensor, offset: int = 0):
        """x [B, L, D] -> q, k, v [B, H, L, P] (rotated when rotary), bucket codes of q and k [R, B, H, L] and
        key scores [B, H, L]."""
        heads = lambda t: t.unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2)  # noqa: E731
        q = heads(self.q_proj(x))
        k, v = (heads(t) for t in self.kv_proj(x).chunk(2, dim=-1))
        qc, kc = self.codes(q), self.codes(k)
        if self.rotary is not None:
            q, k = self.rotary(q, offset=offset), self.rotary(k, offset=offset)
        s = self.score_proj(x).transpose(1, 2)  # [B, H, L]
        return q, k.to(q.dtype), v.to(q.dtype), qc, kc, s

    def codes(self, t: torch.Tensor) -> torch.Tensor:
        """Sign-random-projection buckets: t [B, H, L, P] -> [R, B, H, L] in 0 .. n_buckets - 1."""
        proj = torch.einsum("bhlp,rhpk->rbhlk", t.to(self.planes.dtype), self.planes)
        return ((proj > 0).long() * self.bit_values).sum(-1)

    def attend(self, q, qc, rows, k, v, kc, s) -> torch.Tensor:
        """Queries q [B, H, c, P] with codes qc [R, B, H, c] at positions ``rows`` [c] against keys 0 .. n-1
        (k, v [B, H, n, P], codes kc [R, B, H, n], scores s [B, H, n]) -> [B, H, c, P]. Every row's position
        is < n."""
        dtype = torch.promote_types(q.dtype, torch.float32)
        q, k, v, s = (t.to(dtype) for t in (q, k, v, s))
        n = k.shape[2]
        j = torch.arange(n, device=q.device)
        causal = j[None, :] <= rows[:, None]  # [c, n]
        if self.select_all or self.top_k >= n:
            selected = causal.expand(q.shape[0], q.shape[1], -1, -1)
        else:
            # The K-th largest score of each row's prefix is the threshold (-inf while fewer than K keys): a
            # rule of values only, so keys tied with it are all taken and no tie-break depends on the shape.
            prefix = s[:, :, None, :].detach().masked_fill(~causal, float("-inf"))  # [B, H, c, n]
            kth = prefix.topk(self.top_k, dim=-1).values[..., -1:] if self.top_k else prefix.new_full((1,), math.inf)
            selected = (prefix >= kth) & causal
        same = (qc[..., :, None] == kc[..., None, :]).any(0)  # [B, H, c, n]
        allowed = causal & (same | selected | (j[None, :] == rows[:, None]))
        logits = q @ k.transpose(-1, -2) * self.head_dim ** -0.5
        ls = F.logsigmoid(s)[:, :, None, :]
        logits = logits + (ls - ls.detach()) * selected  # zero in value: the score's straight-through gradient
        p = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)  # the own key keeps rows finite
        return p @ v

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        return self.out_proj(y.transpose(1, 2).flatten(2))  # [B, H, L, P] -> [B, L, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        q, k, v, qc, kc, s = self.project(x)
        outs = []
        for i0 in range(0, L, self.block):  # a block of queries needs only the keys up to its last row
            i1 = min(L, i0 + self.block)
            rows = torch.arange(i0, i1, device=x.device)
            outs.append(self.attend(q[:, :, i0:i1], qc[..., i0:i1], rows, k[:, :, :i1], v[:, :, :i1],
                                    kc[..., :i1], s[..., :i1]))
        return self.merge(torch.cat(outs, dim=2).to(x.dtype))


@dataclass
class HaxState:
    """Streaming state: the local mixer's state; all past keys / values [B, H, t, P], their bucket codes
    [R, B, H, t] and key scores [B, H, t]; the position t."""

    local: Any
    k: torch.Tensor
    v: torch.Tensor
    codes: torch.Tensor
    scores: torch.Tensor
    t: int = 0


@register_mixer("hax")
class HAX(Mixer):
    """SSM followed by HAX attention (LSH buckets + top-k key selection), each pre-RMSNorm + residual.

    Args:
        local: name of the SSM (any causal streaming mixer), default "mamba". local_hparams: its hyperparameters.
        n_heads: attention heads (default 4); d_model must be divisible by it.
        n_buckets: LSH buckets per round, a power of two (default 8; 1 puts every key in the query's bucket).
        n_hashes: LSH rounds R (default 1); a key in the query's bucket in any round is seen.
        top_k: keys selected globally by score (default 8). select_all: select every causal key (full attention).
        rotary: RoPE on q / k for the scores (default False; hashing always uses the un-rotated q / k).
        block: query rows per block of the masked attention (default 256), bounding peak memory.
    The paper's bucket count and top-k could not be read; these defaults are this library's choice.
    """

    supports_noncausal = False
    test_hparams = {"local_hparams": {"d_state": 4, "expand": 1}, "n_heads": 2, "n_buckets": 4, "top_k": 2,
                    "block": 5}

    def __init__(self, d_model: int, *, causal: bool = True, local: str = "mamba", local_hparams: dict | None = None,
                 n_heads: int = 4, n_buckets: int = 8, n_hashes: int = 1, top_k: int = 8, select_all: bool = False,
                 rotary: bool = False, block: int = 256) -> None:
        super().__init__(d_model, causal=causal)
        if not causal:
            raise ValueError("hax is causal only (causal=False is not supported)")
        for name, value, low in (("n_heads", n_heads, 1), ("n_buckets", n_buckets, 1), ("n_hashes", n_hashes, 1),
                                 ("top_k", top_k, 0), ("block", block, 1)):
            check_int(name, value, low)
        self.norm1 = nn.RMSNorm(d_model)
        self.local = build_local_mixer("hax", local, d_model, local_hparams)
        self.norm2 = nn.RMSNorm(d_model)
        self.attn = HaxAttention(d_model, n_heads, n_buckets, n_hashes, top_k, bool(select_all), rotary, block)

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        if context is not None:
            raise ValueError("hax is a self mixer; it takes no context")
        h = x + self.local(self.norm1(x))
        return h + self.attn(self.norm2(h)) - x

    def init_state(self, batch_size: int, device=None, dtype=None) -> HaxState:
        p = self.attn.q_proj.weight
        device, dtype = device or p.device, dtype or p.dtype
        a, B = self.attn, batch_size
        empty = torch.zeros(B, a.n_heads, 0, a.head_dim, device=device, dtype=dtype)
        return HaxState(
            local=self.local.init_state(B, device=device, dtype=dtype), k=empty, v=empty.clone(),
            codes=torch.zeros(a.planes.shape[0], B, a.n_heads, 0, dtype=torch.long, device=device),
            scores=torch.zeros(B, a.n_heads, 0, device=device, dtype=dtype),
        )

    def step(self, x_t: torch.Tensor, state: HaxState) -> tuple[torch.Tensor, HaxState]:
        """x_t [B, D] -> y_t [B, D]; the token's key, value, codes and score join the state."""
        y, local = self.local.step(self.norm1(x_t), state.local)
        h = x_t + y
        q, k, v, qc, kc, s = self.attn.project(self.norm2(h)[:, None, :], offset=state.t)
        st = HaxState(local=local, k=torch.cat([state.k, k.to(state.k.dtype)], dim=2),
                      v=torch.cat([state.v, v.to(state.v.dtype)], dim=2), codes=torch.cat([state.codes, kc], dim=-1),
                      scores=torch.cat([state.scores, s.to(state.scores.dtype)], dim=-1), t=state.t + 1)
        rows = torch.full((1,), state.t, device=x_t.device)
        a = self.attn.attend(q, qc, rows, st.k, st.v, st.codes, st.scores).to(h.dtype)
        return h + self.attn.merge(a)[:, 0] - x_t, st
