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

Two paths compute the same thing (``impl``; outputs and gradients agree to rounding):

- "mask": queries in blocks of ``block`` rows against all earlier keys under an explicit mask: time
  O(L^2 * H * P) like full attention, peak memory O(block * L * H), never L x L at once. The reference, and
  what ``step`` runs for its one row.
- "bucketed" (``bucketed_attention``): the allowed keys split into disjoint parts, each a partial softmax, merged
  at the end: the own key; per round, the bucket's earlier keys (keys sorted by (bucket, position), queries in
  blocks against the union of their buckets' ranges); the selected keys outside every bucket (a running
  top-(K+1) of earlier scores gives each query its threshold and K keys, gathered). A block of sorted queries
  scores the key range of the buckets it touches, about 2L / n_buckets keys when buckets are balanced and
  larger than a block: time about O(L * (L / n_buckets + block + K) * H * P) per round, memory
  O(block * (L / n_buckets + block + K) * H); a bucket holding most keys costs up to O(L^2) time (memory stays
  O(block * L * H)). When scores tie at a threshold it returns None and the masked path runs.

``impl=None`` takes "bucketed" once L exceeds one block (and selection is sparse), else "mask".

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

    def forward_masked(self, q, k, v, qc, kc, s) -> torch.Tensor:
        """The masked path: blocks of query rows against all earlier keys. -> [B, H, L, P]."""
        L = q.shape[2]
        outs = []
        for i0 in range(0, L, self.block):  # a block of queries needs only the keys up to its last row
            i1 = min(L, i0 + self.block)
            rows = torch.arange(i0, i1, device=q.device)
            outs.append(self.attend(q[:, :, i0:i1], qc[..., i0:i1], rows, k[:, :, :i1], v[:, :, :i1],
                                    kc[..., :i1], s[..., :i1]))
        return torch.cat(outs, dim=2)

    def forward(self, x: torch.Tensor, impl: str | None = None) -> torch.Tensor:
        """x [B, L, D] -> [B, L, D]. impl: "mask", "bucketed" or None (bucketed once L exceeds one block and the
        selection is sparse); the bucketed path falls back to the masked one when scores tie at a threshold."""
        L = x.shape[1]
        q, k, v, qc, kc, s = self.project(x)
        impl = impl or ("bucketed" if L > self.block else "mask")
        y = None
        if impl == "bucketed" and not self.select_all and self.top_k < L:
            y = bucketed_attention(q, k, v, qc, kc, s, top_k=self.top_k, block=self.block)
        if y is None:
            y = self.forward_masked(q, k, v, qc, kc, s)
        return self.merge(y.to(x.dtype))


# ----------------------------------------------------------------------------------------------------------
# bucketed path: the same attention as ``HaxAttention.attend``, computed from sorted buckets and gathered keys
# ----------------------------------------------------------------------------------------------------------


def _partial(logits: torch.Tensor, allowed: torch.Tensor, values: torch.Tensor, eq: str):
    """One disjoint part of a softmax: (row max m, sum of exp(logit - m), sum of exp(logit - m) * v).

    The max only stabilises (the merged result does not depend on it), so it is detached; rows with no key
    get m = -inf and zero sums."""
    logits = logits.masked_fill(~allowed, float("-inf"))
    m = logits.detach().amax(-1)
    e = torch.exp(logits - torch.where(torch.isfinite(m), m, 0.0)[..., None])
    return m, e.sum(-1), torch.einsum(eq, e, values)


def _st(s: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """The straight-through score term of ``attend``: zero in value, log sigmoid(s)'s gradient on selected keys."""
    ls = F.logsigmoid(s)
    return (ls - ls.detach()) * selected


def bucketed_attention(q, k, v, qc, kc, s, *, top_k: int, block: int) -> torch.Tensor | None:
    """HAX attention without an L x L score: q, k, v [B, H, L, P], codes qc, kc [R, B, H, L], scores s [B, H, L]
    -> [B, H, L, P], or None when scores tie at some query's threshold (the caller then takes the masked path).

    The allowed keys of query i split into disjoint parts, each a partial softmax merged at the end:
    its own key; for round r, the earlier keys in its round-r bucket that share no bucket in rounds < r; and
    the selected keys that share no bucket in any round. Buckets: keys sorted by (code, position), so the keys
    of query i's bucket before i are one contiguous range; queries, sorted the same way, run in blocks against
    the union of their ranges. Selection: a running top-(K+1) of the earlier scores plus the block's own gives
    each query its threshold (the K-th score) and its K keys, gathered. Costs: see the module docstring."""
    B, H, L, P = q.shape
    G, R, K = B * H, qc.shape[0], top_k
    dtype = torch.promote_types(q.dtype, torch.float32)
    q, k, v = (t.reshape(G, L, P).to(dtype) for t in (q, k, v))
    s = s.reshape(G, L).to(dtype)
    qc, kc = qc.reshape(R, G, L), kc.reshape(R, G, L)
    scale = P ** -0.5
    pos = torch.arange(L, device=q.device)
    sd = s.detach()

    def take(t, idx):  # t [G, L, ...], idx [G, ...] -> t at idx
        flat = idx.reshape(G, -1)
        if t.dim() == 2:
            return t.gather(1, flat).view(idx.shape)
        return t.gather(1, flat[..., None].expand(-1, -1, t.shape[-1])).view(*idx.shape, t.shape[-1])

    def any_round_match(rounds, qi, kj):  # qi [G, c, 1] or [G, c], kj [G, c, n] -> bool, same bucket in any round
        hit = torch.zeros(kj.shape, dtype=torch.bool, device=q.device)
        for r in rounds:
            hit |= take(qc[r], qi).expand_as(kj) == take(kc[r], kj) if qi.dim() == 3 else \
                take(qc[r], qi)[..., None] == take(kc[r], kj)
        return hit

    # Selection: per query its threshold tau (the K-th largest score among keys <= i) and those K keys.
    # (top_k = 0: nothing is selected, tau = +inf.)
    tau, parts = torch.full((G, L), float("inf"), dtype=dtype, device=q.device), []
    if K:
        parts_sel = []
        buf_v = torch.full((G, K + 1), float("-inf"), dtype=dtype, device=q.device)
        buf_i = torch.zeros(G, K + 1, dtype=torch.long, device=q.device)
        for i0 in range(0, L, block):
            i1 = min(L, i0 + block)
            c, rows = i1 - i0, pos[i0:i1]
            later = pos[None, i0:i1] > rows[:, None]  # [c, c]: key after the query
            cand_v = torch.cat([buf_v[:, None].expand(G, c, K + 1),
                                sd[:, None, i0:i1].expand(G, c, c).masked_fill(later, float("-inf"))], dim=-1)
            cand_i = torch.cat([buf_i[:, None].expand(G, c, K + 1), rows[None, None].expand(G, c, c)], dim=-1)
            top_v, top_p = cand_v.topk(K, dim=-1)
            t = top_v[..., -1]  # [G, c]
            # K+1 earlier candidates are kept, so more than K candidates at or above a finite tau means a tie.
            if (torch.isfinite(t) & ((cand_v >= t[..., None]).sum(-1) > K)).any():
                return None
            tau[:, i0:i1] = t
            idx = cand_i.gather(-1, top_p)  # [G, c, K]
            rows_g = rows[None, :].expand(G, c)
            keep = torch.isfinite(top_v) & (idx != rows[None, :, None])
            keep &= ~any_round_match(range(R), rows_g, idx)  # those in a bucket are counted there
            logit = torch.einsum("gcp,gckp->gck", q[:, i0:i1], take(k, idx)) * scale + _st(take(s, idx), keep)
            parts_sel.append(_partial(logit, keep, take(v, idx), "gck,gckp->gcp"))
            all_v = torch.cat([buf_v, sd[:, i0:i1]], dim=-1)
            all_i = torch.cat([buf_i, rows[None].expand(G, c)], dim=-1)
            buf_v, p_ = all_v.topk(K + 1, dim=-1)
            buf_i = all_i.gather(-1, p_)
        parts.append(tuple(torch.cat(xs, dim=1) for xs in zip(*parts_sel)))

    # Own key: always present, selected when its score reaches the threshold.
    own = (q * k).sum(-1) * scale + _st(s, s.detach() >= tau)
    e_own = torch.exp(own - own.detach())  # 1 in value, carries the own logit's gradient
    parts.append((own.detach(), e_own, v * e_own[..., None]))

    # Buckets, round by round.
    for r in range(R):
        comp = kc[r] * L + pos  # keys ordered by (bucket, position)
        korder = comp.argsort(dim=-1)
        comp_sorted = comp.gather(1, korder)
        lo = torch.searchsorted(comp_sorted, qc[r] * L)  # first key of the query's bucket
        hi = torch.searchsorted(comp_sorted, qc[r] * L + pos)  # past its last key before the query
        qorder = (qc[r] * L + pos).argsort(dim=-1)
        lo_s, hi_s = lo.gather(1, qorder), hi.gather(1, qorder)
        ms, ls_, os_ = [], [], []
        for c0 in range(0, L, block):
            c1 = min(L, c0 + block)
            qi = qorder[:, c0:c1]  # [G, c] query positions
            base = lo_s[:, c0:c1].amin(-1)
            span = int((hi_s[:, c0:c1].amax(-1) - base).clamp_min(1).max())
            ks = base[:, None] + torch.arange(span, device=q.device)  # [G, span] sorted slots (some past L)
            allowed = (ks[:, None, :] >= lo_s[:, c0:c1, None]) & (ks[:, None, :] < hi_s[:, c0:c1, None])
            kj = korder.gather(1, ks.clamp_max(L - 1))  # key positions
            if r:
                allowed &= ~any_round_match(range(r), qi[..., None], kj[:, None, :].expand(-1, c1 - c0, -1))
            sel = take(s, kj).detach()[:, None, :] >= take(tau, qi)[..., None]
            logit = take(q, qi) @ take(k, kj).transpose(-1, -2) * scale + _st(take(s, kj)[:, None, :], sel)
            m, l_, o = _partial(logit, allowed, take(v, kj), "gcn,gnp->gcp")
            ms.append(m), ls_.append(l_), os_.append(o)
        m, l_, o = torch.cat(ms, 1), torch.cat(ls_, 1), torch.cat(os_, 1)
        inv = qorder.argsort(dim=-1)  # back to position order
        parts.append((m.gather(1, inv), l_.gather(1, inv), o.gather(1, inv[..., None].expand(-1, -1, P))))

    M = torch.stack([p_[0] for p_ in parts]).amax(0)  # finite: every row has its own key
    num = sum(torch.exp(m - M)[..., None] * o for m, _, o in parts)
    den = sum(torch.exp(m - M) * l_ for m, l_, _ in parts)
    return (num / den[..., None]).view(B, H, L, P)


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
        block: query rows per block (default 256), bounding peak memory in either path.
        impl: "mask", "bucketed" or None (bucketed once L > block); see the module docstring.
    The paper's bucket count and top-k could not be read; these defaults are this library's choice.
    """

    supports_noncausal = False
    test_hparams = {"local_hparams": {"d_state": 4, "expand": 1}, "n_heads": 2, "n_buckets": 4, "top_k": 2,
                    "block": 5}

    def __init__(self, d_model: int, *, causal: bool = True, local: str = "mamba", local_hparams: dict | None = None,
                 n_heads: int = 4, n_buckets: int = 8, n_hashes: int = 1, top_k: int = 8, select_all: bool = False,
                 rotary: bool = False, block: int = 256, impl: str | None = None) -> None:
        super().__init__(d_model, causal=causal)
        if not causal:
            raise ValueError("hax is causal only (causal=False is not supported)")
        for name, value, low in (("n_heads", n_heads, 1), ("n_buckets", n_buckets, 1), ("n_hashes", n_hashes, 1),
                                 ("top_k", top_k, 0), ("block", block, 1)):
            check_int(name, value, low)
        if impl not in (None, "mask", "bucketed"):
            raise ValueError(f"impl must be 'mask', 'bucketed' or None, got {impl!r}")
        self.impl = impl
        self.norm1 = nn.RMSNorm(d_model)
        self.local = build_local_mixer("hax", local, d_model, local_hparams)
        self.norm2 = nn.RMSNorm(d_model)
        self.attn = HaxAttention(d_model, n_heads, n_buckets, n_hashes, top_k, bool(select_all), rotary, block)

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        if context is not None:
            raise ValueError("hax is a self mixer; it takes no context")
        h = x + self.local(self.norm1(x))
        return h + self.attn(self.norm2(h), impl=self.impl) - x

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
