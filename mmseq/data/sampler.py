"""A training sampler whose order is a pure function of (seed, step), so a resumed run sees the same data.

Training is step-based: the sampler yields an endless stream of shuffled passes over the dataset, pass p
shuffled with ``seed + p``. Rank r of W takes every W-th batch. On (re)start it begins at the batch that
the trainer's restored ``global_step`` says comes next, so a killed run continues with the same data order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class StepSampler(Sampler[list[int]]):
    """Batch sampler: yields lists of ``batch_size`` indices forever, starting after ``start_batch()`` batches.

    ``start_batch`` is called when iteration begins (after a checkpoint is restored); it returns how many
    global batches (over all ranks) were consumed already.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, start_batch: Callable[[], int] | None = None) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch or (lambda: 0)

    def _order(self, p: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + p)
        return torch.randperm(self.num_samples, generator=g)

    def batch_indices(self, global_batch: int) -> list[int]:
        """Indices of global batch number ``global_batch`` (sample positions wrap across passes)."""
        start = global_batch * self.batch_size
        out: list[int] = []
        while len(out) < self.batch_size:
            p, offset = divmod(start + len(out), self.num_samples)
            order = self._order(p)
            take = min(self.batch_size - len(out), self.num_samples - offset)
            out.extend(order[offset:offset + take].tolist())
        return out

    def __iter__(self) -> Iterator[list[int]]:
        b = self.start_batch() * self.world_size + self.rank
        while True:
            yield self.batch_indices(b)
            b += self.world_size


def resumable_loader(dataset: Dataset, batch_size: int, seed: int, trainer=None,
                     num_workers: int = 0, collate_fn=None) -> DataLoader:
    """Endless training loader that resumes at the trainer's global step (see StepSampler)."""
    rank = trainer.global_rank if trainer is not None else 0
    world = trainer.world_size if trainer is not None else 1

    def consumed() -> int:
        if trainer is None:
            return 0
        return trainer.global_step * trainer.accumulate_grad_batches

    sampler = StepSampler(len(dataset), batch_size, seed=seed, rank=rank, world_size=world, start_batch=consumed)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_fn,
                      persistent_workers=False)
