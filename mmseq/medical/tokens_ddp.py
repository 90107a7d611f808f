"""``mmseq tokenize-ct --devices N``: a data set's volumes encoded in N processes (GPUs, or CPU processes on
gloo) through Lightning's predict loop. Imported only when asked for, so the one-process path stays light.

Each process takes every N-th volume of the list it is given (no padding: nothing is encoded twice or
dropped when N does not divide the count), loads and preprocesses it (in DataLoader workers with
``num_workers`` > 0), encodes it with the tokenizer's windowed encode and writes its token file atomically.
The caller (:func:`mmseq.medical.tokens.tokenize_many`) decides what is still to do before launching and
writes ``index.csv`` from what is on disk afterwards.

The processes are started by spawn (Lightning's ``ddp_spawn``): this process waits and then goes on alone,
so the list it made is the one every rank works from, and only it writes the index and prints. Lightning's
``ddp`` instead re-runs the command line, so each rank would redo the listing, the index and the summary,
and a call from Python (a test, a notebook) would re-run that program. Fork starts fastest, but forked ranks
hung in their start-up when this process had already computed on several threads, and CUDA cannot be used
in a process forked after CUDA started.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from torch.utils.data import DataLoader, Dataset, Sampler

from mmseq.errors import UserError

from .io import CTPreprocess
from .tokens import PreparedVolume, VolumeSource, encode_prepared, prepare_volume, tokenizer_preprocess

ACCELERATORS = ("auto", "cpu", "gpu")


class VolumeDataset(Dataset):
    """Item i: ``(i, PreparedVolume)``, or ``(i, None)`` when the volume fails to load (the caller retries it
    in its own process, which records the error)."""

    def __init__(self, sources: list[VolumeSource], cfg: CTPreprocess) -> None:
        self.sources, self.cfg = sources, cfg

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> tuple[int, PreparedVolume | None]:
        source = self.sources[i]
        try:
            return i, prepare_volume(source.load(), self.cfg, source=source.path.name)
        except UserError:
            return i, None


class RankStrided(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of ``n``: each index on exactly one rank, without padding."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def _single(item):
    """collate_fn: volumes differ in shape, so a batch is one item as the dataset made it."""
    return item


class TokenizeModule(pl.LightningModule):
    """predict_step encodes one prepared volume and writes its token file; it returns nothing to gather."""

    def __init__(self, tokenizer, sources: list[VolumeSource], targets: list[Path], *, window: int,
                 num_workers: int) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.dataset = VolumeDataset(sources, tokenizer_preprocess(tokenizer))
        self.targets, self.window, self.num_workers = targets, window, num_workers

    def setup(self, stage: str) -> None:
        from mmseq.runner.train import quiet_lightning

        quiet_lightning()  # again in each started process
        # The loader processes are the user's choice (--num-workers); 0 is a sound one on a few cores.
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")

    def predict_dataloader(self) -> DataLoader:
        sampler = RankStrided(len(self.dataset), self.global_rank, self.trainer.world_size)
        # This process was spawned, so its loader workers would be spawned too, each importing torch again;
        # forked they start at once, and they only read and resample (no CUDA, one thread each).
        fork = self.num_workers > 0 and sys.platform.startswith("linux")
        return DataLoader(self.dataset, batch_size=None, sampler=sampler, collate_fn=_single,
                          num_workers=self.num_workers, multiprocessing_context="fork" if fork else None)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        # The volume stays in CPU memory; encode_windowed moves one window at a time to the model's device.
        return batch

    def predict_step(self, batch: tuple[int, PreparedVolume | None], batch_idx: int) -> int:
        """Encode and write volume i; returns i (nothing is gathered: ``return_predictions=False``)."""
        i, prepared = batch
        if prepared is None:
            return i
        tokens = encode_prepared(self.tokenizer, prepared, window=self.window)
        try:
            tokens.save(self.targets[i])
        except UserError:  # made meanwhile by another run on the same folder: theirs stands
            pass
        return i


class StderrProgressBar(TQDMProgressBar):
    """Lightning's predict bar on stderr, so that stdout carries the summary alone. It counts the first
    process's share of the volumes."""

    def init_predict_tqdm(self) -> Tqdm:
        return Tqdm(desc="tokenizing", position=2 * self.process_position, disable=self.is_disabled, leave=True,
                    dynamic_ncols=True, file=sys.stderr, smoothing=0, bar_format=self.BAR_FORMAT)

    def on_predict_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        super().on_predict_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        self.predict_progress_bar.set_description(f"tokenizing (process 1 of {trainer.world_size})")


def resolve_accelerator(devices: int, accelerator: str) -> str:
    """"gpu" or "cpu" for ``accelerator`` ("auto": GPUs if there are any); one-line errors for a GPU that is not
    there, more GPUs than there are, or a bad value."""
    from lightning.fabric.accelerators.cuda import num_cuda_devices

    if accelerator not in ACCELERATORS:
        raise UserError(f"--accelerator must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise UserError(f"--devices must be a whole number >= 1, got {devices!r}")
    gpus = num_cuda_devices()  # without initialising CUDA in this process (a forked rank could not use it then)
    if accelerator == "gpu" and gpus == 0:
        raise UserError("--accelerator gpu: torch sees no CUDA device here; use --accelerator cpu or auto")
    if accelerator == "cpu" or gpus == 0:
        return "cpu"
    if devices > gpus:
        raise UserError(f"--devices {devices}: only {gpus} GPU(s) here; use --devices {gpus} or --accelerator cpu")
    return "gpu"


def tokenize_parallel(tokenizer, sources: list[VolumeSource], targets: list[Path], *, window: int = 32,
                      devices: int = 2, accelerator: str = "auto", num_workers: int = 0, progress: bool = True) -> None:
    """Encode ``sources[i]`` into ``targets[i]`` in ``devices`` processes; a volume that fails to load is
    skipped (its target stays missing).

    Args:
        tokenizer: the CT tokenizer (on the CPU; Lightning moves a copy to each process's device).
        sources, targets: volumes to encode and their token files (none of which exists yet).
        devices: processes (one per GPU on a GPU accelerator).
        accelerator: "auto" (GPUs if any, else CPU), "cpu" or "gpu".
        num_workers: DataLoader worker processes per process for loading and preprocessing (0: in-process).
    """
    from mmseq.runner.train import quiet_lightning

    on_gpu = resolve_accelerator(devices, accelerator) == "gpu"
    devices = min(devices, len(sources))  # a process with nothing to do would only cost its start-up
    quiet_lightning()
    trainer = pl.Trainer(accelerator="gpu" if on_gpu else "cpu", devices=devices,
                         strategy="ddp_spawn" if devices > 1 else "auto", logger=False, enable_checkpointing=False,
                         enable_model_summary=False, use_distributed_sampler=False, enable_progress_bar=progress,
                         callbacks=[StderrProgressBar()] if progress else [])
    module = TokenizeModule(tokenizer, sources, targets, window=window, num_workers=num_workers)
    trainer.predict(module, return_predictions=False)
