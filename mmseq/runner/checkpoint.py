"""Checkpoint IO: atomic writes and loads that never unpickle arbitrary objects."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

from mmseq.errors import UserError


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never a truncated mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only; anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes); resume from another checkpoint or start anew")
    if not zipfile.is_zipfile(path):
        # torch.save writes a zip archive; anything else is damaged or was never a checkpoint.
        raise UserError(f"checkpoint {path} is not a PyTorch checkpoint (unreadable or truncated)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(
            f"refusing to load {path}: it holds pickled Python objects that could run code ({_first_line(e)}); "
            "only tensors and plain containers are accepted"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"checkpoint {path} is unreadable or truncated: {_first_line(e)}") from None


# ModelCheckpoint state entries that hold paths; rewritten when a run folder was copied or moved.
_PATH_KEYS = ("dirpath", "best_model_path", "kth_best_model_path", "last_model_path")


def relocate_checkpoint_paths(checkpoint: dict, ckpt_dir: Path) -> dict:
    """Point every checkpoint path stored by ModelCheckpoint callbacks into ``ckpt_dir`` (same file names).

    Checkpoints store absolute paths; without this a copied run folder would resume writing into (or reading
    the best model from) the folder it was copied from.
    """
    for state in (checkpoint.get("callbacks") or {}).values():
        if not isinstance(state, dict) or "dirpath" not in state:
            continue
        for key in _PATH_KEYS:
            if state.get(key):
                state[key] = str(ckpt_dir / Path(state[key]).name) if key != "dirpath" else str(ckpt_dir)
        if isinstance(state.get("best_k_models"), dict):
            state["best_k_models"] = {str(ckpt_dir / Path(k).name): v for k, v in state["best_k_models"].items()}
    return checkpoint


class SafeCheckpointIO(CheckpointIO):
    """Lightning CheckpointIO writing atomically and loading with ``weights_only=True``.

    ``relocate_to``: the run's checkpoint folder; paths inside a loaded checkpoint are moved there.
    """

    def __init__(self, relocate_to: str | Path | None = None) -> None:
        super().__init__()
        self.relocate_to = Path(relocate_to) if relocate_to is not None else None

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        checkpoint = safe_torch_load(path, map_location=map_location or "cpu")
        if self.relocate_to is not None:
            relocate_checkpoint_paths(checkpoint, self.relocate_to)
        return checkpoint

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)
