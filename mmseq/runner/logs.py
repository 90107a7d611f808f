"""The run's CSV log, kept across resumes: ``logs/metrics.csv`` holds every step of the run exactly once.

Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts. Here a resumed run keeps the rows
logged before the checkpoint it resumes from and drops the later ones (that work is redone), so a killed and
resumed run's log equals an uninterrupted run's. Every row is written to disk as soon as it is logged, so no
row a checkpoint covers can be lost in a crash.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _KeepingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, keep_before_step: int | None) -> None:
        self.keep_before_step = keep_before_step  # read by _check_log_dir_exists, which the base __init__ calls
        super().__init__(log_dir=log_dir)

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        # Write each row as it is logged. Lightning logs a step's rows after that step's checkpoint is saved, so
        # rows held in memory until the next flush would be lost by a kill in between, and a resumed run does
        # not log them again.
        super().log_metrics(metrics_dict, step)
        self.save()

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
        limit = self.keep_before_step
        if limit is not None:
            rows = [r for r in rows if r.get("step", "") == "" or int(float(r["step"])) < limit]
        self.metrics_keys = sorted(set(fields))
        _write_rows(path, self.metrics_keys, rows)


def _write_rows(path: Path, fields: list[str], rows: list[dict]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class ResumableCSVLogger(CSVLogger):
    """CSVLogger that appends to an existing ``metrics.csv``; ``resume_step`` = the checkpoint's global step
    (rows from that step on are dropped, since the resumed run logs them again). None for a fresh run."""

    def __init__(self, save_dir: str, resume_step: int | None = None, **kwargs) -> None:
        super().__init__(save_dir=save_dir, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self.resume_step)
        return self._experiment


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every N steps, but at a step that is also validated, only after that validation.

    Lightning saves a step's checkpoint before the validation that follows the same step; a run killed during
    that validation would resume after it and never log it (nor weigh it for best.ckpt). Saving the
    validated step's checkpoint once its validation has been logged closes that gap.
    """

    def __init__(self, *, val_every_n_batches: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.val_every_n_batches = max(1, val_every_n_batches)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % self.val_every_n_batches == 0 and trainer.global_step < trainer.max_steps:
            return  # saved in on_validation_end, after this step's validation
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
