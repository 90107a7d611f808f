"""Haar wavelet in/out of the CT tokenizer: exact inverse, LLL = block mean, band order, causal pairing."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from mmseq.medical.haar import BANDS, haar_dwt3d, haar_idwt3d, haar_pairs, haar_unpairs


@pytest.mark.parametrize("shape", [(2, 1, 9, 16, 16), (1, 1, 1, 4, 6), (1, 2, 5, 8, 2), (3, 1, 17, 6, 10)],
                         ids=lambda s: "x".join(map(str, s)))
def test_round_trip_is_exact(shape):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    y = haar_dwt3d(x)
    b, c, d, h, w = shape
    assert y.shape == (b, 8 * c, (d + 1) // 2, h // 2, w // 2)
    assert_close(haar_idwt3d(y), x, atol=1e-13, rtol=0)


def test_lll_is_the_block_mean_with_the_first_slice_duplicated():
    torch.manual_seed(1)
    x = torch.randn(2, 1, 7, 8, 12, dtype=torch.float64)
    lll = haar_dwt3d(x)[:, :1]
    expected = F.avg_pool3d(torch.cat([x[:, :, :1], x], dim=2), 2)
    assert_close(lll, expected, atol=1e-14, rtol=0)


@pytest.mark.parametrize("axis, band", [(4, "LLH"), (3, "LHL"), (2, "HLL")])
def test_an_alternating_pattern_lands_in_its_band(axis, band):
    d, h, w = 9, 8, 8
    sign = (-1.0) ** torch.arange([1, 1, d, h, w][axis], dtype=torch.float64)
    view = [1, 1, 1, 1, 1]
    view[axis] = -1
    x = sign.view(view).expand(1, 1, d, h, w)
    y = haar_dwt3d(x)
    if axis == 2:  # frame 0 holds slice 0 twice: a constant pair, all LLL
        assert_close(y[:, 0, 0], torch.ones(1, h // 2, w // 2, dtype=torch.float64) / 1)
        y = y[:, :, 1:]
    energy = y.pow(2).sum(dim=(0, 2, 3, 4))
    assert energy.argmax().item() == BANDS.index(band)
    assert_close(energy.sum(), energy[BANDS.index(band)])


def test_frame_p_depends_on_slices_up_to_2p_only():
    torch.manual_seed(2)
    x = torch.randn(1, 1, 9, 4, 4, dtype=torch.float64)
    x2 = x.clone()
    x2[:, :, 5:] += 1.0  # slices 5.. change: frames 0, 1, 2 (slices <= 4) must not
    assert torch.equal(haar_dwt3d(x)[:, :, :3], haar_dwt3d(x2)[:, :, :3])
    assert not torch.equal(haar_dwt3d(x)[:, :, 3], haar_dwt3d(x2)[:, :, 3])


def test_pairs_stream_chunk_by_chunk():
    torch.manual_seed(3)
    x = torch.randn(1, 1, 12, 4, 4, dtype=torch.float64)
    whole = haar_pairs(x)
    chunks = torch.cat([haar_pairs(x[:, :, i:i + 4]) for i in range(0, 12, 4)], dim=2)
    assert torch.equal(whole, chunks)
    assert_close(haar_unpairs(whole), x, atol=1e-13, rtol=0)


@pytest.mark.parametrize("shape", [(1, 1, 8, 4, 4), (1, 1, 9, 5, 4), (1, 1, 9, 4, 3)])
def test_bad_shapes_are_refused(shape):
    with pytest.raises(ValueError, match="odd depth and even height and width"):
        haar_dwt3d(torch.zeros(shape))


def test_four_dimensional_input_is_refused():
    with pytest.raises(ValueError, match=r"\[B, C, D, H, W\]"):
        haar_dwt3d(torch.zeros(1, 9, 4, 4))
