"""Rotary position embeddings against their definition: explicit 2x2 rotations, norms, relative positions."""

import pytest
import torch

from mmseq.mixers.rotary import Rotary
from tests.mixers._attention_ref import rotate

# Rotary's frequencies are float32 numbers; the reference's are exact float64.
TOL = 1e-6


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _rotary(P=8):
    return Rotary(P).double()


@pytest.mark.parametrize("offset", [0, 5])
@pytest.mark.parametrize("P", [2, 8, 12])
def test_equals_explicit_rotation_per_channel_pair(P, offset):
    x = torch.randn(2, 3, 11, P, dtype=torch.float64)
    got = _rotary(P)(x, offset=offset)
    assert got.shape == x.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, rotate(x, offset), rtol=TOL, atol=TOL)


def test_position_zero_is_the_identity_and_later_positions_turn():
    x = torch.randn(1, 1, 4, 8, dtype=torch.float64)
    y = _rotary()(x)
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :], rtol=0, atol=0)
    assert (y[..., 1:, :] - x[..., 1:, :]).abs().amax(-1).min() > 1e-3


def test_each_pair_keeps_its_norm():
    x = torch.randn(2, 2, 9, 8, dtype=torch.float64)
    y = _rotary()(x, offset=3)
    pair_norm = lambda t: t[..., 0::2] ** 2 + t[..., 1::2] ** 2
    torch.testing.assert_close(pair_norm(y), pair_norm(x), rtol=1e-12, atol=1e-12)


def test_scores_depend_only_on_the_relative_position():
    """<R(m) q, R(n) k> is a function of m - n: equal along each diagonal of the score matrix, whatever the
    offset, and different between diagonals."""
    P, L = 8, 12
    q, k = torch.randn(P, dtype=torch.float64), torch.randn(P, dtype=torch.float64)
    rot = _rotary(P)
    rq = rot(q.expand(1, 1, L, P))[0, 0]  # R(m) q for m = 0 .. L-1
    rk = rot(k.expand(1, 1, L, P), offset=7)[0, 0]  # R(n) k for n = 7 .. L+6
    scores = rq @ rk.T  # [m, n - 7]
    for d in range(-L + 1, L):
        diag = torch.diagonal(scores, d)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), rtol=1e-9, atol=1e-9)
    diagonals = torch.stack([torch.diagonal(scores, d)[0] for d in range(-3, 4)])
    assert (diagonals[1:] - diagonals[:-1]).abs().min() > 1e-6


def test_offset_continues_the_positions():
    x = torch.randn(1, 2, 10, 8, dtype=torch.float64)
    rot = _rotary()
    torch.testing.assert_close(rot(x[..., 4:, :], offset=4), rot(x)[..., 4:, :], rtol=0, atol=1e-12)


def test_odd_head_dim_is_refused():
    with pytest.raises(ValueError, match="even head dim"):
        Rotary(7)
