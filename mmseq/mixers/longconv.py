"""Long convolutions with directly learned kernels (Fu et al., "Simple Hardware-Efficient Long Convolutions
for Sequence Modeling", 2023), as a mixer.

Shapes in letters: B batch, L length, H = d_model channels, C kernel channels per input channel (heads),
l_max the kernel length.

Each of the C*H conv channels has one free kernel of length l_max. Every forward regularizes it:

    Smooth:  K <- AvgPool1d(window w, stride 1, same padding)(K)      (when smooth_window > 1)
    Squash:  K <- sign(K) * max(|K| - lam, 0)                         (soft threshold: small taps become 0)
    K <- Dropout(kernel_dropout)(K)

then y = K[:, :L] * u + D u (``fft_conv``), GELU, dropout and an output linear C*H -> 2H with GLU.
The kernel for length L is the first L taps of the length-l_max kernel, so a prefix of a sequence gives the
prefix of the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._explicit_kernel import ExplicitKernelMixer
from .base import register_mixer


def squash(k: torch.Tensor, lam: float) -> torch.Tensor:
    """Soft threshold: sign(k) * max(|k| - lam, 0); taps with |k| <= lam become exactly zero."""
    return torch.sign(k) * F.relu(k.abs() - lam)


def smooth(k: torch.Tensor, window: int) -> torch.Tensor:
    """Moving average over the last axis with an odd window, stride 1 and zero padding (same length)."""
    shape = k.shape
    k = F.avg_pool1d(k.reshape(-1, 1, shape[-1]), window, stride=1, padding=window // 2)
    return k.reshape(shape)


@register_mixer("longconv")
class LongConvMixer(ExplicitKernelMixer):
    """Learned long convolution block: conv (+ D skip) -> GELU -> dropout -> output linear (GLU).

    x: [B, L, D] -> [B, L, D] for L <= l_max (a longer input raises ValueError).

    Defaults follow the paper's layer config (HazyResearch/safari ``long_conv.py``/``long_conv_kernel.py``):

    - ``l_max=1024``: kernel length (the paper sets it to the task's sequence length).
    - ``channels=2``: C kernels per input channel; the output linear maps C*H -> 2H, then GLU.
    - kernels ~ N(0, 0.002^2) ("random" init), no weight decay; D ~ N(0, 1).
    - ``lam=0.003``: squash threshold. ``kernel_dropout=0.2``: dropout on the kernel taps.
    - ``smooth_window=1``: no smoothing (the reference's default); 7 is the paper's smoothing window.
    - ``dropout=0.0`` after the activation.

    ``causal=False`` adds a second kernel per channel that reads the future (S4's bidirectional rule):
    y[t] = sum_{j>=0} k0[j] u[t-j] + sum_{j>=1} k1[j-1] u[t+j] + D u[t].

    Streaming (causal only): the state is the buffer of past inputs [B, H, t]; ``step`` appends x_t and
    returns sum_s K[s] u[t-s] + D u[t] with the same kernel, so it equals ``forward`` for t < l_max. Kernel
    dropout draws a new mask per call in training mode; compare the two in eval mode (or with dropout 0).
    """

    test_hparams = {"l_max": 32, "kernel_dropout": 0.0}

    def __init__(self, d_model: int, *, causal: bool = True, l_max: int = 1024, channels: int = 2,
                 lam: float = 0.003, kernel_dropout: float = 0.2, smooth_window: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__(d_model, causal=causal)
        if l_max < 1:
            raise ValueError(f"l_max must be >= 1, got {l_max}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if smooth_window < 1 or smooth_window % 2 == 0:
            raise ValueError(f"smooth_window must be an odd number >= 1 (1 = no smoothing), got {smooth_window}")
        self.l_max, self.channels, self.lam, self.smooth_window = l_max, channels, lam, smooth_window
        H = d_model
        n_kernels = 1 if causal else 2
        self.kernel_weight = nn.Parameter(torch.randn(n_kernels, channels * H, l_max) * 0.002)
        self.kernel_weight._no_weight_decay = True
        self.D = nn.Parameter(torch.randn(channels, H))
        self.kernel_dropout = nn.Dropout(kernel_dropout)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(channels * H, 2 * H)

    def kernel(self, L: int) -> torch.Tensor:
        """The regularized kernels' first L taps: [n_kernels, C*H, L]."""
        if L > self.l_max:
            raise ValueError(f"sequence length L={L} exceeds l_max={self.l_max}; build the mixer with l_max >= {L}")
        k = self.kernel_weight
        if self.smooth_window > 1:
            k = smooth(k, self.smooth_window)
        k = self.kernel_dropout(squash(k, self.lam))
        return k[..., :L]

    def _head(self, y: torch.Tensor) -> torch.Tensor:
        """[..., C*H] -> [..., H]: GELU, dropout, output linear, GLU."""
        return F.glu(self.out_proj(self.dropout(F.gelu(y))), dim=-1)
