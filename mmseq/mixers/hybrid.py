"""Hybrid mixer: sub-mixers interleaved by a pattern string, e.g. SSM and attention layers ("MA", "MMMA").

x [B, L, D] -> [B, L, D]. Each letter of ``pattern`` names a sub-mixer config in ``mixers``; the sub-mixers
run in pattern order, each inside its own pre-norm residual, h <- h + mixer_i(LayerNorm_i(h)) from h = x,
and the hybrid returns h - x, the sum of the residual updates: the enclosing ``MixerBlock`` adds x back, so
the identity path is not counted twice.

Letters default to ``M`` = an SSM / long-conv mixer (the first registered of mamba, s4d, hyena, longconv, sgconv,
tcnca, looked up when the hybrid is built) and ``A`` = full attention; ``mixers`` entries override or add
letters::

    mixer: {name: hybrid, pattern: MMA, mixers: {M: {name: s4d, d_state: 32}, A: {name: swa, window: 256}}}

``step`` chains the sub-mixers' steps (state: one entry per pattern position), so it streams whenever
every sub-mixer does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .base import MIXERS, Mixer, create_mixer, register_mixer

SSM_PREFERENCE = ("mamba", "s4d", "hyena", "longconv", "sgconv", "tcnca")


def default_sub_mixers() -> dict[str, dict]:
    """{"M": the first registered SSM / conv mixer of SSM_PREFERENCE, "A": attention}."""
    ssm = next((n for n in SSM_PREFERENCE if n in MIXERS), None)
    out = {"A": {"name": "attention"}}
    if ssm is not None:
        out["M"] = {"name": ssm}
    return out


@register_mixer("hybrid")
class HybridMixer(Mixer):
    """Sub-mixers in the order of ``pattern``, each as x + mixer(norm(x)).

    Args:
        pattern: one letter per sub-mixer, applied left to right (default "MA").
        mixers: letter -> mixer config ``{name: ..., **hparams}``; merged over the defaults
            (``M``: an SSM mixer, ``A``: attention). Every letter of the pattern must be defined.
    """

    test_hparams = {
        "pattern": "SAS",
        "mixers": {"S": {"name": "swa", "window": 4, "n_heads": 2}, "A": {"name": "attention", "n_heads": 2}},
    }

    def __init__(self, d_model: int, *, causal: bool = True, pattern: str = "MA",
                 mixers: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        super().__init__(d_model, causal=causal)
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"pattern must be a non-empty string of sub-mixer letters, got {pattern!r}")
        table = default_sub_mixers()
        for letter, cfg in dict(mixers or {}).items():
            if not isinstance(letter, str) or len(letter) != 1:
                raise ValueError(f"mixers keys must be single letters, got {letter!r}")
            if not isinstance(cfg, Mapping) or "name" not in cfg:
                raise ValueError(f"mixers[{letter!r}] must be a mapping with a 'name', got {cfg!r}")
            table[letter] = dict(cfg)
        unknown = sorted(set(pattern) - set(table))
        if unknown:
            raise ValueError(
                f"pattern {pattern!r} uses letters {unknown} with no sub-mixer; defined letters: "
                f"{sorted(table)} (add them with mixers={{letter: {{name: ...}}}})"
            )
        for letter in set(pattern):
            if table[letter]["name"] == "hybrid":
                raise ValueError(f"mixers[{letter!r}] may not itself be a hybrid")
        self.pattern = pattern
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in pattern)
        self.layers = nn.ModuleList(
            create_mixer(table[c]["name"], d_model, causal=causal,
                         **{k: v for k, v in table[c].items() if k != "name"})
            for c in pattern
        )

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        if context is not None:
            raise ValueError("hybrid takes no context")
        h = x
        for norm, layer in zip(self.norms, self.layers):
            h = h + layer(norm(h))
        return h - x

    def init_state(self, batch_size: int, device=None, dtype=None) -> list:
        if not self.causal:
            raise NotImplementedError("step() needs a causal hybrid mixer")
        return [layer.init_state(batch_size, device=device, dtype=dtype) for layer in self.layers]

    def step(self, x_t: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        """x_t [B, D] -> y_t [B, D]: each sub-mixer's step, in pattern order, inside its residual."""
        h, new_state = x_t, []
        for norm, layer, s in zip(self.norms, self.layers, state):
            y, s = layer.step(norm(h), s)
            h = h + y
            new_state.append(s)
        return h - x_t, new_state
