"""The task-module template: the training loss includes every mixer's auxiliary loss; metrics per stage."""

from __future__ import annotations

import torch

from mmseq.mixers.base import aux_loss
from mmseq.synthetic.model import SequenceLM
from mmseq.synthetic.tasks import RecallModule


def test_training_step_adds_the_mixers_auxiliary_losses():
    torch.manual_seed(0)
    model = SequenceLM(vocab_size=16, d_model=16, n_layers=2,
                       mixer={"name": "longvq", "codebook_size": 8, "n_heads": 2, "block_len": 4})
    module = RecallModule(model, {"lr": 1e-3}, 10, vocab_size=16)
    module.log = lambda *a, **k: None  # no trainer attached
    tokens = torch.randint(0, 16, (2, 12))
    labels = torch.randint(0, 16, (2, 12))
    total = module.training_step((tokens, labels), 0)
    task_loss = module.loss(model(tokens), (tokens, labels))  # the forward refreshes each layer's aux loss
    extra = aux_loss(model)
    assert float(extra) > 0
    torch.testing.assert_close(total, task_loss + extra)


def test_each_stage_has_its_own_metric_instances():
    model = SequenceLM(vocab_size=8, d_model=8, n_layers=1)
    module = RecallModule(model, {"lr": 1e-3}, 10, vocab_size=8, depths=[0.0, 0.5])
    val, test = module.metrics_for("val"), module.metrics_for("test")
    assert list(val) == ["acc", "exact", "acc_depth_0", "acc_depth_0.5"]
    assert all(val[k] is not test[k] for k in val)
