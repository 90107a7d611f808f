"""StepSampler: deterministic passes, disjoint ranks, and resumption at a given batch."""

import itertools

import pytest

from mmseq.data import StepSampler


def test_each_pass_is_a_permutation():
    s = StepSampler(10, 5, seed=3)
    batches = list(itertools.islice(iter(s), 4))
    assert sorted(batches[0] + batches[1]) == list(range(10))
    assert sorted(batches[2] + batches[3]) == list(range(10))
    assert batches[0] + batches[1] != batches[2] + batches[3]  # a new order each pass


def test_batches_straddle_pass_boundaries():
    s = StepSampler(7, 3, seed=0)
    flat = sum(itertools.islice(iter(s), 7), [])
    assert sorted(flat[:7]) == list(range(7)) and sorted(flat[7:14]) == list(range(7))


def test_start_batch_resumes_the_same_stream():
    full = list(itertools.islice(iter(StepSampler(50, 4, seed=1)), 20))
    resumed = list(itertools.islice(iter(StepSampler(50, 4, seed=1, start_batch=lambda: 12)), 8))
    assert resumed == full[12:20]


def test_ranks_take_disjoint_interleaved_batches():
    full = list(itertools.islice(iter(StepSampler(64, 4, seed=2)), 8))
    r0 = list(itertools.islice(iter(StepSampler(64, 4, seed=2, rank=0, world_size=2)), 4))
    r1 = list(itertools.islice(iter(StepSampler(64, 4, seed=2, rank=1, world_size=2)), 4))
    assert r0 == full[0::2] and r1 == full[1::2]


def test_bad_sizes():
    with pytest.raises(ValueError, match="batch_size"):
        StepSampler(10, 0)
    with pytest.raises(ValueError, match="num_samples"):
        StepSampler(0, 2)
