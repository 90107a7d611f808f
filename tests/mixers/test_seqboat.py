"""SeqBoat: the compressed GAU equals its dense L x L form (forced all-on and router-decided) and a per-token loop
written from the definition; the activation rate is reported; streaming reproduces forward."""

import pytest
import torch
import torch.nn.functional as F

from mmseq.mixers import create_mixer
from mmseq.mixers.base import stream
from mmseq.mixers.seqboat import SeqBoat, activation_rates

D = 12


def _build(causal=True, **kw):
    """A SeqBoat whose GAU is far from its near-zero init, so that attention contributes visibly."""
    torch.manual_seed(0)
    hp = dict(ndim=4, window=3, z_dim=6, h_dim=10, max_positions=5)
    hp.update(kw)
    m = create_mixer("seqboat", D, causal=causal, **hp).double()
    with torch.no_grad():
        for p in (m.gamma, m.beta, m.mx_proj.weight, m.h_proj.weight, m.hx_proj.weight, m.rel_pos_bias):
            p.normal_(0.0, 0.5)
    return m


def _ema_loop(m, x):
    """Mega EMA by its recurrence (causal) or as two recurrences, forwards and backwards (non-causal)."""
    ema = m.ema
    p = torch.sigmoid(ema.delta)
    q = 1 - p * torch.sigmoid(ema.alpha)
    b, c = p * ema.beta, ema.gamma / ema.ndim ** 0.5
    B, L, _ = x.shape

    def run(xs, rows):
        h = torch.zeros(B, D, ema.ndim, dtype=x.dtype)
        out = []
        for t in range(L):
            h = b[rows] * xs[:, t, :, None] + q[rows] * h
            out.append((h * c[rows]).sum(-1))
        return torch.stack(out, 1)

    y = run(x, slice(0, D))
    if ema.bidirectional:
        y = y + run(x.flip(1), slice(D, 2 * D)).flip(1)
    return y + ema.omega * x


def _seqboat_loop(m, x):
    """The whole layer per batch row and per active token: keys = active tokens whose active-rank differs by
    0..w (|.| <= w when non-causal), score relu(q.k / c + bias[original offset])^2."""
    s = F.silu(_ema_loop(m, m.norm(x)))
    u, hx = m.hx_proj(s).split([2, D], dim=-1)
    probs = torch.softmax(u / m.temp.exp(), dim=-1)
    g = probs.max(-1).values
    active = probs[..., 1] > probs[..., 0] if m.force_active is None else torch.full(g.shape, m.force_active)
    z, r, v = F.silu(m.mx_proj(s)).split([m.z_dim, m.h_dim, m.h_dim], dim=-1)
    q, k = z * m.gamma[0] + m.beta[0], z * m.gamma[1] + m.beta[1]
    w, M = m.window, m.max_positions
    c = w if m.causal else 2 * w
    h = torch.zeros_like(x)
    for bi in range(x.shape[0]):
        act = [t for t in range(x.shape[1]) if active[bi, t]]
        for ri, i in enumerate(act):
            a = torch.zeros(m.h_dim, dtype=x.dtype)
            for rj, j in enumerate(act):
                if (m.causal and not 0 <= ri - rj <= w) or abs(ri - rj) > w:
                    continue
                off = i - j
                bias = m.rel_pos_bias[min(max(off, 0), M - 1)] if m.causal else \
                    m.rel_pos_bias[min(max(off, -(M - 1)), M - 1) + M - 1]
                a = a + F.relu(q[bi, i] @ k[bi, j] / c + bias) ** 2 * v[bi, j]
            h[bi, i] = m.h_proj(a * r[bi, i]) * g[bi, i]
    return F.silu(hx + h + x), active


def _grads(m, x, dense):
    m.zero_grad()
    xx = x.clone().requires_grad_(True)
    y = m(xx, dense=dense)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), {"x": xx.grad, **{n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}}


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_forced_all_on_equals_dense_form(causal, monkeypatch):
    m = _build(causal=causal, force_active=True)
    x = torch.randn(2, 14, D, dtype=torch.float64)
    calls = []
    local = m._local_attention
    monkeypatch.setattr(m, "_local_attention", lambda *a: calls.append(1) or local(*a))
    y_c, g_c = _grads(m, x, dense=False)
    assert calls, "the compressed (blocked local) path did not run"
    assert float(m.last_activation_rate) == 1.0
    y_d, g_d = _grads(m, x, dense=True)
    torch.testing.assert_close(y_c, y_d, rtol=1e-10, atol=1e-10)
    assert g_c.keys() == g_d.keys() and "rel_pos_bias" in g_c and "gamma" in g_c
    for name in g_c:
        torch.testing.assert_close(g_c[name], g_d[name], rtol=1e-9, atol=1e-10, msg=lambda s, n=name: f"{n}: {s}")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_router_decides_compressed_equals_dense_and_loop(causal):
    m = _build(causal=causal)
    x = torch.randn(3, 16, D, dtype=torch.float64)
    y_c, g_c = _grads(m, x, dense=False)
    rate = float(m.last_activation_rate)
    y_d, g_d = _grads(m, x, dense=True)
    y_ref, active = _seqboat_loop(m, x)
    assert 0.0 < rate < 1.0 and rate == pytest.approx(active.double().mean().item())
    assert (active.sum(1) > m.window + 1).any()  # some row is longer than the window in active tokens
    torch.testing.assert_close(y_c, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y_d, y_ref, rtol=1e-10, atol=1e-10)
    for name in g_c:
        torch.testing.assert_close(g_c[name], g_d[name], rtol=1e-9, atol=1e-10, msg=lambda s, n=name: f"{n}: {s}")


def test_forced_all_on_equals_loop_and_forced_off_skips_the_gau():
    m = _build(force_active=True)
    x = torch.randn(2, 11, D, dtype=torch.float64)
    torch.testing.assert_close(m(x), _seqboat_loop(m, x)[0], rtol=1e-10, atol=1e-10)
    m.force_active = False
    s = F.silu(m.ema(m.norm(x)))
    hx = m.hx_proj(s)[..., 2:]
    torch.testing.assert_close(m(x), F.silu(hx + x), rtol=1e-12, atol=1e-12)
    assert float(m.last_activation_rate) == 0.0


@pytest.mark.parametrize("force", [None, True])
def test_step_matches_forward_past_the_window(force):
    m = _build(force_active=force, window=2)
    x = torch.randn(2, 25, D, dtype=torch.float64)
    streamed, state = stream(m, x, m.init_state(2))
    torch.testing.assert_close(streamed, m(x), rtol=1e-9, atol=1e-9)
    assert state.k.shape[1] == 2 and state.t == 25


def test_activation_rates_collects_every_seqboat():
    torch.manual_seed(0)
    model = torch.nn.Sequential(SeqBoat(D, ndim=2, window=4), torch.nn.GELU(), SeqBoat(D, ndim=2, window=4))
    assert activation_rates(model) == {}
    model(torch.randn(2, 30, D))
    rates = activation_rates(model)
    assert set(rates) == {"0", "2"} and all(0.0 <= r <= 1.0 for r in rates.values())
    assert rates["0"] == pytest.approx(float(model[0].last_activation_rate))


def test_defaults_and_temperature_init():
    m = SeqBoat(64)
    assert (m.ndim, m.window, m.z_dim, m.h_dim) == (16, 128, 32, 128)
    assert float(m.temp.detach().exp()) == pytest.approx(8.0)
    assert float(SeqBoat(64, init_temp_scale=0.5).temp.detach().exp()) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="force_active"):
        SeqBoat(16, force_active="yes")
    with pytest.raises(ValueError, match="window"):
        SeqBoat(16, window=0)
