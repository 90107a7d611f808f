"""SGConv: kernel construction (scales, lengths, decay, normalization), the forward against a direct
convolution, l_max, streaming at full length."""

import pytest
import torch
import torch.nn.functional as F

from mmseq.mixers import create_mixer
from mmseq.mixers.base import stream
from mmseq.mixers.sgconv import sgconv_kernel, sgconv_n_scales
from tests.mixers._conv_ref import two_sided_sum


def _mixer(causal=True, **kw):
    torch.manual_seed(0)
    hp = {"l_max": 40, "kernel_dim": 8, **kw}
    return create_mixer("sgconv", 5, causal=causal, **hp).double()


@pytest.mark.parametrize("l_max,d,S", [(1024, 64, 5), (1000, 64, 5), (64, 64, 1), (32, 64, 1), (40, 8, 4)])
def test_n_scales_reach_l_max(l_max, d, S):
    assert sgconv_n_scales(l_max, d) == S
    assert d * 2 ** (S - 1) >= l_max


def test_kernel_shape_segments_and_decay_ordering():
    d, S = 4, 4  # segments of lengths 4, 4, 8, 16 -> 32 taps
    subs = [torch.ones(3, d, dtype=torch.float64) for _ in range(S)]
    k = sgconv_kernel(subs, 0.5, 32)
    assert k.shape == (3, 32)
    segments = [k[:, 0:4], k[:, 4:8], k[:, 8:16], k[:, 16:32]]
    for i, seg in enumerate(segments):  # constant inputs stay constant under interpolation
        torch.testing.assert_close(seg, torch.full_like(seg, 0.5**i))
    levels = [seg.abs().mean() for seg in segments]
    assert all(a > b for a, b in zip(levels, levels[1:]))  # later (longer-range) scales weigh less
    assert sgconv_kernel(subs, 0.5, 40)[:, 32:].abs().sum() == 0  # zero-padded past d * 2^(S-1)
    assert sgconv_kernel(subs, 0.5, 10).shape == (3, 10)


def test_upsampling_is_linear_interpolation():
    w = torch.randn(2, 4, dtype=torch.float64)
    subs = [torch.zeros_like(w), torch.zeros_like(w), w]  # scale 2 is upsampled x2
    k = sgconv_kernel(subs, 1.0, 16)
    torch.testing.assert_close(k[:, 8:16], F.interpolate(w[None], scale_factor=2, mode="linear")[0])


def test_mixer_kernel_is_normalized_and_a_prefix():
    m = _mixer()
    assert m.n_scales == 4 and len(m.sub_kernels) == 4
    k = m.kernel(40)
    assert k.shape == (1, 5, 40)
    torch.testing.assert_close(k.norm(dim=-1), torch.ones(1, 5, dtype=torch.float64))
    torch.testing.assert_close(m.kernel(13), k[..., :13], rtol=0, atol=0)
    assert "kernel_norm" in m.state_dict()


def test_forward_equals_direct_convolution():
    m = _mixer(channels=2)
    B, L = 2, 17
    x = torch.randn(B, L, 5, dtype=torch.float64)
    k = m.kernel(L)[0]  # [C*H, L]
    u = x.transpose(1, 2).repeat(1, 2, 1)
    y = torch.zeros_like(u)
    for t in range(L):
        for s in range(t + 1):
            y[..., t] += k[:, s] * u[..., t - s]
    y = y + m.D.reshape(-1)[:, None] * u
    want = m.out_proj(F.gelu(y.transpose(1, 2)))
    torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-10)


def test_bidirectional_equals_two_sided_sum():
    """y[t] = sum_{s<=t} k0[t-s] u[s] + sum_{s>t} k1[s-t-1] u[s] + D u[t]: the second kernel reads the future,
    delayed one step so that u[t] is counted once (by k0[0] and D)."""
    m = _mixer(causal=False, channels=2)
    B, L = 2, 11
    x = torch.randn(B, L, 5, dtype=torch.float64)
    k0, k1 = m.kernel(L)  # [C*H, L] each
    u = x.transpose(1, 2).repeat(1, 2, 1)
    y = two_sided_sum(k0, k1, m.D.reshape(-1), u)
    want = m.out_proj(F.gelu(y.transpose(1, 2)))
    torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-10)


def test_bidirectional_reads_both_sides():
    m = _mixer(causal=False)
    x = torch.randn(1, 10, 5, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 7] += 1.0
    changed = (m(x) - m(x2)).abs().amax(-1)[0]
    assert (changed[:8] > 0).all()


def test_step_matches_forward_at_l_max_and_errors():
    m = _mixer()
    B, L = 2, 40
    x = torch.randn(B, L, 5, dtype=torch.float64)
    full = m(x)
    state = m.init_state(B, dtype=torch.float64)
    streamed, state = stream(m, x, state)
    torch.testing.assert_close(streamed, full, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="L=41 exceeds l_max=40"):
        m.step(x[:, 0], state)
    with pytest.raises(ValueError, match="L=41 exceeds l_max=40"):
        m(torch.randn(1, 41, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="interpolation"):
        create_mixer("sgconv", 4, interpolation="cubic")
