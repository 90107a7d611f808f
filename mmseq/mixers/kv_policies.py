"""KV-cache policies: attention decoding under a fixed memory budget.

A causal ``AttentionMixer`` streams with a KV cache [B, H, T, P] that grows by one entry per token. A policy
bounds it: after each token is appended, once the cache holds more than ``budget`` entries, the policy picks the
entries to keep (indices into the cache, in order) and the mixer drops the rest before the token attends.

- ``FullCache``: keeps everything (the default behaviour, with positions tracked).
- ``SinkWindowCache(budget, sinks, reposition)``: the first ``sinks`` tokens plus the most recent ones
  (StreamingLLM).
- ``LaCache(budget, sinks, span, overlap, reposition)``: the ladder-shaped cache (GATECH-EIC/LaCache). Each
  layer keeps a different, shifted subset of the older tokens, so the layers together cover a longer history
  than any one of them; when the compacted region fills up, compaction starts over on already-compacted tokens.

``set_cache_policy(model, policy)`` installs a policy on every causal full-attention mixer of a model (any
trunk that steps with ``init_state``/``step``), giving each its index among them; ``None`` removes it.
Positions: by default keys are cached after rotary at their original positions, so a kept token keeps its true
distance to the query, and that distance grows without bound as the stream runs past the training length. With
``reposition=True`` (as StreamingLLM and LaCache's reference do: positions inside the cache) keys are cached
before rotary, and at each step the n kept entries are rotated at their cache indices 0..n-1 and the query at
n - 1, so no query-key distance exceeds budget - 1; the state's ``pos`` still records the original positions.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from .attention import AttentionMixer


class KVCachePolicy(Protocol):
    """Which cache entries one attention layer keeps once it holds more than ``budget`` (None: no bound)."""

    budget: int | None
    reposition: bool  # rotate the kept keys at their cache indices rather than their original positions

    def validate(self, n_layers: int) -> None:
        """Raise ValueError when the policy cannot serve a model with ``n_layers`` attention layers."""

    def keep(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, *, layer: int, n_layers: int,
             cursor: int) -> tuple[torch.Tensor, int]:
        """k, v [B, H, T, P] (T > budget), pos [T] the original positions of the entries, ``layer`` this layer's
        index among ``n_layers`` attention layers, ``cursor`` what the last call returned (0 at first).
        -> (indices [T'] into the cache, ascending, T' <= budget, the newest entry included; the next cursor)."""


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class FullCache:
    """Keeps every token: the unbounded cache, with the original positions tracked in the state."""

    budget = None
    reposition = False

    def validate(self, n_layers: int) -> None:
        pass

    def keep(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, *, layer: int, n_layers: int,
             cursor: int) -> tuple[torch.Tensor, int]:
        return torch.arange(pos.shape[0], device=pos.device), cursor

    def __repr__(self) -> str:
        return "FullCache()"


class SinkWindowCache:
    """The first ``sinks`` tokens (attention sinks) plus the ``budget - sinks`` most recent ones (StreamingLLM).

    Args:
        budget: entries kept per layer, > sinks (default 256, LaCache's cache_size).
        sinks: leading tokens always kept (default 4, LaCache's start_size).
        reposition: cache keys unrotated and rotate the kept ones at their indices in the cache (0..n-1, the
            query at n - 1) at every step, as StreamingLLM does, instead of at their original positions
            (default False).
    """

    def __init__(self, budget: int = 256, sinks: int = 4, reposition: bool = False) -> None:
        _check_int("budget", budget, 1)
        _check_int("sinks", sinks, 0)
        if budget <= sinks:
            raise ValueError(f"budget must exceed sinks to leave room for recent tokens, got budget={budget}, "
                             f"sinks={sinks}")
        self.budget = budget
        self.sinks = sinks
        self.reposition = _check_bool("reposition", reposition)

    def validate(self, n_layers: int) -> None:
        pass

    def keep(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, *, layer: int, n_layers: int,
             cursor: int) -> tuple[torch.Tensor, int]:
        T = pos.shape[0]
        idx = torch.arange(T, device=pos.device)
        if T <= self.budget:
            return idx, cursor
        return torch.cat([idx[: self.sinks], idx[T - (self.budget - self.sinks):]]), cursor

    def __repr__(self) -> str:
        extra = ", reposition=True" if self.reposition else ""
        return f"SinkWindowCache(budget={self.budget}, sinks={self.sinks}{extra})"


class LaCache:
    """Ladder-shaped KV cache with iterative compaction (GATECH-EIC/LaCache, ``ppl/lacache/kv_cache.py``).

    With l attention layers, span S and overlap O: before = 1 + ceil((l - S) / (S - O)) and
    after = min(ceil(S / (S - O)), before). Past the ``sinks`` leading tokens, compaction walks a cursor through
    the cache: each group of ``before`` consecutive entries at the cursor shrinks, in layer i, to the ``after``
    entries starting at offset i mod (before - after + 1), so consecutive layers keep shifted subsets (the
    ladder). Example: l = 32, S = 16, O = 0 gives before = 2, after = 1, and even and odd layers keep alternate
    tokens. Entries past the cursor stay whole, and the newest l entries are never compacted (as in the
    reference). When the cursor would run into them, it starts over at ``sinks``, compacting already-compacted
    entries again, so older history thins out geometrically while the cache stays at ``budget``.

    One group at a time is compacted, each time the cache exceeds the budget, so ``budget`` is a hard bound
    (the reference grows its cache by floor((before - after) / 2) to match the average size; not done here).

    Args:
        budget: entries kept per layer (default 256, the reference's cache_size); must be at least
            sinks + n_layers + after.
        sinks: leading tokens never compacted (default 4, the reference's start_size).
        span: S, about how many adjacent layers keep each token (default 16); needs S < n_layers.
        overlap: O, 0 <= O < S (default 0). The reference's README pairs (S, O): (16, 0), (9, 3), (9, 7), (8, 4).
        reposition: cache keys unrotated and rotate the kept ones at their indices in the cache (0..n-1, the
            query at n - 1) at every step, as the reference does, instead of at their original positions
            (default False).
    """

    def __init__(self, budget: int = 256, sinks: int = 4, span: int = 16, overlap: int = 0,
                 reposition: bool = False) -> None:
        _check_int("budget", budget, 1)
        _check_int("sinks", sinks, 0)
        _check_int("span", span, 1)
        _check_int("overlap", overlap, 0)
        if overlap >= span:
            raise ValueError(f"overlap must be < span, got overlap={overlap}, span={span}")
        if budget <= sinks:
            raise ValueError(f"budget must exceed sinks to leave room for recent tokens, got budget={budget}, "
                             f"sinks={sinks}")
        self.budget = budget
        self.sinks = sinks
        self.span = span
        self.overlap = overlap
        self.reposition = _check_bool("reposition", reposition)

    def ladder(self, n_layers: int) -> tuple[int, int]:
        """(before, after): each group of ``before`` entries at the cursor shrinks to ``after`` per layer."""
        step = self.span - self.overlap
        before = 1 + _ceil_div(n_layers - self.span, step)
        return before, min(_ceil_div(self.span, step), before)

    def validate(self, n_layers: int) -> None:
        _check_int("n_layers", n_layers, 1)
        before, after = self.ladder(n_layers)
        if n_layers < 2:
            raise ValueError("LaCache needs at least 2 attention layers to make a ladder, got 1; use "
                             "SinkWindowCache for a single one")
        if before <= after:
            raise ValueError(
                f"LaCache(span={self.span}, overlap={self.overlap}) over {n_layers} attention layers compacts "
                f"nothing (before={before}, after={after}); span must be < n_layers, e.g. span={n_layers // 2}"
            )
        if self.budget < self.sinks + n_layers + after:
            raise ValueError(
                f"LaCache budget must be >= sinks + n_layers + after = {self.sinks} + {n_layers} + {after} "
                f"(room for one ladder step besides the sinks and the newest tokens), got budget={self.budget}"
            )

    def keep(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, *, layer: int, n_layers: int,
             cursor: int) -> tuple[torch.Tensor, int]:
        self.validate(n_layers)
        before, after = self.ladder(n_layers)
        offset = layer % (before - after + 1)
        idx = torch.arange(pos.shape[0], device=pos.device)
        cursor = max(cursor, self.sinks)
        while idx.shape[0] > self.budget:
            if self.budget - cursor - n_layers < after:
                cursor = self.sinks  # the ladder reached the newest tokens: start over on compacted ones
            kept = idx[cursor + offset: cursor + offset + after]
            idx = torch.cat([idx[:cursor], kept, idx[cursor + before:]])
            cursor += after
        return idx, cursor

    def __repr__(self) -> str:
        extra = ", reposition=True" if self.reposition else ""
        return (f"LaCache(budget={self.budget}, sinks={self.sinks}, span={self.span}, overlap={self.overlap}"
                f"{extra})")


def _cached_attention(model: nn.Module) -> list[AttentionMixer]:
    """The causal attention mixers of ``model`` that stream with a growing KV cache, in module order."""
    return [m for m in model.modules() if isinstance(m, AttentionMixer) and m.causal
            and type(m).init_state is AttentionMixer.init_state and type(m).step is AttentionMixer.step]


def set_cache_policy(model: nn.Module, policy: KVCachePolicy | None) -> int:
    """Install ``policy`` (None: remove it) on every causal full-attention mixer of ``model``; returns how many.

    Layers are numbered in module order, which is depth order in ``MixerStack`` and the hybrid trunks.
    Sliding-window and chunked attention keep their own bounded caches and are left alone. A state made before
    the call starts tracking positions at its next step.
    """
    mixers = _cached_attention(model)
    if not mixers:
        raise ValueError(f"{type(model).__name__} has no causal full-attention mixer to put a cache policy on")
    if policy is not None:
        policy.validate(len(mixers))
    for i, m in enumerate(mixers):
        m.cache_policy = policy
        m.cache_layer = (i, len(mixers))
    return len(mixers)
