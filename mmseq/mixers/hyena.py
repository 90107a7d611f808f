"""Hyena operator (Poli et al., "Hyena Hierarchy: Towards Larger Convolutional Language Models", 2023), as a mixer.

Shapes in letters: B batch, L length, D = d_model, N = order, l_max the longest sequence the filters cover.

    p = in_proj(u)                                   [B, L, (N+1) D]
    p = short causal depthwise conv (width 3) of p   over all (N+1) D channels
    x^0, ..., x^{N-1}, v = split(p)                  N gates and a value, [B, L, D] each
    z = v
    for i = N-1 down to 1 (filter o = N-1-i):
        z = h_o * (z x^i) + b_o (z x^i)              causal long conv (fft_conv) with an implicit filter
    y = out_proj(x^0 z)

The long filters h_o [D, L] are implicit: a small MLP with sine activations maps positional features of
each position t (t/(l_max-1) and emb_dim-1 sinusoids of period l_max) to N-1 filters of D channels, which an
exponential window exp(-|delta_c| t/(l_max-1)) then makes decay (fast for some channels, slow for others).
The features are built once for l_max and sliced, so the filter for length L is the first L taps of the
filter for l_max: a prefix of a sequence gives the prefix of the output, and ``step`` reproduces
``forward``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mmseq.kernels import causal_conv1d, causal_conv1d_update, fft_conv

from .base import Mixer, register_mixer


def hyena_positional_features(l_max: int, emb_dim: int, L: int | None = None, *, device=None,
                              dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Positional features [L, emb_dim] and normalized time t [L, 1] of the first L of l_max positions.

    Features: [t, cos(2 pi f_m s / l_max), -sin(2 pi f_m s / l_max)] for s = 0 .. l_max-1 and
    M = (emb_dim-1)/2 bands f = linspace(1e-4, M-1, M) (the real and imaginary parts of exp(-i 2 pi f s / l_max)).
    """
    if emb_dim < 3 or emb_dim % 2 == 0:
        raise ValueError(f"emb_dim must be odd and >= 3 (time plus cosine/sine pairs), got {emb_dim}")
    bands = (emb_dim - 1) // 2
    L = l_max if L is None else L
    s = torch.arange(L, device=device, dtype=torch.float64)[:, None]
    t = s / max(l_max - 1, 1)  # linspace(0, 1, l_max)[:L]
    phase = 2 * math.pi * s / l_max  # [L, 1]
    f = torch.linspace(1e-4, bands - 1, bands, device=device, dtype=torch.float64)[None, :]  # [1, M]
    z = torch.cat([t, torch.cos(f * phase), -torch.sin(f * phase)], dim=-1)
    return z.to(dtype), t.to(dtype)


class Sin(nn.Module):
    """sin(w * x) with a trainable frequency per unit, initialized to ``w``."""

    def __init__(self, dim: int, w: float) -> None:
        super().__init__()
        self.freq = nn.Parameter(torch.full((dim,), float(w)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class HyenaFilter(nn.Module):
    """Implicit long filters: positions -> MLP (sine activations) -> exponential decay -> [n_filters, D, L]."""

    def __init__(self, d_model: int, n_filters: int, *, l_max: int, emb_dim: int, filter_order: int, w: float,
                 n_inner: int = 2, fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5,
                 target: float = 1e-2) -> None:
        super().__init__()
        self.d_model, self.n_filters, self.l_max, self.emb_dim = d_model, n_filters, l_max, emb_dim
        hyena_positional_features(1, emb_dim)  # validates emb_dim
        layers: list[nn.Module] = [nn.Linear(emb_dim, filter_order), Sin(filter_order, w)]
        for _ in range(n_inner):
            layers += [nn.Linear(filter_order, filter_order), Sin(filter_order, w)]
        layers.append(nn.Linear(filter_order, n_filters * d_model, bias=False))
        self.mlp = nn.Sequential(*layers)
        for p in self.mlp.parameters():
            p._no_weight_decay = True  # the reference trains the filter without weight decay
        # Decay rates per channel: the window falls to `target` at t = fast_decay_pct (fastest channel) up to
        # t = slow_decay_pct (slowest). Fixed, as in the reference (modulation lr 0).
        self.decay_range = (math.log(target) / slow_decay_pct, math.log(target) / fast_decay_pct)

    def window(self, L: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """The exponential decay exp(-|delta_c| t) of every channel: [L, n_filters * D]."""
        _, t = hyena_positional_features(self.l_max, self.emb_dim, L, device=device, dtype=torch.float64)
        deltas = torch.linspace(*self.decay_range, self.n_filters * self.d_model, device=device, dtype=torch.float64)
        return torch.exp(-t * deltas.abs()).to(dtype)

    def forward(self, L: int) -> torch.Tensor:
        """The first L taps of every filter: [n_filters, D, L]."""
        w = self.mlp[0].weight
        # Features and window are computed, not stored, in the filter's dtype (exact in float64).
        z, _ = hyena_positional_features(self.l_max, self.emb_dim, L, device=w.device, dtype=w.dtype)
        h = self.mlp(z) * self.window(L, device=w.device, dtype=w.dtype)  # [L, n_filters * D]
        return h.T.reshape(self.n_filters, self.d_model, L)


@dataclass
class HyenaState:
    """Streaming state: the short conv's last K-1 inputs [B, (N+1) D, K-1] and, per long filter, the inputs it
    has seen [N-1, B, D, t]."""

    conv: torch.Tensor
    long: torch.Tensor


@register_mixer("hyena")
class HyenaMixer(Mixer):
    """Hyena operator: gated implicit long convolutions. x: [B, L, D] -> [B, L, D] for L <= l_max.

    Defaults follow the paper and HazyResearch/safari ``hyena.py``:

    - ``l_max=1024``: longest sequence (the filters' positional features span it); longer inputs raise.
    - ``order=2``: N, so two gates and one long convolution.
    - ``filter_order=64``: width of the filter MLP; ``emb_dim=3``: positional features (time plus one band;
      odd, up to 33 for the Pile model); ``w=1.0``: initial sine frequency (10 for associative recall,
      14 for the Pile model).
    - ``short_filter_order=3``: width of the short causal depthwise conv on the projections.
    - exponential modulation with fast/slow decay at 0.3/1.5 of l_max to 1e-2, fixed; filter bias b ~ N(0, 1).
    - positional features fixed (the reference trains them with lr 1e-5).
    - ``dropout=0.0`` on the gated inputs of the long convolutions.

    Each Sin layer has its own frequencies (the reference shares one module across the MLP). The filter MLP
    carries ``_no_weight_decay``; the reference also lowers its lr to 1e-3 (not applied by the runner).

    Causal only: the filters and the short conv look back. Streaming keeps the short conv's last inputs and,
    per long filter, all its past inputs (O(t) per step; Hyena has no recurrence of fixed size).
    """

    supports_noncausal = False
    test_hparams = {"l_max": 32, "filter_order": 8, "emb_dim": 5}

    def __init__(self, d_model: int, *, causal: bool = True, l_max: int = 1024, order: int = 2,
                 filter_order: int = 64, emb_dim: int = 3, w: float = 1.0, short_filter_order: int = 3,
                 dropout: float = 0.0) -> None:
        super().__init__(d_model, causal=causal)
        if not causal:
            raise ValueError("hyena is causal only (its filters and short conv look back); build it with causal=True")
        if order < 2:
            raise ValueError(f"order must be >= 2, got {order}")
        if l_max < 1:
            raise ValueError(f"l_max must be >= 1, got {l_max}")
        if short_filter_order < 1:
            raise ValueError(f"short_filter_order must be >= 1, got {short_filter_order}")
        D = d_model
        self.l_max, self.order, self.short_filter_order = l_max, order, short_filter_order
        width = (order + 1) * D
        self.in_proj = nn.Linear(D, width)
        self.out_proj = nn.Linear(D, D)
        # Short depthwise conv, initialized like nn.Conv1d(width, width, K, groups=width): U(+-1/sqrt(K)).
        bound = 1 / math.sqrt(short_filter_order)
        self.short_weight = nn.Parameter(torch.empty(width, short_filter_order).uniform_(-bound, bound))
        self.short_bias = nn.Parameter(torch.empty(width).uniform_(-bound, bound))
        self.filter = HyenaFilter(D, order - 1, l_max=l_max, emb_dim=emb_dim, filter_order=filter_order, w=w)
        self.bias = nn.Parameter(torch.randn(order - 1, D))  # b_o: the skip ("D") term of each long conv
        self.dropout = nn.Dropout(dropout)

    def _check_length(self, L: int) -> None:
        if L > self.l_max:
            raise ValueError(f"sequence length L={L} exceeds l_max={self.l_max}; build the mixer with l_max >= {L}")

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        L = x.shape[1]
        self._check_length(L)
        p = self.in_proj(x).transpose(1, 2)  # [B, (N+1) D, L]
        p = causal_conv1d(p, self.short_weight, self.short_bias)
        *gates, z = p.split(self.d_model, dim=1)  # x^0 .. x^{N-1}, v: [B, D, L] each
        h = self.filter(L)  # [N-1, D, L]
        for o, x_i in enumerate(reversed(gates[1:])):
            z = fft_conv(self.dropout(z * x_i), h[o], self.bias[o])
        return self.out_proj((z * gates[0]).transpose(1, 2))

    def init_state(self, batch_size: int, device=None, dtype=None) -> HyenaState:
        p = self.in_proj.weight
        device, dtype = device or p.device, dtype or p.dtype
        width = (self.order + 1) * self.d_model
        return HyenaState(
            conv=torch.zeros(batch_size, width, self.short_filter_order - 1, device=device, dtype=dtype),
            long=torch.zeros(self.order - 1, batch_size, self.d_model, 0, device=device, dtype=dtype),
        )

    def step(self, x_t: torch.Tensor, state: HyenaState) -> tuple[torch.Tensor, HyenaState]:
        """x_t: [B, D] -> y_t: [B, D]; the state gains one token (at most l_max in all)."""
        t1 = state.long.shape[-1] + 1
        self._check_length(t1)
        conv = state.conv.clone()  # causal_conv1d_update shifts its state in place; keep the caller's intact
        p = causal_conv1d_update(self.in_proj(x_t), conv, self.short_weight, self.short_bias)
        *gates, z = p.split(self.d_model, dim=-1)  # [B, D] each
        h = self.filter(t1)  # [N-1, D, t+1]
        inputs = []
        for o, x_i in enumerate(reversed(gates[1:])):
            zi = self.dropout(z * x_i)
            buf = torch.cat([state.long[o], zi[..., None].to(state.long.dtype)], dim=-1)  # [B, D, t+1]
            inputs.append(buf)
            z = (buf.flip(-1) * h[o]).sum(-1) + self.bias[o] * zi
        y = self.out_proj((z * gates[0]).to(x_t.dtype))
        return y, HyenaState(conv=conv, long=torch.stack(inputs))
