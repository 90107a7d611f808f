"""Model export: safetensors weights + the YAML config that rebuilds the model. No pickle anywhere."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from mmseq.errors import UserError

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"


def save_pretrained(model: nn.Module, directory: str | Path, config: dict) -> Path:
    """Write ``directory/model.safetensors`` and ``directory/config.yaml`` (the run config)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # safetensors refuses tensors that share storage; clone so tied weights export as two copies.
    state = {k: v.clone() for k, v in state.items()}
    tmp = directory / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "task": str(config.get("task", ""))})
    tmp.replace(directory / WEIGHTS)
    (directory / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    return directory


def resolve_pretrained_dir(path: str | Path) -> Path:
    """Accept a model folder or a run folder (whose exported model lives in ``model/``)."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / WEIGHTS).is_file() and (candidate / CONFIG).is_file():
            return candidate
    raise UserError(f"{path} holds no exported model: expected {WEIGHTS} and {CONFIG} there or in {path}/model/")


def from_pretrained(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from ``config.yaml`` and load ``model.safetensors`` (strict)."""
    from .task import load_task

    directory = resolve_pretrained_dir(path)
    config = yaml.safe_load((directory / CONFIG).read_text())
    task = load_task(config, source=str(directory / CONFIG))
    model = task.build_model()
    state = load_file(str(directory / WEIGHTS), device=str(map_location))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{directory / WEIGHTS} does not match the model in {CONFIG}: "
                        f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


class PretrainedMixin:
    """Adds ``save_pretrained(dir)`` / ``from_pretrained(dir)`` to a model built by a task.

    The task sets ``model.run_config`` (the resolved run config) when it builds the model.
    """

    run_config: dict | None = None

    def save_pretrained(self, directory: str | Path) -> Path:
        if self.run_config is None:
            raise ValueError("this model has no run_config; build it through its task or set run_config")
        return save_pretrained(self, directory, self.run_config)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> nn.Module:
        return from_pretrained(directory)
