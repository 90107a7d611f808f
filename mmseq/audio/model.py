"""Audio clip classifier: front end, residual mixer stack (any registered mixer), pooling, linear head.

A causal model also classifies audio while it arrives: ``init_stream`` / ``stream`` turn sample chunks into
frames, step the mixer stack frame by frame and keep a running pool, so after the last chunk the logits equal
``forward`` on the whole clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmseq.mixers.blocks import MixerStack
from mmseq.runner.pretrained import PretrainedMixin

from .frontends import create_frontend

POOLS = ("mean", "max", "last")


@dataclass
class StreamState:
    """What a stream carries between chunks: unconsumed samples, mixer states and the running pool."""

    buffer: torch.Tensor  # [B, n] samples not yet turned into frames
    mixer_state: list
    pooled: torch.Tensor | None  # [B, D] running sum (mean), running max (max) or last output (last)
    frames: int


class AudioClassifier(PretrainedMixin, nn.Module):
    """wave [B, T] (float, at ``sample_rate``) -> logits [B, num_classes].

    ``labels`` (class names), ``sample_rate`` and ``clip_seconds`` are what inference needs; they are
    constructor arguments so that an exported model carries them.

    Features are normalised per channel with BatchNorm (running statistics at inference, so streaming and
    batch inference agree); SpecAugment-style masks (``freq_mask``/``time_mask`` widths, 0 = off) apply in
    training only.
    """

    def __init__(self, num_classes: int, *, sample_rate: int = 16000, clip_seconds: float = 1.0,
                 frontend: dict | None = None,
                 d_model: int = 64, n_layers: int = 4, mixer: dict | None = None, causal: bool = True,
                 mlp_ratio: float = 2.0, dropout: float = 0.1, pool: str = "mean", freq_mask: int = 0,
                 time_mask: int = 0, labels: list[str] | None = None) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if labels is not None and len(labels) != num_classes:
            raise ValueError(f"labels has {len(labels)} names for {num_classes} classes")
        fe = dict(frontend or {"name": "logmel"})
        if clip_seconds <= 0:
            raise ValueError(f"clip_seconds must be > 0, got {clip_seconds}")
        self.sample_rate = sample_rate
        self.clip_seconds = float(clip_seconds)  # the clip length it was trained on; longer clips are windowed
        self.frontend = create_frontend(fe.pop("name"), sample_rate, **fe)
        self.feature_norm = nn.BatchNorm1d(self.frontend.out_dim)
        self.proj = nn.Linear(self.frontend.out_dim, d_model)
        self.trunk = MixerStack(d_model, n_layers, dict(mixer or {"name": "mamba"}), causal=causal,
                                mlp_ratio=mlp_ratio, dropout=dropout)
        self.head = nn.Linear(d_model, num_classes)
        self.causal = causal
        self.pool = pool
        self.freq_mask, self.time_mask = freq_mask, time_mask
        self.labels = list(labels) if labels is not None else [str(i) for i in range(num_classes)]

    # -- batch inference -------------------------------------------------------------------------------------
    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """wave [B, T] -> normalised features [B, L, F] (a clip shorter than one window gets one padded frame)."""
        if wave.dim() != 2:
            raise ValueError(f"wave must be [batch, samples], got shape {tuple(wave.shape)}")
        if wave.shape[1] < self.frontend.window:
            wave = nn.functional.pad(wave, (0, self.frontend.window - wave.shape[1]))
        feats = self.frontend(wave)
        feats = self.feature_norm(feats.transpose(1, 2)).transpose(1, 2)
        if self.training:
            feats = self._spec_augment(feats)
        return feats

    def _spec_augment(self, feats: torch.Tensor) -> torch.Tensor:
        b, length, f = feats.shape
        mask = torch.ones_like(feats)
        for width, size, axis in ((self.freq_mask, f, 2), (self.time_mask, length, 1)):
            if width <= 0:
                continue
            w = torch.randint(0, width + 1, (b, 1), device=feats.device)
            start = (torch.rand(b, 1, device=feats.device) * (size - w).clamp(min=1)).long()
            pos = torch.arange(size, device=feats.device)[None]
            band = ((pos >= start) & (pos < start + w)).to(feats.dtype)  # [B, size]
            mask = mask * (1 - (band[:, None, :] if axis == 2 else band[:, :, None]))
        return feats * mask

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """wave [B, T] -> per-frame trunk outputs [B, L, D]."""
        return self.trunk(self.proj(self.features(wave)))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        h = self.encode(wave)
        if self.pool == "mean":
            pooled = h.mean(1)
        elif self.pool == "max":
            pooled = h.amax(1)
        else:
            pooled = h[:, -1]
        return self.head(pooled)

    # -- streaming ------------------------------------------------------------------------------------------
    def init_stream(self, batch_size: int = 1, device=None, dtype=None) -> StreamState:
        """Empty stream state for ``batch_size`` parallel streams (causal models only)."""
        if not self.causal:
            raise ValueError("streaming needs a causal model (build it with causal=True)")
        p = next(self.parameters())
        device, dtype = device or p.device, dtype or p.dtype
        return StreamState(buffer=torch.zeros(batch_size, 0, device=device, dtype=dtype),
                           mixer_state=self.trunk.init_state(batch_size, device=device, dtype=dtype),
                           pooled=None, frames=0)

    @torch.no_grad()
    def stream(self, chunk: torch.Tensor, state: StreamState) -> tuple[torch.Tensor | None, StreamState]:
        """Feed chunk [B, n] of new samples; returns (logits [B, C] over everything so far, or None before the
        first full frame, and the new state). Call in eval mode."""
        if self.training:
            raise RuntimeError("call model.eval() before streaming (BatchNorm and dropout must be in eval mode)")
        buffer = torch.cat([state.buffer, chunk.to(state.buffer.dtype)], dim=1)
        n = self.frontend.num_frames(buffer.shape[1])
        pooled, frames, mixer_state = state.pooled, state.frames, state.mixer_state
        if n:
            x = self.proj(self.features(buffer))  # [B, n, D]
            for t in range(n):
                y, mixer_state = self.trunk.step(x[:, t], mixer_state)
                pooled = self._pool_step(pooled, y)
            frames += n
            buffer = buffer[:, n * self.frontend.hop:]
        new = StreamState(buffer=buffer, mixer_state=mixer_state, pooled=pooled, frames=frames)
        if pooled is None:
            return None, new
        return self.head(pooled / frames if self.pool == "mean" else pooled), new

    def _pool_step(self, pooled: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        if pooled is None or self.pool == "last":
            return y.clone()
        return pooled + y if self.pool == "mean" else torch.maximum(pooled, y)
