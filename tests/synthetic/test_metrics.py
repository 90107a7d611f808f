"""Recall metrics against an oracle: per-position accuracy, whole-sequence ``exact`` and accuracy per depth."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mmseq.synthetic.data import IGNORE, make_passkey, passkey_vocab_size
from mmseq.synthetic.tasks import RecallModule

DEPTHS = [0.0, 0.5, 1.0]


class _Replay(torch.nn.Module):
    """Returns one-hot logits of the predictions hidden in the input batch (column 0 = row index)."""

    def __init__(self, preds: torch.Tensor, vocab: int) -> None:
        super().__init__()
        self.register_buffer("preds", preds)
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(self.preds[tokens[:, 0]], self.vocab).float() * 10 + self.dummy


def _loop_figures(preds, labels, depth):
    """Plain loops: per-position accuracy, exact-sequence rate and per-depth mean of per-sequence accuracy."""
    right = total = exact = 0
    per_depth = {d: [] for d in DEPTHS}
    for i in range(labels.shape[0]):
        seq_right = seq_total = 0
        for j in range(labels.shape[1]):
            if labels[i, j] != IGNORE:
                seq_total += 1
                seq_right += int(preds[i, j] == labels[i, j])
        right, total = right + seq_right, total + seq_total
        exact += int(seq_right == seq_total)
        per_depth[float(depth[i])].append(seq_right / seq_total)
    return right / total, exact / labels.shape[0], {d: sum(v) / len(v) for d, v in per_depth.items()}


def test_recall_metrics_match_plain_loops(tmp_path):
    data = make_passkey(90, 40, 3, 6, seed=0, depths=DEPTHS)
    labels, depth = data["labels"], data["depth"]
    vocab = passkey_vocab_size(6)
    gen = torch.Generator().manual_seed(0)
    # Most sequences fully right, some with one or two wrong digits, a few with every digit wrong: the depths
    # get different accuracies, and .all vs .any per sequence gives different exact rates.
    preds = torch.where(labels == IGNORE, 0, labels)
    wrong = torch.rand(labels.shape, generator=gen) < torch.where(depth[:, None] == 0.5, 0.5, 0.1)
    preds = torch.where(wrong & (labels != IGNORE), (labels + 1) % 10, preds)
    inputs = torch.arange(90)[:, None].repeat(1, 40)  # column 0 tells the replay model which row it is
    module = RecallModule(_Replay(preds, vocab), {"lr": 1e-3}, 1, vocab, depths=DEPTHS)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         default_root_dir=str(tmp_path), accelerator="cpu")
    loader = DataLoader(TensorDataset(inputs, labels, depth), batch_size=16)
    out = trainer.test(module, loader, verbose=False)[0]
    acc, exact, per_depth = _loop_figures(preds, labels, depth)
    assert 0.2 < exact < 0.9 and len(set(per_depth.values())) > 1  # the oracle separates the variants
    assert out["test/acc"] == pytest.approx(acc, abs=1e-6)
    assert out["test/exact"] == pytest.approx(exact, abs=1e-6)
    for d, value in per_depth.items():
        assert out[f"test/acc_depth_{d:g}"] == pytest.approx(value, abs=1e-6), d
