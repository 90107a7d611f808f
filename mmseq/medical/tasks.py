"""The ``ct-tokenizer`` task (BTB3D-style causal 3D tokenizer) and the CT-RATE split shared with ``ct-report``
(:mod:`mmseq.medical.report_task`).

Both read the CT-RATE layout (``mmseq data make ct-phantoms`` writes one). CT-RATE has a train and a valid
split; the valid volumes are shared out alternately to validation and test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset, TensorDataset
from torchmetrics import MeanMetric
from torchmetrics.image import PeakSignalNoiseRatio

from mmseq.data import SplitDataModule
from mmseq.errors import ConfigError, UserError
from mmseq.runner.config import path_field, to_dict
from mmseq.runner.module import TaskModule
from mmseq.runner.task import Task, register_task

from .tokenizer import CTTokenizer, reconstruction_losses

if TYPE_CHECKING:
    from .perceptual import LPIPS


def ctrate_split(root: str, split: str, **kwargs):
    """The CT-RATE items of one of our splits: train, or alternate valid volumes for val and test."""
    from .ctrate import CTRate

    index = CTRate(root, "train" if split == "train" else "valid", missing="skip", **kwargs)
    if split == "train":
        return index, list(range(len(index)))
    return index, list(range(0 if split == "val" else 1, len(index), 2))


# -- ct-tokenizer ---------------------------------------------------------------------------------------------
@dataclass
class CTVolumeDataConfig:
    """Volumes from a CT-RATE-layout folder, resampled, windowed and cropped or padded to one grid."""

    root: str = path_field("data/ct_phantoms", must_exist=False)
    spacing: list[float] = field(default_factory=lambda: [1.5, 0.75, 0.75])  # (D, H, W) mm; BTB3D's default
    hu_min: float = -1000.0
    hu_max: float = 1000.0
    size: list[int] = field(default_factory=lambda: [33, 64, 64])  # (D, H, W) after crop/pad with air
    crop_depth: int | None = None  # training crop along depth (BTB3D stage 1: 9 slices); None = whole grid
    batch_size: int = 2
    eval_batch_size: int = 2


@dataclass
class CTTokenizerModelConfig:
    """CTTokenizer arguments (``preprocess`` comes from the data section), plus where training starts."""

    filters: int = 32
    channel_multipliers: list[int] = field(default_factory=lambda: [1, 2])
    temporal_downsample: list[bool] = field(default_factory=lambda: [True])
    num_res_blocks: int = 1
    token_bits: int = 10
    norm_groups: int = 8
    commitment_weight: float = 0.25
    entropy_weight: float = 0.1
    diversity_gamma: float = 1.0
    inv_temperature: float = 100.0
    entropy_group_bits: int = 12
    init_from: str | None = path_field(None)  # a run or model folder whose weights start this run (curriculum)
    trainable: list[str] = field(default_factory=lambda: ["encoder", "quantizer", "decoder"])
    l1_weight: float = 5.0
    ssim_weight: float = 1.0
    entropy_start: float = 0.3  # the entropy weight anneals linearly from this to entropy_weight ...
    entropy_anneal_steps: int = 2000  # ... over these steps (BTB3D: 0.3 -> 0.1 over 2,000 steps)
    adversarial: dict[str, Any] | None = None  # AdversarialConfig fields; None = no discriminator
    # Optional LPIPS term on axial slices (mmseq.medical.perceptual), from the user's weights files only: no
    # pretrained network is downloaded. With weights given, 0.3 is BTB3D's perceptual weight (refs: btb3d.md
    # section 2; theirs is an MSE of VGG16 logits, not LPIPS).
    lpips_weight: float = 0.0
    lpips_net: str = "vgg"  # vgg | alex
    lpips_weights: str | None = path_field(None)  # lin layers (lpips' weights/v0.1/<net>.pth), or one file with both
    lpips_backbone_weights: str | None = path_field(None)  # torchvision's <net> state dict beside a lin-only file
    lpips_slices: int = 0  # axial slices compared per step (drawn per step, same for the batch); 0 = all


_TOKENIZER_EXTRA = ("init_from", "trainable", "l1_weight", "ssim_weight", "entropy_start", "entropy_anneal_steps",
                    "adversarial", "lpips_weight", "lpips_net", "lpips_weights", "lpips_backbone_weights",
                    "lpips_slices")


@dataclass
class AdversarialConfig:
    """The optional 3D adversarial term (``model.adversarial``); defaults are BTB3D's (refs: btb3d.md section 2)."""

    weight: float = 0.1  # generator loss weight
    start_step: int = 0  # steps of reconstruction alone before the discriminator joins
    widths: list[int] = field(default_factory=lambda: [8, 16, 32])
    hidden: int = 32
    lecam_weight: float = 0.001
    lecam_decay: float = 0.999
    r1_cost: float = 10.0
    r1_every: int = 20
    lr_ratio: float = 0.8  # discriminator lr = lr_ratio * optim.lr
    grad_clip: float = 0.0  # generator gradient-norm clip (BTB3D: 0.5); trainer.gradient_clip_val must stay 0
PARTS = ("encoder", "quantizer", "decoder")


class CTVolumeDataModule(SplitDataModule):
    """Preprocessed volumes [N, D, H, W] in [-1, 1], held in memory (a small set; the grid is fixed)."""

    def __init__(self, cfg, seed: int, num_workers: int = 0) -> None:
        super().__init__(cfg.batch_size, seed, eval_batch_size=cfg.eval_batch_size, num_workers=num_workers)
        self.cfg = cfg

    def load_split(self, split: str) -> Dataset:
        from tqdm.auto import tqdm

        from .io import CTPreprocess, load_ct, preprocess

        c = self.cfg
        index, rows = ctrate_split(c.root, split, labels=False)
        if not rows:
            raise ConfigError(f"config key 'data.root': {c.root} has no volumes for the {split} split")
        prep = CTPreprocess(spacing=tuple(c.spacing), hu_min=c.hu_min, hu_max=c.hu_max, size=tuple(c.size))
        volumes = []
        for i in tqdm(rows, desc=f"loading {split} volumes", leave=False, disable=len(rows) < 20):
            item = index[i]
            volume = load_ct(item["path"], slope=item["slope"], intercept=item["intercept"],
                             already_hu=True if item["in_hu"] else None)
            volumes.append(preprocess(volume, prep)[0])
        return TensorDataset(torch.stack(volumes))


def entropy_weight_at(step: int, start: float, end: float, steps: int) -> float:
    """Linear anneal from ``start`` to ``end`` over ``steps`` steps, then ``end``."""
    if steps <= 0 or step >= steps:
        return end
    return start + (end - start) * step / steps


class CTTokenizerModule(TaskModule):
    """L1 (+ SSIM, + LPIPS) reconstruction + LFQ commitment and entropy terms; PSNR, SSIM, L1 and code usage."""

    def __init__(self, model: CTTokenizer, optim, max_steps: int, *, seed: int, crop_depth: int | None,
                 l1_weight: float, ssim_weight: float, entropy_start: float, entropy_end: float,
                 entropy_anneal_steps: int, adversarial: dict | None = None, lpips: LPIPS | None = None,
                 lpips_weight: float = 0.0, lpips_slices: int = 0) -> None:
        metrics = {"psnr": lambda: PeakSignalNoiseRatio(data_range=2.0), "l1": MeanMetric, "ssim": MeanMetric,
                   "code_usage": MeanMetric}
        super().__init__(model, optim, max_steps, metrics=metrics, prog_bar=("psnr",))
        self.seed, self.crop_depth = seed, crop_depth
        self.l1_weight, self.ssim_weight = l1_weight, ssim_weight
        self.entropy = (entropy_start, entropy_end, entropy_anneal_steps)
        if lpips_weight and lpips is None:
            raise ValueError("lpips_weight > 0 needs an LPIPS module (mmseq.medical.perceptual.load_lpips)")
        self.lpips_weight, self.lpips_slices = lpips_weight, lpips_slices
        # Held outside the module tree: the frozen network is the user's file, not part of this run, so it stays
        # out of the checkpoints, the exported model and the optimizer (slice_lpips moves it to the batch's device).
        self._lpips = (lpips,) if lpips is not None and lpips_weight else ()
        self.adv = AdversarialConfig(**adversarial) if adversarial is not None else None
        self.discriminator = None
        if self.adv is not None:
            from .adversarial import Discriminator3D, DiscriminatorLoss

            # The discriminator belongs to training: it is in the run's checkpoints, never in the exported model.
            self.discriminator = Discriminator3D(1, self.adv.widths, self.adv.hidden)
            self.disc_loss = DiscriminatorLoss(self.adv.lecam_weight, self.adv.lecam_decay, self.adv.r1_cost,
                                               self.adv.r1_every)
            self.automatic_optimization = False

    def configure_optimizers(self):
        main = super().configure_optimizers()
        if self.discriminator is None:
            return main
        from mmseq.runner.optim import build_optimizer

        d_cfg = self.optim_cfg.copy()
        d_cfg.lr = self.optim_cfg.lr * self.adv.lr_ratio
        disc = build_optimizer(self.discriminator, d_cfg, self.max_steps)
        return [main["optimizer"], disc["optimizer"]], [main["lr_scheduler"], disc["lr_scheduler"]]

    def training_step(self, batch, batch_idx):
        if self.discriminator is None:
            return super().training_step(batch, batch_idx)
        from mmseq.mixers.base import aux_loss

        from .adversarial import generator_loss

        opt_g, opt_d = self.optimizers()
        sched_g, sched_d = self.lr_schedulers()
        step = self.global_step
        outputs = self.forward_batch(batch, "train")
        x, x_hat, _ = outputs
        loss = self.loss(outputs, batch) + aux_loss(self.model)
        active = step >= self.adv.start_step
        n = x.shape[0]
        if active:
            self.discriminator.requires_grad_(False)
            g_adv = generator_loss(self.discriminator(x_hat))
            self.discriminator.requires_grad_(True)
            loss = loss + self.adv.weight * g_adv
            self.log("train/g_adv", g_adv.detach(), batch_size=n)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.adv.grad_clip > 0:
            self.clip_gradients(opt_g, gradient_clip_val=self.adv.grad_clip, gradient_clip_algorithm="norm")
        opt_g.step()
        sched_g.step()
        if active:
            d = self.disc_loss(self.discriminator, x, x_hat, step)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d["loss"])
            # The raw optimizer: Lightning counts a step per LightningOptimizer.step, and a run's global step
            # (its max_steps, its resumable data order) must count generator steps only.
            opt_d.optimizer.step()
            for name in ("loss", "lecam", "r1"):
                self.log(f"train/d_{name}", d[name].detach(), batch_size=n)
        sched_d.step()
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=n)

    def forward_batch(self, batch, stage: str):
        x = batch[0][:, None]  # [B, 1, D, H, W]
        if stage == "train" and self.crop_depth and self.crop_depth < x.shape[2]:
            # Seeded by the step, so a resumed run draws the crops it would have drawn.
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.global_step)
            start = int(torch.randint(0, x.shape[2] - self.crop_depth + 1, (1,), generator=gen))
            x = x[:, :, start:start + self.crop_depth]
        x = self.model.pad_volume(x)
        weight = entropy_weight_at(self.global_step, *self.entropy)
        x_hat, aux = self.model(x, entropy_weight=weight if stage == "train" else None)
        return x, x_hat, aux

    def loss(self, outputs, batch) -> torch.Tensor:
        x, x_hat, aux = outputs
        lpips = {}
        if self._lpips:
            # Seeded by the step, as the crops are, so a resumed run compares the slices it would have compared.
            gen = torch.Generator().manual_seed(self.seed * 1_000_033 + self.global_step)
            lpips = {"lpips": self._lpips[0], "lpips_weight": self.lpips_weight, "lpips_slices": self.lpips_slices,
                     "generator": gen}
        rec = reconstruction_losses(x, x_hat, l1_weight=self.l1_weight, ssim_weight=self.ssim_weight, **lpips)
        if self.training:
            self.log("train/l1", rec["l1"], batch_size=x.shape[0])
            if self._lpips:
                self.log("train/lpips", rec["lpips"].detach(), batch_size=x.shape[0])
        aux_loss = aux["loss"] if any(p.requires_grad for p in self.model.quantizer.parameters()) or \
            any(p.requires_grad for p in self.model.encoder.parameters()) else x.new_zeros(())
        return rec["loss"] + aux_loss

    def update_metrics(self, metrics, outputs, batch) -> None:
        x, x_hat, aux = outputs
        x_hat = x_hat.clamp(-1, 1)
        metrics["psnr"].update(x_hat, x)
        metrics["l1"].update((x - x_hat).abs().mean())
        metrics["ssim"].update(1 - reconstruction_losses(x, x_hat, l1_weight=0.0)["ssim"])
        ids = aux["ids"]
        metrics["code_usage"].update(torch.tensor(float(ids.unique().numel()) / ids.numel()))


@register_task("ct-tokenizer")
class CTTokenizerTask(Task):
    """Train the causal 3D CT tokenizer on CT-RATE-layout volumes (one curriculum stage per config)."""

    data_config = CTVolumeDataConfig
    model_config = CTTokenizerModelConfig
    monitor = "val/psnr"
    monitor_mode = "max"

    def check(self) -> None:
        d, m = self.cfg.data, self.cfg.model
        if len(d.spacing) != 3 or min(d.spacing) <= 0:
            raise ConfigError(f"config key 'data.spacing': three positive mm values (D, H, W), got {list(d.spacing)}")
        if len(d.size) != 3 or min(d.size) < 1:
            raise ConfigError(f"config key 'data.size': three positive sizes (D, H, W), got {list(d.size)}")
        if m.adversarial is not None:
            try:
                adv = AdversarialConfig(**to_dict(m.adversarial))
            except TypeError as e:
                raise ConfigError(f"config key 'model.adversarial': {e}") from None
            if adv.r1_every < 0 or adv.weight < 0 or not 0 <= adv.lecam_decay < 1:
                raise ConfigError("config key 'model.adversarial': weight >= 0, r1_every >= 0 and 0 <= lecam_decay < 1")
            if self.cfg.trainer.gradient_clip_val:
                raise ConfigError("config key 'trainer.gradient_clip_val': with model.adversarial the generator is "
                                  "clipped by model.adversarial.grad_clip; set trainer.gradient_clip_val to 0")
            if self.cfg.trainer.precision == "16-mixed":
                raise ConfigError("config key 'trainer.precision': 16-mixed is not supported with "
                                  "model.adversarial (two optimizers, one loss scaler); use bf16-mixed or 32-true")
        self._check_lpips()
        bad = [p for p in m.trainable if p not in PARTS]
        if bad or not m.trainable:
            raise ConfigError(f"config key 'model.trainable': parts among {', '.join(PARTS)}, got {list(m.trainable)}")
        try:
            model = self._build()
            t = model.depth_factor
            if d.crop_depth is not None and (d.crop_depth < 1 or (d.crop_depth - 1) % t):
                raise ConfigError(f"config key 'data.crop_depth': must be 1 + k*{t} for this tokenizer "
                                  f"(e.g. {1 + t}), got {d.crop_depth}")
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config section 'model': {e}") from None

    def _check_lpips(self) -> None:
        from .perceptual import LPIPSFileError, check_lpips_files, net_name

        m = self.cfg.model
        if m.lpips_weight < 0 or m.lpips_slices < 0:
            raise ConfigError("config keys 'model.lpips_weight' and 'model.lpips_slices': >= 0, got "
                              f"{m.lpips_weight} and {m.lpips_slices}")
        if not m.lpips_weight:
            return
        if not m.lpips_weights:
            raise ConfigError("config key 'model.lpips_weights': model.lpips_weight > 0 needs LPIPS weights, the lin "
                              "layers (the lpips package's weights/v0.1/<net>.pth) with torchvision's backbone state "
                              "dict as model.lpips_backbone_weights, or one file holding both; nothing is downloaded")
        try:
            net_name(m.lpips_net)
        except UserError as e:
            raise ConfigError(f"config key 'model.lpips_net': {e}") from None
        try:
            check_lpips_files(m.lpips_net, m.lpips_weights, m.lpips_backbone_weights or None)
        except LPIPSFileError as e:
            key = "lpips_backbone_weights" if e.part == "backbone" else "lpips_weights"
            raise ConfigError(f"config key 'model.{key}': {e}") from None

    def _build(self) -> CTTokenizer:
        d = self.cfg.data
        args = {k: v for k, v in to_dict(self.cfg.model).items() if k not in _TOKENIZER_EXTRA}
        preprocess = {"spacing": list(d.spacing), "hu_min": d.hu_min, "hu_max": d.hu_max}
        return CTTokenizer(**args, preprocess=preprocess)

    def build_model(self) -> CTTokenizer:
        from mmseq.runner.pretrained import from_pretrained

        model = self._build()
        m = self.cfg.model
        if m.init_from:
            start = from_pretrained(m.init_from)
            if not isinstance(start, CTTokenizer) or start.init_args.get("token_bits") != model.token_bits:
                raise ConfigError(f"config key 'model.init_from': {m.init_from} holds no CT tokenizer of this shape")
            missing, unexpected = model.load_state_dict(start.state_dict(), strict=False)
            if missing or unexpected:
                raise ConfigError(f"config key 'model.init_from': {m.init_from} does not fit this tokenizer "
                                  f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        for part in PARTS:
            getattr(model, part).requires_grad_(part in m.trainable)
        return model

    def build_datamodule(self) -> CTVolumeDataModule:
        return CTVolumeDataModule(self.cfg.data, self.cfg.seed, self.cfg.trainer.num_workers)

    def build_module(self, model: CTTokenizer) -> CTTokenizerModule:
        m = self.cfg.model
        return CTTokenizerModule(model, self.cfg.optim, self.cfg.trainer.max_steps, seed=self.cfg.seed,
                                 crop_depth=self.cfg.data.crop_depth, l1_weight=m.l1_weight,
                                 ssim_weight=m.ssim_weight, entropy_start=m.entropy_start,
                                 entropy_end=m.entropy_weight, entropy_anneal_steps=m.entropy_anneal_steps,
                                 adversarial=None if m.adversarial is None else to_dict(m.adversarial),
                                 lpips=self._load_lpips(), lpips_weight=m.lpips_weight,
                                 lpips_slices=m.lpips_slices)

    def _load_lpips(self) -> LPIPS | None:
        from .perceptual import load_lpips

        m = self.cfg.model
        if not m.lpips_weight:
            return None
        return load_lpips(m.lpips_weights, m.lpips_backbone_weights or None, net=m.lpips_net)
