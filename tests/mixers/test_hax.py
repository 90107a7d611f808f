"""HAX: LSH + key-selection attention against a per-query loop written from the definition; with every key
selected it is full causal attention; streaming reproduces forward."""

import math

import pytest
import torch

from mmseq.mixers import create_mixer
from mmseq.mixers.base import stream
from mmseq.mixers.hax import bucketed_attention
from tests.mixers._attention_ref import merge, project, rotate

D = 16


def _build(**kw):
    torch.manual_seed(0)
    hp = dict(local="swa", local_hparams={"window": 3, "n_heads": 2}, n_heads=2, n_buckets=4, top_k=3, block=6)
    hp.update(kw)
    return create_mixer("hax", D, **hp).double()


def _attention_input(m, x):
    h = x + m.local(m.norm1(x))
    return h, m.norm2(h)


def _bucket(vec, planes):
    """Sign of the projection on each hyperplane (columns of planes [P, bits]) read as a binary number."""
    return sum(int(float(vec @ planes[:, b]) > 0) << b for b in range(planes.shape[1]))


def _hax_loop(m, a, rotary=False):
    """Per (batch, head, query t): keys = {t} | {j <= t in t's bucket in some round} | {top_k keys j <= t by
    score}; one softmax of q . k / sqrt(P) over that set."""
    q, k, v = project(m.attn, a, rotary=False)
    qr, kr = (rotate(q), rotate(k)) if rotary else (q, k)
    sp = m.attn.score_proj
    s = (a @ sp.weight.T + sp.bias).permute(0, 2, 1)  # [B, H, L]
    planes = m.attn.planes
    B, H, L, P = q.shape
    out = torch.zeros_like(v)
    for b in range(B):
        for h in range(H):
            kcode = [[_bucket(k[b, h, j], planes[r, h]) for j in range(L)] for r in range(planes.shape[0])]
            for t in range(L):
                qcode = [_bucket(q[b, h, t], planes[r, h]) for r in range(planes.shape[0])]
                keys = {t}
                keys |= {j for j in range(t + 1) for r in range(len(qcode)) if kcode[r][j] == qcode[r]}
                ranked = sorted(range(t + 1), key=lambda j: -float(s[b, h, j]))
                keys |= set(ranked if m.attn.select_all else ranked[: m.attn.top_k])
                keys = sorted(keys)
                w = (torch.stack([qr[b, h, t] @ kr[b, h, j] for j in keys]) / math.sqrt(P)).softmax(0)
                out[b, h, t] = sum(wi * v[b, h, j] for wi, j in zip(w, keys))
    return merge(m.attn, out)


def _full_causal_loop(m, a):
    q, k, v = project(m.attn, a, rotary=False)
    out = torch.zeros_like(v)
    for t in range(q.shape[2]):
        p = (torch.einsum("bhp,bhjp->bhj", q[:, :, t], k[:, :, : t + 1]) / math.sqrt(q.shape[-1])).softmax(-1)
        out[:, :, t] = torch.einsum("bhj,bhjp->bhp", p, v[:, :, : t + 1])
    return merge(m.attn, out)


@pytest.mark.parametrize("kw", [{"select_all": True}, {"top_k": 40}, {"n_buckets": 1, "top_k": 2}],
                         ids=["select_all", "top_k>=L", "one_bucket"])
def test_every_key_selected_is_full_causal_attention(kw):
    m = _build(**kw)
    x = torch.randn(2, 15, D, dtype=torch.float64)
    h, a = _attention_input(m, x)
    torch.testing.assert_close(m(x), h + _full_causal_loop(m, a) - x, rtol=1e-10, atol=1e-10)


def test_keys_tied_with_the_kth_score_are_all_selected():
    """Constant scores tie every key: all are taken (full attention), in forward and in step alike."""
    m = _build(top_k=2)
    with torch.no_grad():
        m.attn.score_proj.weight.zero_()
        m.attn.score_proj.bias.fill_(0.3)
    x = torch.randn(2, 12, D, dtype=torch.float64)
    h, a = _attention_input(m, x)
    torch.testing.assert_close(m(x), h + _full_causal_loop(m, a) - x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(stream(m, x, m.init_state(2))[0], m(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kw", [{}, {"n_hashes": 2, "n_buckets": 8, "top_k": 2}, {"rotary": True, "top_k": 1}],
                         ids=["default", "two_rounds", "rotary"])
def test_hax_equals_definition_loop(kw):
    m = _build(**kw)
    x = torch.randn(2, 14, D, dtype=torch.float64)
    h, a = _attention_input(m, x)
    with torch.no_grad():
        expected = h + _hax_loop(m, a, rotary=kw.get("rotary", False)) - x
    tol = 1e-7 if kw.get("rotary") else 1e-10  # RoPE frequencies are float32 numbers in the mixer
    torch.testing.assert_close(m(x), expected, rtol=tol, atol=tol)


def test_hax_is_sparse_and_differs_from_full_attention():
    """The default pattern leaves keys out, so it must not coincide with full attention (the loop test above
    would otherwise not tell the two apart)."""
    m = _build()
    x = torch.randn(2, 14, D, dtype=torch.float64)
    h, a = _attention_input(m, x)
    assert (m(x) - (h + _full_causal_loop(m, a) - x)).abs().max() > 1e-3


def test_score_learns_through_selection_only():
    m = _build()
    x = torch.randn(2, 14, D, dtype=torch.float64)
    y = m(x)
    y.square().sum().backward()
    assert m.attn.score_proj.weight.grad.abs().sum() > 0
    assert "attn.planes" in m.state_dict() and "attn.planes" not in dict(m.named_parameters())
    with torch.no_grad():  # doubling every score keeps the ranking: the straight-through term adds nothing
        m.attn.score_proj.weight.mul_(2.0)
        m.attn.score_proj.bias.mul_(2.0)
        torch.testing.assert_close(m(x), y.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", [{}, {"rotary": True, "n_hashes": 2}], ids=["default", "rotary_two_rounds"])
def test_step_matches_forward_across_blocks(kw):
    m = _build(local="mamba", local_hparams={"d_state": 4, "expand": 1}, **kw)
    L = 20
    x = torch.randn(2, L, D, dtype=torch.float64)
    streamed, state = stream(m, x, m.init_state(2))
    torch.testing.assert_close(streamed, m(x), rtol=1e-9, atol=1e-9)
    assert state.k.shape[2] == L and state.codes.shape == (kw.get("n_hashes", 1), 2, 2, L)


def _attn_and_grads(m, a, impl):
    m.zero_grad()
    y = m.attn(a, impl=impl)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), {n: p.grad.clone() for n, p in m.attn.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kw", [{}, {"n_hashes": 3, "n_buckets": 8, "top_k": 1}, {"rotary": True, "n_buckets": 2},
                                {"top_k": 0, "n_hashes": 2}],
                         ids=["default", "three_rounds", "rotary_two_buckets", "no_selection"])
def test_bucketed_path_equals_masked_path(kw):
    """Several blocks of queries (L = 31, block = 6), several buckets per block: outputs and every gradient."""
    m = _build(**kw)
    x = torch.randn(2, 31, D, dtype=torch.float64)
    a = _attention_input(m, x)[1].detach()
    q, k, v, qc, kc, s = m.attn.project(a)
    assert bucketed_attention(q, k, v, qc, kc, s, top_k=m.attn.top_k, block=6) is not None  # no tie: it ran
    y_b, g_b = _attn_and_grads(m, a, "bucketed")
    y_m, g_m = _attn_and_grads(m, a, "mask")
    torch.testing.assert_close(y_b, y_m, rtol=1e-12, atol=1e-12)
    assert g_b.keys() == g_m.keys()
    assert bool(g_b["score_proj.weight"].abs().sum() > 0) == (m.attn.top_k > 0)  # scores learn only if selecting
    for name in g_b:
        torch.testing.assert_close(g_b[name], g_m[name], rtol=1e-10, atol=1e-12, msg=lambda e, n=name: f"{n}: {e}")


def test_bucketed_path_hands_ties_to_the_masked_path():
    m = _build(top_k=2)
    with torch.no_grad():
        m.attn.score_proj.weight.zero_()
    a = _attention_input(m, torch.randn(1, 20, D, dtype=torch.float64))[1]
    q, k, v, qc, kc, s = m.attn.project(a)
    assert bucketed_attention(q, k, v, qc, kc, s, top_k=2, block=6) is None
    torch.testing.assert_close(m.attn(a, impl="bucketed"), m.attn(a, impl="mask"), rtol=0, atol=0)


def test_hax_rejects_bad_config():
    with pytest.raises(ValueError, match="n_buckets"):
        create_mixer("hax", D, n_buckets=3)
    with pytest.raises(ValueError, match="top_k"):
        create_mixer("hax", D, top_k=-1)
    with pytest.raises(ValueError, match="causal"):
        create_mixer("hax", D, causal=False)
    with pytest.raises(ValueError, match="impl"):
        create_mixer("hax", D, impl="sparse")
