"""Multi-head softmax attention as a mixer (full causal or noncausal, self or cross)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .base import Mixer, register_mixer
from .rotary import Rotary

if TYPE_CHECKING:
    from .kv_policies import KVCachePolicy


@dataclass
class KVState:
    """Streaming state: keys/values kept so far, [B, H, t, P] each.

    Under a cache policy (``kv_policies.set_cache_policy``) the cache may have dropped tokens, so the state also
    holds ``pos`` [B, t], the original position of each kept entry, ``seen``, the tokens appended so far, and
    ``cursor``, the policy's own bookkeeping (LaCache's ladder cursor). Without a policy ``pos`` stays None and
    t is the number of tokens seen.

    ``unrotated`` is True when the keys are held before rotary: a policy with ``reposition=True`` caches them so
    and rotates the whole cache at its indices 0..t-1 at every step. Otherwise keys are held rotated at their
    original positions.
    """

    k: torch.Tensor
    v: torch.Tensor
    pos: torch.Tensor | None = None
    seen: int = 0
    cursor: int = 0
    unrotated: bool = False


@register_mixer("attention")
class AttentionMixer(Mixer):
    """Softmax attention over the whole sequence (torch SDPA), with optional rotary positions.

    x: [B, L, D] -> [B, L, D]. With ``context`` [B, S, D] it attends from x to context (cross attention,
    every query sees the whole context; causality then binds only the query side, which holds by construction).
    """

    supports_context = True

    def __init__(self, d_model: int, *, causal: bool = True, n_heads: int = 4, rotary: bool = True,
                 bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__(d_model, causal=causal)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.kv_proj = nn.Linear(d_model, 2 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.rotary = Rotary(self.head_dim) if rotary else None
        self.dropout = dropout
        # Set by kv_policies.set_cache_policy: the policy and (this layer's index, attention layers in the
        # model), which per-layer policies such as LaCache need. None keeps every token.
        self.cache_policy: KVCachePolicy | None = None
        self.cache_layer = (0, 1)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, L, _ = t.shape
        return t.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, L, P]

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        src = x if context is None else context
        q = self._heads(self.q_proj(x))
        k, v = (self._heads(t) for t in self.kv_proj(src).chunk(2, dim=-1))
        if self.rotary is not None and context is None:
            q, k = self.rotary(q), self.rotary(k)
        # is_causal aligns the mask top-left, which is only right for self attention.
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal and context is None,
            dropout_p=self.dropout if self.training else 0.0,
        )
        B, H, L, P = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, L, H * P))

    def init_state(self, batch_size: int, device=None, dtype=None) -> KVState:
        if not self.causal:
            raise NotImplementedError("step() needs a causal attention mixer")
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        if self.cache_policy is None:
            return KVState(k=empty, v=empty.clone())
        return KVState(k=empty, v=empty.clone(), pos=torch.zeros(batch_size, 0, dtype=torch.long, device=device))

    def step(self, x_t: torch.Tensor, state: KVState) -> tuple[torch.Tensor, KVState]:
        """x_t: [B, D] -> y_t: [B, D]; appends this token's key/value to the state (then lets the cache policy,
        if any, evict entries down to its budget before the token attends).

        Under a policy with ``reposition=True`` the keys are cached unrotated; at each step the n kept entries
        (this token's included) are rotated at positions 0..n-1 and the query at n - 1, so no query-key distance
        exceeds n - 1, whatever the token's true position."""
        # Once a policy has evicted, the cache length is no longer the position: the count of tokens is.
        t = state.k.shape[2] if state.pos is None else state.seen
        reposition = self.rotary is not None and bool(getattr(self.cache_policy, "reposition", False))
        if state.unrotated != reposition and state.k.shape[2] > 0:
            raise ValueError(f"this state holds keys {'un' if state.unrotated else ''}rotated, but the cache policy "
                             f"{self.cache_policy!r} needs them {'un' if reposition else ''}rotated; start a new "
                             "state after changing reposition")
        x = x_t[:, None, :]
        q = self._heads(self.q_proj(x))
        k, v = (self._heads(u) for u in self.kv_proj(x).chunk(2, dim=-1))
        if self.rotary is not None and not reposition:
            q, k = self.rotary(q, offset=t), self.rotary(k, offset=t)
        if self.cache_policy is None and state.pos is None:
            state = KVState(k=torch.cat([state.k, k], dim=2), v=torch.cat([state.v, v], dim=2))
        else:
            state = self._evict(state, torch.cat([state.k, k], dim=2), torch.cat([state.v, v], dim=2), t,
                                reposition)
        keys = state.k
        if reposition:  # positions inside the cache: entry i at i, the query (the newest entry) at n - 1
            keys = self.rotary(keys)
            q = self.rotary(q, offset=keys.shape[2] - 1)
        y = F.scaled_dot_product_attention(q, keys, state.v)
        return self.out_proj(y.transpose(1, 2).reshape(x_t.shape[0], -1)), state

    def _evict(self, state: KVState, k: torch.Tensor, v: torch.Tensor, t: int, unrotated: bool) -> KVState:
        """k, v [B, H, n, P] hold the cache plus token t: track its position, and once n exceeds the policy's
        budget keep only the entries the policy picks. Keys stay as given: rotated at their original positions,
        or unrotated when ``unrotated`` (the policy re-rotates them at each step)."""
        B, n = k.shape[0], k.shape[2]
        old = state.pos if state.pos is not None else torch.arange(t, device=k.device).expand(B, t)
        pos = torch.cat([old, torch.full((B, 1), t, dtype=torch.long, device=k.device)], dim=1)
        policy = self.cache_policy
        if policy is None or policy.budget is None or n <= policy.budget:
            return KVState(k=k, v=v, pos=pos, seen=t + 1, cursor=state.cursor, unrotated=unrotated)
        layer, n_layers = self.cache_layer
        # Every row of the batch has seen the same positions, so one selection serves them all.
        keep, cursor = policy.keep(k, v, pos[0], layer=layer, n_layers=n_layers, cursor=state.cursor)
        return KVState(k=k.index_select(2, keep), v=v.index_select(2, keep), pos=pos.index_select(1, keep),
                       seen=t + 1, cursor=cursor, unrotated=unrotated)
