"""Sliding-window attention mixer: equals full attention under an explicit band mask; streaming state stays O(W)."""

import pytest
import torch

from mmseq.mixers import create_mixer
from mmseq.mixers.base import stream
from tests.mixers._attention_ref import merge, project, softmax_attention

# The mixer's RoPE frequencies are float32 numbers (exact float64 here): outputs about 1e-9 apart.
TOL = 1e-7


def _explicit(m, x, window, causal):
    """Projections from the mixer's weights, RoPE written out, a plain masked softmax over an L x L band."""
    L = x.shape[1]
    q, k, v = project(m, x)
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    allowed = (i - j < window) & (j - i < window)
    if causal:
        allowed &= j <= i
    return merge(m, softmax_attention(q, k, v, allowed))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
@pytest.mark.parametrize("window", [1, 3, 5, 40])
def test_swa_equals_banded_full_attention(causal, window):
    torch.manual_seed(0)
    m = create_mixer("swa", 16, causal=causal, window=window, n_heads=2).double()
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), _explicit(m, x, window, causal), rtol=TOL, atol=TOL)


def test_swa_window_covering_sequence_equals_attention_mixer():
    torch.manual_seed(0)
    swa = create_mixer("swa", 16, window=64, n_heads=4).double()
    full = create_mixer("attention", 16, n_heads=4).double()
    full.load_state_dict(swa.state_dict())
    x = torch.randn(2, 19, 16, dtype=torch.float64)
    torch.testing.assert_close(swa(x), full(x), rtol=1e-10, atol=1e-10)


def test_swa_stream_past_window_keeps_bounded_state():
    torch.manual_seed(0)
    m = create_mixer("swa", 16, window=3, n_heads=2).double()
    x = torch.randn(1, 11, 16, dtype=torch.float64)
    state = m.init_state(1)
    streamed, state = stream(m, x, state)
    assert state.cache.k.shape[2] == 3
    torch.testing.assert_close(streamed, m(x), rtol=1e-10, atol=1e-10)


def test_swa_rejects_bad_window():
    with pytest.raises(ValueError, match="window"):
        create_mixer("swa", 16, window=0)


@pytest.mark.parametrize("L", [3, 11])  # shorter and longer than the window
def test_forward_with_state_continues_like_streaming(L):
    torch.manual_seed(0)
    m = create_mixer("swa", 16, window=5, n_heads=2).double()
    x = torch.randn(2, L + 4, 16, dtype=torch.float64)
    y, state = m.forward_with_state(x[:, :L])
    torch.testing.assert_close(y, m(x[:, :L]))
    rest, _ = stream(m, x[:, L:], state)
    torch.testing.assert_close(rest, m(x)[:, L:])
