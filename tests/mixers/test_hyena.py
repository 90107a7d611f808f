"""Hyena: the mixer against a direct implementation (explicit causal convolutions) on the same parameters."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmseq.mixers import create_mixer
from mmseq.mixers.base import stream


def _mixer(**kw):
    torch.manual_seed(0)
    hp = {"l_max": 20, "filter_order": 8, "emb_dim": 5, "w": 3.0, **kw}
    return create_mixer("hyena", 4, **hp).double()


def _direct_filter(m, L):
    """The implicit filter from the formulas: features -> MLP with sin -> exponential decay; [N-1, D, L]."""
    l_max, bands = m.l_max, 2  # emb_dim 5
    s = torch.arange(L, dtype=torch.float64)
    t = s / (l_max - 1)
    f = torch.linspace(1e-4, bands - 1, bands, dtype=torch.float64)
    ang = 2 * math.pi * f[None, :] * s[:, None] / l_max
    h = torch.cat([t[:, None], torch.cos(ang), -torch.sin(ang)], dim=-1)  # [L, 5]
    layers = list(m.filter.mlp)
    for lin, act in zip(layers[0:-1:2], layers[1:-1:2]):
        h = torch.sin(act.freq * (h @ lin.weight.T + lin.bias))
    h = h @ layers[-1].weight.T  # [L, (N-1) D]
    n = h.shape[1]
    deltas = torch.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, n, dtype=torch.float64)
    h = h * torch.exp(-t[:, None] * deltas.abs())
    return h.T.reshape(m.order - 1, m.d_model, L)


def _direct_hyena(m, x):
    B, L, D = x.shape
    N = m.order
    p = (x @ m.in_proj.weight.T + m.in_proj.bias).transpose(1, 2)  # [B, (N+1) D, L]
    K = m.short_weight.shape[1]
    # the short conv as nn.Conv1d does it: pad K-1 on both sides, keep the first L outputs
    p = F.conv1d(p, m.short_weight[:, None, :], m.short_bias, padding=K - 1, groups=p.shape[1])[..., :L]
    xs = [p[:, i * D:(i + 1) * D] for i in range(N + 1)]
    z = xs[N]
    h = _direct_filter(m, L)
    for i in range(N - 1, 0, -1):
        o = N - 1 - i
        u = z * xs[i]
        y = torch.zeros_like(u)
        for t in range(L):
            for s in range(t + 1):
                y[..., t] += h[o, :, s] * u[..., t - s]
        z = y + m.bias[o][:, None] * u
    y = (z * xs[0]).transpose(1, 2)
    return y @ m.out_proj.weight.T + m.out_proj.bias


@pytest.mark.parametrize("order", [2, 3])
def test_equals_direct_implementation(order):
    m = _mixer(order=order)
    x = torch.randn(2, 17, 4, dtype=torch.float64)
    torch.testing.assert_close(m(x), _direct_hyena(m, x), rtol=1e-10, atol=1e-10)


def test_filter_is_a_prefix_and_decays():
    m = _mixer()
    h_full, h_short = m.filter(20), m.filter(9)
    torch.testing.assert_close(h_short, h_full[..., :9], rtol=0, atol=0)
    torch.testing.assert_close(h_full, _direct_filter(m, 20), rtol=1e-12, atol=1e-12)
    window = m.filter.window(20, dtype=torch.float64).T  # [channels, l_max]
    assert (window.diff(dim=-1) < 0).all()  # every channel's window decays
    assert window[-1, -1] < window[0, -1]  # and the last channels decay fastest


def test_step_matches_forward_order3_full_length():
    m = _mixer(order=3)
    B, L = 2, 20
    x = torch.randn(B, L, 4, dtype=torch.float64)
    full = m(x)
    state = m.init_state(B, dtype=torch.float64)
    streamed, state = stream(m, x, state)
    torch.testing.assert_close(streamed, full, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="L=21 exceeds l_max=20"):
        m.step(x[:, 0], state)


def test_errors():
    with pytest.raises(ValueError, match="L=21 exceeds l_max=20"):
        _mixer()(torch.randn(1, 21, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="emb_dim"):
        create_mixer("hyena", 4, emb_dim=4)
    with pytest.raises(ValueError, match="causal"):
        create_mixer("hyena", 4, causal=False)
