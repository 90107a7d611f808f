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

from mmseq.kernels import fft_conv

from .base import Mixer, register_mixer

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
class SGConvMixer(Mixer):
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

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        L = x.shape[1]
        k = self.kernel(L)
        u = x.transpose(1, 2).repeat(1, self.channels, 1)  # [B, C*H, L], channel c*H + h reads u[h]
        D = self.D.reshape(-1)
        if self.causal:
            y = fft_conv(u, k[0], D)
        else:
            CH = u.shape[1]
            k_future = F.pad(k[1], (1, 0))[:, :L]  # delayed one step: u[t] is counted by k0[0] and D only
            z = fft_conv(torch.cat([u, u.flip(-1)], dim=1), torch.cat([k[0], k_future], dim=0))
            y = z[:, :CH] + z[:, CH:].flip(-1) + u * D[:, None].to(u.dtype)
        return self._head(y.transpose(1, 2))

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """The inputs seen so far: [B, H, 0] at the start."""
        if not self.causal:
            raise NotImplementedError("step() needs a causal sgconv mixer (a bidirectional kernel reads the future)")
        p = self.D
        return torch.zeros(batch_size, self.d_model, 0, device=device or p.device, dtype=dtype or p.dtype)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t: [B, D] -> y_t: [B, D]; state: the input buffer [B, H, t] -> [B, H, t+1] (t+1 <= l_max)."""
        buf = torch.cat([state, x_t[..., None].to(state.dtype)], dim=-1)
        k = self.kernel(buf.shape[-1])[0]  # [C*H, t+1]
        u = buf.repeat(1, self.channels, 1)  # [B, C*H, t+1]
        y = (u.flip(-1) * k).sum(-1) + self.D.reshape(-1) * u[..., -1]
        return self._head(y.to(x_t.dtype)), buf
