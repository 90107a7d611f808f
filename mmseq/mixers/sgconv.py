"""SGConv: structured global convolution (Li et al., "What Makes Convolutional Models Great on Long Sequence
Modeling?", 2022), as a mixer.

Shapes in letters: B batch, L length, H = d_model channels, C kernel channels per input channel, d =
kernel_dim, S = n_scales, l_max the kernel length.

The global kernel of each conv channel is built from S small sub-kernels w_i [d] (the parameters):

    k = concat_i( alpha^i * upsample(w_i, 2^max(i-1, 0)) )      lengths d, d, 2d, 4d, ... -> d * 2^(S-1)
    k = k[:l_max] / ||k_init[:l_max]||                          (norm measured once, at construction)

so each scale covers twice the span of the previous one with the same number of parameters (upsampling by
linear interpolation) and weighs alpha times as much (decay alpha = 1/2): the kernel is smooth and decays
with distance. S = 1 + ceil(log2(l_max / d)) makes the concatenation reach l_max. The normalization is a
fixed buffer (``kernel_norm``), stored with the weights.

Forward for L <= l_max uses the first L taps of the l_max kernel, y = k[:, :L] * u + D u (``fft_conv``),
then GELU, dropout and an output linear C*H -> H. Because the kernel does not depend on L, a prefix of a
sequence gives the prefix of the output, and ``step`` (which keeps the past inputs) equals ``forward``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._explicit_kernel import ExplicitKernelMixer
from .base import register_mixer

_INTERPOLATIONS = ("linear", "nearest")


def sgconv_n_scales(l_max: int, kernel_dim: int) -> int:
    """The number of scales whose concatenation d * 2^(S-1) reaches l_max: 1 + ceil(log2(l_max / d)), >= 1."""
    return max(1, 1 + math.ceil(math.log2(l_max / kernel_dim)))


def sgconv_kernel(sub_kernels: list[torch.Tensor], decay: float, length: int,
                  interpolation: str = "linear") -> torch.Tensor:
    """Multi-scale kernel: sub_kernels S x [K, d] -> [K, length] (unnormalized).

    Scale i is upsampled by 2^max(i-1, 0) and weighted by decay^i; the scales are concatenated, then cut (or
    zero-padded) to ``length``.
    """
    parts = []
    for i, w in enumerate(sub_kernels):
        factor = 2 ** max(i - 1, 0)
        if factor > 1:
            kw = {"align_corners": False} if interpolation == "linear" else {}
            w = F.interpolate(w[None], scale_factor=factor, mode=interpolation, **kw)[0]
        parts.append(w * decay**i)
    k = torch.cat(parts, dim=-1)
    if k.shape[-1] < length:
        k = F.pad(k, (0, length - k.shape[-1]))
    return k[..., :length]


@register_mixer("sgconv")
class SGConvMixer(ExplicitKernelMixer):
    """SGConv block: multi-scale global conv (+ D skip) -> GELU -> dropout -> output linear.

    x: [B, L, D] -> [B, L, D] for L <= l_max (a longer input raises ValueError).

    Defaults follow the paper's reference code (ctlllll/SGConv ``gconv_standalone.py``, mode "cat_randn"):

    - ``l_max=1024``: kernel length; ``kernel_dim=64``: d, taps per sub-kernel.
    - ``n_scales=None``: S derived from l_max as 1 + ceil(log2(l_max / kernel_dim)).
    - ``decay=0.5``: alpha, the weight ratio of consecutive scales (the code's multiplier 2 = 1/alpha).
    - ``interpolation="linear"`` ("nearest" also possible); sub-kernels ~ N(0, 1); D ~ N(0, 1).
    - ``channels=1``: C kernels per input channel; the output linear maps C*H -> H (no GLU).
    - ``dropout=0.0`` after the activation.

    The reference trains the sub-kernels with lr 1e-3 (not applied by the runner) and measures the
    normalization on its first forward at that forward's length; here it is measured at construction on the
    l_max kernel, so that the kernel never depends on L.

    ``causal=False`` adds a second kernel per channel that reads the future (S4's bidirectional rule):
    y[t] = sum_{j>=0} k0[j] u[t-j] + sum_{j>=1} k1[j-1] u[t+j] + D u[t].

    Streaming (causal only): the state is the buffer of past inputs [B, H, t] and ``step`` applies the
    first t+1 taps of the same kernel, so it equals ``forward`` for t < l_max (O(t) work per step).
    """

    test_hparams = {"l_max": 16, "kernel_dim": 4}  # 3 scales (4 + 4 + 8 taps): the contract's L=13 reaches all

    def __init__(self, d_model: int, *, causal: bool = True, l_max: int = 1024, kernel_dim: int = 64,
                 n_scales: int | None = None, decay: float = 0.5, interpolation: str = "linear",
                 channels: int = 1, dropout: float = 0.0) -> None:
        super().__init__(d_model, causal=causal)
        if l_max < 1 or kernel_dim < 1:
            raise ValueError(f"l_max and kernel_dim must be >= 1, got {l_max} and {kernel_dim}")
        if n_scales is not None and n_scales < 1:
            raise ValueError(f"n_scales must be >= 1 (or None to derive it from l_max), got {n_scales}")
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        H = d_model
        self.l_max, self.kernel_dim, self.decay = l_max, kernel_dim, decay
        self.interpolation, self.channels = interpolation, channels
        self.n_scales = n_scales if n_scales is not None else sgconv_n_scales(l_max, kernel_dim)
        n_kernels = 1 if causal else 2
        self.sub_kernels = nn.ParameterList(
            nn.Parameter(torch.randn(n_kernels * channels * H, kernel_dim)) for _ in range(self.n_scales)
        )
        self.D = nn.Parameter(torch.randn(channels, H))
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(channels * H, H)
        with torch.no_grad():
            norm = self._raw_kernel(l_max).norm(dim=-1, keepdim=True)
        self.register_buffer("kernel_norm", norm.clamp_min(torch.finfo(norm.dtype).tiny))  # [n_kernels*C*H, 1]

    def _raw_kernel(self, L: int) -> torch.Tensor:
        return sgconv_kernel(list(self.sub_kernels), self.decay, L, self.interpolation)

    def kernel(self, L: int) -> torch.Tensor:
        """The normalized kernels' first L taps: [n_kernels, C*H, L]."""
        if L > self.l_max:
            raise ValueError(f"sequence length L={L} exceeds l_max={self.l_max}; build the mixer with l_max >= {L}")
        k = self._raw_kernel(L) / self.kernel_norm
        return k.reshape(-1, self.channels * self.d_model, L)

    def _head(self, y: torch.Tensor) -> torch.Tensor:
        """[..., C*H] -> [..., H]: GELU, dropout, output linear."""
        return self.out_proj(self.dropout(F.gelu(y)))
