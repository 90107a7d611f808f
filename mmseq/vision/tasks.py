"""The ``segmentation`` task: train MFuser on a source domain, report mIoU on the source and on every target domain.

Data sets are named by format and folder (``{format: cityscapes, root: ..., split: val}``; formats: cityscapes,
gta5, synthia, bdd100k, mapillary). ``mmseq data make street-scenes`` writes the built-in domains in the
Cityscapes layout. Validation and test evaluate the source's val split and each target (the domain-generalization
protocol: targets are never trained on); the checkpoint is picked on the source's val mIoU, since a DG method
must not look at the targets to choose.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from mmseq.data import SplitDataModule
from mmseq.errors import ConfigError
from mmseq.runner.config import to_dict
from mmseq.runner.module import TaskModule
from mmseq.runner.task import Task, register_task

from .labels import CLASSES

SOURCE = "source"


def _scenes(domain: str, split: str) -> dict[str, Any]:
    return {"format": "cityscapes", "root": f"data/street_scenes/{domain}", "split": split}


@dataclass
class SegmentationDataConfig:
    """Source (trained on), its val split, and the target domains (evaluated only); crops and evaluation."""

    source: dict[str, Any] = field(default_factory=lambda: _scenes("synthetic", "train"))
    source_val: dict[str, Any] | None = field(default_factory=lambda: _scenes("synthetic", "val"))
    # name -> data set; empty by default, since a mapping given in a config merges into its default rather than
    # replacing it (a config names exactly its targets).
    targets: dict[str, Any] = field(default_factory=dict)
    crop_size: list[int] = field(default_factory=lambda: [512, 512])  # (H, W)
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])  # random rescale, ratio of the image size
    base_size: list[int] | None = None  # (W, H) the scale range applies to; None = each image's own size
    cat_max_ratio: float = 0.75
    flip: float = 0.5
    photometric: bool = True
    eval_size: list[int] | None = None  # (W, H) keep-ratio fit before evaluation (2048x1024 for Cityscapes)
    window: int | None = 512  # sliding-window side at evaluation; None = the whole image at once
    stride: int = 341
    limit_eval: int | None = None  # evaluate only the first N images of each set
    batch_size: int = 2
    eval_batch_size: int = 1


@dataclass
class SegmentationModelConfig:
    """MFuser arguments (``class_names`` from the data: the 19 Cityscapes classes) plus the loss weights."""

    fusion: str = "both"
    dinov2: dict[str, Any] = field(default_factory=lambda: {"model_name": "vit_large_patch14_dinov2"})
    clip: dict[str, Any] = field(default_factory=lambda: {"model_name": "EVA02-L-14-336"})
    img_size: int = 512
    fuser: dict[str, Any] = field(default_factory=dict)
    out_indices: list[int] | None = None
    n_ctx: int = 8
    name_length: int = 5
    enhancer: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] = field(default_factory=lambda: {"name": "mask2former"})
    tau: float = 0.07
    loss: dict[str, Any] = field(default_factory=dict)  # MaskClassificationLoss arguments
    score_map_weight: float = 1.0


_NOT_MODEL_ARGS = ("loss", "score_map_weight")


def eval_domains(data_cfg) -> list[str]:
    """Evaluation sets in order: the source's val split (when given), then the targets."""
    return ([SOURCE] if data_cfg.source_val is not None else []) + list(data_cfg.targets)


class RepeatedAugmented(Dataset):
    """``repeats`` augmented passes over a data set as one index space: item i is base item i % N drawn with
    augmentation seed (seed, i), so a crop is a pure function of the index and a resumed run redraws it."""

    def __init__(self, base: Dataset, augment, repeats: int, seed: int) -> None:
        self.base, self.augment, self.repeats, self.seed = base, augment, repeats, seed

    def __len__(self) -> int:
        return len(self.base) * self.repeats

    def __getitem__(self, i: int):
        image, label = self.base[i % len(self.base)]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        return self.augment(image, label, g)


class EvalSet(Dataset):
    """(image, label, domain index) with an optional keep-ratio resize; ``limit`` keeps the first items."""

    def __init__(self, base: Dataset, domain: int, eval_size: list[int] | None, limit: int | None) -> None:
        self.base, self.domain, self.eval_size = base, domain, eval_size
        self.n = len(base) if limit is None else min(limit, len(base))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        from .augment import resize_keep_ratio

        image, label = self.base[i]
        if self.eval_size is not None:
            image, label = resize_keep_ratio(image, label, tuple(self.eval_size))
        return image, label, self.domain


class SegmentationDataModule(SplitDataModule):
    def __init__(self, cfg, seed: int, max_steps: int, num_workers: int = 0) -> None:
        super().__init__(cfg.batch_size, seed, eval_batch_size=cfg.eval_batch_size, num_workers=num_workers)
        self.cfg, self.max_steps = cfg, max_steps

    def domains(self) -> list[str]:
        return eval_domains(self.cfg)

    def _open(self, spec, key: str) -> Dataset:
        from .datasets import open_dataset

        spec = to_dict(spec)
        unknown = set(spec) - {"format", "root", "split"}
        if unknown or "root" not in spec:
            raise ConfigError(f"config key '{key}': expected {{format, root, split}}, got {sorted(spec)}")
        return open_dataset(spec.get("format", "cityscapes"), spec["root"], spec.get("split"))

    def load_split(self, split: str) -> Dataset:
        from .augment import SegAugment

        d = self.cfg
        if split == "train":
            base = self._open(d.source, "data.source")
            augment = SegAugment(crop_size=tuple(d.crop_size), scale_range=tuple(d.scale_range),
                                 base_size=tuple(d.base_size) if d.base_size else None,
                                 cat_max_ratio=d.cat_max_ratio, flip=d.flip, photometric=d.photometric)
            repeats = max(1, math.ceil((self.max_steps + 1) * d.batch_size / len(base)))
            return RepeatedAugmented(base, augment, repeats, self.seed)
        sets = []
        for i, name in enumerate(self.domains()):
            spec = d.source_val if name == SOURCE else d.targets[name]
            key = "data.source_val" if name == SOURCE else f"data.targets.{name}"
            sets.append(EvalSet(self._open(spec, key), i, d.eval_size, d.limit_eval))
        return ConcatDataset(sets)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=self.eval_batch_size, num_workers=self.num_workers)


class SegmentationModule(TaskModule):
    """Mask classification + score-map losses in training; sliding-window mIoU per evaluation domain."""

    def __init__(self, model, optim, max_steps: int, domains: list[str], loss: dict | None = None,
                 score_map_weight: float = 1.0, window: int | None = 512, stride: int = 341, seed: int = 0) -> None:
        from .evaluate import SegmentationIoU
        from .losses import MaskClassificationLoss

        k = model.num_classes
        metrics = {f"iou_{name}": (lambda: SegmentationIoU(k)) for name in domains}
        super().__init__(model, optim, max_steps, metrics=metrics)
        self.domains = list(domains)
        self.criterion = MaskClassificationLoss(k, **(loss or {}))
        self.score_map_weight = score_map_weight
        self.window, self.stride, self.seed = window, stride, seed
        self.saved: dict[tuple[str, str], int] = {}  # (stage, domain) -> predictions saved as PNG this stage

    def forward_batch(self, batch, stage: str):
        images = batch[0].float() / 255
        if stage == "train":
            return self.model(images)
        return self.predict(images)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> class scores [B, K, H, W] (sliding window when larger than it)."""
        from .evaluate import sliding_window_logits

        if self.window is None:
            return self.model.predict_scores(images)
        return sliding_window_logits(self.model.predict_scores, images, self.model.num_classes,
                                     window=self.window, stride=self.stride)

    def loss(self, outputs, batch) -> torch.Tensor:
        from .losses import pixel_ce

        labels = batch[1].long()
        # Point sampling is seeded by the step: a resumed run draws the points the uninterrupted run drew.
        g = torch.Generator(device=labels.device).manual_seed(self.seed * 1_000_003 + self.global_step)
        losses = self.criterion(outputs, labels, generator=g)
        total = losses["loss"]
        if self.score_map_weight:
            score = pixel_ce(outputs["score_map"], labels, tau=self.model.tau)
            total = total + self.score_map_weight * score
            self.log("train/loss_score", score.detach(), batch_size=labels.shape[0])
        for name in ("loss_cls", "loss_mask", "loss_dice"):
            self.log(f"train/{name}", losses[name].detach(), batch_size=labels.shape[0])
        return total

    def _eval_step(self, batch, stage: str) -> None:
        scores = self.forward_batch(batch, stage)
        preds = scores.argmax(1)
        labels = batch[1].long()
        metrics = self.metrics_for(stage)
        for domain in batch[2].unique().tolist():
            rows = batch[2] == domain
            metrics[f"iou_{self.domains[domain]}"].update(preds[rows], labels[rows])
        if stage == "test" and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self.save_examples(stage, batch, preds)

    def save_examples(self, stage: str, batch, preds: torch.Tensor, per_domain: int = 4) -> None:
        """The first ``per_domain`` predictions of each evaluation set as label, colour and overlay PNGs
        (<run>/predictions_<stage>/<domain>/)."""
        from .evaluate import save_prediction

        prefix = f"{self.artifact_stem}_" if self.artifact_stem else ""
        for image, pred, domain in zip(batch[0], preds, batch[2].tolist(), strict=True):
            name = self.domains[domain]
            done = self.saved.get((stage, name), 0)
            if done >= per_domain:
                continue
            out = Path(self.trainer.default_root_dir) / f"{prefix}predictions_{stage}" / name
            out.mkdir(parents=True, exist_ok=True)
            save_prediction(out, f"{done:02d}", image.permute(1, 2, 0).cpu().numpy(),
                            pred.to(torch.uint8).cpu().numpy())
            self.saved[(stage, name)] = done + 1

    def _end_stage(self, stage: str) -> None:
        self.saved = {k: v for k, v in self.saved.items() if k[0] != stage}
        results = {}
        for name, metric in self.metrics_for(stage).items():
            if metric.update_count:
                results[name.removeprefix("iou_")] = {k: v.detach().cpu() for k, v in metric.compute().items()}
            metric.reset()
        for domain, r in results.items():
            suffix = "" if domain == SOURCE else f"_{domain}"
            self.log(f"{stage}/miou{suffix}", float(r["miou"]), prog_bar=stage == "val" and domain == SOURCE)
            self.log(f"{stage}/acc{suffix}", float(r["acc"]))
        targets = [float(r["miou"]) for d, r in results.items() if d != SOURCE]
        if targets:
            self.log(f"{stage}/miou_targets", sum(targets) / len(targets))
        if results and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self.write_iou_tables(stage, results)

    def write_iou_tables(self, stage: str, results: dict) -> None:
        from .evaluate import format_iou_table

        out_dir = Path(self.trainer.default_root_dir)
        prefix = f"{self.artifact_stem}_" if self.artifact_stem else ""
        out_dir.mkdir(parents=True, exist_ok=True)
        table = {d: {"miou": float(r["miou"]), "acc": float(r["acc"]),
                     "iou": {c: (None if math.isnan(v) else float(v)) for c, v in
                             zip(self.model.class_names, r["iou"].tolist(), strict=True)}}
                 for d, r in results.items()}
        (out_dir / f"{prefix}iou_{stage}.json").write_text(json.dumps(table, indent=2))
        (out_dir / f"{prefix}iou_{stage}.md").write_text(format_iou_table(results) + "\n")


@register_task("segmentation")
class SegmentationTask(Task):
    """Domain-generalized semantic segmentation (19 Cityscapes classes) with MFuser."""

    data_config = SegmentationDataConfig
    model_config = SegmentationModelConfig
    monitor = "val/miou"
    monitor_mode = "max"

    def check(self) -> None:
        from .datasets import DATASET_FORMATS

        d = self.cfg.data
        if d.source_val is None and not d.targets:
            raise ConfigError("config key 'data.targets': no evaluation set (data.source_val is null and no targets); "
                              "name at least one, e.g. {cityscapes: {format: cityscapes, root: ..., split: val}}")
        specs = [("data.source", d.source)] + ([("data.source_val", d.source_val)] if d.source_val else [])
        specs += [(f"data.targets.{k}", v) for k, v in d.targets.items()]
        for key, spec in specs:
            fmt = to_dict(spec).get("format", "cityscapes")
            if fmt not in DATASET_FORMATS:
                raise ConfigError(f"config key '{key}.format': expected one of {', '.join(DATASET_FORMATS)}, "
                                  f"got {fmt!r}")
        if len(d.crop_size) != 2 or min(d.crop_size) < 1:
            raise ConfigError(f"config key 'data.crop_size': expected [H, W] >= 1, got {list(d.crop_size)}")
        if len(d.scale_range) != 2 or not 0 < d.scale_range[0] <= d.scale_range[1]:
            raise ConfigError(f"config key 'data.scale_range': expected [lo, hi] with 0 < lo <= hi, "
                              f"got {list(d.scale_range)}")
        if d.window is not None and (d.window < 1 or not 1 <= d.stride <= d.window):
            raise ConfigError(f"config key 'data.stride': expected 1 <= stride <= window ({d.window}), got {d.stride}")
        for key in ("batch_size", "eval_batch_size"):
            if getattr(d, key) < 1:
                raise ConfigError(f"config key 'data.{key}': must be >= 1, got {getattr(d, key)}")
        from .model import FUSIONS

        if self.cfg.model.fusion not in FUSIONS:
            raise ConfigError(f"config key 'model.fusion': expected one of {', '.join(FUSIONS)}, "
                              f"got {self.cfg.model.fusion!r}")

    def model_args(self) -> dict[str, Any]:
        args = {k: v for k, v in to_dict(self.cfg.model).items() if k not in _NOT_MODEL_ARGS}
        return {"class_names": list(CLASSES), **args}

    def build_model(self):
        from .model import MFuser

        try:
            return MFuser(**self.model_args())
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config section 'model': {e}") from None

    def build_datamodule(self) -> SegmentationDataModule:
        return SegmentationDataModule(self.cfg.data, self.cfg.seed, self.cfg.trainer.max_steps,
                                      self.cfg.trainer.num_workers)

    def build_module(self, model) -> SegmentationModule:
        d = self.cfg.data
        return SegmentationModule(model, self.cfg.optim, self.cfg.trainer.max_steps, eval_domains(d),
                                  loss=to_dict(self.cfg.model.loss), score_map_weight=self.cfg.model.score_map_weight,
                                  window=d.window, stride=d.stride, seed=self.cfg.seed)

