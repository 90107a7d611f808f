"""Callbacks the runner adds to every run: RNG state in checkpoints, throughput and peak memory."""

from __future__ import annotations

import random
import resource
import time

import lightning.pytorch as pl
import numpy as np
import torch


class RNGState(pl.Callback):
    """Saves the torch/numpy/python RNG states in each checkpoint and restores them on resume.

    Stored as tensors and plain lists so the checkpoint loads with ``weights_only=True``.
    """

    def __init__(self) -> None:
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        np_state = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
            "python": _to_lists(random.getstate()),
        }

    def load_state_dict(self, state: dict) -> None:
        self._pending = state

    def on_train_start(self, trainer, pl_module) -> None:
        # Restore here, after everything that runs between loading and the first step.
        if self._pending is None:
            return
        s = self._pending
        torch.set_rng_state(s["torch"])
        if s["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda"])
        np_state = s["numpy"]
        np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), int(np_state[2]),
                             int(np_state[3]), float(np_state[4])))
        random.setstate(_to_tuples(s["python"]))
        self._pending = None


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


class Throughput(pl.Callback):
    """Logs samples/s, tokens/s (training, averaged over the logging window) and peak memory in MB."""

    def __init__(self, every_n_steps: int = 10) -> None:
        self.every = max(1, every_n_steps)
        self._t0: float | None = None
        self._samples = 0
        self._tokens = 0
        self.last: dict[str, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._sync(pl_module)
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._samples += pl_module.batch_size_of(batch) * trainer.world_size
        self._tokens += pl_module.tokens_of(batch) * trainer.world_size
        if trainer.global_step % self.every:
            return
        self._sync(pl_module)
        dt = time.perf_counter() - self._t0
        self.last = {
            "perf/samples_per_sec": self._samples / dt,
            "perf/tokens_per_sec": self._tokens / dt,
            "perf/peak_mem_mb": peak_memory_mb(pl_module.device),
        }
        pl_module.log_dict(self.last, on_step=True, on_epoch=False, rank_zero_only=True)
        self._t0, self._samples, self._tokens = time.perf_counter(), 0, 0

    @staticmethod
    def _sync(pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated accelerator memory, or the process's peak resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
