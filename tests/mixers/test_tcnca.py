"""TCNCA: receptive field of the TCN and of the whole mixer (TCN reach + attention chunk), causal and not."""

import pytest
import torch

from mmseq.mixers import create_mixer
from mmseq.mixers.base import stream


def _build(causal=True, **kw):
    torch.manual_seed(0)
    hp = {"chunk": 4, "n_levels": 2, "kernel_size": 3, "n_heads": 2, **kw}
    return create_mixer("tcnca", 16, causal=causal, **hp).double()


def _changed(f, x, t):
    """Output positions whose value changes when x[:, t] changes."""
    x2 = x.clone()
    x2[:, t] += torch.randn_like(x2[:, t])
    return ((f(x) - f(x2)).abs().amax(dim=(0, 2)) > 1e-12).nonzero().flatten().tolist()


@pytest.mark.parametrize("n_levels,kernel_size,base", [(2, 3, 2), (3, 2, 2), (2, 3, 3)])
def test_tcn_reach_is_its_receptive_field(n_levels, kernel_size, base):
    m = _build(n_levels=n_levels, kernel_size=kernel_size, dilation_base=base)
    R = 1 + (kernel_size - 1) * sum(base ** j for j in range(n_levels))
    assert m.receptive_field == R
    x = torch.randn(2, 40, 16, dtype=torch.float64)
    assert _changed(m.tcn, x, 9) == list(range(9, 9 + R))


@pytest.mark.parametrize("t", [0, 10, 13])
def test_mixer_reach_is_tcn_reach_plus_chunk(t):
    m = _build()  # R = 7, chunk 4
    R, C = m.receptive_field, m.chunk
    x = torch.randn(2, 40, 16, dtype=torch.float64)
    # output s sees x'[j] and x[j] for j <= s in its chunk; x'[j] sees x[j - R + 1 .. j]
    expected = [s for s in range(40) if s >= t and (s // C) * C <= t + R - 1]
    assert _changed(m, x, t) == expected


def test_noncausal_tcn_is_centred():
    m = _build(causal=False)
    x = torch.randn(2, 40, 16, dtype=torch.float64)
    # centred taps: dilation 1 spans t-1..t+1, dilation 2 spans t-2..t+2, so the reach is t-3..t+3
    assert _changed(m.tcn, x, 20) == list(range(17, 24))
    assert _changed(m, x, 20) == list(range(16, 24))  # chunks [16, 20) and [20, 24)


def test_stream_buffers_are_per_level():
    m = _build(n_levels=3)
    state = m.init_state(2)
    assert [c.shape[-1] for c in state.convs] == [2, 4, 8]
    x = torch.randn(2, 17, 16, dtype=torch.float64)
    streamed, state = stream(m, x, state)
    torch.testing.assert_close(streamed, m(x), rtol=1e-10, atol=1e-10)


def test_tcnca_rejects_bad_args():
    with pytest.raises(ValueError, match="chunk"):
        create_mixer("tcnca", 16, chunk=0)
    with pytest.raises(ValueError, match="kernel_size"):
        create_mixer("tcnca", 16, kernel_size=0)
