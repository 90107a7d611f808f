"""Mamba-1: the selective state-space block (Gu & Dao, 2023), with the parameter layout of ``mamba_ssm``.

Shapes in letters: B batch, L length, D d_model, E d_inner = expand * D, N d_state, R dt_rank, K d_conv.

    [x | z] = in_proj(u)                              [B, L, 2E]  (x first, the gate z second)
    x = silu(causal depthwise conv_K(x) + b_conv)     [B, E, L]
    [dt | B | C] = x_proj(x)                          [B, L, R + 2N]  (in this order)
    delta = softplus(W_dt dt + b_dt)                  [B, E, L]
    h[t] = exp(delta[t] A) h[t-1] + delta[t] B[t] x[t],  A = -exp(A_log) [E, N]
    y[t] = <C[t], h[t]> + D x[t]
    out = out_proj(y * silu(z))                       [B, L, D]

The parameter names and shapes are those of ``mamba_ssm.modules.mamba_simple.Mamba``, so the mixer
weights of an official checkpoint (``backbone.layers.{i}.mixer.*``) load with ``load_state_dict``:

    in_proj.weight [2E, D]   conv1d.weight [E, 1, K], conv1d.bias [E]   x_proj.weight [R + 2N, E]
    dt_proj.weight [E, R], dt_proj.bias [E]   A_log [E, N]   D [E]   out_proj.weight [D, E]

``forward`` runs ``mmseq.kernels.causal_conv1d`` and ``selective_scan``; ``step`` runs their one-token
versions ``causal_conv1d_update`` and ``selective_state_update``, so streaming reproduces ``forward``.
The conv state keeps the K-1 previous inputs of the conv, oldest first (the shortest state
``causal_conv1d_update`` takes); ``mamba_ssm``'s [B, E, K] states, the newest input included, work with that
kernel unchanged, since it reads any state of K-1 or more inputs in the same order.

State collapse (Stuffed Mamba, Chen et al. 2024): a model trained on contexts shorter than its "forget threshold"
learns decays near 1, so past the training length its state keeps growing and the outputs fall apart. Two of the
paper's training-free mitigations are options here, both off by default:

- ``decay_scale`` (> 1 forgets more): A <- decay_scale * A, a stronger decay exp(delta * A) at unchanged input
  term delta * B * x. Still a linear scan, so the fast kernels run.
- ``state_norm``: after every update each channel's state h[e] ([N]) is rescaled to norm <= state_norm. The
  rescaling depends on the state, so the scan is no longer linear: ``forward`` then runs the recurrence one
  position at a time (in PyTorch, O(L) sequential steps), exactly as ``step`` does.

The third mitigation, a sliding window by state difference, needs a scalar decay per head; it is an option of
``mamba2``. ``state_norms(x)`` returns ||h_t[e]|| for every position, to see the collapse and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmseq.kernels import (
    IMPLS,
    causal_conv1d,
    causal_conv1d_update,
    selective_scan,
    selective_state_update,
)

from .base import Mixer, register_mixer


@dataclass
class MambaState:
    """Streaming state of one Mamba mixer: the conv's last K-1 inputs and the SSM state."""

    conv: torch.Tensor  # [B, E, K-1], oldest first
    ssm: torch.Tensor  # [B, E, N]


@register_mixer("mamba")
class MambaMixer(Mixer):
    """The Mamba-1 block: x [B, L, D] -> [B, L, D]. Causal only.

    Args (defaults of the paper and of ``mamba_ssm``):
        d_state: N, the SSM state size per channel. d_conv: K, taps of the causal depthwise conv.
        expand: E = expand * d_model. dt_rank: R, the rank of the step-size projection ("auto": ceil(D / 16)).
        dt_min, dt_max: the range the step size softplus(b_dt) is drawn from (log-uniform) at init.
        dt_init: "random" (W_dt ~ U(+-R^-1/2 * dt_scale)) or "constant" (W_dt = R^-1/2 * dt_scale).
        dt_scale: scales that init. dt_init_floor: lower clamp of the initial step size.
        conv_bias: bias in the conv. bias: biases in in_proj and out_proj.
        decay_scale: multiplies A (Stuffed Mamba's "forget more"); 1.0 leaves the model as trained.
        state_norm: when set, the largest norm each channel's state [N] may keep after an update.
        impl: kernel path for ``mmseq.kernels`` ("ref", "torch", "triton"; None: Triton on CUDA, torch elsewhere).

    Example:
        >>> m = MambaMixer(64)
        >>> m(torch.randn(2, 100, 64)).shape
        torch.Size([2, 100, 64])
    """

    supports_noncausal = False
    test_hparams = {"d_state": 4, "expand": 2}

    def __init__(self, d_model: int, *, causal: bool = True, d_state: int = 16, d_conv: int = 4,
                 expand: float = 2, dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, decay_scale: float = 1.0,
                 state_norm: float | None = None, impl: str | None = None) -> None:
        super().__init__(d_model, causal=causal)
        if not causal:
            raise ValueError("mamba is causal only (causal=False is not supported); "
                             "for a bidirectional model run two mixers, one over the reversed sequence")
        if d_state < 1 or d_conv < 1:
            raise ValueError(f"d_state and d_conv must be >= 1, got d_state={d_state}, d_conv={d_conv}")
        d_inner = int(expand * d_model)
        if d_inner < 1:
            raise ValueError(f"expand * d_model must be >= 1, got expand={expand}, d_model={d_model}")
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if not isinstance(dt_rank, int) or isinstance(dt_rank, bool) or dt_rank < 1:
            raise ValueError(f"dt_rank must be 'auto' or an int >= 1, got {dt_rank!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        if impl is not None and impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS} or None, got {impl!r}")
        if not decay_scale > 0:
            raise ValueError(f"decay_scale must be > 0, got {decay_scale}")
        if state_norm is not None and not state_norm > 0:
            raise ValueError(f"state_norm must be > 0 or None, got {state_norm}")
        self.decay_scale, self.state_norm = float(decay_scale), state_norm
        self.d_state, self.d_conv, self.expand = d_state, d_conv, expand
        self.d_inner, self.dt_rank, self.impl = d_inner, dt_rank, impl

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        # Depthwise conv stored as nn.Conv1d so the weights keep mamba_ssm's names and shapes; the forward
        # calls the causal kernel with weight[:, 0, :] instead of this module (whose padding would be two-sided).
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)

        # W_dt: scaled by R^-1/2 so that W_dt @ dt has about the variance of dt at init.
        dt_init_std = dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        # b_dt: the step size softplus(b_dt) starts log-uniform in [dt_min, dt_max] (floored), so channels see
        # time scales from 1/dt_max to 1/dt_min positions. b_dt stores the inverse softplus,
        # dt + log(1 - exp(-dt)) (written with expm1 for accuracy at small dt).
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

        # A: S4D-real init, A[e, n] = -(n + 1) for every channel, stored as A_log = log(1..N) so that
        # A = -exp(A_log) stays negative (a decaying, stable scan) whatever the optimiser does. Kept fp32.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        # D: the skip connection y += D * x, starting as the identity. Kept fp32.
        self.D = nn.Parameter(torch.ones(d_inner))
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    def _A(self) -> torch.Tensor:
        """A = -exp(A_log) * decay_scale: [E, N]."""
        A = -torch.exp(self.A_log)
        return A * self.decay_scale if self.decay_scale != 1.0 else A

    def _scan_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [B, L, D] -> (xs [B, E, L] after conv + SiLU, dt [B, E, L] before bias, B, C [B, N, L], z [B, E, L],
        the conv's input [B, E, L])."""
        xz = self.in_proj(x).transpose(1, 2)  # [B, 2E, L]
        x_in, z = xz.chunk(2, dim=1)
        xs = x_in
        # The kernels manage precision themselves (fp32 accumulation, outputs in u's dtype), so autocast is
        # switched off around them: it would otherwise recast their internal matmuls.
        with torch.autocast(x.device.type, enabled=False):
            xs = causal_conv1d(xs, self.conv1d.weight[:, 0, :], self.conv1d.bias, activation="silu",
                               impl=self.impl)  # [B, E, L]
        x_dbl = self.x_proj(xs.transpose(1, 2))  # [B, L, R + 2N]
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        # The bias of dt_proj goes to the scan as delta_bias (added in the scan's precision, before softplus).
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # [B, E, L]
        return xs, dt, B.transpose(1, 2), C.transpose(1, 2), z, x_in

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        if context is not None:
            raise ValueError("mamba does not take a context (it is a self mixer)")
        xs, dt, B, C, z, _ = self._scan_inputs(x)
        A = self._A()  # [E, N]
        with torch.autocast(x.device.type, enabled=False):
            if self.state_norm is None:
                y = selective_scan(xs, dt, A, B, C, self.D, z=z, delta_bias=self.dt_proj.bias,
                                   delta_softplus=True, impl=self.impl)
            else:
                y, _ = self._bounded_scan(xs, dt, A, B, C, z)
        return self.out_proj(y.transpose(1, 2))  # [B, L, D]

    def _bounded_scan(self, xs, dt, A, B, C, z) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``state_norm`` scan, one position at a time: -> (y [B, E, L], last state [B, E, N])."""
        h = self._zero_ssm_state(xs.shape[0], xs.device, None)
        ys = []
        for t in range(xs.shape[-1]):
            h = self._update(h, xs[..., t], dt[..., t], A, B[..., t])
            ys.append(self._readout(h, xs[..., t], C[..., t], None if z is None else z[..., t]))
        return torch.stack(ys, -1), h

    def forward_with_state(self, x: torch.Tensor) -> tuple[torch.Tensor, MambaState, torch.Tensor]:
        """One parallel pass that also returns what decoding continues from.

        x [B, L, D] -> (out [B, L, D] as ``forward``, the state after the last position (``step`` continues from
        it), memory [B, L, E]: the scan's output before the z gate, D skip included — the readout SambaY's
        gated memory units re-use).
        """
        self.check_input(x)
        xs, dt, B, C, z, x_in = self._scan_inputs(x)
        A = self._A()
        with torch.autocast(x.device.type, enabled=False):
            if self.state_norm is None:
                m, last = selective_scan(xs, dt, A, B, C, self.D, delta_bias=self.dt_proj.bias,
                                         delta_softplus=True, return_last_state=True, impl=self.impl)
            else:
                m, last = self._bounded_scan(xs, dt, A, B, C, None)
            y = m * F.silu(z.to(m.dtype))
        # The conv state is the last K-1 inputs of the conv, zeros in front when L < K-1.
        K1 = self.d_conv - 1
        conv = F.pad(x_in, (K1, 0))[..., x_in.shape[-1]:].contiguous()
        state = MambaState(conv=conv, ssm=last.to(torch.promote_types(self.A_log.dtype, torch.float32)))
        return self.out_proj(y.transpose(1, 2)), state, m.transpose(1, 2)

    def _update(self, h: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                B: torch.Tensor) -> torch.Tensor:
        """One update, bounded by ``state_norm`` when set: h [B, E, N], x, dt [B, E], B [B, N] -> h [B, E, N]."""
        acc = h.dtype
        delta = F.softplus(dt.to(acc) + self.dt_proj.bias.to(acc))[..., None]  # [B, E, 1]
        h = torch.exp(delta * A.to(acc)) * h + delta * B.to(acc)[:, None, :] * x.to(acc)[..., None]
        if self.state_norm is None:
            return h
        # Rescale only the channels over the bound; dividing by max(norm / bound, 1) keeps the others exact.
        scale = (torch.linalg.vector_norm(h, dim=-1, keepdim=True) / self.state_norm).clamp(min=1.0)
        return h / scale

    def _readout(self, h: torch.Tensor, x: torch.Tensor, C: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """y = (<C, h> + D x) * silu(z) (no gate when z is None): h [B, E, N], x, z [B, E], C [B, N] -> [B, E]."""
        acc = h.dtype
        y = (h * C.to(acc)[:, None, :]).sum(-1) + self.D.to(acc) * x.to(acc)
        return (y if z is None else y * F.silu(z.to(acc))).to(x.dtype)

    def _zero_ssm_state(self, batch_size: int, device, dtype) -> torch.Tensor:
        ssm_dtype = torch.promote_types(self.A_log.dtype, torch.float32) if dtype is None else dtype
        return torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=ssm_dtype)

    @torch.no_grad()
    def state_norms(self, x: torch.Tensor) -> torch.Tensor:
        """||h_t[e]||_2 of every channel's state after every position: x [B, L, D] -> [B, L, E] (float32+).

        Runs the recurrence the mixer runs (``decay_scale`` and ``state_norm`` included), one position at a
        time, so it shows where a state grows without bound (state collapse) and whether an option bounds it.
        """
        self.check_input(x)
        xs, dt, B, C, z, _ = self._scan_inputs(x)
        A = self._A()
        h = self._zero_ssm_state(x.shape[0], x.device, None)
        norms = []
        for t in range(x.shape[1]):
            h = self._update(h, xs[..., t], dt[..., t], A, B[..., t])
            norms.append(torch.linalg.vector_norm(h, dim=-1))
        return torch.stack(norms, 1)

    def init_state(self, batch_size: int, device=None, dtype=None) -> MambaState:
        """Zero state: conv [B, E, K-1] (dtype, else the conv weight's) and ssm [B, E, N] (dtype, else >= fp32)."""
        device = self.A_log.device if device is None else device
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        return MambaState(
            conv=torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=conv_dtype),
            ssm=self._zero_ssm_state(batch_size, device, dtype),
        )

    def step(self, x_t: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """x_t: [B, D] -> (y_t [B, D], new state). ``state`` itself is left unchanged (the kernels update
        copies), so a state can be kept and stepped from again."""
        y, state, _ = self.step_with_memory(x_t, state)
        return y, state

    def step_with_memory(self, x_t: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState, torch.Tensor]:
        """``step`` that also returns this position's memory [B, E] (see ``forward_with_state``)."""
        if x_t.dim() != 2 or x_t.shape[-1] != self.d_model:
            raise ValueError(f"x_t must be [B, D] with D == d_model={self.d_model}, got {list(x_t.shape)}")
        conv_state, ssm_state = state.conv.clone(), state.ssm.clone()
        xs, z = self.in_proj(x_t).chunk(2, dim=-1)  # [B, E] each
        with torch.autocast(x_t.device.type, enabled=False):
            xs = causal_conv1d_update(xs, conv_state, self.conv1d.weight[:, 0, :], self.conv1d.bias,
                                      activation="silu", impl=self.impl)
        dt, B, C = torch.split(self.x_proj(xs), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # [B, E], bias added inside the update as in forward
        A = self._A()
        with torch.autocast(x_t.device.type, enabled=False):
            if self.state_norm is None:
                m = selective_state_update(ssm_state, xs, dt, A, B, C, self.D, dt_bias=self.dt_proj.bias,
                                           dt_softplus=True, impl=self.impl)
            else:
                ssm_state = self._update(ssm_state, xs, dt, A, B)
                m = self._readout(ssm_state, xs, C, None)
            y = m * F.silu(z.to(m.dtype))
        return self.out_proj(y), MambaState(conv=conv_state, ssm=ssm_state), m
