"""The common runner: one ``train`` and one ``evaluate`` for every task, on Lightning's Trainer."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from datetime import datetime
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from mmseq.errors import ConfigError, UserError

from .callbacks import RNGState, Throughput
from .checkpoint import SafeCheckpointIO, safe_torch_load
from .config import dump_yaml, read_yaml, to_dict
from .logs import LastCheckpoint, ResumableCSVLogger
from .pretrained import from_pretrained, save_pretrained
from .task import Task, load_task, load_task_file

RUN_DIR_ENV = "MMSEQ_RUN_DIR"  # lets DDP worker processes reuse the run folder rank 0 chose


def _is_worker_process() -> bool:
    """True in the processes Lightning's DDP launcher starts for ranks > 0."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


def _default_run_dir(task_name: str) -> Path:
    return Path("runs") / f"{task_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def build_trainer(task: Task, run_dir: Path, *, for_fit: bool = True,
                  resume_step: int | None = None) -> tuple[pl.Trainer, dict]:
    """A Lightning Trainer configured from ``task.cfg.trainer``; returns it and the named callbacks.

    ``resume_step``: the global step of the checkpoint a resumed run starts from (its log keeps the rows
    before it)."""
    t = task.cfg.trainer
    callbacks: dict[str, pl.Callback] = {}
    loggers = []
    ckpt_dir = _checkpoint_dir(run_dir).resolve()
    if for_fit:
        callbacks["last"] = LastCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True,
                                           every_n_train_steps=t.checkpoint_every_n_steps,
                                           enable_version_counter=False, val_every_n_batches=t.val_check_interval)
        callbacks["best"] = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=task.monitor,
                                            mode=task.monitor_mode, save_top_k=1, auto_insert_metric_name=False,
                                            enable_version_counter=False)
        callbacks["rng"] = RNGState()
        callbacks["throughput"] = Throughput(t.log_every_n_steps)
        callbacks["lr"] = LearningRateMonitor(logging_interval="step")
        loggers.append(ResumableCSVLogger(save_dir=str(run_dir), name="logs", version="", resume_step=resume_step))
        if t.tensorboard:
            loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    accelerator = "gpu" if t.accelerator == "cuda" else t.accelerator
    devices = t.devices if for_fit else 1
    strategy = "ddp" if devices > 1 else "auto"
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'trainer.accelerator': {t.accelerator!r} asks for a GPU, but torch sees no "
                          "CUDA device here; use trainer.accelerator=auto or cpu")
    quiet_lightning()
    trainer = pl.Trainer(
        default_root_dir=str(run_dir),
        max_steps=t.max_steps,
        max_epochs=-1,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=t.precision,
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None,
        limit_val_batches=None if t.limit_val_batches < 0 else t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=t.gradient_clip_val or None,
        accumulate_grad_batches=t.accumulate_grad_batches,
        enable_progress_bar=t.enable_progress_bar,
        deterministic=t.deterministic,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        plugins=[SafeCheckpointIO(relocate_to=ckpt_dir)],
        callbacks=list(callbacks.values()),
        logger=loggers or False,
        enable_checkpointing=for_fit,
    )
    return trainer, callbacks


def quiet_lightning() -> None:
    """Hide Lightning's notices that say nothing to a user here (GPU/TPU availability, logger tips) and a
    deprecation warning raised inside Lightning itself."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*litlogger.*")


def _scalar_metrics(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if torch.is_tensor(v) or isinstance(v, (int, float))}


def train(config: str | Path | None = None, overrides: list[str] | None = None, run_dir: str | Path | None = None,
          resume: str | Path | None = None) -> dict:
    """Train from a YAML config (or continue ``resume``, a run folder); returns the final metrics.

    Everything is validated before anything is written: a bad key or a used run folder fails first.
    """
    overrides = list(overrides or [])
    worker = _is_worker_process()
    if resume is not None:
        run_dir = Path(resume)
        config_file = run_dir / "config.yaml"
        last = _checkpoint_dir(run_dir) / "last.ckpt"
        if not config_file.is_file():
            raise UserError(f"--resume {run_dir}: not a run folder (no config.yaml)")
        if not last.is_file():
            raise UserError(f"--resume {run_dir}: no checkpoint to resume from ({last} is missing)")
        bad = [o for o in overrides if not o.startswith("trainer.")]
        if bad:
            raise UserError(f"--resume accepts only trainer.* overrides (the model and data are fixed), got {bad[0]!r}")
        task = load_task(read_yaml(config_file), overrides, source=str(config_file))
        # A run killed while writing a checkpoint leaves its temporary file (never the checkpoint itself).
        for stale in _checkpoint_dir(run_dir).glob(".*.ckpt.*.tmp"):
            stale.unlink(missing_ok=True)
        ckpt_path: Path | None = last
        resume_step = int(safe_torch_load(last).get("global_step", 0))
        if resume_step >= task.cfg.trainer.max_steps and (run_dir / "metrics.json").is_file():
            # Nothing to train: leave the finished run (its logs, checkpoints and model) exactly as it is.
            print(f"{run_dir} already reached step {resume_step} (trainer.max_steps={task.cfg.trainer.max_steps}); "
                  f"nothing to do. Pass trainer.max_steps=N with N > {resume_step} to train it further.")
            return {**json.loads((run_dir / "metrics.json").read_text()), "already_finished": True}
    else:
        if config is None:
            raise UserError("give a config file or --resume RUN_DIR")
        task = load_task_file(config, overrides)
        if run_dir is None:
            run_dir = Path(os.environ[RUN_DIR_ENV]) if worker and RUN_DIR_ENV in os.environ else _default_run_dir(
                task.name)
        run_dir = Path(run_dir)
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"--run-dir {run_dir} is a file; give a new folder")
        if not worker and run_dir.exists() and any(run_dir.iterdir()):
            raise UserError(f"run folder {run_dir} already exists and is not empty: "
                            f"pass --resume {run_dir} to continue it, or choose another --run-dir")
        ckpt_path = None
        resume_step = None
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    if worker:
        return _fit(task, run_dir, ckpt_path, resume_step)
    fresh = ckpt_path is None and not run_dir.exists()
    print(f"run folder: {run_dir}", flush=True)
    try:
        return _fit(task, run_dir, ckpt_path, resume_step)
    except BaseException:
        # A new run that failed before its first checkpoint leaves no half-made folder behind.
        if fresh and run_dir.is_dir() and not any(_checkpoint_dir(run_dir).glob("*.ckpt")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _fit(task: Task, run_dir: Path, ckpt_path: Path | None, resume_step: int | None) -> dict:

    cfg = task.cfg
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(task)
    module = task.build_module(model)
    datamodule = task.build_datamodule()
    trainer, callbacks = build_trainer(task, run_dir, resume_step=resume_step)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, run_dir / "config.yaml")

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    train_time = time.perf_counter() - start

    best = callbacks["best"].best_model_path or str(_checkpoint_dir(run_dir) / "last.ckpt")
    module.load_state_dict(safe_torch_load(best)["state_dict"])
    val = trainer.validate(module, datamodule=datamodule, verbose=False)
    test = trainer.test(module, datamodule=datamodule, verbose=False) if _has_test(datamodule) else []
    metrics = {
        "task": task.name,
        "global_step": trainer.global_step,
        "best_checkpoint": str(Path(best).relative_to(run_dir.resolve()) if Path(best).is_absolute()
                               else Path(best)),
        "val": _scalar_metrics(val[0]) if val else {},
        "test": _scalar_metrics(test[0]) if test else {},
        "throughput": callbacks["throughput"].last,
        "train_time_s": train_time,
    }
    if trainer.is_global_zero:
        save_pretrained(model, run_dir / "model")  # the model alone: class, constructor arguments, weights
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def build_model(task: Task):
    """``task.build_model()``, with a constructor's refusal (e.g. n_heads that does not divide d_model) reported
    as a config error naming the model section."""
    try:
        return task.build_model()
    except (ValueError, TypeError, AssertionError) as e:
        if isinstance(e, UserError):
            raise
        raise ConfigError(f"config section 'model': {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _has_test(datamodule: pl.LightningDataModule) -> bool:
    return type(datamodule).test_dataloader is not pl.LightningDataModule.test_dataloader


def evaluate(run_dir: str | Path, overrides: list[str] | None = None, out: str | Path | None = None) -> dict:
    """Evaluate a run's exported model on its validation (and test) data; ``data.*`` may be overridden."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml)")
    overrides = list(overrides or [])
    bad = [o for o in overrides if not o.startswith(("data.", "trainer."))]
    if bad:
        raise UserError(f"eval accepts only data.* and trainer.* overrides, got {bad[0]!r}")
    task = load_task(read_yaml(config_file), overrides, source=str(config_file))
    model = from_pretrained(run_dir)  # the exported weights, not a fresh build
    module = task.build_module(model)
    out = Path(out) if out else run_dir / "eval.json"
    module.artifact_stem = out.stem  # files an evaluation writes (plots) are named after its output
    datamodule = task.build_datamodule()
    trainer, _ = build_trainer(task, run_dir, for_fit=False)
    val = trainer.validate(module, datamodule=datamodule, verbose=False)
    test = trainer.test(module, datamodule=datamodule, verbose=False) if _has_test(datamodule) else []
    result = {"task": task.name, "overrides": overrides, "config": to_dict(task.cfg.data),
              "val": _scalar_metrics(val[0]) if val else {}, "test": _scalar_metrics(test[0]) if test else {}}
    out.write_text(json.dumps(result, indent=2))
    result["written_to"] = str(out)
    return result
