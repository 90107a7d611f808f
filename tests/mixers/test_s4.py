"""S4 (DPLR): HiPPO-LegS against its closed form, the NPLR decomposition against A, the kernel (generating function,
Cauchy sums, Woodbury) against the kernel unrolled from dense discretised matrices, step() against forward() at
rank > 1, the bidirectional rule, float32 against float64, inits and argument checks.
"""

import math

import pytest
import torch

from mmseq.mixers import create_mixer
from mmseq.mixers.base import stream
from mmseq.mixers.s4 import hippo_legs, nplr_legs, s4_kernel
from tests.mixers._conv_ref import two_sided_sum


def _mixer(causal=True, H=3, perturb=True, seed=0, **kw):
    """A small float64 s4 mixer; ``perturb`` moves P, B, C and Im Lambda off their init so that the tests do not
    lean on the HiPPO structure (and a rank > 1 correction is not negligible)."""
    torch.manual_seed(seed)
    m = create_mixer("s4", H, causal=causal, **{"d_state": 8, **kw}).double()
    if perturb:
        with torch.no_grad():
            for p in (m.P, m.B, m.C, m.A_imag):
                p.add_(0.3 * torch.randn_like(p))
    return m


@torch.no_grad()
def _dense_kernel(m, L: int) -> torch.Tensor:
    """K[k, h, l] = Cf Abar^l Bbar with the N x N matrices written out: A = diag(Lambda, conj Lambda) - Pf Pf^*,
    Abar = (I - dt/2 A)^{-1} (I + dt/2 A), Bbar = (I - dt/2 A)^{-1} dt Bf, powers by repeated multiplication."""
    dt = m.log_dt.exp()
    Lam = torch.complex(-m.log_A_real.exp(), m.A_imag)
    P, B, C = (torch.view_as_complex(t) for t in (m.P, m.B, m.C))
    full = lambda x: torch.cat([x, x.conj()], -1)
    n_k, H, N2 = C.shape
    N = 2 * N2
    eye = torch.eye(N, dtype=torch.complex128)
    K = torch.zeros(n_k, H, L, dtype=torch.float64)
    for h in range(H):
        A = torch.diag(full(Lam[h])).clone()
        for r in range(P.shape[0]):
            p = full(P[r, h])
            A -= torch.outer(p, p.conj())
        inv = torch.linalg.inv(eye - dt[h] / 2 * A)
        Abar, Bbar = inv @ (eye + dt[h] / 2 * A), inv @ (dt[h] * full(B[h]))
        x = Bbar
        for l in range(L):
            for k in range(n_k):
                y = full(C[k, h]) @ x
                assert abs(y.imag) < 1e-10 * (1 + abs(y))  # a conjugate-symmetric system has a real kernel
                K[k, h, l] = y.real
            x = Abar @ x
    return K


def test_hippo_legs_matches_its_closed_form():
    N = 7
    A, B = hippo_legs(N)
    for n in range(N):
        assert B[n] == pytest.approx(math.sqrt(2 * n + 1), rel=1e-15)
        for k in range(N):
            want = -math.sqrt((2 * n + 1) * (2 * k + 1)) if n > k else -(n + 1) if n == k else 0.0
            assert A[n, k].item() == pytest.approx(want, rel=1e-15, abs=0), (n, k)


@pytest.mark.parametrize("N", [2, 8, 64])
def test_nplr_reconstructs_hippo_legs(N):
    A, B = hippo_legs(N)
    Lam, P, Bh, V = nplr_legs(N, rank=2)
    assert Lam.shape == (N // 2,) and P.shape == (2, N // 2) and Bh.shape == (N // 2,) and V.shape == (N, N // 2)
    assert torch.all(Lam.real == -0.5) and torch.all(Lam.imag > 0) and torch.all(P[1] == 0)
    Vf = torch.cat([V, V.conj()], 1)
    torch.testing.assert_close(Vf.conj().T @ Vf, torch.eye(N, dtype=torch.complex128), rtol=0, atol=1e-12)
    p = (torch.arange(N, dtype=torch.float64) + 0.5).sqrt()
    rebuilt = Vf @ torch.diag(torch.cat([Lam, Lam.conj()])) @ Vf.conj().T - torch.outer(p, p)
    scale = A.abs().max().item()
    torch.testing.assert_close(rebuilt, A.to(torch.complex128), rtol=0, atol=1e-13 * scale)
    # P and B are the same vectors in the eigenbasis: Vf [x; conj x] gives them back
    torch.testing.assert_close(Vf @ torch.cat([P[0], P[0].conj()]), p.to(torch.complex128), rtol=0, atol=1e-12)
    torch.testing.assert_close(Vf @ torch.cat([Bh, Bh.conj()]), B.to(torch.complex128), rtol=0, atol=1e-12)


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("L", [1, 2, 7, 16, 33, 64])
def test_kernel_equals_unrolled_dense_recurrence(L, rank):
    m = _mixer(rank=rank, causal=False)  # two kernels: both C's go through C~ and the Woodbury terms
    want = _dense_kernel(m, L)
    torch.testing.assert_close(m.kernel(L), want, rtol=0, atol=1e-12 * want.abs().max().item())


def test_kernel_at_initialisation_equals_unrolled_dense_recurrence():
    """At init (HiPPO-LegS, no perturbation), with long L: the decayed tail of Abar^L matters less, dt spans
    [1e-3, 1e-1]."""
    m = _mixer(perturb=False, H=4)
    L = 300
    want = _dense_kernel(m, L)
    torch.testing.assert_close(m.kernel(L), want, rtol=0, atol=1e-11 * want.abs().max().item())


def test_kernel_gradcheck():
    """Finite differences through the matrix power, the Cauchy sums and the rank-2 Woodbury solve."""
    m = _mixer(H=1, d_state=4, rank=2)
    params = [m.log_dt, m.log_A_real, m.A_imag, m.P, m.B, m.C]

    def kern(log_dt, log_A_real, A_imag, P, B, C):
        as_c = torch.view_as_complex
        return s4_kernel(log_dt.exp(), torch.complex(-log_A_real.exp(), A_imag), as_c(P), as_c(B), as_c(C), 6)

    assert torch.autograd.gradcheck(kern, tuple(p.detach().clone().requires_grad_(True) for p in params))


@pytest.mark.parametrize("rank", [1, 2])
def test_step_matches_forward_float64(rank):
    m = _mixer(rank=rank)
    B, L = 2, 40
    x = torch.randn(B, L, 3, dtype=torch.float64)
    full = m(x)
    streamed, state = stream(m, x, m.init_state(B, dtype=torch.float64))
    assert state.shape == (B, 3, 4) and state.dtype == torch.complex128
    torch.testing.assert_close(streamed, full, rtol=1e-10, atol=1e-10)


def test_step_equals_dense_recurrence():
    """The SSM part of step() (Woodbury bilinear step on half the state) against the dense N x N recurrence."""
    m = _mixer(rank=2, glu=False)
    m.out_proj = torch.nn.Identity()
    B, L = 2, 9
    u = torch.randn(B, L, 3, dtype=torch.float64)
    K = _dense_kernel(m, L)[0]  # [H, L]
    want = torch.stack([sum(K[:, j] * u[:, t - j] for j in range(t + 1)) + m.D * u[:, t] for t in range(L)], 1)
    got, _ = stream(m, u, m.init_state(B, dtype=torch.float64))
    torch.testing.assert_close(got, torch.nn.functional.gelu(want), rtol=1e-11, atol=1e-11)


def test_bidirectional_matches_two_sided_sum():
    m = _mixer(causal=False, glu=False)
    B, L = 2, 9
    x = torch.randn(B, L, 3, dtype=torch.float64)
    k0, k1 = m.kernel(L)
    y = two_sided_sum(k0, k1, m.D, x.transpose(1, 2))
    want = m.out_proj(torch.nn.functional.gelu(y.transpose(1, 2)))
    torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-10)
    with pytest.raises(NotImplementedError):
        m.init_state(B)


@pytest.mark.parametrize("L", [1000, 4096])
def test_float32_kernel_close_to_float64(L):
    """Default d_state=64: the float32 kernel (nodes near z = -1 map to |s| ~ 1e7) within 1e-4 relative RMS."""
    torch.manual_seed(0)
    m32 = create_mixer("s4", 4)
    m64 = create_mixer("s4", 4)
    m64.load_state_dict(m32.state_dict())
    k32, k64 = m32.kernel(L), m64.double().kernel(L)
    assert k32.dtype == torch.float32
    err = ((k32.double() - k64).norm() / k64.norm()).item()
    assert err < 1e-4, err


def test_init_and_no_weight_decay_flags():
    m = _mixer(perturb=False, H=5, d_state=8, rank=2)
    Lam, P, B, _ = nplr_legs(8)
    torch.testing.assert_close(-m.log_A_real.exp(), Lam.real.repeat(5, 1), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(m.A_imag, Lam.imag.repeat(5, 1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.view_as_complex(m.B), B.repeat(5, 1), rtol=1e-6, atol=1e-6)
    Pm = torch.view_as_complex(m.P)
    torch.testing.assert_close(Pm[0], P[0].repeat(5, 1), rtol=1e-6, atol=1e-6)
    assert 0 < Pm[1].abs().max() < 1e-2  # the extra rank starts small, not at zero
    dt = m.log_dt.exp()
    assert (dt >= 1e-3 - 1e-12).all() and (dt <= 0.1 + 1e-12).all()
    flagged = {n for n, p in m.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert flagged == {"log_dt", "log_A_real", "A_imag", "P", "B"}


@pytest.mark.parametrize(
    "kw,message",
    [({"d_state": 7}, "d_state must be an even number"), ({"rank": 0}, "rank must be >= 1"),
     ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min and dt_max")],
    ids=["odd-d_state", "rank-0", "dt-order"],
)
def test_bad_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        create_mixer("s4", 4, **kw)
