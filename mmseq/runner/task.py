"""The task registry: a task turns a validated run config into a model, a LightningModule and a DataModule.

Tasks live in their domain packages and are imported by name when a config asks for them
(``mmseq.plugins.task_modules``), so training an MQAR config never imports the audio package.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import lightning.pytorch as pl
from omegaconf import DictConfig
from torch import nn

from mmseq.errors import ConfigError
from mmseq.plugins import task_modules
from mmseq.registry import Registry

from .config import apply_overrides, build_schema, load_config_file, validate

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



def task_names() -> list[str]:
    """Every task a config can name: the known import table plus whatever is registered already."""
    return sorted(set(task_modules()) | set(TASKS.names()))


def get_task(name: str) -> type[Task]:
    """The Task class registered as ``name``, importing only the module that defines it."""
    if name not in TASKS and name in task_modules():
        module = task_modules()[name]
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"task {name!r} lives in {module}, which cannot be imported: {e}") from None
        if name not in TASKS:
            raise ConfigError(f"task {name!r}: importing {module} did not register it (missing @register_task)")
    if name not in TASKS:
        raise ConfigError(f"config key 'task': {_unknown_task(name)}")
    return TASKS.get(name)


def _unknown_task(name: object) -> str:
    from mmseq.registry import unknown_name_message

    return unknown_name_message("task", name, task_names())


def load_task(raw: dict, overrides: list[str] | None = None, source: str = "config") -> Task:
    """Validate a raw config dict (plus overrides) and return the task instance holding it."""
    raw = apply_overrides(raw, overrides or [])
    name = raw.get("task")
    if name is None:
        raise ConfigError(f"{source}: missing key 'task' (one of: {', '.join(task_names())})")
    cls = get_task(name)
    task = cls(validate(raw, cls.schema()))
    task.check()
    return task


def load_task_file(path: str | Path, overrides: list[str] | None = None) -> Task:
    """Validate a YAML config file (its ``base:`` files merged in) plus ``key=value`` overrides."""
    return load_task(load_config_file(path), overrides, source=str(path))
