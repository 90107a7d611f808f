"""The Mamba mixer against a plain per-token recurrence, official state-dict layout, init, input checks.

The registry-wide contract (shapes, gradients, causality, step == forward, bf16) is in test_contract.py.
"""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from mmseq.kernels._dispatch import kernel_runnable

from mmseq.mixers import create_mixer
from mmseq.mixers.mamba import MambaMixer, MambaState

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _triton_ready() -> bool:
    ss = importlib.import_module("mmseq.kernels.selective_scan")
    cc = importlib.import_module("mmseq.kernels.causal_conv1d")
    return all(kernel_runnable(k, DEVICE) for k in (ss._selective_scan_fwd_kernel, cc._causal_conv1d_fwd_kernel))


def official_shapes(d_model, d_state, d_conv, expand, dt_rank):
    """Parameter names and shapes of ``mamba_ssm.modules.mamba_simple.Mamba`` (bias=False, conv_bias=True)."""
    E = expand * d_model
    return {
        "in_proj.weight": (2 * E, d_model),
        "conv1d.weight": (E, 1, d_conv),
        "conv1d.bias": (E,),
        "x_proj.weight": (dt_rank + 2 * d_state, E),
        "dt_proj.weight": (E, dt_rank),
        "dt_proj.bias": (E,),
        "A_log": (E, d_state),
        "D": (E,),
        "out_proj.weight": (d_model, E),
    }


def mamba_loop(p: dict, u: torch.Tensor) -> torch.Tensor:
    """The Mamba block written out token by token from the named parameters ``p`` (no mmseq.kernels).

    u: [B, L, D] -> [B, L, D]. Every step: causal depthwise conv over the last K inputs, SiLU, the data-dependent
    projections, the zero-order-hold update of h [B, E, N], readout, skip and gate.
    """
    W_in, W_conv, b_conv = p["in_proj.weight"], p["conv1d.weight"][:, 0, :], p["conv1d.bias"]
    W_x, W_dt, b_dt = p["x_proj.weight"], p["dt_proj.weight"], p["dt_proj.bias"]
    A, Dskip, W_out = -torch.exp(p["A_log"]), p["D"], p["out_proj.weight"]
    E, N = A.shape
    R, K = W_dt.shape[1], W_conv.shape[1]
    Bsz, L, _ = u.shape
    xs, zs = [], []
    for t in range(L):
        xz = u[:, t] @ W_in.T
        xs.append(xz[:, :E])
        zs.append(xz[:, E:])
    h = u.new_zeros(Bsz, E, N)
    outs = []
    for t in range(L):
        c = b_conv.expand(Bsz, E).clone()
        for k in range(K):  # tap k sees the input K-1-k steps back (zero before the start)
            s = t - (K - 1) + k
            if s >= 0:
                c = c + W_conv[:, k] * xs[s]
        xc = F.silu(c)
        proj = xc @ W_x.T
        dt_low, Bt, Ct = proj[:, :R], proj[:, R : R + N], proj[:, R + N :]
        delta = F.softplus(dt_low @ W_dt.T + b_dt)  # [B, E]
        h = torch.exp(delta[:, :, None] * A) * h + (delta * xc)[:, :, None] * Bt[:, None, :]
        y = (h * Ct[:, None, :]).sum(-1) + Dskip * xc
        y = y * F.silu(zs[t])
        outs.append(y @ W_out.T)
    return torch.stack(outs, dim=1)


def _official_state_dict(d_model, d_state, d_conv, expand, dt_rank, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in official_shapes(d_model, d_state, d_conv, expand, dt_rank).items():
        t = torch.randn(*shape, generator=g, dtype=torch.float64)
        if name == "A_log":
            t = torch.log(torch.rand(*shape, generator=g, dtype=torch.float64) * 8 + 0.5)
        elif name.endswith("weight"):
            t = t / math.sqrt(shape[-1])  # fan-in scaling keeps activations O(1)
        sd[name] = t
    return sd


@pytest.mark.parametrize("impl", ["ref", "torch"])
@pytest.mark.parametrize("L", [1, 3, 37, 150], ids=lambda v: f"L{v}")
def test_forward_matches_direct_loop(impl, L):
    torch.manual_seed(0)
    m = MambaMixer(20, d_state=5, d_conv=4, expand=2, impl=impl).double()
    u = torch.randn(2, L, 20, dtype=torch.float64)
    want = mamba_loop(dict(m.named_parameters()), u)
    torch.testing.assert_close(m(u), want, rtol=1e-10, atol=1e-10)


def test_official_state_dict_loads_strict_and_matches_loop():
    d_model, d_state, d_conv, expand = 24, 6, 4, 2
    dt_rank = math.ceil(d_model / 16)
    m = MambaMixer(d_model, d_state=d_state, d_conv=d_conv, expand=expand)
    shapes = official_shapes(d_model, d_state, d_conv, expand, dt_rank)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == shapes
    sd = _official_state_dict(d_model, d_state, d_conv, expand, dt_rank)
    m = m.double()
    result = m.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    u = torch.randn(3, 19, d_model, dtype=torch.float64)
    torch.testing.assert_close(m(u), mamba_loop(sd, u), rtol=1e-10, atol=1e-10)
    # and streaming the same weights token by token
    state = m.init_state(3)
    ys = []
    for t in range(u.shape[1]):
        y, state = m.step(u[:, t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), mamba_loop(sd, u), rtol=1e-10, atol=1e-10)


def test_step_leaves_the_given_state_alone():
    torch.manual_seed(0)
    m = MambaMixer(16, d_state=4).double()
    u = torch.randn(2, 9, 16, dtype=torch.float64)
    state = m.init_state(2)
    for t in range(5):
        _, state = m.step(u[:, t], state)
    saved = MambaState(conv=state.conv.clone(), ssm=state.ssm.clone())
    y1, s1 = m.step(u[:, 5], state)
    y2, s2 = m.step(u[:, 5], state)  # stepping again from the same state gives the same result
    assert torch.equal(state.conv, saved.conv) and torch.equal(state.ssm, saved.ssm)
    assert torch.equal(y1, y2) and torch.equal(s1.conv, s2.conv) and torch.equal(s1.ssm, s2.ssm)
    assert s1.conv.shape == (2, m.d_inner, m.d_conv - 1) and s1.ssm.shape == (2, m.d_inner, m.d_state)


@pytest.mark.parametrize("dt_min,dt_max", [(0.001, 0.1), (0.01, 0.05)])
def test_init(dt_min, dt_max):
    torch.manual_seed(0)
    m = MambaMixer(64, dt_min=dt_min, dt_max=dt_max)
    dt = F.softplus(m.dt_proj.bias.detach())
    assert dt.min() >= dt_min * (1 - 1e-5) and dt.max() <= dt_max * (1 + 1e-5)
    # log-uniform: the draws spread over the range rather than sitting at one end
    assert dt.log().std() > 0.2 * (math.log(dt_max) - math.log(dt_min)) / math.sqrt(12)
    assert m.dt_rank == 4 and m.d_inner == 128
    bound = m.dt_rank**-0.5
    assert m.dt_proj.weight.abs().max() <= bound
    torch.testing.assert_close(m.A_log.detach(), torch.log(torch.arange(1.0, 17.0)).repeat(128, 1))
    assert torch.equal(m.D.detach(), torch.ones(128))
    assert m.A_log.dtype == torch.float32 and m.D.dtype == torch.float32
    assert m.A_log._no_weight_decay and m.D._no_weight_decay


def test_constant_dt_init_and_explicit_rank():
    m = MambaMixer(16, dt_rank=3, dt_init="constant", dt_scale=2.0)
    assert m.x_proj.weight.shape == (3 + 2 * 16, 32)
    torch.testing.assert_close(m.dt_proj.weight.detach(), torch.full((32, 3), 2.0 * 3**-0.5))


def test_bad_input_shapes_name_x():
    m = MambaMixer(16, d_state=4)
    for bad in (torch.randn(2, 16), torch.randn(2, 5, 12), torch.randn(1, 2, 5, 16)):
        with pytest.raises(ValueError, match=r"^x must be \[B, L, D\]"):
            m(bad)
    state = m.init_state(2)
    for bad in (torch.randn(2, 12), torch.randn(2, 1, 16)):
        with pytest.raises(ValueError, match=r"^x_t must be \[B, D\]"):
            m.step(bad, state)


def test_bad_arguments():
    with pytest.raises(ValueError, match="causal only"):
        create_mixer("mamba", 16, causal=False)
    with pytest.raises(ValueError, match="dt_rank"):
        MambaMixer(16, dt_rank=0)
    with pytest.raises(ValueError, match="dt_init"):
        MambaMixer(16, dt_init="uniform")
    with pytest.raises(ValueError, match="impl"):
        MambaMixer(16, impl="cuda")


def test_bf16_autocast_keeps_fp32_parameters_and_grads():
    torch.manual_seed(0)
    m = MambaMixer(16, d_state=4)
    u = torch.randn(2, 11, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(u)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
    want = m(u)
    assert (y.float() - want).abs().max() < 5e-2 * want.abs().max()


@pytest.mark.triton
@pytest.mark.skipif(not _triton_ready(), reason="Triton cannot run here")
def test_triton_path_matches_direct_loop():
    torch.manual_seed(0)
    m = MambaMixer(8, d_state=4, impl="triton").to(DEVICE, torch.float64)
    u = torch.randn(2, 7, 8, dtype=torch.float64, device=DEVICE, requires_grad=True)
    y = m(u)
    p = dict(m.named_parameters())
    torch.testing.assert_close(y, mamba_loop(p, u), rtol=1e-10, atol=1e-10)
    y.square().sum().backward()
    got = {n: q.grad.clone() for n, q in p.items()} | {"u": u.grad.clone()}
    m.zero_grad()
    u.grad = None
    mamba_loop(p, u).square().sum().backward()
    for n, q in p.items():
        torch.testing.assert_close(got[n], q.grad, rtol=1e-8, atol=1e-10, msg=n)
    torch.testing.assert_close(got["u"], u.grad, rtol=1e-8, atol=1e-10)
