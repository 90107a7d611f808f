"""One-level 3D Haar wavelet transform for the CT tokenizer's input and output (refs/btb3d.md section 1.1).

Shapes in letters: B batch, C channels, D slices (the causal depth axis), H, W in-plane, P = (D + 1) / 2
patched frames.

``haar_dwt3d`` duplicates the first slice (D -> D + 1), then applies the 2-tap Haar filters with stride 2 along
depth, height and width: [B, C, D, H, W] -> [B, 8 C, P, H / 2, W / 2]. Along each axis a pair (a, b) becomes
low = (a + b) / sqrt(2) and high = (a - b) / sqrt(2); the result is divided by 2 sqrt(2), so the LLL band is the
mean of each 2x2x2 block. Bands are stacked band-major in the order LLL, LLH, LHL, LHH, HLL, HLH, HHL, HHH
(letters: the depth, height and width filter). ``haar_idwt3d`` inverts it and drops the duplicated slice.

Patched frame 0 holds slice 0 twice and frame p >= 1 holds slices 2p - 1 and 2p, so frame p depends on slices
<= 2p only: the transform is causal along depth. ``haar_pairs`` / ``haar_unpairs`` are the same transforms
without the duplication, for streaming (the tokenizer duplicates slice 0 of the first chunk itself).
"""

from __future__ import annotations

import math

import torch

__all__ = ["haar_dwt3d", "haar_idwt3d", "haar_pairs", "haar_unpairs", "BANDS"]

BANDS = ("LLL", "LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH")
_SCALE = 2.0 * math.sqrt(2.0)


def _haar_matrix(like: torch.Tensor) -> torch.Tensor:
    # Rows: low, high. Orthogonal and symmetric, so it is its own inverse.
    s = 1.0 / math.sqrt(2.0)
    return torch.tensor([[s, s], [s, -s]], dtype=like.dtype, device=like.device)


def haar_pairs(x: torch.Tensor) -> torch.Tensor:
    """[B, C, 2P, H, W] -> [B, 8 C, P, H / 2, W / 2]: Haar bands of consecutive slice pairs (no duplication)."""
    b, c, d, h, w = x.shape
    if d % 2 or h % 2 or w % 2:
        raise ValueError(f"haar_pairs needs even depth, height and width, got {tuple(x.shape[2:])}")
    m = _haar_matrix(x)
    x = x.reshape(b, c, d // 2, 2, h // 2, 2, w // 2, 2)
    # i, j, k: position inside the 2x2x2 block; u, v, s: depth, height, width filter (0 low, 1 high).
    y = torch.einsum("bcpihjwk,ui,vj,sk->buvscphw", x, m, m, m) / _SCALE
    return y.reshape(b, 8 * c, d // 2, h // 2, w // 2)


def haar_unpairs(y: torch.Tensor) -> torch.Tensor:
    """Inverse of ``haar_pairs``: [B, 8 C, P, h, w] -> [B, C, 2P, 2h, 2w]."""
    b, c8, p, h, w = y.shape
    if c8 % 8:
        raise ValueError(f"haar_unpairs needs a multiple of 8 channels (8 bands per channel), got {c8}")
    c = c8 // 8
    m = _haar_matrix(y)
    y = y.reshape(b, 2, 2, 2, c, p, h, w) * _SCALE
    x = torch.einsum("buvscphw,ui,vj,sk->bcpihjwk", y, m, m, m)
    return x.reshape(b, c, 2 * p, 2 * h, 2 * w)


def haar_dwt3d(x: torch.Tensor) -> torch.Tensor:
    """Volume [B, C, D, H, W] with D odd and H, W even -> bands [B, 8 C, (D + 1) / 2, H / 2, W / 2].

    The first slice is duplicated first, so a 2D image (D = 1) becomes one patched frame.
    """
    if x.dim() != 5:
        raise ValueError(f"x must be [B, C, D, H, W], got shape {tuple(x.shape)}")
    d, h, w = x.shape[2:]
    if d % 2 == 0 or h % 2 or w % 2:
        raise ValueError(f"haar_dwt3d needs odd depth and even height and width, got {(d, h, w)}")
    return haar_pairs(torch.cat([x[:, :, :1], x], dim=2))


def haar_idwt3d(y: torch.Tensor) -> torch.Tensor:
    """Bands [B, 8 C, P, h, w] -> volume [B, C, 2P - 1, 2h, 2w] (the duplicated first slice dropped)."""
    if y.dim() != 5:
        raise ValueError(f"y must be [B, 8 C, P, h, w], got shape {tuple(y.shape)}")
    return haar_unpairs(y)[:, :, 1:]
