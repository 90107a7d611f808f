"""Chunked (block-local) softmax attention: the sequence is cut into chunks of C tokens that attend only within.

x [B, L, D] -> [B, L, D]. Query i sees keys j with j // C == i // C (and j <= i when causal); work and
memory are O(L * C), through ``mmseq.kernels.attention(chunk=C)``. Rotary positions are absolute, so the
result does not depend on how the stream is fed.

Streaming keeps the keys and values of the current chunk only; they are dropped at every chunk boundary
(t % C == 0), so the state never holds more than C tokens and ``step`` reproduces ``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmseq.kernels import attention

from .base import register_mixer
from .swa import LocalAttention


@dataclass
class ChunkState:
    """Streaming state: keys/values of the current chunk so far, [B, H, t % C, P], and the next position."""

    k: torch.Tensor
    v: torch.Tensor
    t: int = 0


@register_mixer("chunked")
class ChunkedAttention(LocalAttention):
    """Multi-head block-local attention with rotary positions (projections as in ``attention``).

    Args:
        chunk: chunk length C >= 1 (default 128); the last chunk may be shorter.
        n_heads: attention heads (default 4); d_model must be divisible by it.
        rotary: rotary position embeddings on q and k (default True), at absolute positions.
        bias: biases in the q / kv / out projections (default False).
    """

    test_hparams = {"chunk": 4, "n_heads": 2}

    def __init__(self, d_model: int, *, causal: bool = True, chunk: int = 128, n_heads: int = 4,
                 rotary: bool = True, bias: bool = False) -> None:
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
        super().__init__(d_model, causal=causal, n_heads=n_heads, rotary=rotary, bias=bias)
        self.chunk = chunk

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        if context is not None:
            raise ValueError("chunked is a self-attention mixer; it takes no context")
        q, k, v = self._qkv(x)
        return self._merge(attention(q, k, v, causal=self.causal, chunk=self.chunk))

    def init_state(self, batch_size: int, device=None, dtype=None) -> ChunkState:
        if not self.causal:
            raise NotImplementedError("step() needs a causal chunked mixer")
        p = self.q_proj.weight
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device or p.device,
                            dtype=dtype or p.dtype)
        return ChunkState(k=empty, v=empty.clone())

    def step(self, x_t: torch.Tensor, state: ChunkState) -> tuple[torch.Tensor, ChunkState]:
        """x_t [B, D] -> y_t [B, D]; a new chunk starts (cache emptied) when t % chunk == 0."""
        q, k, v = self._qkv(x_t[:, None, :], offset=state.t)
        if state.t % self.chunk == 0:
            state.k, state.v = state.k[:, :, :0], state.v[:, :, :0]
        state.k = torch.cat([state.k, k.to(state.k.dtype)], dim=2)
        state.v = torch.cat([state.v, v.to(state.v.dtype)], dim=2)
        state.t += 1
        y = F.scaled_dot_product_attention(q, state.k.to(q.dtype), state.v.to(q.dtype))
        return self._merge(y)[:, 0], state
