"""S4: the structured state space layer with the DPLR (normal plus low-rank) parameterisation (Gu, Goel and Re,
"Efficiently Modeling Long Sequences with Structured State Spaces", 2022), as a mixer.

Shapes in letters: B batch, L length, H = d_model channels, N = d_state, N/2 complex modes per channel, r rank.

Per channel h, a linear SSM x' = A x + B u, y = C x with the HiPPO-LegS state matrix written as

    A = V Lambda V^* - P P^T          (Lambda diagonal with Re < 0, V unitary, P real [N, r])

i.e. in the basis V: A = Lambda - P P^* (P := V^* P). A is real, so Lambda, P, B and C come in conjugate pairs;
the layer keeps the N/2 modes of one half (Im Lambda > 0) and the other half is their conjugate. Trainable:
Lambda (Re Lambda = -exp(log_A_real) < 0, Im Lambda = A_imag), P, B, C (complex, stored as real pairs), log_dt.

Discretisation: bilinear with step dt,

    Abar = (I - dt/2 A)^{-1} (I + dt/2 A),   Bbar = (I - dt/2 A)^{-1} dt B
    state:   h[t] = Abar h[t-1] + Bbar u[t]          (complex, [B, H, N/2]: the first half of a conjugate pair)
    output:  y[t] = 2 Re(C h[t]) + D u[t]

which unrolls to the causal convolution y = K * u + D u with K[l] = C Abar^l Bbar (over the N conjugate-paired
modes; real). The kernel for length L is computed as in the S4 paper's Algorithm 1:

1. the truncated generating function sum_{l<L} K[l] z^l = C~ (I - Abar z)^{-1} Bbar with C~ = C (I - Abar^L),
   since z^L = 1 at the L-th roots of unity z_k = exp(-2 pi i k / L);
2. with the bilinear map, (I - Abar z)^{-1} Bbar = 2/(1+z) (s I - dt A)^{-1} dt B, s = 2 (1-z)/(1+z);
3. dt A = dt Lambda - dt P P^*, so the resolvent is a diagonal plus rank r: the Woodbury identity turns it into
   Cauchy sums k_ab(s) = sum_n a_n b_n dt / (s - dt Lambda_n) (``mmseq.kernels.cauchy``) and an r x r solve:
   Khat = 2/(1+z) (k_CB - k_CP (I + k_PP)^{-1} k_PB);
4. K = irfft(Khat at z_0..z_{L//2}, n=L).

C~ needs Abar^L, which is dense: it is taken by repeated squaring of the N x N real form of Abar
(log2 L products of [H, N, N] matrices per forward). ``forward`` applies K with ``fft_conv`` (any L);
``step`` runs the recurrence with Abar and Bbar applied through the same Woodbury identity (O(N r) per channel),
so streaming equals the convolution.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmseq.kernels.cauchy import cauchy

from .base import register_mixer
from .s4d import SSMConvolution

# ----------------------------------------------------------------------------------------------------------
# HiPPO-LegS and its normal plus low-rank form
# ----------------------------------------------------------------------------------------------------------


def hippo_legs(N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HiPPO-LegS (float64): A [N, N], B [N] with A[n, k] = -sqrt(2n+1) sqrt(2k+1) for n > k, -(n+1) for n = k,
    0 for n < k, and B[n] = sqrt(2n+1)."""
    n = torch.arange(N, dtype=torch.float64)
    r = (2 * n + 1).sqrt()
    A = -torch.tril(r[:, None] * r[None, :], diagonal=-1) - torch.diag(n + 1)
    return A, r.clone()


def nplr_legs(N: int, rank: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The NPLR form of HiPPO-LegS, A = V Lambda V^* - P P^T, in complex128, keeping one mode of each pair.

    With P[n] = sqrt(n + 1/2), A + P P^T = -I/2 + S with S real skew-symmetric; S = V (i mu) V^* (the
    eigenvectors of the Hermitian -iS). The N eigenvalues come in pairs +-mu with conjugate eigenvectors; the
    N/2 with mu > 0 are kept (decreasing mu). Returns Lambda [N/2] = -1/2 + i mu, P [rank, N/2] = V^* P,
    B [N/2] = V^* B and V [N, N/2]; with Vf = [V, conj(V)] and the modes completed by conjugation,
    Vf diag(Lambda, conj(Lambda)) Vf^* - P P^T = A and Vf [B; conj(B)] = B_hippo. Rows 2..rank of P are zero
    (LegS needs rank 1).
    """
    if N < 2 or N % 2:
        raise ValueError(f"N must be an even number >= 2, got {N}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    A, B = hippo_legs(N)
    P = (torch.arange(N, dtype=torch.float64) + 0.5).sqrt()
    S = A + P[:, None] * P[None, :] + 0.5 * torch.eye(N, dtype=torch.float64)  # skew-symmetric
    mu, V = torch.linalg.eigh(-1j * S.to(torch.complex128))  # S V = V diag(i mu)
    keep = torch.argsort(mu, descending=True)[: N // 2]
    mu, V = mu[keep], V[:, keep]
    Lam = torch.complex(torch.full_like(mu, -0.5), mu)
    Vh = V.conj().T
    P_half = torch.zeros(rank, N // 2, dtype=torch.complex128)
    P_half[0] = Vh @ P.to(torch.complex128)
    return Lam, P_half, Vh @ B.to(torch.complex128), V


# ----------------------------------------------------------------------------------------------------------
# The kernel
# ----------------------------------------------------------------------------------------------------------


def _full(x: torch.Tensor) -> torch.Tensor:
    """[..., N/2] -> [..., N]: the modes followed by their conjugates."""
    return torch.cat([x, x.conj()], dim=-1)


def _pair_basis(N2: int, dtype: torch.dtype, device) -> torch.Tensor:
    """T = [[I, iI], [I, -iI]] [N, N]: [x; conj x] = T [Re x; Im x], and T^{-1} = T^* / 2."""
    eye = torch.eye(N2, dtype=dtype, device=device)
    return torch.cat([torch.cat([eye, 1j * eye], -1), torch.cat([eye, -1j * eye], -1)], -2)


def s4_kernel(dt: torch.Tensor, Lam: torch.Tensor, P: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
              L: int) -> torch.Tensor:
    """The DPLR S4 kernel for length L (module docstring, steps 1-4): K [K, H, L] real.

    dt [H] real; Lam [H, N/2], P [r, H, N/2], B [H, N/2], C [K, H, N/2] complex (one mode of each conjugate
    pair). K[k, h, l] = Cf Abar^l Bbar over the N modes, with Abar, Bbar the bilinear discretisation of
    A = Lambda - P P^*.
    """
    n_k, H, N2 = C.shape
    rank = P.shape[0]
    N = 2 * N2
    cdt = C.dtype
    w, Pf, Bf, Cf = _full(Lam), _full(P), _full(B), _full(C)  # [H, N], [r, H, N], [H, N], [K, H, N]

    # C~ = C (I - Abar^L), Abar^L by repeated squaring of the real form of Abar.
    A = torch.diag_embed(w) - torch.einsum("rhn,rhm->hnm", Pf, Pf.conj())  # [H, N, N]
    T = _pair_basis(N2, cdt, C.device)
    A_real = (T.conj().T @ A @ T / 2).real  # the same map on [Re x; Im x]: real (up to rounding)
    eye = torch.eye(N, dtype=A_real.dtype, device=A_real.device)
    half = (dt / 2)[:, None, None]
    Abar = torch.linalg.solve(eye - half * A_real, eye + half * A_real)  # [H, N, N], real
    row = Cf @ T  # [K, H, N]: Cf Abar^L = (Cf T) Abar_real^L T^{-1}
    power, M = L, Abar
    while power:
        if power & 1:
            row = torch.einsum("khn,hnm->khm", row, M.to(cdt))
        power >>= 1
        if power:
            M = M @ M
    Ct = Cf - row @ T.conj().T / 2  # [K, H, N]

    # Nodes: the rfft frequencies of length L, mapped through the bilinear transform; built in float64 with
    # 1 + z rounded once and used for both s and 2/(1+z), so both see the same node.
    k = torch.arange(L // 2 + 1, device=C.device, dtype=torch.float64)
    zp = 1 + torch.polar(torch.ones_like(k), -2 * math.pi * k / L)  # 1 + z, [L//2+1]; never 0 in floating point
    s = (2 * (2 - zp) / zp).to(cdt)
    scale = (2 / zp).to(cdt)

    # Cauchy sums for every (row, column) pair of the Woodbury identity, dt folded into the poles.
    rows = torch.cat([Ct, Pf.conj()], dim=0)  # [K + r, H, N]
    cols = torch.cat([Bf[None], Pf], dim=0)  # [1 + r, H, N]
    v = rows[:, None] * cols[None] * dt[:, None]  # [K + r, 1 + r, H, N]
    r = cauchy(v, s, dt[:, None] * w)  # [K + r, 1 + r, H, L//2+1]
    r00, r01 = r[:n_k, 0], r[:n_k, 1:]  # [K, H, L'], [K, r, H, L']
    r10, r11 = r[n_k:, 0], r[n_k:, 1:]  # [r, H, L'], [r, r, H, L']
    if rank == 1:
        khat = r00 - r01[:, 0] * r10[0] / (1 + r11[0, 0])
    else:
        lhs = torch.eye(rank, dtype=cdt, device=C.device) + r11.permute(2, 3, 0, 1)  # [H, L', r, r]
        sol = torch.linalg.solve(lhs, r10.permute(1, 2, 0)[..., None])[..., 0]  # [H, L', r]
        khat = r00 - torch.einsum("kjhl,hlj->khl", r01, sol)
    khat = khat * scale
    return torch.fft.irfft(khat, n=L)  # [K, H, L]


# ----------------------------------------------------------------------------------------------------------
# The mixer
# ----------------------------------------------------------------------------------------------------------


@register_mixer("s4")
class S4Mixer(SSMConvolution):
    """S4 (DPLR) block: SSM convolution + D skip -> GELU -> dropout -> output linear (H -> 2H, GLU).

    x: [B, L, D] -> [B, L, D], any L (the kernel is built for the input's length).

    Defaults follow the S4 repository (state-spaces/s4, ``SSMKernelDPLR`` with ``init="legs"``):

    - ``d_state=64``: N, i.e. 32 complex modes per channel (conjugate pairs counted twice).
    - ``rank=1``: the low-rank correction of HiPPO-LegS. Extra ranks start from P = 1e-3 * N(0, 1) rather than
      S4's zeros, whose gradient is exactly zero (the Woodbury term is quadratic in an unused row of P).
    - Lambda, P, B from the NPLR form of HiPPO-LegS (``nplr_legs``), the same in every channel; C ~ complex
      normal (unit variance); D ~ N(0, 1).
    - ``dt_min=0.001``, ``dt_max=0.1``: log dt ~ U[log dt_min, log dt_max] per channel; bilinear discretisation.
    - ``glu=True``: the output linear maps H -> 2H and a GLU halves it; ``glu=False`` uses H -> H.
    - ``dropout=0.0`` after the activation.

    S4 trains A, B, P and dt with lr 1e-3 and no weight decay; here ``log_dt``, ``log_A_real``, ``A_imag``, ``B``
    and ``P`` carry ``_no_weight_decay`` (the learning rate is the runner's).

    ``causal=False`` makes the layer bidirectional as in the S4 repository: a second set of C gives a second
    kernel k1 (same A, B, P and dt) that reads the future, y[t] = sum_{j>=0} k0[j] u[t-j] + sum_{j>=1} k1[j-1]
    u[t+j] + D u[t]. Only the causal layer streams (``init_state``/``step``).

    Cost: each forward builds the kernel with log2(L) products of [H, N, N] matrices (for C~) and Cauchy sums
    over [(K + r)(1 + r), H, N, L/2]; the kernel is not cached.
    """

    test_hparams = {"d_state": 8}

    def __init__(self, d_model: int, *, causal: bool = True, d_state: int = 64, rank: int = 1,
                 dt_min: float = 0.001, dt_max: float = 0.1, glu: bool = True, dropout: float = 0.0) -> None:
        super().__init__(d_model, causal=causal)
        if d_state < 2 or d_state % 2:
            raise ValueError(f"d_state must be an even number >= 2 (N/2 complex modes), got {d_state}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got {dt_min} and {dt_max}")
        H, N2 = d_model, d_state // 2
        self.d_state, self.rank = d_state, rank

        # log dt uniform in [log dt_min, log dt_max]: a spread of time scales across channels.
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        # HiPPO-LegS in NPLR form: Re Lambda = -1/2 (kept negative through -exp(.)), Im Lambda, P and B from it.
        Lam, P, B, _ = nplr_legs(d_state, rank)
        self.log_A_real = nn.Parameter((-Lam.real).log().float().repeat(H, 1))
        self.A_imag = nn.Parameter(Lam.imag.float().repeat(H, 1))
        P = P[:, None].repeat(1, H, 1)  # [r, H, N/2]
        if rank > 1:
            P[1:] = 1e-3 * torch.randn(rank - 1, H, N2, dtype=torch.complex128)
        # Complex tensors stored as real pairs (view_as_real) so that .double()/.to() convert them with the module.
        self.P = nn.Parameter(torch.view_as_real(P.to(torch.cfloat)).clone())
        self.B = nn.Parameter(torch.view_as_real(B.to(torch.cfloat).repeat(H, 1)).clone())
        for p in (self.log_dt, self.log_A_real, self.A_imag, self.P, self.B):
            p._no_weight_decay = True
        n_kernels = 1 if causal else 2
        self.C = nn.Parameter(torch.view_as_real(torch.randn(n_kernels, H, N2, dtype=torch.cfloat)))
        self.D = nn.Parameter(torch.randn(H))

        self.dropout = nn.Dropout(dropout)
        self.glu = glu
        self.out_proj = nn.Linear(H, 2 * H if glu else H)

    # -- the SSM ----------------------------------------------------------------------------------------------

    def ssm(self) -> tuple[torch.Tensor, ...]:
        """(dt [H], Lambda [H, N/2], P [r, H, N/2], B [H, N/2], C [K, H, N/2]); complex except dt."""
        Lam = torch.complex(-self.log_A_real.exp(), self.A_imag)
        as_c = torch.view_as_complex
        return self.log_dt.exp(), Lam, as_c(self.P), as_c(self.B), as_c(self.C)

    def kernel(self, L: int) -> torch.Tensor:
        """The SSM kernels for length L: [n_kernels, H, L] (n_kernels = 2 when bidirectional), float32/64."""
        # Complex arithmetic and the matrix powers stay out of autocast: low precision here ruins long kernels.
        with torch.autocast(self.log_dt.device.type, enabled=False):
            return s4_kernel(*self.ssm(), L)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t: [B, D] -> y_t: [B, D]; state [B, H, N/2] complex: h = Abar h + Bbar u, y = 2 Re(C h) + D u.

        For a conjugate-paired state [h; conj h], P^* [h; conj h] = 2 Re(p^* h) is real, so with
        Dg = (1 - dt/2 Lambda)^{-1} the bilinear step is, per channel (Woodbury on I - dt/2 A):
        rhs = h + dt/2 (Lambda h - p s) + dt B u with s = 2 Re(p^* h);
        t = (I + dt/2 G)^{-1} 2 Re(p^* Dg rhs) with G = 2 Re(p^* Dg p) [r, r];  h = Dg rhs - dt/2 Dg p t.
        """
        dt, Lam, P, B, C = self.ssm()
        cdt = state.dtype
        dt, Lam, P, B, C = dt.to(state.real.dtype), Lam.to(cdt), P.to(cdt), B.to(cdt), C[0].to(cdt)
        u = x_t.to(dt.dtype)[..., None]  # [B, H, 1]
        half = (dt / 2)[:, None]  # [H, 1]
        s = 2 * torch.einsum("rhn,bhn->rbh", P.conj(), state).real  # [r, B, H]
        rhs = state + half * (Lam * state - torch.einsum("rhn,rbh->bhn", P, s.to(cdt))) + 2 * half * B * u
        Dg = 1 / (1 - half * Lam)  # [H, N/2]
        G = 2 * torch.einsum("rhn,hn,qhn->hrq", P.conj(), Dg, P).real  # [H, r, r]
        q = 2 * torch.einsum("rhn,hn,bhn->bhr", P.conj(), Dg, rhs).real  # [B, H, r]
        eye = torch.eye(self.rank, dtype=G.dtype, device=G.device)
        t = torch.linalg.solve(eye + (dt / 2)[:, None, None] * G, q[..., None])[..., 0]  # [B, H, r]
        state = Dg * (rhs - half * torch.einsum("rhn,bhr->bhn", P, t.to(cdt)))
        y = 2 * (C * state).sum(-1).real + self.D.to(dt.dtype) * u[..., 0]
        return self._head(y.to(x_t.dtype)), state
