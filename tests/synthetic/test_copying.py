"""COPY and selective copying against brute-force solvers that read the answer off the input."""

import pytest
import torch

from mmseq.synthetic.copying import BLANK, DATA0, SEP, make_copy, make_selective_copy
from mmseq.synthetic.data import IGNORE


def _next_token_targets(answer: list[int], sep: int, length: int) -> list[int]:
    """Labels a next-token model is scored on: at SEP the first answer token, at answer j the (j+1)-th."""
    out = [IGNORE] * length
    for j, t in enumerate(answer):
        out[sep + j] = t
    return out


@pytest.mark.parametrize("n,V", [(1, 2), (7, 16), (32, 32)])
def test_copy_labels_repeat_the_string(n, V):
    d = make_copy(50, n, V, seed=1)
    x, y = d["inputs"], d["labels"]
    assert x.shape == (50, 2 * n + 1)
    for i in range(50):
        seq = x[i].tolist()
        sep = seq.index(SEP)
        assert sep == n and SEP not in seq[:sep]  # the separator is unambiguous
        assert seq[sep + 1:] == seq[:sep]
        assert y[i].tolist() == _next_token_targets(seq[:sep], sep, len(seq))
        assert all(DATA0 <= t < DATA0 + V for t in seq[:sep])


@pytest.mark.parametrize("L,k,V", [(10, 3, 4), (64, 8, 16), (5, 5, 2)])
def test_selective_copy_labels_are_the_data_tokens_in_order(L, k, V):
    d = make_selective_copy(50, L, k, V, seed=2)
    x, y = d["inputs"], d["labels"]
    assert x.shape == (50, L + 1 + k)
    for i in range(50):
        seq = x[i].tolist()
        sep = seq.index(SEP)
        data = [t for t in seq[:sep] if t != BLANK]  # brute force: skip the blanks
        assert sep == L and len(data) == k
        assert seq[sep + 1:] == data
        assert y[i].tolist() == _next_token_targets(data, sep, len(seq))


def test_deterministic_and_checked():
    assert torch.equal(make_copy(4, 8, 16, 3)["inputs"], make_copy(4, 8, 16, 3)["inputs"])
    assert not torch.equal(make_selective_copy(4, 16, 4, 8, 3)["inputs"], make_selective_copy(4, 16, 4, 8, 4)["inputs"])
    with pytest.raises(ValueError, match="num_tokens"):
        make_selective_copy(1, 4, 5, 8, 0)
    with pytest.raises(ValueError, match="copy_len"):
        make_copy(1, 0, 8, 0)
