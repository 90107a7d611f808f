"""Joint recall against a brute-force reader: every query's label is the one value bound to (context, key)."""

import pytest
import torch

from mmseq.synthetic.data import IGNORE
from mmseq.synthetic.recall import SEP, joint_recall_layout, joint_recall_length, make_joint_recall


def _solve(seq: list[int], C: int, K: int, V: int) -> tuple[dict, list[tuple[int, int]]]:
    """Read the table by walking the tokens (the current context is the last context token seen) and list
    every (position, answer) a query asks for; each (context, key) must have exactly one value."""
    ids = joint_recall_layout(C, K, V)
    is_ctx = lambda t: ids["ctx0"] <= t < ids["key0"]  # noqa: E731
    is_key = lambda t: ids["key0"] <= t < ids["val0"]  # noqa: E731
    sep = seq.index(SEP)
    table: dict[tuple[int, int], set[int]] = {}
    ctx = None
    for p in range(sep):
        t = seq[p]
        if is_ctx(t):
            ctx = t
        elif is_key(t):
            table.setdefault((ctx, t), set()).add(seq[p + 1])
    asked = []
    for p in range(sep + 1, len(seq), 3):
        c, k = seq[p], seq[p + 1]
        assert is_ctx(c) and is_key(k)
        assert len(table[(c, k)]) == 1, "a (context, key) pair bound twice is ambiguous"
        asked.append((p + 1, next(iter(table[(c, k)]))))
    return table, asked


@pytest.mark.parametrize("C,K,V,Q", [(2, 3, 4, 6), (4, 8, 16, 32), (3, 5, 3, 7)])
def test_labels_are_the_values_a_brute_force_reader_finds(C, K, V, Q):
    d = make_joint_recall(100, C, K, V, Q, seed=0)
    x, y = d["inputs"], d["labels"]
    assert x.shape == y.shape == (100, joint_recall_length(C, K, Q))
    assert int(x.max()) < joint_recall_layout(C, K, V)["vocab_size"]
    for i in range(100):
        table, asked = _solve(x[i].tolist(), C, K, V)
        assert len(table) == C * K  # every key listed under every context
        assert [p for p, _ in asked] == (y[i] != IGNORE).nonzero().flatten().tolist()
        assert all(int(y[i, p]) == v for p, v in asked)
        assert len({(int(x[i, p - 1]), int(x[i, p])) for p, _ in asked}) == Q  # distinct pairs asked
        for k in set(key for _, key in table):  # the key alone never answers: one value per context
            values = [next(iter(v)) for (c, kk), v in table.items() if kk == k]
            assert len(set(values)) == C


def test_whole_table_and_determinism():
    a, b, c = (make_joint_recall(3, 3, 4, 8, 12, seed=s) for s in (5, 5, 6))
    assert torch.equal(a["inputs"], b["inputs"]) and not torch.equal(a["inputs"], c["inputs"])
    assert ((a["labels"] != IGNORE).sum(1) == 12).all()


def test_impossible_sizes_are_refused():
    with pytest.raises(ValueError, match="num_values"):
        make_joint_recall(1, 4, 2, 3, 4, seed=0)
    with pytest.raises(ValueError, match="num_queries"):
        make_joint_recall(1, 2, 2, 4, 5, seed=0)
    with pytest.raises(ValueError, match="num_contexts"):
        make_joint_recall(1, 1, 2, 4, 1, seed=0)
