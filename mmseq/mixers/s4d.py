"""S4D: the diagonal structured state space layer (Gu et al., "On the Parameterization and Initialization of
Diagonal State Space Models", 2022), as a mixer.

Shapes in letters: B batch, L length, H = d_model channels, N = d_state, N/2 complex modes per channel.

Per channel h, a diagonal complex SSM with modes A_n (Re A_n < 0), folded input/output weights C_n and step
size dt, discretized by zero-order hold (ZOH):

    dA_n = exp(dt A_n),   dB_n = (dA_n - 1) / A_n
    state:   s_n[t] = dA_n s_n[t-1] + dB_n u[t]              (complex, [B, H, N/2])
    output:  y[t]   = 2 Re sum_n C_n s_n[t] + D u[t]

which unrolls to the causal convolution y = K * u + D u with the Vandermonde kernel

    K[l] = 2 Re sum_n C_n dB_n dA_n^l,   l = 0..L-1           ([H, L])

``forward`` builds K for the input's L (any L) and applies it with ``fft_conv``; ``step`` runs the
recurrence, so streaming equals the convolution. The conjugate modes are implied by the factor 2 Re.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmseq.kernels import fft_conv

from .base import Mixer, register_mixer

_INITS = ("lin", "inv")


def s4d_init_imag(d_state: int, init: str) -> torch.Tensor:
    """Imaginary parts of A for the N/2 modes: S4D-Lin pi*n, or S4D-Inv (N/pi) (N/(2n+1) - 1)."""
    n = torch.arange(d_state // 2, dtype=torch.float64)
    if init == "lin":
        return math.pi * n
    if init == "inv":
        return d_state / math.pi * (d_state / (2 * n + 1) - 1)
    raise ValueError(f"init must be one of {_INITS}, got {init!r}")


def s4d_kernel(log_dt: torch.Tensor, A: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """Vandermonde kernel: log_dt [H], A [H, N/2] complex, C [K, H, N/2] complex -> [K, H, L] real.

    K[k, h, l] = 2 Re sum_n C[k, h, n] (exp(dt_h A_hn) - 1) / A_hn * exp(dt_h A_hn l). Materialises
    [H, N/2, L] complex values; for very long L chunk the positions.
    """
    dtA = A * log_dt.exp()[:, None]  # [H, N/2]
    CB = C * (dtA.exp() - 1) / A  # [K, H, N/2]
    pos = torch.arange(L, device=A.device, dtype=log_dt.dtype)
    vander = torch.exp(dtA[..., None] * pos)  # [H, N/2, L]
    return 2 * torch.einsum("khn,hnl->khl", CB, vander).real


class SSMConvolution(Mixer):
    """What S4 and S4D share: y = head(K * u + D u) with the kernel K of ``self.kernel(L)``, the S4 repository's
    bidirectional rule, and a zero complex state [B, H, N/2] for ``step``.

    Subclasses set ``d_state``, ``D`` [H], ``log_dt``, ``dropout``, ``glu`` and ``out_proj`` and define
    ``kernel(L) -> [n_kernels, H, L]`` and ``step``.
    """

    def _head(self, y: torch.Tensor) -> torch.Tensor:
        """[..., H] after the convolution -> [..., H]: GELU, dropout, output linear (and GLU)."""
        y = self.out_proj(self.dropout(F.gelu(y)))
        return F.glu(y, dim=-1) if self.glu else y

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        L, H = x.shape[1], self.d_model
        u = x.transpose(1, 2)  # [B, H, L]
        k = self.kernel(L)
        if self.causal:
            y = fft_conv(u, k[0], self.D)
        else:
            # One causal convolution over 2H channels: the input and its time reversal; the future kernel is
            # delayed by one step so that u[t] is counted once (by k0[0] and D).
            k_future = F.pad(k[1], (1, 0))[:, :L]
            z = fft_conv(torch.cat([u, u.flip(-1)], dim=1), torch.cat([k[0], k_future], dim=0))
            y = z[:, :H] + z[:, H:].flip(-1) + u * self.D[:, None].to(u.dtype)
        return self._head(y.transpose(1, 2))

    # -- streaming --------------------------------------------------------------------------------------------

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """Zero complex state [B, H, N/2] (complex128 for float64, else complex64)."""
        if not self.causal:
            raise NotImplementedError(
                f"step() needs a causal {self.mixer_name} mixer (the bidirectional kernel reads the future)")
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        device = device if device is not None else self.log_dt.device
        return torch.zeros(batch_size, self.d_model, self.d_state // 2, device=device, dtype=cdtype)

    def kernel(self, L: int) -> torch.Tensor:
        raise NotImplementedError


@register_mixer("s4d")
class S4DMixer(SSMConvolution):
    """Diagonal S4 block: SSM convolution + D skip -> GELU -> dropout -> output linear (H -> 2H, GLU).

    x: [B, L, D] -> [B, L, D], any L (the kernel is built for the input's length).

    Defaults follow the S4D paper and its reference block (state-spaces/s4 ``models/s4/s4d.py``):

    - ``d_state=64``: N, i.e. 32 complex modes per channel (conjugate pairs counted twice).
    - ``init="lin"``: S4D-Lin, A_n = -1/2 + i pi n; ``"inv"``: S4D-Inv, A_n = -1/2 + i (N/pi)(N/(2n+1) - 1).
    - ``dt_min=0.001``, ``dt_max=0.1``: log dt ~ U[log dt_min, log dt_max] per channel.
    - C ~ complex normal (unit variance), B folded into C (B = 1); D ~ N(0, 1).
    - ``glu=True``: the output linear maps H -> 2H and a GLU halves it; ``glu=False`` uses H -> H.
    - ``dropout=0.0`` after the activation.

    The paper trains A and dt with lr 1e-3 and no weight decay; here ``log_dt``, ``log_A_real`` and
    ``A_imag`` carry ``_no_weight_decay`` (the learning rate is the runner's).

    ``causal=False`` makes the layer bidirectional as in the S4 repository: a second set of C gives a second
    kernel k1 (same A and dt) that reads the future, y[t] = sum_{j>=0} k0[j] u[t-j] + sum_{j>=1} k1[j-1] u[t+j]
    + D u[t]. Only the causal layer streams (``init_state``/``step``).
    """

    test_hparams = {"d_state": 8}

    def __init__(self, d_model: int, *, causal: bool = True, d_state: int = 64, init: str = "lin",
                 dt_min: float = 0.001, dt_max: float = 0.1, glu: bool = True, dropout: float = 0.0) -> None:
        super().__init__(d_model, causal=causal)
        if d_state < 2 or d_state % 2:
            raise ValueError(f"d_state must be an even number >= 2 (N/2 complex modes), got {d_state}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got {dt_min} and {dt_max}")
        H, N2 = d_model, d_state // 2
        self.d_state = d_state

        # log dt uniform in [log dt_min, log dt_max]: a spread of time scales across channels.
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        # Re A = -1/2 for every mode, kept negative through -exp(.); Im A from the chosen init.
        self.log_A_real = nn.Parameter(torch.full((H, N2), math.log(0.5)))
        self.A_imag = nn.Parameter(s4d_init_imag(d_state, init).float().repeat(H, 1))
        for p in (self.log_dt, self.log_A_real, self.A_imag):
            p._no_weight_decay = True
        # C stored as real pairs (view_as_real) so that .double()/.to() convert it with the module.
        n_kernels = 1 if causal else 2
        self.C = nn.Parameter(torch.view_as_real(torch.randn(n_kernels, H, N2, dtype=torch.cfloat)))
        self.D = nn.Parameter(torch.randn(H))

        self.dropout = nn.Dropout(dropout)
        self.glu = glu
        self.out_proj = nn.Linear(H, 2 * H if glu else H)

    # -- the SSM ----------------------------------------------------------------------------------------------

    def _A(self) -> torch.Tensor:
        return torch.complex(-self.log_A_real.exp(), self.A_imag)  # [H, N/2]

    def kernel(self, L: int) -> torch.Tensor:
        """The SSM kernels for length L: [n_kernels, H, L] (n_kernels = 2 when bidirectional), float32/64."""
        # Complex exponentials stay out of autocast: low precision here ruins long kernels.
        with torch.autocast(self.log_dt.device.type, enabled=False):
            return s4d_kernel(self.log_dt, self._A(), torch.view_as_complex(self.C), L)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t: [B, D] -> y_t: [B, D]; state [B, H, N/2] complex: s = dA s + dB u, y = 2 Re(C s) + D u."""
        A = self._A()
        dtA = A * self.log_dt.exp()[:, None]
        dA = dtA.exp()
        dB = (dA - 1) / A
        C = torch.view_as_complex(self.C)[0]
        state = dA * state + dB * x_t[..., None].to(state.dtype)
        y = 2 * (C * state).sum(-1).real + self.D * x_t
        return self._head(y.to(x_t.dtype)), state
