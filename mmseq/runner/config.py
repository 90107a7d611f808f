"""Run configs: YAML loaded with OmegaConf and validated against dataclass schemas before any work.

A run config has ``task``, ``seed``, ``data`` and ``model`` (schemas given by the task), ``optim`` and
``trainer``. Unknown keys, wrong types and missing files fail with one line naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mmseq.errors import ConfigError


def path_field(default: str | None = None, must_exist: bool = True) -> Any:
    """A dataclass field holding a filesystem path; checked to exist after loading when set."""
    return field(default=default, metadata={"path": True, "must_exist": must_exist})


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then a cosine/linear/poly/constant schedule (a pure function of the step)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | linear | poly | constant
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio for cosine/linear/poly
    poly_power: float = 0.9  # poly: lr falls as (1 - t) ** poly_power (mmseg's PolyLR)


@dataclass
class TrainerConfig:
    """Arguments for Lightning's Trainer (plus checkpoint and logging cadence)."""

    max_steps: int = 1000
    devices: int = 1
    accelerator: str = "auto"  # auto | cpu | gpu
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed | 64-true
    val_check_interval: int = 200  # steps between validations
    limit_val_batches: int = -1  # -1 = all
    checkpoint_every_n_steps: int = 100
    log_every_n_steps: int = 10
    gradient_clip_val: float = 0.0  # 0 = no clipping (Lightning's default)
    accumulate_grad_batches: int = 1
    enable_progress_bar: bool = True
    tensorboard: bool = False
    deterministic: bool = False
    num_workers: int = 0


SCHEDULES = ("cosine", "linear", "poly", "constant")
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "64-true", "bf16-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


def build_schema(task_name: str, data_cls: type, model_cls: type) -> type:
    """The full dataclass schema of a run of ``task_name``."""
    return dataclasses.make_dataclass(
        "RunConfig",
        [
            ("task", str, field(default=task_name)),
            ("seed", int, field(default=0)),
            ("data", data_cls, field(default_factory=data_cls)),
            ("model", model_cls, field(default_factory=model_cls)),
            ("optim", OptimConfig, field(default_factory=OptimConfig)),
            ("trainer", TrainerConfig, field(default_factory=TrainerConfig)),
        ],
    )


def _omegaconf_message(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
    msg = str(getattr(e, "msg", e)).splitlines()[0]
    if "not in" in msg and "Key" in msg:
        return f"config key '{key}' is not a valid key here ({msg})"
    return f"config key '{key}': {msg}"


def read_yaml(path: str | Path) -> dict:
    """One YAML file holding a mapping (``base:`` keys are not followed; see ``load_config_file``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(raw).__name__}")
    return raw


BASE_KEY = "base"


def load_config_file(path: str | Path) -> dict:
    """A config file with its ``base:`` files merged underneath it.

    ``base: other.yaml`` (or a list, merged in order; paths relative to the file) names configs this one
    extends; the file then states only what differs. Mappings merge key by key, except that a node naming a
    registry entry (``mixer: {name: mamba}``) replaces the base's node when the name changes, since one
    mixer's arguments mean nothing to another. Lists and scalars replace.
    """
    return _load_with_bases(Path(path), ())


def _load_with_bases(path: Path, chain: tuple[Path, ...]) -> dict:
    key = path.resolve()
    if key in chain:
        loop = " -> ".join(str(p.name) for p in (*chain, key))
        raise ConfigError(f"config file {path}: 'base' files form a loop ({loop})")
    raw = read_yaml(path)
    bases = raw.pop(BASE_KEY, None)
    if bases is None:
        return raw
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"config file {path}: 'base' must be a file name or a list of file names")
    merged: dict = {}
    for base in bases:
        base_path = path.parent / base
        if not base_path.is_file():
            raise ConfigError(f"config file {path}: base file {base} not found (looked for {base_path})")
        merged = merge_configs(merged, _load_with_bases(base_path, (*chain, key)))
    return merge_configs(merged, raw)


def merge_configs(base: dict, top: dict) -> dict:
    """``top`` over ``base`` (see ``load_config_file`` for the rules); neither input is changed."""
    out = dict(base)
    for k, v in top.items():
        old = out.get(k)
        if isinstance(v, dict) and isinstance(old, dict) and not _renamed(old, v):
            out[k] = merge_configs(old, v)
        else:
            out[k] = v
    return out


def _renamed(old: dict, new: dict) -> bool:
    return "name" in new and new.get("name") != old.get("name")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` overrides (values parsed as YAML) to a plain config dict.

    A scalar sets one key; a mapping (``model.mixer='{name: mamba, d_state: 16}'``) replaces the whole node.
    """
    cfg = OmegaConf.create(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. trainer.max_steps=500")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        node = OmegaConf.select(cfg, key.strip(), default=None)
        if isinstance(node, DictConfig) and not isinstance(parsed, dict):
            raise ConfigError(f"override {item!r}: {key.strip()} is a mapping; give one, e.g. "
                              f"{key.strip()}='{{name: ...}}', or set one of its keys ({key.strip()}.KEY=VALUE)")
        # A mapping replaces the whole node: model.mixer='{name: mamba}' must not keep attention's n_heads.
        try:
            OmegaConf.update(cfg, key.strip(), parsed, merge=not isinstance(parsed, dict), force_add=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {item!r}: {_first_line(e)}") from None
    return OmegaConf.to_container(cfg)


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "msg", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_sections(raw: dict, schema: type, prefix: str = "") -> None:
    """A mapping where the schema has a section (OmegaConf's own message for this names no key)."""
    for f in dataclasses.fields(schema):
        if f.name not in raw:
            continue
        value, key = raw[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(f.type) and isinstance(f.type, type):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{key}' must be a mapping (key: value entries), "
                                  f"got {type(value).__name__} {value!r}")
            _check_sections(value, f.type, key + ".")
        elif _is_mapping_type(f.type) and value is not None and not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping such as {{name: ...}}, "
                              f"got {type(value).__name__} {value!r}")


def _is_mapping_type(tp: Any) -> bool:
    text = str(tp)
    return text.startswith(("dict", "typing.Dict")) or " dict[" in f" {text}"


def validate(raw: dict, schema: type) -> DictConfig:
    """Merge ``raw`` into the structured ``schema``; unknown keys or bad types raise ConfigError."""
    _check_sections(raw, schema)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), raw)
    except OmegaConfBaseException as e:
        raise ConfigError(_omegaconf_message(e)) from None
    OmegaConf.set_struct(cfg, True)
    _check_paths(cfg, schema, "")
    _check_choices(cfg)
    return cfg


def _check_paths(cfg: DictConfig, schema: type, prefix: str) -> None:
    for f in dataclasses.fields(schema):
        value = cfg.get(f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(f.type) and isinstance(f.type, type):
            _check_paths(value, f.type, key + ".")
        elif f.metadata.get("path") and f.metadata.get("must_exist") and value not in (None, ""):
            if not Path(value).exists():
                raise ConfigError(f"config key '{key}': path does not exist: {value}")


def _check_choices(cfg: DictConfig) -> None:
    checks = [
        ("optim.schedule", cfg.optim.schedule, SCHEDULES),
        ("trainer.precision", str(cfg.trainer.precision), PRECISIONS),
        ("trainer.accelerator", cfg.trainer.accelerator, ACCELERATORS),
    ]
    for key, value, choices in checks:
        if value not in choices:
            raise ConfigError(f"config key '{key}': expected one of {', '.join(choices)}, got {value!r}")
    positive = [("trainer.max_steps", cfg.trainer.max_steps), ("trainer.devices", cfg.trainer.devices),
                ("trainer.val_check_interval", cfg.trainer.val_check_interval),
                ("trainer.checkpoint_every_n_steps", cfg.trainer.checkpoint_every_n_steps),
                ("trainer.accumulate_grad_batches", cfg.trainer.accumulate_grad_batches)]
    for key, value in positive:
        if value < 1:
            raise ConfigError(f"config key '{key}': must be >= 1, got {value}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"config key 'optim.lr': must be > 0, got {cfg.optim.lr}")


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def dump_yaml(cfg: DictConfig | dict, path: Path) -> None:
    data = to_dict(cfg) if isinstance(cfg, DictConfig) else cfg
    path.write_text(yaml.safe_dump(data, sort_keys=False))
