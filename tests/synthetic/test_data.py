"""MQAR and passkey generators against their definitions, and the data make / read-back path."""

import pytest
import torch

from mmseq.synthetic.data import IGNORE, KEY_END, KEY_START, QUERY, make_mqar, make_passkey


def test_mqar_labels_are_the_values_bound_to_the_keys():
    d = make_mqar(200, seq_len=64, num_kv_pairs=8, vocab_size=64, seed=0)
    x, y = d["inputs"], d["labels"]
    assert x.shape == y.shape == (200, 64)
    for i in range(200):
        kv = {int(x[i, 2 * j]): int(x[i, 2 * j + 1]) for j in range(8)}
        assert len(kv) == 8 and all(1 <= k < 32 for k in kv) and all(32 <= v < 64 for v in kv.values())
        scored = (y[i] != IGNORE).nonzero().flatten()
        assert len(scored) == 8
        for p in scored.tolist():
            assert p >= 16 and kv[int(x[i, p])] == int(y[i, p])


def test_mqar_is_deterministic_and_seed_dependent():
    a, b, c = (make_mqar(4, 32, 4, 32, seed=s) for s in (1, 1, 2))
    assert torch.equal(a["inputs"], b["inputs"]) and not torch.equal(a["inputs"], c["inputs"])


def test_mqar_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="seq_len"):
        make_mqar(1, seq_len=16, num_kv_pairs=8, vocab_size=64, seed=0)
    with pytest.raises(ValueError, match="vocab_size"):
        make_mqar(1, seq_len=64, num_kv_pairs=8, vocab_size=16, seed=0)


def test_passkey_hides_and_queries_the_digits():
    d = make_passkey(10, seq_len=100, n_digits=5, filler_vocab=8, seed=0, depths=[0.0, 0.5, 1.0])
    x, y = d["inputs"], d["labels"]
    for i in range(10):
        start = (x[i] == KEY_START).nonzero().item()
        digits = x[i, start + 1:start + 6]
        assert x[i, start + 6] == KEY_END
        q = (x[i] == QUERY).nonzero().item()
        assert q == 100 - 6 and torch.equal(x[i, q + 1:], digits)
        assert torch.equal(y[i, q:q + 5], digits) and (y[i, :q] == IGNORE).all()
    assert d["depth"].tolist()[:3] == [0.0, 0.5, 1.0]
    assert (x[0] == KEY_START).nonzero().item() == 0


def test_data_make_writes_files_the_task_reads(tmp_path, run_cli):
    r = run_cli("data", "make", "mqar", "out", "data.seq_len=32", "data.num_kv_pairs=4", "data.num_train=64",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from mmseq.runner.task import load_task

    task = load_task({"task": "mqar", "data": {"root": str(tmp_path / "out"), "seq_len": 32, "num_kv_pairs": 4}})
    dm = task.build_datamodule()
    dm.setup()
    assert len(dm.splits["train"]) == 64
    expected = make_mqar(64, 32, 4, 64, seed=task.split_seed("train"))
    assert torch.equal(dm.splits["train"].tensors[0], expected["inputs"])
    again = run_cli("data", "make", "mqar", "out", cwd=tmp_path)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_mqar_keys_appear_only_where_bound_or_queried():
    d = make_mqar(100, seq_len=32, num_kv_pairs=4, vocab_size=16, seed=3)
    x, y = d["inputs"], d["labels"]
    for i in range(100):
        keys = set(x[i, 0:8:2].tolist())
        at = {p for p in range(32) if int(x[i, p]) in keys}
        assert at == set(range(0, 8, 2)) | set((y[i] != IGNORE).nonzero().flatten().tolist())
