"""Hybrid mixer: the pattern builds the right sub-mixers in order; bad letters and configs are refused."""

import pytest
import torch

from mmseq.mixers import MIXERS, create_mixer
from mmseq.mixers.attention import AttentionMixer
from mmseq.mixers.base import stream
from mmseq.mixers.hybrid import SSM_PREFERENCE, default_sub_mixers
from mmseq.mixers.swa import SlidingWindowAttention

SUBS = {"S": {"name": "swa", "window": 3, "n_heads": 2}, "A": {"name": "attention", "n_heads": 4}}


def test_pattern_builds_sub_mixers_in_order():
    m = create_mixer("hybrid", 16, pattern="SSAS", mixers=SUBS)
    kinds = [type(layer) for layer in m.layers]
    assert kinds == [SlidingWindowAttention, SlidingWindowAttention, AttentionMixer, SlidingWindowAttention]
    assert [layer.n_heads for layer in m.layers] == [2, 2, 4, 2]
    assert m.layers[0].window == 3 and m.layers[0] is not m.layers[1]  # one module per position
    assert len(m.norms) == 4


def test_forward_is_the_chain_of_pre_norm_residuals():
    torch.manual_seed(0)
    m = create_mixer("hybrid", 16, pattern="SA", mixers=SUBS).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    h = x + m.layers[0](m.norms[0](x))
    h = h + m.layers[1](m.norms[1](h))
    torch.testing.assert_close(m(x), h - x)


def test_default_letters():
    table = default_sub_mixers()
    assert table["A"] == {"name": "attention"}
    ssm = [n for n in SSM_PREFERENCE if n in MIXERS]
    assert table.get("M") == ({"name": ssm[0]} if ssm else None)
    m = create_mixer("hybrid", 16, pattern="A", mixers={"A": {"name": "swa", "window": 2}})
    assert isinstance(m.layers[0], SlidingWindowAttention)  # mixers override the defaults


@pytest.mark.parametrize("pattern", ["SX", "sa", "S A", "Z"])
def test_unknown_letters_raise(pattern):
    with pytest.raises(ValueError, match="pattern"):
        create_mixer("hybrid", 16, pattern=pattern, mixers=SUBS)


@pytest.mark.parametrize("pattern", ["", 3])
def test_bad_pattern_raises(pattern):
    with pytest.raises(ValueError, match="pattern"):
        create_mixer("hybrid", 16, pattern=pattern, mixers=SUBS)


@pytest.mark.parametrize("mixers", [{"SA": {"name": "swa"}}, {"S": "swa"}, {"S": {"window": 2}},
                                    {"S": {"name": "hybrid"}}])
def test_bad_sub_mixer_configs_raise(mixers):
    with pytest.raises(ValueError):
        create_mixer("hybrid", 16, pattern="S", mixers=mixers)


def test_step_chains_sub_mixer_steps():
    torch.manual_seed(0)
    m = create_mixer("hybrid", 16, pattern="SA", mixers=SUBS).double()
    x = torch.randn(2, 8, 16, dtype=torch.float64)
    state = m.init_state(2, dtype=torch.float64)
    assert len(state) == 2
    streamed, state = stream(m, x, state)
    torch.testing.assert_close(streamed, m(x), rtol=1e-10, atol=1e-10)
