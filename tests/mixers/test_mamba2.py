"""The mamba2 mixer: official parameter layout and init, forward against a from-scratch float64 reference built from
an official-name state dict, streaming with every Stuffed Mamba option, and the state collapse those options fix.

The registry-wide contract (tests/mixers/test_contract.py) already covers shape, gradients, causality, step ==
forward with the default options, and bf16 autocast.
"""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from mmseq.mixers import create_mixer
from mmseq.mixers.base import stream
from mmseq.mixers.mamba2 import Mamba2Mixer
from tests.kernels._helpers import DEVICE, marked, triton_marks

_ssd = importlib.import_module("mmseq.kernels.ssd")
_conv = importlib.import_module("mmseq.kernels.causal_conv1d")
TRITON = triton_marks(_ssd._ssd_fwd_kernel, _ssd._ssd_bwd_kernel, _conv._causal_conv1d_fwd_kernel,
                      _conv._causal_conv1d_bwd_kernel)

SMALL = {"d_state": 4, "headdim": 4, "expand": 2, "ngroups": 2, "chunk_size": 4}


def _official_state_dict(d_model, d_state, headdim, expand, ngroups, d_conv, seed=0) -> dict:
    """Random tensors under mamba_ssm Mamba2's names and shapes (rmsnorm=True, D_has_hdim=False)."""
    g = torch.Generator().manual_seed(seed)
    E = expand * d_model
    H = E // headdim
    conv_dim = E + 2 * ngroups * d_state
    rnd = lambda *s, scale=1.0: torch.randn(*s, generator=g, dtype=torch.float64) * scale  # noqa: E731
    return {
        "in_proj.weight": rnd(2 * E + 2 * ngroups * d_state + H, d_model, scale=d_model**-0.5),
        "conv1d.weight": rnd(conv_dim, 1, d_conv, scale=0.5),
        "conv1d.bias": rnd(conv_dim, scale=0.1),
        "dt_bias": rnd(H, scale=0.5) - 2.0,
        "A_log": torch.log(torch.rand(H, generator=g, dtype=torch.float64) * 15 + 1),
        "D": rnd(H),
        "norm.weight": 1 + rnd(E, scale=0.1),
        "out_proj.weight": rnd(d_model, E, scale=E**-0.5),
    }


def _reference_forward(sd: dict, x: torch.Tensor, d_state: int, headdim: int, ngroups: int) -> torch.Tensor:
    """Mamba2 written out from its definition: projections, causal conv, the recurrence one position at a time,
    gated group RMSNorm, output projection. float64."""
    Bs, L, _ = x.shape
    E = sd["norm.weight"].shape[0]
    H, P, G, N = E // headdim, headdim, ngroups, d_state
    K = sd["conv1d.weight"].shape[-1]
    zxbcdt = x @ sd["in_proj.weight"].T
    z, xBC, dt = zxbcdt[..., :E], zxbcdt[..., E:2 * E + 2 * G * N], zxbcdt[..., 2 * E + 2 * G * N:]
    conv = F.conv1d(F.pad(xBC.transpose(1, 2), (K - 1, 0)), sd["conv1d.weight"], sd["conv1d.bias"],
                    groups=xBC.shape[-1])
    xBC = F.silu(conv).transpose(1, 2)
    xs = xBC[..., :E].reshape(Bs, L, H, P)
    Bm = xBC[..., E:E + G * N].reshape(Bs, L, G, N)
    Cm = xBC[..., E + G * N:].reshape(Bs, L, G, N)
    A = -torch.exp(sd["A_log"])
    dtp = F.softplus(dt + sd["dt_bias"])
    y = torch.zeros(Bs, L, H, P, dtype=torch.float64)
    for b in range(Bs):
        for h in range(H):
            g = h // (H // G)
            state = torch.zeros(P, N, dtype=torch.float64)
            for t in range(L):
                state = torch.exp(dtp[b, t, h] * A[h]) * state + dtp[b, t, h] * torch.outer(xs[b, t, h], Bm[b, t, g])
                y[b, t, h] = state @ Cm[b, t, g] + sd["D"][h] * xs[b, t, h]
    y = y.reshape(Bs, L, E) * F.silu(z)
    yg = y.reshape(Bs, L, G, E // G)
    yg = yg / torch.sqrt(yg.pow(2).mean(-1, keepdim=True) + 1e-5)
    return (yg.reshape(Bs, L, E) * sd["norm.weight"]) @ sd["out_proj.weight"].T


def test_official_state_dict_loads_and_forward_matches_reference():
    d_model, d_state, headdim, expand, ngroups, d_conv = 8, 3, 4, 2, 2, 4
    sd = _official_state_dict(d_model, d_state, headdim, expand, ngroups, d_conv)
    m = Mamba2Mixer(d_model, d_state=d_state, headdim=headdim, expand=expand, ngroups=ngroups, d_conv=d_conv,
                    chunk_size=4).double()
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {k: tuple(v.shape) for k, v in sd.items()}
    m.load_state_dict(sd, strict=True)
    x = torch.randn(2, 11, d_model, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(m(x), _reference_forward(sd, x, d_state, headdim, ngroups), rtol=1e-10, atol=1e-10)


def test_default_layout_and_init():
    torch.manual_seed(0)
    m = Mamba2Mixer(256)  # E 512, H 8, N 128, G 1
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "in_proj.weight": (2 * 512 + 2 * 128 + 8, 256), "conv1d.weight": (512 + 256, 1, 4),
        "conv1d.bias": (768,), "dt_bias": (8,), "A_log": (8,), "D": (8,), "norm.weight": (512,),
        "out_proj.weight": (256, 512),
    }
    assert m.in_proj.bias is None and m.out_proj.bias is None and m.chunk_size == 256
    A = torch.exp(m.A_log.detach())
    assert ((A >= 1) & (A <= 16)).all() and m.A_log.dtype == torch.float32
    dt = F.softplus(m.dt_bias.detach())
    assert ((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 0.1 * (1 + 1e-5))).all()
    assert torch.equal(m.D.detach(), torch.ones(8)) and torch.equal(m.norm.weight.detach(), torch.ones(512))
    assert all(getattr(p, "_no_weight_decay", False) for p in (m.A_log, m.D, m.dt_bias))


@pytest.mark.parametrize("opts", [{}, {"decay_scale": 3.0}, {"state_norm": 0.004}, {"state_window": 3},
                                  {"state_window": 6, "decay_scale": 2.0}],
                         ids=["default", "decay_scale", "state_norm", "window3", "window6-decay"])
def test_step_matches_forward(opts):
    torch.manual_seed(0)
    m = create_mixer("mamba2", 16, **SMALL, **opts).double()
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    full = m(x)
    streamed, state = stream(m, x, m.init_state(2, dtype=torch.float64))
    torch.testing.assert_close(streamed, full, rtol=1e-8, atol=1e-8)
    if "state_norm" in opts:  # the cap is active here (the plain state grows past it) and respected
        norms = torch.linalg.vector_norm(state.ssm, dim=(-2, -1))
        assert norms.max() <= 0.004 * (1 + 1e-9) and norms.max() > 0.004 * (1 - 1e-6)


def test_options_change_the_output():
    """Each option really reaches the computation (same weights, different outputs)."""
    torch.manual_seed(0)
    x = torch.randn(1, 13, 16, dtype=torch.float64)
    outs = {}
    for name, opts in {"base": {}, "decay": {"decay_scale": 4.0}, "norm": {"state_norm": 0.004},
                       "window": {"state_window": 3}}.items():
        torch.manual_seed(1)
        outs[name] = create_mixer("mamba2", 16, **SMALL, **opts).double()(x)
    for name in ("decay", "norm", "window"):
        assert (outs[name] - outs["base"]).abs().max() > 1e-4, name


def test_window_longer_than_sequence_is_no_window():
    torch.manual_seed(0)
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    torch.manual_seed(1)
    base = create_mixer("mamba2", 16, **SMALL).double()(x)
    torch.manual_seed(1)
    windowed = create_mixer("mamba2", 16, **SMALL, state_window=9).double()(x)
    torch.testing.assert_close(windowed, base, rtol=1e-12, atol=1e-12)


@marked(TRITON)
def test_triton_impl_matches_ref():
    """impl="triton" (the interpreter without a GPU) against impl="ref": output and every gradient."""
    x = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(DEVICE)
    res = {}
    for impl in ("triton", "ref"):
        torch.manual_seed(0)
        m = create_mixer("mamba2", 8, **SMALL, impl=impl).double().to(DEVICE)
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.square().sum().backward()
        res[impl] = {"y": y, "dx": xi.grad, **{n: p.grad for n, p in m.named_parameters()}}
    for name, want in res["ref"].items():
        torch.testing.assert_close(res["triton"][name], want, rtol=1e-9, atol=1e-9, msg=name)


@marked(TRITON)
def test_triton_impl_with_window_runs_the_torch_scan():
    """The Triton scan takes no window: the mixer runs the torch one for it (and the Triton conv)."""
    x = torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(DEVICE)
    outs = []
    for impl in ("triton", "ref"):
        torch.manual_seed(0)
        with torch.no_grad():
            outs.append(create_mixer("mamba2", 16, **SMALL, state_window=3, impl=impl).double().to(DEVICE)(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kw, msg", [
    ({"headdim": 5}, "multiple of headdim"),
    ({"ngroups": 3}, "ngroups must divide"),
    ({"decay_scale": 0.0}, "decay_scale must be > 0"),
    ({"state_norm": -1.0}, "state_norm must be None or > 0"),
    ({"state_window": 0}, "state_window must be None or an int >= 1"),
    ({"state_norm": 1.0, "state_window": 4}, "at most one"),
    ({"causal": False}, "causal only"),
    ({"impl": "cuda"}, "impl must be one of"),
])
def test_bad_hparams(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Mamba2Mixer(16, **{**SMALL, **kw})


# ----------------------------------------------------------------------------------------------------------
# Stuffed Mamba: a model that never forgets lets its state grow with the length; the mitigations bound it
# ----------------------------------------------------------------------------------------------------------

TRAIN_LEN = 16


def _never_forgets(**opts) -> Mamba2Mixer:
    """A small mamba2 whose decay is ~1 per step (A = -1e-6, dt' ~ 0.1): it was never made to forget."""
    torch.manual_seed(0)
    m = Mamba2Mixer(8, d_state=4, headdim=4, expand=2, chunk_size=8, **opts).double()
    with torch.no_grad():
        m.A_log.fill_(math.log(1e-6))
        m.dt_bias.fill_(math.log(math.expm1(0.1)))  # softplus(dt_bias) = 0.1
    return m


def _state_norms(m: Mamba2Mixer, steps: int) -> torch.Tensor:
    """Largest per-head state norm after each step, for a steady input (one token repeated, plus noise)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 8, generator=g, dtype=torch.float64) + 0.1 * torch.randn(1, steps, 8, generator=g,
                                                                                  dtype=torch.float64)
    state, norms = m.init_state(1, dtype=torch.float64), []
    with torch.no_grad():
        for t in range(steps):
            _, state = m.step(x[:, t], state)
            norms.append(torch.linalg.vector_norm(state.ssm, dim=(-2, -1)).max())
    return torch.stack(norms)


def test_state_collapse_and_its_mitigations():
    n = 8 * TRAIN_LEN
    base = _state_norms(_never_forgets(), n)
    growth = (base[-1] / base[TRAIN_LEN - 1]).item()
    assert growth > 6, f"the never-forgetting state should grow ~linearly (8x length), grew {growth:.2f}x"

    cap = 0.5 * base[TRAIN_LEN - 1].item()
    normed = _state_norms(_never_forgets(state_norm=cap), n)
    assert normed.max().item() <= cap * (1 + 1e-9)

    windowed = _state_norms(_never_forgets(state_window=TRAIN_LEN), n)
    assert (windowed[-1] / windowed[TRAIN_LEN - 1]).item() < 1.5
    assert windowed.max().item() < 1.5 * windowed[TRAIN_LEN - 1].item()

    # forget more: exp(dt' A s) = exp(-0.1 * 1e-6 * 2e6) = exp(-0.2) per step, a memory of ~5 positions
    decayed = _state_norms(_never_forgets(decay_scale=2e6), n)
    assert (decayed[-1] / decayed[TRAIN_LEN - 1]).item() < 1.5
    print(f"state norm at {n} / at {TRAIN_LEN} positions: plain {growth:.2f}x, window "
          f"{(windowed[-1] / windowed[TRAIN_LEN - 1]).item():.2f}x, decay_scale "
          f"{(decayed[-1] / decayed[TRAIN_LEN - 1]).item():.2f}x; state_norm max {normed.max().item():.3g} "
          f"<= {cap:.3g}")


def test_state_collapse_forward_output_grows_and_window_bounds_it():
    """The same through ``forward``: late outputs of the plain model drift with the length, the windowed ones
    stay at the level reached within the training length."""
    g = torch.Generator().manual_seed(0)
    n = 8 * TRAIN_LEN
    x = torch.randn(1, 1, 8, generator=g, dtype=torch.float64).expand(1, n, 8)
    with torch.no_grad():
        plain = _never_forgets()(x)
        windowed = _never_forgets(state_window=TRAIN_LEN)(x)
    drift = lambda y: (y[0, -1] - y[0, 2 * TRAIN_LEN - 1]).norm().item()  # noqa: E731
    assert drift(windowed) < 1e-8 < 1e-3 < drift(plain)
