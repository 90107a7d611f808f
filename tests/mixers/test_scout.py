"""SCOUT: checkpoint attention against a loop written from the definition; segment 1 is full causal attention;
the streaming cache holds floor(L / W) checkpoints."""

import math

import pytest
import torch

from mmseq.mixers import create_mixer
from mmseq.mixers.base import stream
from tests.mixers._attention_ref import merge, project, rotate

TOL = 1e-7  # RoPE frequencies are float32 numbers in the mixer, exact float64 in the reference


def _build(**kw):
    torch.manual_seed(0)
    hp = dict(local="swa", local_hparams={"window": 3, "n_heads": 2}, n_heads=2, mlp_ratio=0)
    hp.update(kw)
    return create_mixer("scout", 16, **hp).double()


def _attention_input(m, x):
    """The hidden state SCOUT attention reads (mlp_ratio=0): h = x + local(norm1(x)), normed by norm3."""
    h = x + m.local(m.norm1(x))
    return h, m.norm3(h)


def _qkv(m, a):
    q, k, v = project(m.attn, a, rotary=False)
    return rotate(q, base=1e6), rotate(k, base=1e6), v


def _scout_loop(q, k, v, segment):
    """Per query t: keys = [own key t] + [checkpoints p = W-1, 2W-1, ... with p < t]; one softmax."""
    B, H, L, P = q.shape
    out = torch.zeros_like(v)
    for t in range(L):
        keys = [t] + [p for p in range(segment - 1, L, segment) if p < t]
        s = torch.einsum("bhp,bhjp->bhj", q[:, :, t], k[:, :, keys]) / math.sqrt(P)
        out[:, :, t] = torch.einsum("bhj,bhjp->bhp", s.softmax(-1), v[:, :, keys])
    return out


@pytest.mark.parametrize("segment,L", [(1, 17), (3, 17), (5, 17), (10, 4), (4, 1)])
def test_scout_attention_equals_definition_loop(segment, L):
    m = _build(segment=segment)
    x = torch.randn(2, L, 16, dtype=torch.float64)
    h, a = _attention_input(m, x)
    q, k, v = _qkv(m, a)
    expected = h + merge(m.attn, _scout_loop(q, k, v, segment)) - x
    torch.testing.assert_close(m(x), expected, rtol=TOL, atol=TOL)


def test_segment_one_is_full_causal_attention_over_the_local_output():
    m = _build(segment=1)
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    h, a = _attention_input(m, x)
    q, k, v = _qkv(m, a)
    L, P = x.shape[1], q.shape[-1]
    att = torch.zeros_like(v)
    for t in range(L):  # plain causal softmax over j <= t
        p = (torch.einsum("bhp,bhjp->bhj", q[:, :, t], k[:, :, : t + 1]) / math.sqrt(P)).softmax(-1)
        att[:, :, t] = torch.einsum("bhj,bhjp->bhp", p, v[:, :, : t + 1])
    torch.testing.assert_close(m(x), h + merge(m.attn, att) - x, rtol=TOL, atol=TOL)


def test_mlps_wrap_the_attention_as_pre_norm_residuals():
    m = _build(segment=4, mlp_ratio=2.0)
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    h = x + m.local(m.norm1(x))
    h = h + m.mlp1(m.norm2(h))
    h = h + m.attn(m.norm3(h))
    h = h + m.mlp2(m.norm4(h))
    torch.testing.assert_close(m(x), h - x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("local", ["mamba", "swa"])
def test_stream_keeps_only_checkpoints(local):
    hp = {"d_state": 4, "expand": 1} if local == "mamba" else {"window": 3, "n_heads": 2}
    m = _build(local=local, local_hparams=hp, segment=4, mlp_ratio=1.0)
    L = 23
    x = torch.randn(2, L, 16, dtype=torch.float64)
    state = m.init_state(2)
    streamed, state = stream(m, x, state)
    assert state.k.shape[2] == state.v.shape[2] == L // 4 and state.t == L
    torch.testing.assert_close(streamed, m(x), rtol=1e-9, atol=1e-9)
    # the cached keys are those of positions 3, 7, 11, ... of the full forward
    h = x + m.local(m.norm1(x))
    h = h + m.mlp1(m.norm2(h))
    _, k, _ = m.attn.qkv(m.norm3(h))
    torch.testing.assert_close(state.k, k[:, :, 3::4], rtol=1e-9, atol=1e-9)


def test_scout_rejects_bad_config():
    with pytest.raises(ValueError, match="segment"):
        create_mixer("scout", 16, segment=0)
    with pytest.raises(ValueError, match="local"):
        create_mixer("scout", 16, local="no_such_mixer")
    with pytest.raises(ValueError, match="causal"):
        create_mixer("scout", 16, causal=False)


def test_forward_scores_only_the_strided_checkpoints(monkeypatch):
    """The forward builds keys/values for floor(L / W) checkpoints, so the scores are [B, H, L, L / W]."""
    m = _build(segment=4)
    seen = []
    attend = m.attn.attend
    monkeypatch.setattr(m.attn, "attend", lambda q, k, v, kc, vc, allowed: seen.append(
        (kc.shape[2], tuple(allowed.shape))) or attend(q, k, v, kc, vc, allowed))
    m(torch.randn(1, 30, 16, dtype=torch.float64))
    assert seen == [(7, (30, 7))]
