"""MemMamba: Mamba layers that take notes (Wang et al., 2025, "MemMamba: Rethinking Memory Patterns in State
Space Model").

Shapes in letters: B batch, L length, D d_model, S pool_size, M d_note, n n_layers.

Each of the n layers is a pre-norm residual Mamba layer followed by its note block:

    h <- h + Mamba(norm(h))
    s_t = sigmoid(w . norm(h)_t + b)                 salience of token t                          [B, L]
    token t is noted iff s_t > threshold; its note is s_t * W_note norm(h)_t                      [B, L, M]
    pool_t = the last S notes at positions <= t       (a fixed-size state pool per layer and row)
    h <- h + W_o attn(W_q norm(h)_t; pool_t)          cross-token attention to the layer's own pool
    every ``cross_layer_every``-th layer also:
    h <- h + W_o' attn(W_q' norm(h)_t; pools_t of every earlier layer)      cross-layer attention

Attention runs over the pool plus a learned null slot, so a token with an empty pool attends to the null
slot and gets a learned constant instead of a 0/0. Multiplying the note by s_t lets the salience learn
through the notes it lets in; the threshold decides which tokens enter.

Memory and work are O(L * S) per layer: every position gathers the S pool entries it sees, never an L x L
matrix; streaming keeps each layer's Mamba state and its pool of S notes, so decoding memory is constant.
The paper gives no code; this layout follows its description (note block, pool, cross-token and sparse
cross-layer attention). ``mmseq.mixers.memory_fidelity`` measures the horizontal and vertical fidelity it
is meant to raise, on this or any causal stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .base import Mixer, create_mixer, register_mixer


class PoolAttention(nn.Module):
    """Single-head attention from x [B, L, D] to per-position pools of notes [B, L, K, M] (valid: [B, L, K])
    plus a learned null slot -> [B, L, D]."""

    def __init__(self, d_model: int, d_note: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(d_model, d_note, bias=False)
        self.kv_proj = nn.Linear(d_note, 2 * d_note, bias=False)
        self.null = nn.Parameter(torch.zeros(2, d_note))  # the null slot's key and value
        self.out_proj = nn.Linear(d_note, d_model, bias=False)
        self.scale = d_note**-0.5

    def forward(self, x: torch.Tensor, notes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        q = self.q_proj(x)  # [B, L, M]
        k, v = self.kv_proj(notes.to(q.dtype)).chunk(2, dim=-1)  # [B, L, K, M]
        scores = torch.einsum("blm,blkm->blk", q, k) * self.scale
        scores = scores.masked_fill(~valid, float("-inf"))
        null_score = (q * self.null[0].to(q.dtype)).sum(-1, keepdim=True) * self.scale  # [B, L, 1]
        p = torch.softmax(torch.cat([null_score, scores], dim=-1), dim=-1)
        out = p[..., :1] * self.null[1].to(q.dtype) + torch.einsum("blk,blkm->blm", p[..., 1:], v)
        return self.out_proj(out)


class NoteBlock(nn.Module):
    """Salience and notes of a layer's tokens: x [B, L, D] -> (noted [B, L] bool, notes [B, L, M])."""

    def __init__(self, d_model: int, d_note: int, threshold: float) -> None:
        super().__init__()
        self.salience = nn.Linear(d_model, 1)
        self.note_proj = nn.Linear(d_model, d_note, bias=False)
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.sigmoid(self.salience(x))  # [B, L, 1]
        return s[..., 0] > self.threshold, s * self.note_proj(x)


def gather_pools(noted: torch.Tensor, notes: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every position, the last ``size`` notes at positions <= t.

    noted [B, L] bool, notes [B, L, M] -> (pool [B, L, size, M], valid [B, L, size]). Slot j of position t
    holds the note of rank r_t - size + j (r_t: notes taken up to t), so the pool is a sliding window over
    the compacted notes; only O(L * size) entries are gathered.
    """
    B, L, M = notes.shape
    rank = noted.long().cumsum(1)  # [B, L]: notes taken up to and including t
    # Compact the notes: row b's k-th note goes to slot k (positions without a note write to a spare slot L).
    slot = torch.where(noted, rank - 1, torch.full_like(rank, L))
    compact = notes.new_zeros(B, L + 1, M).scatter(1, slot[..., None].expand(B, L, M), notes)
    want = rank[..., None] - size + torch.arange(size, device=notes.device)  # [B, L, size]: note ranks
    valid = want >= 0
    idx = want.clamp_min(0).reshape(B, L * size, 1).expand(B, L * size, M)
    return compact.gather(1, idx).view(B, L, size, M), valid


@dataclass
class MemMambaLayerState:
    mamba: Any
    pool: torch.Tensor  # [B, S, M], oldest first
    valid: torch.Tensor  # [B, S]


class MemMambaLayer(nn.Module):
    """One MemMamba layer: Mamba, note block, cross-token attention, optional cross-layer attention."""

    def __init__(self, d_model: int, *, d_note: int, pool_size: int, threshold: float, cross_layer: bool,
                 mamba: dict) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.mamba = create_mixer("mamba", d_model, **mamba)
        self.note_norm = nn.RMSNorm(d_model, eps=1e-5)
        self.notes = NoteBlock(d_model, d_note, threshold)
        self.cross_token = PoolAttention(d_model, d_note)
        self.cross_layer = PoolAttention(d_model, d_note) if cross_layer else None
        self.pool_size = pool_size


@register_mixer("memmamba")
class MemMambaMixer(Mixer):
    """MemMamba as one mixer: x [B, L, D] -> [B, L, D] (the sum of its layers' residual updates). Causal only.

    Args:
        n_layers: Mamba layers with note blocks. pool_size: S, notes each layer keeps.
        d_note: M, width of a note (default d_model / 2). threshold: salience above which a token is noted.
        cross_layer_every: every this many layers (counting from 1) also attends to the pools of all earlier
            layers; 0 disables cross-layer attention.
        d_state, expand: of the Mamba layers.
    """

    supports_noncausal = False
    test_hparams = {"n_layers": 2, "pool_size": 3, "d_state": 4, "cross_layer_every": 2}

    def __init__(self, d_model: int, *, causal: bool = True, n_layers: int = 4, pool_size: int = 16,
                 d_note: int | None = None, threshold: float = 0.5, cross_layer_every: int = 2,
                 d_state: int = 16, expand: float = 2) -> None:
        super().__init__(d_model, causal=causal)
        if not causal:
            raise ValueError("memmamba is causal only; causal=False is not supported")
        if n_layers < 1 or pool_size < 1 or cross_layer_every < 0:
            raise ValueError(f"need n_layers >= 1, pool_size >= 1 and cross_layer_every >= 0, got {n_layers}, "
                             f"{pool_size} and {cross_layer_every}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1) (it is compared with a sigmoid), got {threshold}")
        d_note = d_note or max(d_model // 2, 1)
        self.layers = nn.ModuleList(
            MemMambaLayer(d_model, d_note=d_note, pool_size=pool_size, threshold=threshold,
                          cross_layer=cross_layer_every > 0 and i > 0 and (i + 1) % cross_layer_every == 0,
                          mamba={"d_state": d_state, "expand": expand})
            for i in range(n_layers)
        )
        self.d_note, self.pool_size = d_note, pool_size
        self.last_metrics: dict[str, torch.Tensor] = {}  # {"note_rate": ...} after a forward (see mixer_metrics)

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        if context is not None:
            raise ValueError("memmamba is a self mixer; it takes no context")
        h = x
        pools, valids, rates = [], [], []
        for layer in self.layers:
            h = h + layer.mamba(layer.norm(h))
            u = layer.note_norm(h)
            noted, notes = layer.notes(u)
            pool, valid = gather_pools(noted, notes, layer.pool_size)
            rates.append(noted.float().mean())
            h = h + layer.cross_token(u, pool, valid)
            if layer.cross_layer is not None and pools:
                h = h + layer.cross_layer(u, torch.cat(pools, dim=2), torch.cat(valids, dim=2))
            pools.append(pool)
            valids.append(valid)
        self.last_metrics = {"note_rate": torch.stack(rates).mean().detach()}
        return h - x

    def init_state(self, batch_size: int, device=None, dtype=None) -> list[MemMambaLayerState]:
        p = self.layers[0].notes.note_proj.weight
        device, dtype = device or p.device, dtype or p.dtype
        return [MemMambaLayerState(
            mamba=layer.mamba.init_state(batch_size, device=device, dtype=dtype),
            pool=torch.zeros(batch_size, self.pool_size, self.d_note, device=device, dtype=dtype),
            valid=torch.zeros(batch_size, self.pool_size, dtype=torch.bool, device=device),
        ) for layer in self.layers]

    def step(self, x_t: torch.Tensor, state: list[MemMambaLayerState]) -> tuple[torch.Tensor, list]:
        """x_t [B, D] -> (y_t [B, D], state): each layer's pool takes this token's note when it is noted."""
        h = x_t[:, None]  # [B, 1, D]
        new_state, pools, valids = [], [], []
        for layer, s in zip(self.layers, state):
            y, mamba_state = layer.mamba.step(layer.norm(h)[:, 0], s.mamba)
            h = h + y[:, None]
            u = layer.note_norm(h)
            noted, note = layer.notes(u)  # [B, 1], [B, 1, M]
            shifted = torch.cat([s.pool[:, 1:], note.to(s.pool.dtype)], dim=1)
            shifted_valid = torch.cat([s.valid[:, 1:], torch.ones_like(s.valid[:, :1])], dim=1)
            pool = torch.where(noted[..., None], shifted, s.pool)
            valid = torch.where(noted, shifted_valid, s.valid)
            h = h + layer.cross_token(u, pool[:, None], valid[:, None])
            if layer.cross_layer is not None and pools:
                h = h + layer.cross_layer(u, torch.cat(pools, dim=1)[:, None], torch.cat(valids, dim=1)[:, None])
            pools.append(pool)
            valids.append(valid)
            new_state.append(MemMambaLayerState(mamba=mamba_state, pool=pool, valid=valid))
        return h[:, 0] - x_t, new_state


__all__ = ["MemMambaMixer", "NoteBlock", "PoolAttention", "gather_pools"]
