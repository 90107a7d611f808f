"""Stuffed Mamba's state collapse in the Mamba-1 mixer, and the two mitigations it carries (decay_scale, state_norm).

The collapse is built the way short training produces it: decays near 1 (A ~ -1e-4), so nothing is forgotten
and, on a repeated input (filler text), every position adds the same contribution to the state.
"""

import math

import pytest
import torch

from mmseq.mixers import create_mixer
from mmseq.mixers.base import stream

D = 8
TRAIN_LEN = 64


def _never_forgets(**options) -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_mixer("mamba", D, d_state=4, expand=2, **options).double()
    with torch.no_grad():
        m.A_log.fill_(math.log(1e-4))
    return m


def _filler(length: int) -> torch.Tensor:
    torch.manual_seed(1)
    token = torch.randn(1, 1, D, dtype=torch.float64)
    return token.expand(2, length, D).contiguous()


def _growth(m) -> tuple[float, float]:
    """(mean state norm at 8x the training length / at the training length, the largest norm seen)."""
    norms = m.state_norms(_filler(8 * TRAIN_LEN)).mean(dim=(0, 2))  # [L]
    return (norms[-1] / norms[TRAIN_LEN - 1]).item(), norms.max().item()


def test_the_state_collapses_past_the_training_length_without_a_mitigation():
    ratio, _ = _growth(_never_forgets())
    # Nothing decays, so the state grows about linearly with the length: 8x the length, ~8x the norm.
    assert ratio > 6.0


def test_a_stronger_decay_bounds_the_state():
    # A = -100: with step sizes of 0.001-0.1 every channel forgets within about 10 positions
    ratio, _ = _growth(_never_forgets(decay_scale=1e6))
    assert ratio < 1.05


def test_state_normalisation_bounds_the_state():
    x = _filler(8 * TRAIN_LEN)
    free = _never_forgets().state_norms(x)
    bound = free[:, :TRAIN_LEN].max().item()  # the largest state the model met within its training length
    assert free.max() > 6 * bound
    assert _never_forgets(state_norm=bound).state_norms(x).max() <= bound * (1 + 1e-12)


def test_state_norm_forward_equals_the_kernel_scan_when_the_bound_is_never_reached():
    torch.manual_seed(0)
    x = torch.randn(2, 13, D, dtype=torch.float64)
    plain = create_mixer("mamba", D, d_state=4).double()
    bounded = create_mixer("mamba", D, d_state=4, state_norm=1e9).double()
    bounded.load_state_dict(plain.state_dict())
    torch.testing.assert_close(bounded(x), plain(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("options", [{"state_norm": 0.005}, {"decay_scale": 3.0},
                                     {"decay_scale": 2.0, "state_norm": 0.004}])
def test_step_equals_forward_with_mitigations(options):
    torch.manual_seed(0)
    m = create_mixer("mamba", D, d_state=4, **options).double()
    x = torch.randn(2, 13, D, dtype=torch.float64)
    if "state_norm" in options:  # the bound must bite, or this would only repeat the contract test
        assert m.state_norms(x).max() > 0.99 * options["state_norm"]
    streamed, _ = stream(m, x, m.init_state(2, dtype=torch.float64))
    torch.testing.assert_close(streamed, m(x), rtol=1e-10, atol=1e-10)


def test_decay_scale_equals_a_shifted_A_log():
    torch.manual_seed(0)
    x = torch.randn(2, 13, D, dtype=torch.float64)
    scaled = create_mixer("mamba", D, d_state=4, decay_scale=2.5).double()
    shifted = create_mixer("mamba", D, d_state=4).double()
    shifted.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        shifted.A_log += math.log(2.5)
    torch.testing.assert_close(scaled(x), shifted(x), rtol=1e-10, atol=1e-10)


def test_state_norm_gradients_reach_every_parameter():
    m = create_mixer("mamba", D, d_state=4, state_norm=0.005).double()
    m(torch.randn(2, 9, D, dtype=torch.float64)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


@pytest.mark.parametrize("options", [{"decay_scale": 0.0}, {"state_norm": -1.0}])
def test_bad_options_are_refused(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        create_mixer("mamba", D, **options)


@pytest.mark.parametrize("options", [{}, {"state_norm": 0.005}])
@pytest.mark.parametrize("L", [2, 13])  # shorter and longer than the conv's K-1 = 3 inputs
def test_forward_with_state_continues_like_streaming(options, L):
    torch.manual_seed(0)
    m = create_mixer("mamba", D, d_state=4, **options).double()
    x = torch.randn(2, L + 5, D, dtype=torch.float64)
    y, state, memory = m.forward_with_state(x[:, :L])
    torch.testing.assert_close(y, m(x[:, :L]), rtol=1e-10, atol=1e-10)
    streamed, _ = stream(m, x[:, L:], state)
    torch.testing.assert_close(streamed, m(x)[:, L:], rtol=1e-10, atol=1e-10)
    # The memory is the readout before the z gate: stepping reproduces it too.
    s = m.init_state(2, dtype=torch.float64)
    mems = []
    for t in range(L):
        _, s, m_t = m.step_with_memory(x[:, t], s)
        mems.append(m_t)
    torch.testing.assert_close(memory, torch.stack(mems, 1), rtol=1e-10, atol=1e-10)
