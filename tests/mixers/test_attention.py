"""Attention mixer against attention written out in float64 (tests/mixers/_attention_ref.py): self attention
with RoPE, and cross attention to a context (every query sees the whole context, no RoPE)."""

import pytest
import torch

from mmseq.mixers import create_mixer
from tests.mixers._attention_ref import merge, project, softmax_attention

# The mixer's RoPE frequencies are float32 numbers (exact float64 here): outputs about 1e-9 apart.
TOL = 1e-7


def _mixer(causal=True, **kw):
    torch.manual_seed(0)
    return create_mixer("attention", 16, causal=causal, **{"n_heads": 2, **kw}).double()


@pytest.mark.parametrize("rotary", [True, False], ids=["rope", "no-rope"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_self_attention_equals_softmax_written_out(causal, rotary):
    m = _mixer(causal, rotary=rotary, bias=True)
    L = 13
    x = torch.randn(2, L, 16, dtype=torch.float64)
    q, k, v = project(m, x, rotary=rotary)
    allowed = torch.ones(L, L, dtype=torch.bool)
    want = merge(m, softmax_attention(q, k, v, allowed.tril() if causal else allowed))
    torch.testing.assert_close(m(x), want, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_cross_attention_sees_the_whole_context_without_rope(causal):
    """q from x, k and v from the context (a different length); no mask and no rotary, causal or not."""
    m = _mixer(causal, bias=True)
    L, S = 5, 9
    x = torch.randn(2, L, 16, dtype=torch.float64)
    ctx = torch.randn(2, S, 16, dtype=torch.float64)
    q, k, v = project(m, x, context=ctx, rotary=False)
    want = merge(m, softmax_attention(q, k, v, torch.ones(L, S, dtype=torch.bool)))
    torch.testing.assert_close(m(x, context=ctx), want, rtol=1e-10, atol=1e-10)
