"""S4D: the Vandermonde kernel against a direct sum, the FFT path against the recurrence, inits, bidirectional."""

import math

import pytest
import torch
from mmseq.kernels import fft_conv_ref

from mmseq.mixers import create_mixer
from mmseq.mixers.base import stream
from mmseq.mixers.s4d import s4d_init_imag
from tests.mixers._conv_ref import two_sided_sum


def _mixer(causal=True, **kw):
    torch.manual_seed(0)
    return create_mixer("s4d", 6, causal=causal, **{"d_state": 8, **kw}).double()


def test_kernel_equals_direct_vandermonde_sum():
    m = _mixer()
    L = 11
    k = m.kernel(L)[0]  # [H, L]
    dt = m.log_dt.exp()
    A = torch.complex(-m.log_A_real.exp(), m.A_imag)
    C = torch.view_as_complex(m.C)[0]
    want = torch.zeros_like(k)
    for h in range(k.shape[0]):
        for n in range(A.shape[1]):
            dA = torch.exp(dt[h] * A[h, n])
            for l in range(L):
                want[h, l] += 2 * (C[h, n] * (dA - 1) / A[h, n] * dA**l).real
    torch.testing.assert_close(k, want, rtol=1e-12, atol=1e-12)


def test_fft_path_equals_recurrence_float64():
    """The SSM part alone: conv with the kernel (+ D) against the complex diagonal recurrence."""
    m = _mixer()
    B, L, H = 2, 37, 6
    u = torch.randn(B, H, L, dtype=torch.float64)
    y_conv = fft_conv_ref(u, m.kernel(L)[0], m.D)
    A = torch.complex(-m.log_A_real.exp(), m.A_imag)
    dA = torch.exp(A * m.log_dt.exp()[:, None])
    dB = (dA - 1) / A
    C = torch.view_as_complex(m.C)[0]
    s = torch.zeros(B, H, A.shape[1], dtype=torch.complex128)
    ys = []
    for t in range(L):
        s = dA * s + dB * u[:, :, t, None]
        ys.append(2 * (C * s).sum(-1).real + m.D * u[:, :, t])
    torch.testing.assert_close(y_conv, torch.stack(ys, -1), rtol=1e-10, atol=1e-10)
    # and the whole mixer, FFT forward against step() on a longer sequence than the contract test uses
    x = torch.randn(B, L, H, dtype=torch.float64)
    full = m(x)
    state = m.init_state(B, dtype=torch.float64)
    streamed, state = stream(m, x, state)
    torch.testing.assert_close(streamed, full, rtol=1e-10, atol=1e-10)


def test_inits():
    N = 8
    lin = s4d_init_imag(N, "lin")
    torch.testing.assert_close(lin, math.pi * torch.arange(N // 2, dtype=torch.float64))
    inv = s4d_init_imag(N, "inv")
    assert inv[0] == pytest.approx(N / math.pi * (N - 1)) and (inv.diff() < 0).all()
    m = _mixer(init="inv")
    assert torch.allclose(m.A_imag[0], inv) and torch.allclose(m.log_A_real.exp(), torch.tensor(0.5).double())
    dt = m.log_dt.exp()
    assert (dt >= 1e-3).all() and (dt <= 0.1).all()
    with pytest.raises(ValueError, match="init"):
        create_mixer("s4d", 4, init="legs")


def test_bidirectional_matches_two_sided_sum():
    m = _mixer(causal=False, glu=False)
    B, L, H = 2, 9, 6
    x = torch.randn(B, L, H, dtype=torch.float64)
    k0, k1 = m.kernel(L)
    u = x.transpose(1, 2)
    y = two_sided_sum(k0, k1, m.D, u)
    want = m.out_proj(torch.nn.functional.gelu(y.transpose(1, 2)))
    torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-10)
    with pytest.raises(NotImplementedError):
        m.init_state(B)
