"""The task registry: a task turns a validated run config into a model, a LightningModule and a DataModule."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from omegaconf import DictConfig
from torch import nn

from mmseq.errors import ConfigError
from mmseq.registry import Registry

from .config import apply_overrides, build_schema, read_yaml, to_dict, validate

TASKS: Registry[type[Task]] = Registry("task")


def register_task(name: str):
    """Class decorator: ``@register_task("mqar")`` makes a Task subclass selectable by ``task: mqar``."""

    def wrap(cls: type[Task]) -> type[Task]:
        cls.name = name
        return TASKS.register(name)(cls)

    return wrap


class Task:
    """Base class. Subclasses set ``data_config`` and ``model_config`` (dataclasses) and the builders.

    ``monitor``/``monitor_mode`` name the validation metric that picks the best checkpoint.
    """

    name: str = ""
    data_config: type
    model_config: type
    monitor: str = "val/loss"
    monitor_mode: str = "min"

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    @classmethod
    def schema(cls) -> type:
        return build_schema(cls.name, cls.data_config, cls.model_config)

    def check(self) -> None:
        """Task-specific validation beyond the schema (raise ConfigError naming the key)."""

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def build_datamodule(self) -> pl.LightningDataModule:
        raise NotImplementedError

    def build_module(self, model: nn.Module) -> pl.LightningModule:
        raise NotImplementedError

    def export_config(self) -> dict:
        """What ``from_pretrained`` needs to rebuild the model: the whole resolved run config."""
        return to_dict(self.cfg)


def ensure_tasks_registered() -> None:
    """Import the modules whose import registers the built-in tasks."""
    import mmseq.audio.task  # noqa: F401
    import mmseq.synthetic.tasks  # noqa: F401


def load_task(raw: dict, overrides: list[str] | None = None, source: str = "config") -> Task:
    """Validate a raw config dict (plus overrides) and return the task instance holding it."""
    ensure_tasks_registered()
    raw = apply_overrides(raw, overrides or [])
    name = raw.get("task")
    if name is None:
        raise ConfigError(f"{source}: missing key 'task' (one of: {', '.join(TASKS.names())})")
    if name not in TASKS:
        raise ConfigError(f"config key 'task': {TASKS.unknown_message(name)}")
    cls = TASKS.get(name)
    task = cls(validate(raw, cls.schema()))
    task.check()
    return task


def load_task_file(path: str | Path, overrides: list[str] | None = None) -> Task:
    return load_task(read_yaml(path), overrides, source=str(path))
