"""Sliding-window softmax attention: each query sees the last ``window`` keys (itself included).

x [B, L, D] -> [B, L, D]. Memory and work are O(L * window): the forward runs ``mmseq.kernels.attention``
with ``window=W`` (an unfolded SDPA on CPU, a block-skipping Triton kernel on CUDA), never an L x L mask.
Causal: query i sees keys i - W < j <= i. Non-causal: |i - j| < W (2W - 1 keys).

Streaming keeps only the last W keys and values in the kernels' ring-buffer ``KVCache(window=W)``, so the
state is O(W) however long the stream runs, and ``step`` reproduces ``forward`` token by token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmseq.kernels import KVCache, attention

from .attention import AttentionMixer
from .base import register_mixer


@dataclass
class WindowState:
    """Streaming state: the ring buffer of the last ``window`` keys/values and the next position."""

    cache: KVCache
    t: int = 0


class LocalAttention(AttentionMixer):
    """Shared by the local attention mixers: ``attention``'s projections and rotary, self-attention only."""

    supports_context = False

    def _qkv(self, x: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, D] -> q, k, v [B, H, L, P], rotary applied from position ``offset``."""
        q = self._heads(self.q_proj(x))
        k, v = (self._heads(t) for t in self.kv_proj(x).chunk(2, dim=-1))
        if self.rotary is not None:
            q, k = self.rotary(q, offset=offset), self.rotary(k, offset=offset)
        # Under autocast q and kv may come back in different dtypes; attention needs one.
        return q, k.to(q.dtype), v.to(q.dtype)

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        """[B, H, L, P] -> out_proj of the concatenated heads, [B, L, D]."""
        B, H, L, P = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, L, H * P))


@register_mixer("swa")
class SlidingWindowAttention(LocalAttention):
    """Multi-head sliding-window attention with rotary positions (projections as in ``attention``).

    Args:
        window: keys each query sees, W >= 1 (default 128). Causal: the last W positions up to i.
        n_heads: attention heads (default 4); d_model must be divisible by it.
        rotary: rotary position embeddings on q and k (default True), at absolute positions.
        bias: biases in the q / kv / out projections (default False).
    """

    test_hparams = {"window": 4, "n_heads": 2}

    def __init__(self, d_model: int, *, causal: bool = True, window: int = 128, n_heads: int = 4,
                 rotary: bool = True, bias: bool = False) -> None:
        super().__init__(d_model, causal=causal, n_heads=n_heads, rotary=rotary, bias=bias)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        self.window = window

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        if context is not None:
            raise ValueError("swa is a self-attention mixer; it takes no context")
        q, k, v = self._qkv(x)
        return self._merge(attention(q, k, v, causal=self.causal, window=self.window))

    def forward_with_state(self, x: torch.Tensor) -> tuple[torch.Tensor, WindowState]:
        """``forward`` over x [B, L, D] and the state ``step`` continues from: the last ``window`` keys/values."""
        self.check_input(x)
        q, k, v = self._qkv(x)
        state = self.init_state(x.shape[0], device=x.device, dtype=k.dtype)
        state.cache.append(k, v)
        state.t = x.shape[1]
        return self._merge(attention(q, k, v, causal=self.causal, window=self.window)), state

    def init_state(self, batch_size: int, device=None, dtype=None) -> WindowState:
        if not self.causal:
            raise NotImplementedError("step() needs a causal sliding-window mixer")
        p = self.q_proj.weight
        cache = KVCache(batch_size, self.n_heads, self.head_dim, window=self.window,
                        dtype=dtype or p.dtype, device=device or p.device)
        return WindowState(cache=cache)

    def step(self, x_t: torch.Tensor, state: WindowState) -> tuple[torch.Tensor, WindowState]:
        """x_t [B, D] -> y_t [B, D]; the state's ring buffer is updated in place."""
        q, k, v = self._qkv(x_t[:, None, :], offset=state.t)
        y = state.cache.step(q, k, v)
        state.t += 1
        return self._merge(y)[:, 0], state
