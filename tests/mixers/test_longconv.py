"""LongConv: squash and smooth regularizers, the forward against a direct convolution, l_max, streaming."""

import pytest
import torch
import torch.nn.functional as F

from mmseq.mixers import create_mixer
from mmseq.mixers.base import stream
from mmseq.mixers.longconv import smooth, squash
from tests.mixers._conv_ref import two_sided_sum


def _mixer(causal=True, **kw):
    torch.manual_seed(0)
    hp = {"l_max": 24, "kernel_dropout": 0.0, **kw}
    return create_mixer("longconv", 5, causal=causal, **hp).double()


def test_squash_zeroes_small_weights_and_shrinks_the_rest():
    k = torch.tensor([-0.5, -0.002, 0.0, 0.001, 0.003, 0.2], dtype=torch.float64)
    out = squash(k, 0.003)
    assert (out[1:5] == 0).all()
    torch.testing.assert_close(out[[0, 5]], torch.tensor([-0.497, 0.197], dtype=torch.float64))
    # in the mixer: a large lam zeroes the whole kernel, leaving only the D skip
    m = _mixer(lam=10.0)
    assert (m.kernel(24) == 0).all()


def test_smooth_is_a_same_length_moving_average():
    k = torch.randn(2, 3, 17, dtype=torch.float64)
    s = smooth(k, 5)
    assert s.shape == k.shape
    padded = F.pad(k, (2, 2))
    torch.testing.assert_close(s[..., 8], padded[..., 8:13].mean(-1))
    with pytest.raises(ValueError, match="smooth_window"):
        create_mixer("longconv", 4, smooth_window=4)


def test_forward_equals_direct_convolution():
    m = _mixer(lam=0.001, smooth_window=3)
    B, L, H = 2, 19, 5
    x = torch.randn(B, L, H, dtype=torch.float64)
    w = smooth(m.kernel_weight[0], 3)
    k = torch.sign(w) * (w.abs() - 0.001).clamp(min=0)
    u = x.transpose(1, 2).repeat(1, 2, 1)  # channels=2
    y = torch.zeros_like(u)
    for t in range(L):
        for s in range(t + 1):
            y[..., t] += k[:, s] * u[..., t - s]
    y = y + m.D.reshape(-1)[:, None] * u
    want = F.glu(m.out_proj(F.gelu(y.transpose(1, 2))), dim=-1)
    torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-10)


def test_bidirectional_equals_two_sided_sum():
    """Past taps from the first kernel, future taps from the second, delayed one step (u[t] counted once)."""
    m = _mixer(causal=False, lam=0.05, smooth_window=3)
    with torch.no_grad():
        m.kernel_weight.copy_(torch.randn_like(m.kernel_weight) * 0.3)  # taps well above lam
    B, L = 2, 11
    x = torch.randn(B, L, 5, dtype=torch.float64)
    w = smooth(m.kernel_weight, 3)
    k0, k1 = torch.sign(w) * (w.abs() - 0.05).clamp(min=0)  # [C*H, l_max] each
    u = x.transpose(1, 2).repeat(1, 2, 1)  # channels=2
    y = two_sided_sum(k0, k1, m.D.reshape(-1), u)
    want = F.glu(m.out_proj(F.gelu(y.transpose(1, 2))), dim=-1)
    torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-10)


def test_bidirectional_reads_both_sides():
    m = _mixer(causal=False, lam=0.0)
    x = torch.randn(1, 10, 5, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 7] += 1.0
    changed = (m(x) - m(x2)).abs().amax(-1)[0]
    assert (changed[:8] > 0).all()  # the future input at t=7 reaches earlier outputs


def test_length_beyond_l_max_raises():
    m = _mixer()
    with pytest.raises(ValueError, match="L=25 exceeds l_max=24"):
        m(torch.randn(1, 25, 5, dtype=torch.float64))


def test_step_matches_forward_with_regularizers_in_eval_mode():
    m = _mixer(lam=0.001, smooth_window=7, kernel_dropout=0.3).eval()
    B, L = 2, 24
    x = torch.randn(B, L, 5, dtype=torch.float64)
    full = m(x)
    state = m.init_state(B, dtype=torch.float64)
    streamed, state = stream(m, x, state)
    torch.testing.assert_close(streamed, full, rtol=1e-10, atol=1e-10)
    assert state.shape == (B, 5, L)
    with pytest.raises(ValueError, match="l_max"):
        m.step(x[:, 0], state)
