"""mmseq.runner.optim: which parameters decay, and the learning-rate factor against its closed forms."""

import math

import pytest
import torch
from torch import nn

from mmseq.mixers import create_mixer
from mmseq.runner.config import OptimConfig
from mmseq.runner.optim import build_optimizer, lr_factor, param_groups


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)  # weight decays, bias does not
        self.norm = nn.LayerNorm(3)  # 1-D: no decay
        self.emb = nn.Embedding(5, 4)  # a matrix: decays
        self.flagged = nn.Parameter(torch.zeros(2, 3))  # a matrix flagged _no_weight_decay
        self.flagged._no_weight_decay = True
        self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)  # left out


def _ids(params):
    return sorted(id(p) for p in params)


def test_param_groups_decay_trainable_matrices_only():
    m = _Model()
    decay, no_decay = param_groups(m, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert _ids(decay["params"]) == _ids([m.linear.weight, m.emb.weight])
    assert _ids(no_decay["params"]) == _ids([m.linear.bias, m.norm.weight, m.norm.bias, m.flagged])


def test_param_groups_honour_the_mixers_no_weight_decay_flags():
    m = create_mixer("longconv", 8, l_max=16)
    assert m.kernel_weight.dim() == 3 and m.kernel_weight._no_weight_decay
    decay, no_decay = param_groups(m, 0.1)
    assert id(m.kernel_weight) in _ids(no_decay["params"])
    assert id(m.kernel_weight) not in _ids(decay["params"])
    assert id(m.out_proj.weight) in _ids(decay["params"])


def _closed_form(step, schedule, warmup, max_steps, floor):
    """Warm-up (s + 1) / W for s < W; then progress t = (s - W) / (T - W), capped at 1, and
    constant 1, linear floor + (1 - floor)(1 - t), poly floor + (1 - floor)(1 - t)^0.9,
    or cosine floor + (1 - floor)(1 + cos(pi t)) / 2."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup) / (max_steps - warmup))
    if schedule == "linear":
        return floor + (1 - floor) * (1 - t)
    if schedule == "poly":
        return floor + (1 - floor) * (1 - t) ** 0.9
    return floor + (1 - floor) * (1 + math.cos(math.pi * t)) / 2


@pytest.mark.parametrize("schedule", ["cosine", "linear", "poly", "constant"])
@pytest.mark.parametrize("warmup,floor", [(0, 0.0), (4, 0.1), (10, 0.25)])
def test_lr_factor_follows_the_closed_form(schedule, warmup, floor):
    cfg = OptimConfig(warmup_steps=warmup, schedule=schedule, min_lr_ratio=floor)
    T = 110
    for step in [*range(0, 12), 25, 47, 60, 83, 109, 110, 111, 500]:
        want = _closed_form(step, schedule, warmup, T, floor)
        assert lr_factor(step, cfg, T) == pytest.approx(want, rel=1e-12, abs=1e-12), step


def test_lr_factor_known_values():
    """W = 4, T = 104, floor 0.1: a quarter, half and all of the decay."""
    cos = OptimConfig(warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    lin = OptimConfig(warmup_steps=4, schedule="linear", min_lr_ratio=0.1)
    assert [lr_factor(s, cos, 104) for s in (0, 1, 3)] == [0.25, 0.5, 1.0]
    assert lr_factor(4, cos, 104) == 1.0 and lr_factor(4, lin, 104) == 1.0
    assert lr_factor(29, cos, 104) == pytest.approx(0.1 + 0.45 * (1 + math.sqrt(0.5)))
    assert lr_factor(29, lin, 104) == pytest.approx(0.775)
    assert lr_factor(54, cos, 104) == pytest.approx(0.55) and lr_factor(54, lin, 104) == pytest.approx(0.55)
    assert lr_factor(104, cos, 104) == pytest.approx(0.1) and lr_factor(1000, lin, 104) == pytest.approx(0.1)


def test_build_optimizer_schedules_adamw_groups():
    m = _Model()
    cfg = OptimConfig(lr=2e-3, weight_decay=0.01, warmup_steps=3, schedule="linear", min_lr_ratio=0.0)
    out = build_optimizer(m, cfg, max_steps=13)
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.AdamW) and out["lr_scheduler"]["interval"] == "step"
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [2e-3 * _closed_form(s, "linear", 3, 13, 0.0) for s in range(14)]
    assert lrs == pytest.approx(want, rel=1e-12)
