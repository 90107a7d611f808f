"""Mamba-2: the SSD block (Dao & Gu, 2024), with the parameter layout of ``mamba_ssm``'s ``Mamba2``.

Shapes in letters: B batch, L length, D d_model, E d_inner = expand * D, H heads = E / P, P headdim, G ngroups,
N d_state, K d_conv.

    [z | xBC | dt] = in_proj(u)                     [B, L, E + (E + 2GN) + H]  (in this order)
    xBC = silu(causal depthwise conv_K(xBC) + b)    [B, L, E + 2GN], split into x [E] | B [GN] | C [GN]
    dt' = softplus(dt + dt_bias)                    [B, L, H]
    h_t = exp(dt'_t A) h_{t-1} + dt'_t x_t B_t^T,   A = -exp(A_log) [H]   (per head: h_t is [P, N])
    y_t = h_t C_t + D x_t                           [B, L, H, P] -> [B, L, E]
    out = out_proj(RMSNorm_G(y * silu(z)))          [B, L, D]  (norm over groups of E / G channels)

The parameter names and shapes are those of ``mamba_ssm.modules.mamba2.Mamba2`` (rmsnorm=True, D_has_hdim=False,
d_ssm=None), so the mixer weights of an official checkpoint load with ``load_state_dict``:

    in_proj.weight [2E + 2GN + H, D]   conv1d.weight [E + 2GN, 1, K], conv1d.bias [E + 2GN]
    dt_bias [H]   A_log [H]   D [H]   norm.weight [E]   out_proj.weight [D, E]

``forward`` runs ``mmseq.kernels.causal_conv1d`` and ``mmseq.kernels.ssd.ssd`` (the chunked scan); ``step`` runs
``causal_conv1d_update`` and ``ssd_state_update``, so streaming reproduces ``forward``. The conv state keeps the
K-1 previous inputs of the conv, oldest first.

Stuffed Mamba (state collapse beyond the training length) mitigations, all training-free and off by default:

* ``decay_scale`` multiplies A: every head forgets faster (exp(dt' A s) per step).
* ``state_norm``: after every update each head's state [P, N] is rescaled to Frobenius norm at most
  ``state_norm``. The rescaling is nonlinear, so the chunked scan cannot express it: ``forward`` then runs the
  recurrence one position at a time (O(L) small steps: slow, for inference and evaluation).
* ``state_window=r``: y_t reads the state of the last r positions only, h_t - (prod a) h_{t-r} (the sliding window
  by state difference), through ``ssd(window=r)``; ``step`` keeps the last r inputs to stay equal to ``forward``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmseq.kernels import IMPLS, causal_conv1d, causal_conv1d_update
from mmseq.kernels.ssd import ssd, ssd_state_update

from .base import Mixer, register_mixer


@dataclass
class Mamba2State:
    """Streaming state of one Mamba-2 mixer.

    ``ssm`` is the state y reads: the recurrent state, or with ``state_window`` the windowed state of the last r
    positions (then rebuilt each step from ``window``, the last r inputs, oldest first, zero-padded at the start).
    """

    conv: torch.Tensor  # [B, E + 2GN, K-1], oldest first
    ssm: torch.Tensor  # [B, H, P, N]
    # x [B, r, H, P], dt' [B, r, H], B [B, r, G, N]
    window: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


class RMSNormGated(nn.Module):
    """norm(y * silu(z)) * weight over groups of ``group_size`` channels (mamba_ssm's norm_before_gate=False).

    y, z: [..., E]; weight: [E]; computed in at least float32, returned in y's dtype.
    """

    def __init__(self, dim: int, eps: float = 1e-5, group_size: int | None = None) -> None:
        super().__init__()
        self.eps, self.group_size = eps, group_size or dim
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(y.dtype, torch.float32)
        g = (y.to(dtype) * F.silu(z.to(dtype))).unflatten(-1, (-1, self.group_size))  # [..., G, E / G]
        g = g * torch.rsqrt(g.square().mean(-1, keepdim=True) + self.eps)
        return (g.flatten(-2) * self.weight.to(dtype)).to(y.dtype)


@register_mixer("mamba2")
class Mamba2Mixer(Mixer):
    """The Mamba-2 (SSD) block: x [B, L, D] -> [B, L, D]. Causal only.

    Args (defaults of ``mamba_ssm``'s Mamba2):
        d_state: N, state size per head. d_conv: K, taps of the causal depthwise conv over xBC. expand: E / D.
        headdim: P (E must be a multiple of it; H = E / P heads). ngroups: G, groups of B/C (G divides H).
        A_init_range: A = -U(A_init_range) per head, stored as A_log.
        dt_min, dt_max, dt_init_floor: the step size softplus(dt_bias) starts log-uniform in [dt_min, dt_max],
            floored. chunk_size: positions per chunk of the SSD scan.
        conv_bias: bias in the conv. bias: biases in in_proj and out_proj.
        decay_scale: multiplies A (> 1 forgets faster; Stuffed Mamba's "forget more").
        state_norm: cap on each head's state Frobenius norm after every update (forward runs position by
            position when set). state_window: r, the sliding window by state difference.
        impl: kernel path for ``mmseq.kernels`` ("ref", "torch", "triton"; None: Triton on CUDA, torch elsewhere;
            the windowed scan has no Triton path and runs "torch").

    Example:
        >>> m = Mamba2Mixer(64, d_state=16, headdim=16)
        >>> m(torch.randn(2, 100, 64)).shape
        torch.Size([2, 100, 64])
    """

    supports_noncausal = False
    test_hparams = {"d_state": 4, "headdim": 4, "expand": 2, "ngroups": 2, "chunk_size": 4}

    def __init__(self, d_model: int, *, causal: bool = True, d_state: int = 128, d_conv: int = 4,
                 expand: float = 2, headdim: int = 64, ngroups: int = 1, A_init_range: tuple[float, float] = (1, 16),
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4, chunk_size: int = 256,
                 conv_bias: bool = True, bias: bool = False, decay_scale: float = 1.0,
                 state_norm: float | None = None, state_window: int | None = None,
                 impl: str | None = None) -> None:
        super().__init__(d_model, causal=causal)
        if not causal:
            raise ValueError("mamba2 is causal only (causal=False is not supported); "
                             "for a bidirectional model run two mixers, one over the reversed sequence")
        if d_state < 1 or d_conv < 1 or headdim < 1 or ngroups < 1 or chunk_size < 1:
            raise ValueError(f"d_state, d_conv, headdim, ngroups and chunk_size must be >= 1, got d_state={d_state}, "
                             f"d_conv={d_conv}, headdim={headdim}, ngroups={ngroups}, chunk_size={chunk_size}")
        d_inner = int(expand * d_model)
        if d_inner < 1 or d_inner % headdim != 0:
            raise ValueError(f"expand * d_model must be a positive multiple of headdim, got "
                             f"expand * d_model={d_inner}, headdim={headdim}")
        nheads = d_inner // headdim
        if nheads % ngroups != 0:
            raise ValueError(f"ngroups must divide the number of heads (d_inner / headdim = {nheads}), "
                             f"got ngroups={ngroups}")
        if not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"A_init_range must be (lo, hi) with 0 < lo <= hi, got {A_init_range}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if not decay_scale > 0:
            raise ValueError(f"decay_scale must be > 0, got {decay_scale}")
        if state_norm is not None and not state_norm > 0:
            raise ValueError(f"state_norm must be None or > 0, got {state_norm}")
        if state_window is not None and (isinstance(state_window, bool) or not isinstance(state_window, int)
                                         or state_window < 1):
            raise ValueError(f"state_window must be None or an int >= 1, got {state_window!r}")
        if state_norm is not None and state_window is not None:
            raise ValueError("state_norm and state_window are alternatives; set at most one of them")
        if impl is not None and impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS} or None, got {impl!r}")
        self.d_state, self.d_conv, self.expand, self.headdim = d_state, d_conv, expand, headdim
        self.d_inner, self.nheads, self.ngroups, self.chunk_size = d_inner, nheads, ngroups, chunk_size
        self.decay_scale, self.state_norm, self.state_window, self.impl = decay_scale, state_norm, state_window, impl
        self.conv_dim = d_inner + 2 * ngroups * d_state

        # Order of the projection: [z (E) | x (E) | B (GN) | C (GN) | dt (H)]; x, B and C go through the conv.
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + nheads, bias=bias)
        # Depthwise conv stored as nn.Conv1d for mamba_ssm's names and shapes; the forward calls the causal kernel
        # with weight[:, 0, :] instead of this module (whose padding would be two-sided).
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1,
                                bias=conv_bias)

        # dt_bias: the step size softplus(dt_bias) starts log-uniform in [dt_min, dt_max] (floored), so heads see
        # time scales from 1/dt_max to 1/dt_min positions. Stored as the inverse softplus dt + log(1 - exp(-dt)).
        dt = torch.exp(torch.rand(nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.dt_bias._no_weight_decay = True
        # A: one decay rate per head, -U(1, 16): heads forget at different speeds. Stored as A_log so that
        # A = -exp(A_log) stays negative (a decaying, stable scan) whatever the optimiser does. Kept fp32.
        A = torch.empty(nheads, dtype=torch.float32).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        # D: the skip connection y += D x per head, starting as the identity. Kept fp32.
        self.D = nn.Parameter(torch.ones(nheads))
        self.D._no_weight_decay = True

        self.norm = RMSNormGated(d_inner, eps=1e-5, group_size=d_inner // ngroups)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    # ------------------------------------------------------------------------------------------------------

    def _A(self) -> torch.Tensor:
        return -torch.exp(self.A_log) * self.decay_scale  # [H]

    def _split(self, zxbcdt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[..., E + (E + 2GN) + H] -> z [..., E], xBC [..., E + 2GN], dt [..., H]."""
        return torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _heads(self, xBC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[..., E + 2GN] -> x [..., H, P], B [..., G, N], C [..., G, N]."""
        GN = self.ngroups * self.d_state
        x, B, C = torch.split(xBC, [self.d_inner, GN, GN], dim=-1)
        return (x.unflatten(-1, (self.nheads, self.headdim)), B.unflatten(-1, (self.ngroups, self.d_state)),
                C.unflatten(-1, (self.ngroups, self.d_state)))

    def _ssd_impl(self) -> str | None:
        return "torch" if self.state_window is not None and self.impl == "triton" else self.impl

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        if context is not None:
            raise ValueError("mamba2 does not take a context (it is a self mixer)")
        z, xBC, dt = self._split(self.in_proj(x))
        # The kernels manage precision themselves (fp32 accumulation, outputs in the input's dtype), so autocast
        # is switched off around them: it would otherwise recast their internal matmuls.
        with torch.autocast(x.device.type, enabled=False):
            xBC = causal_conv1d(xBC.transpose(1, 2), self.conv1d.weight[:, 0, :], self.conv1d.bias,
                                activation="silu", impl=self.impl).transpose(1, 2)  # [B, L, E + 2GN]
            xs, B, C = self._heads(xBC)
            if self.state_norm is not None:
                y = self._normed_scan(xs, dt, B, C)
            else:
                y = ssd(xs, dt, self._A(), B, C, D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
                        chunk_size=self.chunk_size, window=self.state_window, impl=self._ssd_impl())
        y = self.norm(y.flatten(-2), z)  # [B, L, E]
        return self.out_proj(y)

    def _rescale(self, h: torch.Tensor) -> torch.Tensor:
        """Factor [B, H, 1, 1] bringing each head's state [P, N] to Frobenius norm <= state_norm."""
        norm = torch.linalg.vector_norm(h, dim=(-2, -1), keepdim=True)
        return self.state_norm / norm.clamp(min=self.state_norm)

    def _normed_scan(self, x, dt, B, C) -> torch.Tensor:
        """The recurrence position by position with the state rescaled after every update (``state_norm``).

        x [B, L, H, P], dt [B, L, H] (before bias/softplus), B, C [B, L, G, N] -> y [B, L, H, P] in x's dtype.
        """
        cdt = torch.promote_types(torch.promote_types(x.dtype, self.A_log.dtype), torch.float32)
        dtp = F.softplus(dt.to(cdt) + self.dt_bias.to(cdt))
        a = torch.exp(dtp * self._A().to(cdt))  # [B, L, H]
        rep = self.nheads // self.ngroups
        Bh, Ch = (t.to(cdt).repeat_interleave(rep, dim=-2) for t in (B, C))  # [B, L, H, N]
        xc = x.to(cdt)
        h = x.new_zeros(x.shape[0], self.nheads, self.headdim, self.d_state, dtype=cdt)
        ys = []
        for a_t, dt_t, x_t, B_t, C_t in zip(a.unbind(1), dtp.unbind(1), xc.unbind(1), Bh.unbind(1), Ch.unbind(1)):
            h = a_t[..., None, None] * h + (dt_t[..., None] * x_t)[..., None] * B_t[:, :, None]
            h = h * self._rescale(h)
            ys.append(torch.einsum("bhpn,bhn->bhp", h, C_t))
        y = torch.stack(ys, dim=1) + self.D.to(cdt)[:, None] * xc
        return y.to(x.dtype)

    # ------------------------------------------------------------------------------------------------------

    def init_state(self, batch_size: int, device=None, dtype=None) -> Mamba2State:
        """Zero state: conv [B, E + 2GN, K-1] (dtype, else the conv weight's), ssm [B, H, P, N] (dtype, else
        >= fp32) and, with ``state_window=r``, the last r inputs (zeros: they contribute nothing)."""
        device = self.A_log.device if device is None else device
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        ssm_dtype = torch.promote_types(self.A_log.dtype, torch.float32) if dtype is None else dtype
        window = None
        if self.state_window is not None:
            r = self.state_window
            window = (torch.zeros(batch_size, r, self.nheads, self.headdim, device=device, dtype=ssm_dtype),
                      torch.zeros(batch_size, r, self.nheads, device=device, dtype=ssm_dtype),
                      torch.zeros(batch_size, r, self.ngroups, self.d_state, device=device, dtype=ssm_dtype))
        return Mamba2State(
            conv=torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, device=device, dtype=conv_dtype),
            ssm=torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=ssm_dtype),
            window=window,
        )

    def step(self, x_t: torch.Tensor, state: Mamba2State) -> tuple[torch.Tensor, Mamba2State]:
        """x_t: [B, D] -> (y_t [B, D], new state). ``state`` itself is left unchanged (the kernels update
        copies), so a state can be kept and stepped from again."""
        if x_t.dim() != 2 or x_t.shape[-1] != self.d_model:
            raise ValueError(f"x_t must be [B, D] with D == d_model={self.d_model}, got {list(x_t.shape)}")
        conv_state, ssm_state = state.conv.clone(), state.ssm.clone()
        z, xBC, dt = self._split(self.in_proj(x_t))
        window = state.window
        with torch.autocast(x_t.device.type, enabled=False):
            xBC = causal_conv1d_update(xBC, conv_state, self.conv1d.weight[:, 0, :], self.conv1d.bias,
                                       activation="silu", impl=self.impl)
            xs, B, C = self._heads(xBC)  # [B, H, P], [B, G, N], [B, G, N]
            A = self._A()
            if self.state_window is not None:
                y, ssm_state, window = self._window_step(xs, dt, A, B, C, window)
            elif self.state_norm is not None:
                y = ssd_state_update(ssm_state, xs, dt, A, B, C, dt_bias=self.dt_bias, dt_softplus=True,
                                     impl=self.impl)
                scale = self._rescale(ssm_state)  # y = <h, C> is linear in h: rescale both
                ssm_state.mul_(scale)
                y = (y * scale[..., 0] + self.D[:, None] * xs).to(xs.dtype)
            else:
                y = ssd_state_update(ssm_state, xs, dt, A, B, C, D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
                                     impl=self.impl)
        y = self.norm(y.flatten(-2), z)
        return self.out_proj(y), Mamba2State(conv=conv_state, ssm=ssm_state, window=window)

    def _window_step(self, x, dt, A, B, C, window):
        """Windowed readout: shift the new input into the last r inputs and sum their decayed contributions."""
        wx, wdt, wB = window
        cdt = wx.dtype
        dtp = F.softplus(dt.to(cdt) + self.dt_bias.to(cdt))
        wx = torch.cat([wx[:, 1:], x.to(cdt)[:, None]], dim=1)  # [B, r, H, P]
        wdt = torch.cat([wdt[:, 1:], dtp[:, None]], dim=1)  # [B, r, H]
        wB = torch.cat([wB[:, 1:], B.to(cdt)[:, None]], dim=1)  # [B, r, G, N]
        dA = wdt * A.to(cdt)
        # decay from position j to the newest: exp(sum of dA over the positions after j)
        after = F.pad(dA.flip(1).cumsum(1).flip(1)[:, 1:], (0, 0, 0, 1))
        w = torch.exp(after) * wdt  # [B, r, H]
        Bh = wB.repeat_interleave(self.nheads // self.ngroups, dim=2)  # [B, r, H, N]
        h = torch.einsum("brh,brhp,brhn->bhpn", w, wx, Bh)
        Ch = C.to(cdt).repeat_interleave(self.nheads // self.ngroups, dim=1)  # [B, H, N]
        y = torch.einsum("bhpn,bhn->bhp", h, Ch) + self.D.to(cdt)[:, None] * x.to(cdt)
        return y.to(x.dtype), h, (wx, wdt, wB)
