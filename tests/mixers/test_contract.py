"""The mixer contract, checked for every registered mixer (a new mixer is tested by registering it).

Shape, gradients reaching every parameter, causality, step() == forward() token by token, bf16 autocast.
"""

import pytest
import torch

from mmseq.mixers import MIXERS, create_mixer, list_mixers
from mmseq.mixers.base import stream

D, L, B = 16, 13, 2


def _build(name: str, causal: bool = True):
    torch.manual_seed(0)
    cls = MIXERS.get(name)
    hparams = dict(getattr(cls, "test_hparams", {}))
    return create_mixer(name, D, causal=causal, **hparams).double()


@pytest.fixture(params=list_mixers())
def name(request):
    return request.param


def test_forward_shape_and_finite(name):
    m = _build(name)
    x = torch.randn(B, L, D, dtype=torch.float64)
    y = m(x)
    assert y.shape == (B, L, D) and torch.isfinite(y).all()


def test_gradient_reaches_every_parameter(name):
    m = _build(name)
    x = torch.randn(B, L, D, dtype=torch.float64, requires_grad=True)
    m(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    dead = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not dead, f"no gradient reaches: {dead}"


def test_causal_output_ignores_the_future(name):
    m = _build(name, causal=True)
    x = torch.randn(B, L, D, dtype=torch.float64)
    t = L // 2
    x2 = x.clone()
    x2[:, t:] = torch.randn_like(x2[:, t:])
    torch.testing.assert_close(m(x)[:, :t], m(x2)[:, :t], rtol=1e-10, atol=1e-10)


def test_step_matches_forward(name):
    m = _build(name, causal=True)
    x = torch.randn(B, L, D, dtype=torch.float64)
    full = m(x)
    state = m.init_state(B, dtype=torch.float64)
    streamed, state = stream(m, x, state)
    torch.testing.assert_close(streamed, full, rtol=1e-8, atol=1e-8)


def test_bf16_autocast_runs(name):
    torch.manual_seed(0)
    cls = MIXERS.get(name)
    m = create_mixer(name, D, causal=True, **dict(getattr(cls, "test_hparams", {})))
    x = torch.randn(B, L, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.shape == (B, L, D) and torch.isfinite(y.float()).all()
    y.float().sum().backward()


def test_noncausal_build_when_supported(name):
    cls = MIXERS.get(name)
    if not getattr(cls, "supports_noncausal", True):
        pytest.skip(f"{name} is causal only")
    m = _build(name, causal=False)
    assert m(torch.randn(B, L, D, dtype=torch.float64)).shape == (B, L, D)
