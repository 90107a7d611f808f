"""Chunked attention mixer: equals attention computed chunk by chunk; streaming resets at chunk boundaries."""

import pytest
import torch

from mmseq.mixers import create_mixer
from tests.mixers._attention_ref import merge, project, softmax_attention


def _per_chunk(m, x, chunk, causal):
    """Projections from the mixer's weights, RoPE written out, a separate softmax inside each chunk."""
    q, k, v = project(m, x)
    outs = []
    for s in range(0, x.shape[1], chunk):
        qc, kc, vc = q[:, :, s:s + chunk], k[:, :, s:s + chunk], v[:, :, s:s + chunk]
        n = qc.shape[2]
        allowed = torch.ones(n, n, dtype=torch.bool)
        outs.append(softmax_attention(qc, kc, vc, allowed.tril() if causal else allowed))
    return merge(m, torch.cat(outs, dim=2))


# The mixer's RoPE frequencies are float32 numbers (exact float64 here): outputs about 1e-9 apart.
TOL = 1e-7


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
@pytest.mark.parametrize("chunk", [1, 4, 5, 50])
def test_chunked_equals_per_chunk_attention(causal, chunk):
    torch.manual_seed(0)
    m = create_mixer("chunked", 16, causal=causal, chunk=chunk, n_heads=2).double()
    x = torch.randn(2, 22, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), _per_chunk(m, x, chunk, causal), rtol=TOL, atol=TOL)


def test_chunked_outputs_ignore_other_chunks():
    torch.manual_seed(0)
    m = create_mixer("chunked", 16, causal=False, chunk=4, n_heads=2).double()
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 4:8] = torch.randn(1, 4, 16, dtype=torch.float64)
    y, y2 = m(x), m(x2)
    torch.testing.assert_close(y[:, :4], y2[:, :4])
    torch.testing.assert_close(y[:, 8:], y2[:, 8:])
    assert not torch.allclose(y[:, 4:8], y2[:, 4:8])


def test_chunked_stream_holds_current_chunk_only():
    torch.manual_seed(0)
    m = create_mixer("chunked", 16, chunk=4, n_heads=2).double()
    x = torch.randn(1, 10, 16, dtype=torch.float64)
    state = m.init_state(1)
    outs = []
    for t in range(x.shape[1]):
        y, state = m.step(x[:, t], state)
        outs.append(y)
        assert state.k.shape[2] == t % 4 + 1
    torch.testing.assert_close(torch.stack(outs, 1), m(x), rtol=1e-10, atol=1e-10)


def test_chunked_rejects_bad_chunk():
    with pytest.raises(ValueError, match="chunk"):
        create_mixer("chunked", 16, chunk=0)
