"""A DataModule over named splits: a task says how to load one split, this does the loaders."""

from __future__ import annotations

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from .sampler import resumable_loader

# The splits each Lightning stage reads: an evaluation never loads (or decodes) the training data.
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


class SplitDataModule(pl.LightningDataModule):
    """train/val/test splits loaded on demand by ``load_split(name)``; the train order is step-resumable.

    The training loader draws batches as a pure function of (seed, global step), so a resumed run sees the
    batches the uninterrupted run would have seen.
    """

    def __init__(self, batch_size: int, seed: int, eval_batch_size: int | None = None, num_workers: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.splits: dict[str, Dataset] = {}

    def load_split(self, split: str) -> Dataset:
        """The ``split`` ("train", "val" or "test") as a map-style Dataset."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        for split in STAGE_SPLITS.get(stage or "", ("train", "val", "test")):
            if split not in self.splits:
                self.splits[split] = self.load_split(split)

    def train_dataloader(self) -> DataLoader:
        return resumable_loader(self.splits["train"], self.batch_size, self.seed, trainer=self.trainer,
                                num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=self.eval_batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=self.eval_batch_size, num_workers=self.num_workers)
