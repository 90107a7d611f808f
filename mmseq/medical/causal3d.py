"""Depth-causal 3D building blocks of the CT tokenizer (refs/btb3d.md section 1.2), with streaming along depth.

Shapes in letters: B batch, C channels, T frames along depth (the causal axis), H, W in-plane.

Every block maps frame t of its output from frames <= t of its input, so a volume can be processed in depth
chunks. Called with ``cache=None`` a block sees the whole volume; called with a ``CausalCache`` it sees one
chunk and carries across chunk boundaries exactly what the next chunk needs:

- ``CausalConv3d`` keeps the input frames it has not finished using (the last k_t - 1 frames for stride 1;
  for a strided conv, the frames from the next output's window start on, so outputs stay on the stride grid
  of the whole volume whatever the chunk sizes). A chunk may yield no output frame (a strided conv that has
  not collected a full window yet); later blocks then get an empty chunk and leave their state alone.
- GroupNorm is applied per slice (depth folded into the batch), so it carries no state.
- ``DepthToSpaceUpsample`` drops the first t_s - 1 frames of the whole volume only: on the first chunk.

Processed chunk by chunk, the concatenated outputs equal the one-piece output up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CausalCache", "CausalConv3d", "SliceGroupNorm", "AdaptiveGroupNorm", "ResBlock",
           "DepthToSpaceUpsample", "expand_condition"]


@dataclass
class CausalCache:
    """State carried across depth chunks: pending input frames per layer, keyed by the layer (module or name).

    ``first`` is True until the chunk holding the volume's first frame has been processed.
    """

    frames: dict = field(default_factory=dict)
    first: bool = True

    def nbytes(self) -> int:
        """Bytes held by the pending frames (bounded by the layers' kernel sizes, not by the depth)."""
        return sum(t.numel() * t.element_size() for t in self.frames.values())


def _onednn_enabled() -> bool:
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)


class CausalConv3d(nn.Module):
    """Conv3d causal along depth: k_t - 1 zero frames in front (none behind), symmetric zero padding k // 2 in
    H and W. Output frame j reads input frames [s_t j - k_t + 1, s_t j]; T frames give (T - 1) // s_t + 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int] = 3,
                 stride: int | tuple[int, int, int] = 1, bias: bool = True) -> None:
        super().__init__()
        self.kernel_size, self.stride = _triple(kernel_size), _triple(stride)
        kt, kh, kw = self.kernel_size
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel_size, stride=self.stride,
                              padding=(0, kh // 2, kw // 2), bias=bias)

    def _empty(self, x: torch.Tensor) -> torch.Tensor:
        (_, kh, kw), (_, sh, sw) = self.kernel_size, self.stride
        h = (x.shape[3] + 2 * (kh // 2) - kh) // sh + 1
        w = (x.shape[4] + 2 * (kw // 2) - kw) // sw + 1
        return x.new_zeros(x.shape[0], self.conv.out_channels, 0, h, w)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32 and _onednn_enabled() \
                and not torch.is_autocast_enabled("cpu"):
            # PyTorch sends a batch-1 CPU input with N*C*D*H <= 20480 to its native conv3d (im2col), which is
            # several times slower than oneDNN and allocates a column buffer; depth chunks are often that small,
            # so call oneDNN (what PyTorch picks for larger inputs) directly. Differentiable.
            c = self.conv
            return torch.ops.aten.mkldnn_convolution(x, c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups)
        return self.conv(x)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        kt, st = self.kernel_size[0], self.stride[0]
        if cache is None:
            return self._conv(F.pad(x, (0, 0, 0, 0, kt - 1, 0)))
        pending = cache.frames.get(self)
        if pending is None:  # start of the volume: the zero padding in front
            pending = x.new_zeros(*x.shape[:2], kt - 1, *x.shape[3:])
        x = torch.cat([pending, x], dim=2)
        n = (x.shape[2] - kt) // st + 1 if x.shape[2] >= kt else 0
        # Keep the frames from the next output's window start on; clone so the chunk itself can be freed.
        cache.frames[self] = x[:, :, n * st:].clone()
        if n == 0:
            return self._empty(x)
        return self._conv(x[:, :, :(n - 1) * st + kt])


class SliceGroupNorm(nn.Module):
    """GroupNorm over (channels of a group, H, W) of each slice separately: depth is folded into the batch, so
    no statistics cross slices and causality holds."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"norm_groups must divide every channel count, got {num_groups} groups for "
                             f"{num_channels} channels")
        self.num_groups, self.eps = num_groups, eps
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * t, c, h, w)  # (B T, C, H, W)
        y = F.group_norm(y, self.num_groups, self.weight, self.bias, self.eps)
        return y.reshape(b, t, c, h, w).transpose(1, 2)


class AdaptiveGroupNorm(nn.Module):
    """Per-slice GroupNorm without affine, then x (1 + gamma) + beta with per-position gamma and beta from
    Linear(cond channels -> C) on the condition (the quantized latent brought to x's grid)."""

    def __init__(self, num_channels: int, cond_channels: int, num_groups: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = SliceGroupNorm(num_groups, num_channels, eps, affine=False)
        self.gamma = nn.Linear(cond_channels, num_channels)
        self.beta = nn.Linear(cond_channels, num_channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if cond.shape[2:] != x.shape[2:]:
            raise ValueError(f"condition grid {tuple(cond.shape[2:])} differs from the input grid "
                             f"{tuple(x.shape[2:])}")
        c = cond.movedim(1, -1)  # [B, T, H, W, K]
        gamma, beta = self.gamma(c).movedim(-1, 1), self.beta(c).movedim(-1, 1)
        return self.norm(x) * (1 + gamma) + beta


class ResBlock(nn.Module):
    """GN, SiLU, causal 3^3 conv (no bias), GN, SiLU, causal 3^3 conv (no bias), plus the input (through a
    1x1x1 conv without bias when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int) -> None:
        super().__init__()
        self.norm1 = SliceGroupNorm(num_groups, in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, bias=False)
        self.norm2 = SliceGroupNorm(num_groups, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, bias=False)
        self.skip = CausalConv3d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return h + (x if self.skip is None else self.skip(x, cache))


class DepthToSpaceUpsample(nn.Module):
    """Causal 3^3 conv to C * t_s * 2 * 2 channels, pixel shuffle (x t_s in depth, x 2 in H and W), then the
    first t_s - 1 frames of the volume are dropped: T frames -> t_s T - t_s + 1. Output frame u comes from
    input frame ceil(u / t_s), so it stays causal."""

    def __init__(self, channels: int, temporal: int) -> None:
        super().__init__()
        if temporal not in (1, 2):
            raise ValueError(f"temporal upsampling factor must be 1 or 2, got {temporal}")
        self.temporal = temporal
        self.conv = CausalConv3d(channels, channels * temporal * 4, 3)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        h = self.conv(x, cache)
        b, c, t, hh, ww = h.shape
        ts, c_out = self.temporal, c // (self.temporal * 4)
        h = h.reshape(b, c_out, ts, 2, 2, t, hh, ww)
        h = h.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, c_out, t * ts, 2 * hh, 2 * ww)  # b c (t ts) (h 2) (w 2)
        if cache is None or cache.first:
            h = h[:, :, ts - 1:]
        return h


def expand_condition(cond: torch.Tensor, temporal: int, first: bool) -> torch.Tensor:
    """Bring a condition to the grid of ``DepthToSpaceUpsample``'s output: nearest x ``temporal`` in depth (the
    first ``temporal - 1`` frames dropped on the volume's first chunk) and x 2 in H and W."""
    cond = cond.repeat_interleave(temporal, dim=2)
    if first:
        cond = cond[:, :, temporal - 1:]
    return cond.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
