"""The task module template: the LightningModule every task shares.

A task's module says only what is its own: how a batch becomes model outputs (``forward_batch``), its loss
(``loss``), its metrics (``metrics=`` factories, one instance per stage) and, when the defaults do not fit,
how a batch updates them (``update_metrics``) and which figures to draw (``write_figures``). The template
adds every mixer's auxiliary loss, logs the losses, computes and logs each stage's metrics at the end of the
epoch, hands non-scalar results (a confusion matrix) to ``write_figures``, and sets up the optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import lightning.pytorch as pl
import torch
from omegaconf import OmegaConf
from torch import nn
from torchmetrics import Metric

from mmseq.mixers.base import aux_loss, mixer_metrics

from .config import OptimConfig
from .optim import build_optimizer

EVAL_STAGES = ("val", "test")


class TaskModule(pl.LightningModule):
    """Receives the model (dependency injection), the optimizer settings and the metric factories.

    ``metrics``: name -> zero-argument factory of a torchmetrics ``Metric``; each stage (val, test) gets its
    own instances, logged as ``<stage>/<name>``. ``prog_bar``: metric names shown in the progress bar.
    """

    def __init__(self, model: nn.Module, optim: OptimConfig | Mapping, max_steps: int,
                 metrics: Mapping[str, Callable[[], Metric]] | None = None, prog_bar: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.model = model
        self.optim_cfg = OmegaConf.structured(OptimConfig(**optim)) if isinstance(optim, Mapping) else optim
        self.max_steps = max_steps
        self.prog_bar = tuple(prog_bar)
        factories = dict(metrics or {})
        # Module names cannot hold dots (acc_depth_0.5), so the modules are stored under their position.
        self.metric_names = list(factories)
        self.stage_metrics = nn.ModuleDict(
            {stage: nn.ModuleList(make() for make in factories.values()) for stage in EVAL_STAGES})
        # An evaluation names its files after its output (eval_confusion_test.png), never over the run's own.
        self.artifact_stem = ""

    # -- what a task provides -------------------------------------------------------------------------------
    def forward_batch(self, batch, stage: str) -> torch.Tensor:
        """Model outputs for a batch; ``stage`` is train, val or test. Default: ``model(batch[0])``."""
        return self.model(batch[0])

    def loss(self, outputs: torch.Tensor, batch) -> torch.Tensor:
        """The task loss (the template adds the mixers' auxiliary losses in training)."""
        raise NotImplementedError

    def update_metrics(self, metrics: Mapping[str, Metric], outputs: torch.Tensor, batch) -> None:
        """Default for classifiers: every metric gets (argmax of outputs, ``batch[1]``)."""
        preds = outputs.argmax(-1)
        for metric in metrics.values():
            metric.update(preds, batch[1])

    def write_figures(self, stage: str, values: dict[str, torch.Tensor], out_dir: Path, prefix: str) -> None:
        """Draw the non-scalar metric results of ``stage`` into ``out_dir`` (the run folder), each file name
        starting with ``prefix`` ("" in training, "eval_" for ``mmseq eval --out eval.json``). Rank 0 only."""

    # -- the shared loop ------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        loss = self.loss(self.forward_batch(batch, "train"), batch) + aux_loss(self.model)
        self.log("train/loss", loss, prog_bar=True, batch_size=self.batch_size_of(batch))
        self._log_mixer_metrics("train", batch)
        return loss

    def _log_mixer_metrics(self, stage: str, batch) -> None:
        """What the mixers report of their last forward (e.g. SeqBoat's activation rate), as stage metrics."""
        for name, value in mixer_metrics(self.model).items():
            self.log(f"{stage}/{name}", value, sync_dist=stage != "train", batch_size=self.batch_size_of(batch))

    def _eval_step(self, batch, stage: str) -> None:
        outputs = self.forward_batch(batch, stage)
        self.log(f"{stage}/loss", self.loss(outputs, batch), prog_bar=stage == "val", sync_dist=True,
                 batch_size=self.batch_size_of(batch))
        self.update_metrics(self.metrics_for(stage), outputs, batch)
        self._log_mixer_metrics(stage, batch)

    def metrics_for(self, stage: str) -> dict[str, Metric]:
        """The metric instances of ``stage`` (val or test) by name."""
        return dict(zip(self.metric_names, self.stage_metrics[stage]))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._end_stage("val")

    def on_test_epoch_end(self) -> None:
        self._end_stage("test")

    def _end_stage(self, stage: str) -> None:
        values = {}
        for name, metric in self.metrics_for(stage).items():
            if metric.update_count:  # a metric over a subset (one depth, the SC10 words) may see no example
                values[name] = metric.compute()
            metric.reset()
        for name, value in values.items():
            if value.numel() == 1:
                self.log(f"{stage}/{name}", value.float(), prog_bar=stage == "val" and name in self.prog_bar)
        figures = {k: v.cpu() for k, v in values.items() if v.numel() > 1}
        if figures and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            prefix = f"{self.artifact_stem}_" if self.artifact_stem else ""
            self.write_figures(stage, figures, Path(self.trainer.default_root_dir), prefix)

    def configure_optimizers(self):
        return build_optimizer(self.model, self.optim_cfg, self.max_steps)

    # -- throughput -----------------------------------------------------------------------------------------
    def batch_size_of(self, batch) -> int:
        """Samples in a batch (for throughput); override when the batch is not a tuple of tensors."""
        first = batch[0] if isinstance(batch, (list, tuple)) else next(iter(batch.values()))
        return int(first.shape[0])

    def tokens_of(self, batch) -> int:
        """Sequence positions in a batch (for tokens/s); defaults to B * L of the first tensor."""
        first = batch[0] if isinstance(batch, (list, tuple)) else next(iter(batch.values()))
        return int(first.shape[0] * (first.shape[1] if first.dim() > 1 else 1))
