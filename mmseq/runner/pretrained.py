"""Model export: a model saves itself as ``model.safetensors`` + ``config.yaml`` (its class and constructor
arguments), as timm's pretrained_cfg and nanoGPT's model_args do. Nothing about data, optimizer or trainer.

``config.yaml``::

    class: mmseq.audio.model.AudioClassifier     # importable path of the model class
    args: {num_classes: 36, d_model: 64, ...}    # its constructor arguments, plain YAML values

A class opts in by inheriting ``PretrainedMixin``: the mixin records the arguments the outermost ``__init__``
was called with, so a model built directly (not by a task) saves and loads the same way.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from torch import nn

from mmseq.errors import UserError

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
FORMAT_VERSION = 1

M = TypeVar("M", bound=nn.Module)


class PretrainedMixin:
    """Adds ``save_pretrained(dir)`` / ``cls.from_pretrained(dir)`` to an ``nn.Module`` subclass.

    Constructor arguments must be plain values (numbers, strings, booleans, None, lists and mappings of them):
    they are what ``config.yaml`` stores.
    """

    _init_args: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_init(cls.__dict__["__init__"])

    @property
    def init_args(self) -> dict[str, Any]:
        """The constructor arguments this model was built with (what ``config.yaml`` stores)."""
        return dict(self.__dict__.get("_init_args", {}))

    def export_config(self) -> dict[str, Any]:
        cls = type(self)
        return {"class": f"{cls.__module__}.{cls.__qualname__}", "args": _plain(self.init_args, "args"),
                "format": FORMAT_VERSION}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``directory/model.safetensors`` and ``directory/config.yaml``; returns ``directory``."""
        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls: type[M], directory: str | Path, map_location: str | torch.device = "cpu") -> M:
        """Rebuild the model saved in ``directory`` (a model folder or a run folder); it must be a ``cls``."""
        return from_pretrained(directory, map_location=map_location, expected=cls)


def _recording_init(init):
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        # Only the outermost __init__ records: a subclass calling super().__init__ must not overwrite its args.
        if "_init_args" not in self.__dict__:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            recorded = {}
            for name, value in list(bound.arguments.items())[1:]:
                kind = signature.parameters[name].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(value)
                elif kind is inspect.Parameter.VAR_POSITIONAL:
                    if value:
                        raise TypeError(f"{type(self).__name__}: positional *{name} cannot be exported; "
                                        "pass named arguments")
                else:
                    recorded[name] = value
            object.__setattr__(self, "_init_args", recorded)
        init(self, *args, **kwargs)

    return wrapped


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain YAML data, or a TypeError naming the argument that is not."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if hasattr(value, "__iter__") and type(value).__module__.startswith("omegaconf"):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"constructor argument {where} is a {type(value).__name__}; an exported model's "
                    "arguments must be plain values (numbers, strings, lists, mappings)")


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Write ``directory/model.safetensors`` (atomically) and ``directory/config.yaml`` for a PretrainedMixin."""
    from safetensors.torch import save_file

    if not isinstance(model, PretrainedMixin):
        raise TypeError(f"{type(model).__name__} cannot export itself: inherit mmseq.runner.pretrained."
                        "PretrainedMixin")
    config = model.export_config()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share storage; clone so tied weights export as two copies.
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": "pt",
                                                                                  "class": config["class"]}))
    text = yaml.safe_dump(config, sort_keys=False)
    atomic_write(directory / CONFIG, lambda tmp: Path(tmp).write_text(text))
    return directory


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``: a crash
    leaves the old file or the new one, never a partial one. The file gets the usual umask permissions."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; an exported model is readable like any file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def resolve_pretrained_dir(path: str | Path) -> Path:
    """Accept a model folder or a run folder (whose exported model lives in ``model/``)."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / WEIGHTS).is_file() and (candidate / CONFIG).is_file():
            return candidate
    raise UserError(f"{path} holds no exported model: expected {WEIGHTS} and {CONFIG} there or in {path}/model/")


def read_model_config(directory: Path) -> dict:
    try:
        config = yaml.safe_load((directory / CONFIG).read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{directory / CONFIG} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise UserError(f"{directory / CONFIG} must hold a mapping with 'class' and 'args'")
    return config


def import_model_class(path: str, source: Path) -> type[nn.Module]:
    """The class named ``package.module.Class`` in a model config; one-line errors for anything else."""
    if not isinstance(path, str) or "." not in path:
        raise UserError(f"{source}: 'class' must be an importable path like mmseq.audio.model.AudioClassifier, "
                        f"got {path!r}")
    module_name, _, name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"{source}: model class {path} cannot be imported ({e}); is the package that defines "
                        "it installed?") from None
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and issubclass(cls, PretrainedMixin)):
        raise UserError(f"{source}: {path} is not an exportable model class (an nn.Module with PretrainedMixin)")
    return cls


def from_pretrained(path: str | Path, map_location: str | torch.device = "cpu",
                    expected: type[M] | None = None) -> M:
    """Rebuild the model in ``path`` (model folder or run folder) and load its weights strictly; eval mode.

    ``expected``: refuse a model that is not an instance of this class. Folders exported before models
    exported themselves (``config.yaml`` holding a whole run config) still load, through their task.
    """
    directory = resolve_pretrained_dir(path)
    source = directory / CONFIG
    config = read_model_config(directory)
    if "class" in config:
        cls = import_model_class(config["class"], source)
        if expected is not None and not issubclass(cls, expected):
            raise UserError(f"{directory} holds a model of class {cls.__name__}, expected {expected.__name__}")
        args = config.get("args") or {}
        if not isinstance(args, dict):
            raise UserError(f"{source}: 'args' must be a mapping of constructor arguments")
        try:
            model = cls(**args)
        except (TypeError, ValueError) as e:
            raise UserError(f"{source}: the arguments do not build a {cls.__name__}: {e}") from None
    elif "task" in config:
        model = _build_from_run_config(config, source)
        if expected is not None and not isinstance(model, expected):
            raise UserError(f"{directory} holds a model of class {type(model).__name__}, expected {expected.__name__}")
    else:
        raise UserError(f"{source} names no model: expected keys 'class' and 'args'")
    load_weights(model, directory / WEIGHTS, map_location)
    return model.eval()


def _build_from_run_config(config: dict, source: Path) -> nn.Module:
    from .task import load_task  # only for folders exported in the old format

    return load_task(config, source=str(source)).build_model()


def load_weights(model: nn.Module, weights: Path, map_location: str | torch.device = "cpu") -> None:
    """Load a safetensors file into ``model``: every key present and matching, else one line saying what."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise UserError(f"{weights} is unreadable or truncated ({str(e).splitlines()[0]}); re-export the "
                        "model") from None
    missing, unexpected = model.state_dict().keys() - state.keys(), state.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise UserError(f"{weights} does not match the model in {CONFIG}: missing {sorted(missing)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise UserError(f"{weights} does not match the model in {CONFIG}: {detail}") from None
