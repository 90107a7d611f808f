"""The CT tokenizer's optional adversarial term: discriminator, LeCAM, R1, and training with two optimizers."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from mmseq.medical.adversarial import BlurPool3d, Discriminator3D, DiscriminatorLoss, generator_loss


def test_blurpool_is_the_binomial_kernel_with_stride_two():
    x = torch.zeros(1, 1, 7, 7, 7)
    x[0, 0, 4, 4, 4] = 64.0  # an impulse on an even index lands on an output voxel
    y = BlurPool3d(1)(x)
    assert y.shape == (1, 1, 4, 4, 4)
    k = torch.tensor([1.0, 2.0, 1.0])
    # output voxel (2, 2, 2) is centred on input (4, 4, 4): weight 2*2*2 / 64 of the impulse
    assert y[0, 0, 2, 2, 2] == pytest.approx(8.0)
    assert y.sum() == pytest.approx(float((k / 4).sum() ** 3 * 64 / 8), rel=1e-6)


@pytest.mark.parametrize("shape", [(2, 1, 9, 32, 32), (1, 1, 1, 16, 24), (3, 1, 5, 12, 12)])
def test_discriminator_judges_any_volume_size(shape):
    torch.manual_seed(0)
    d = Discriminator3D(1, (4, 8), hidden=8)
    out = d(torch.randn(shape))
    assert out.shape == (shape[0],) and torch.isfinite(out).all()


class Linear3D(nn.Module):
    """D(x) = <w, x> + b: its input gradient is w everywhere, so R1 has a closed form."""

    def __init__(self, shape):
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape))
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1) + self.b


def test_discriminator_loss_matches_closed_forms():
    torch.manual_seed(0)
    d = Linear3D((1, 2, 3, 3))
    real, fake = torch.randn(4, 1, 2, 3, 3), torch.randn(4, 1, 2, 3, 3)
    loss = DiscriminatorLoss(lecam_weight=0.5, decay=0.9, r1_cost=10.0, r1_every=4)
    out = loss(d, real, fake, step=0)  # step 0: R1 on, EMAs start at the first means
    lr, lf = d(real), d(fake)
    gan = F.softplus(-lr).mean() + F.softplus(lf).mean()
    ema_r, ema_f = lr.mean(), lf.mean()
    lecam = F.relu(lr - ema_f).pow(2).mean() + F.relu(ema_r - lf).pow(2).mean()
    r1 = d.w.pow(2).sum() * 10.0 / 2 * 4
    torch.testing.assert_close(out["gan"], gan)
    torch.testing.assert_close(out["lecam"], lecam)
    torch.testing.assert_close(out["r1"], r1)
    torch.testing.assert_close(out["loss"], gan + 0.5 * lecam + r1)
    # the next step moves the EMAs by (1 - decay) and skips R1 (lazy: every 4th step)
    real2, fake2 = torch.randn(4, 1, 2, 3, 3), torch.randn(4, 1, 2, 3, 3)
    out2 = loss(d, real2, fake2, step=1)
    assert out2["r1"] == 0
    torch.testing.assert_close(loss.ema_real, 0.9 * ema_r.detach() + 0.1 * d(real2).mean().detach())
    torch.testing.assert_close(loss.ema_fake, 0.9 * ema_f.detach() + 0.1 * d(fake2).mean().detach())
    # generator: non-saturating
    torch.testing.assert_close(generator_loss(lf), F.softplus(-lf).mean())


def test_tokenizer_trains_against_the_discriminator(ct_phantoms, tmp_path):
    from mmseq.runner.checkpoint import safe_torch_load
    from mmseq.runner.pretrained import from_pretrained
    from mmseq.runner.train import train

    root, _ = ct_phantoms
    cfg = {"task": "ct-tokenizer", "seed": 0,
           "data": {"root": str(root), "spacing": [8.0, 8.0, 8.0], "size": [9, 32, 32], "crop_depth": 5,
                    "batch_size": 2, "eval_batch_size": 2},
           "model": {"filters": 8, "channel_multipliers": [1, 2], "temporal_downsample": [True], "num_res_blocks": 1,
                     "token_bits": 6, "norm_groups": 4, "ssim_weight": 0.0,
                     "adversarial": {"start_step": 1, "widths": [4, 8], "hidden": 8, "r1_every": 2,
                                     "grad_clip": 0.5}},
           "optim": {"lr": 1e-3},
           "trainer": {"max_steps": 4, "val_check_interval": 4, "checkpoint_every_n_steps": 2, "log_every_n_steps": 1,
                       "enable_progress_bar": False}}
    path = tmp_path / "adv.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = train(path, run_dir=run)
    assert metrics["global_step"] == 4  # generator steps only: the discriminator's steps are not counted
    state = safe_torch_load(run / "checkpoints" / "last.ckpt")
    disc = {k: v for k, v in state["state_dict"].items() if k.startswith("discriminator.")}
    assert disc and len(state["optimizer_states"]) == 2
    assert state["state_dict"]["disc_loss.ema_started"]
    import csv

    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    assert any(r.get("train/d_loss") for r in rows) and any(r.get("train/g_adv") for r in rows)
    # the exported tokenizer carries no discriminator
    model = from_pretrained(run)
    assert not any("discriminator" in k for k in model.state_dict())

    bad = dict(cfg, trainer={**cfg["trainer"], "gradient_clip_val": 1.0})
    path.write_text(yaml.safe_dump(bad))
    from mmseq.errors import ConfigError
    from mmseq.runner.task import load_task_file

    with pytest.raises(ConfigError, match="gradient_clip_val"):
        load_task_file(path)
