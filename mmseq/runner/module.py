"""Base LightningModule: holds the built model, the optimizer config and the shared logging."""

from __future__ import annotations

import lightning.pytorch as pl
from omegaconf import OmegaConf
from torch import nn

from .config import OptimConfig
from .optim import build_optimizer


class TaskModule(pl.LightningModule):
    """Receives the model (dependency injection) and the optimizer settings; tasks add the steps."""

    def __init__(self, model: nn.Module, optim: OptimConfig | dict, max_steps: int) -> None:
        super().__init__()
        self.model = model
        self.optim_cfg = OmegaConf.structured(OptimConfig(**optim)) if isinstance(optim, dict) else optim
        self.max_steps = max_steps

    def configure_optimizers(self):
        return build_optimizer(self.model, self.optim_cfg, self.max_steps)

    def batch_size_of(self, batch) -> int:
        """Samples in a batch (for throughput); override when the batch is not a tuple of tensors."""
        first = batch[0] if isinstance(batch, (list, tuple)) else next(iter(batch.values()))
        return int(first.shape[0])

    def tokens_of(self, batch) -> int:
        """Sequence positions in a batch (for tokens/s); defaults to B * L of the first tensor."""
        first = batch[0] if isinstance(batch, (list, tuple)) else next(iter(batch.values()))
        return int(first.shape[0] * (first.shape[1] if first.dim() > 1 else 1))
