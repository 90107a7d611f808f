"""The mixer interface and its registry.

A mixer maps x [B, L, D] to y [B, L, D]. Causal mixers also stream: ``init_state(batch_size)`` and
``step(x_t [B, D], state) -> (y_t [B, D], state)`` reproduce ``forward`` one token at a time.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from mmseq.errors import ConfigError
from mmseq.registry import Registry

MIXERS: Registry[type[Mixer]] = Registry("mixer")


def register_mixer(name: str):
    """Class decorator: ``@register_mixer("mamba")`` makes the class creatable by name."""

    def wrap(cls: type[Mixer]) -> type[Mixer]:
        cls.mixer_name = name
        return MIXERS.register(name)(cls)

    return wrap


class Mixer(nn.Module):
    """Base class: ``Mixer(d_model, *, causal, **hparams)``; ``forward(x [B, L, D], *, context=None)``."""

    mixer_name: str = ""
    supports_context: bool = False  # forward(x, context=...) attends to another sequence
    supports_noncausal: bool = True  # may be built with causal=False
    test_hparams: dict = {}  # small hyperparameters the registry-wide tests build it with

    def __init__(self, d_model: int, *, causal: bool = True) -> None:
        super().__init__()
        if d_model < 1:
            raise ValueError(f"d_model must be >= 1, got {d_model}")
        self.d_model = d_model
        self.causal = causal

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must be [B, L, D] with D == d_model={self.d_model}, got {list(x.shape)}"
            )

    def init_state(self, batch_size: int, device=None, dtype=None) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not support step()")

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError(f"{type(self).__name__} does not support step()")


def list_mixers() -> list[str]:
    return MIXERS.names()


def mixer_hparams(name: str) -> dict[str, inspect.Parameter]:
    """The keyword arguments a mixer accepts beyond ``d_model`` and ``causal``."""
    cls = MIXERS.get(name)
    params = inspect.signature(cls.__init__).parameters
    return {k: p for k, p in params.items() if k not in ("self", "d_model", "causal")
            and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def validate_mixer_config(node: dict, key: str = "model.mixer") -> None:
    """Check a ``{name: ..., **hparams}`` node against the mixer's constructor; raise ConfigError."""
    if not isinstance(node, dict) or "name" not in node:
        raise ConfigError(f"{key} must be a mapping with a 'name' (one of: {', '.join(list_mixers())})")
    name = node["name"]
    if name not in MIXERS:
        raise ConfigError(f"{key}.name: {MIXERS.unknown_message(name)}")
    allowed = mixer_hparams(name)
    for k in node:
        if k != "name" and k not in allowed:
            raise ConfigError(
                f"{key}.{k}: not an argument of mixer {name!r}; it accepts: {', '.join(sorted(allowed)) or 'none'}"
            )


def create_mixer(name: str, d_model: int, causal: bool = True, **hparams: Any) -> Mixer:
    """Build a registered mixer: ``create_mixer("attention", 64, causal=True, n_heads=4)``."""
    validate_mixer_config({"name": name, **hparams}, key="mixer")
    hparams = {k: v for k, v in hparams.items() if v is not None}
    return MIXERS.get(name)(d_model, causal=causal, **hparams)


def aux_loss(model: nn.Module) -> torch.Tensor | float:
    """Sum of the auxiliary losses (``last_aux_loss``, e.g. LongVQ's commitment loss) the mixers inside
    ``model`` set in their last forward; 0.0 when none has one. Training steps add it to the task loss."""
    losses = [m.last_aux_loss for m in model.modules() if getattr(m, "last_aux_loss", None) is not None]
    return torch.stack([x.float() for x in losses]).sum() if losses else 0.0


def mixer_metrics(model: nn.Module) -> dict[str, torch.Tensor]:
    """The diagnostics the mixers inside ``model`` report for their last forward (``last_metrics``, a dict of
    scalars, e.g. SeqBoat's ``activation_rate``), each averaged over the mixers that report it. The runner
    logs them as ``train/<name>``, ``val/<name>`` and ``test/<name>``."""
    found: dict[str, list[torch.Tensor]] = {}
    for m in model.modules():
        for name, value in (getattr(m, "last_metrics", None) or {}).items():
            found.setdefault(name, []).append(torch.as_tensor(value, dtype=torch.float32).detach())
    return {name: torch.stack(values).mean() for name, values in found.items()}


def stream(mixer: Mixer, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    """Feed x [B, L, D] to ``mixer.step`` one token at a time; returns (y [B, L, D], final state)."""
    outs = []
    for t in range(x.shape[1]):
        y_t, state = mixer.step(x[:, t], state)
        outs.append(y_t)
    return torch.stack(outs, 1), state
