"""Audio front ends: waveform [B, T] -> frame features [B, L, F], chosen by name in the config.

Every front end is frame-local: frame k depends only on samples [k * hop, k * hop + window). That is what lets
a classifier stream (compute frames as samples arrive) and get exactly the frames of the full forward.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from mmseq.registry import Registry

FRONTENDS: Registry[type[Frontend]] = Registry("audio front end")


class Frontend(nn.Module):
    """Base: ``window`` samples make the first frame, each further frame needs ``hop`` more samples."""

    window: int
    hop: int
    out_dim: int

    def num_frames(self, num_samples: int) -> int:
        """Frames a clip of ``num_samples`` yields (0 when shorter than one window)."""
        return 0 if num_samples < self.window else 1 + (num_samples - self.window) // self.hop

    def forward(self, wave: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _register(name: str):
    def wrap(cls):
        cls.name = name
        return FRONTENDS.register(name)(cls)

    return wrap


@_register("logmel")
class LogMel(Frontend):
    """Log mel energies: wave [B, T] -> [B, L, n_mels]; 25 ms windows every 10 ms at 16 kHz by default."""

    def __init__(self, sample_rate: int = 16000, n_mels: int = 40, win_ms: float = 25.0, hop_ms: float = 10.0,
                 f_min: float = 20.0, f_max: float | None = None) -> None:
        super().__init__()
        self.window = round(sample_rate * win_ms / 1000)
        self.hop = round(sample_rate * hop_ms / 1000)
        self.out_dim = n_mels
        # center=False keeps frames causal and frame-local (no reflection padding of the clip's edges).
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=self.window, win_length=self.window, hop_length=self.hop,
            f_min=f_min, f_max=f_max, n_mels=n_mels, center=False, power=2.0)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        mel = self.mel(wave)  # [B, n_mels, L]
        return torch.log(mel + 1e-6).transpose(1, 2)


@_register("mfcc")
class MFCC(Frontend):
    """MFCCs: wave [B, T] -> [B, L, n_mfcc] (DCT of the log mel energies)."""

    def __init__(self, sample_rate: int = 16000, n_mfcc: int = 20, n_mels: int = 40, win_ms: float = 25.0,
                 hop_ms: float = 10.0, f_min: float = 20.0, f_max: float | None = None) -> None:
        super().__init__()
        self.logmel = LogMel(sample_rate, n_mels, win_ms, hop_ms, f_min, f_max)
        self.window, self.hop, self.out_dim = self.logmel.window, self.logmel.hop, n_mfcc
        self.register_buffer("dct", torchaudio.functional.create_dct(n_mfcc, n_mels, norm="ortho"), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.logmel(wave) @ self.dct.to(wave.dtype)


@_register("raw")
class RawPatches(Frontend):
    """Raw waveform in non-overlapping patches: wave [B, T] -> [B, T // patch_size, patch_size].

    patch_size=1 is the S4/Mamba Speech Commands setting (L = 16000 for one second); larger patches are a
    strided patch embedding (the model's input projection is the embedding) that shortens the sequence.
    """

    def __init__(self, sample_rate: int = 16000, patch_size: int = 1) -> None:
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.window = self.hop = self.out_dim = patch_size

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        n = wave.shape[-1] // self.hop
        return wave[..., : n * self.hop].reshape(*wave.shape[:-1], n, self.hop)


def create_frontend(name: str, sample_rate: int, **kwargs) -> Frontend:
    """Build a registered front end: ``create_frontend("logmel", 16000, n_mels=40)``."""
    return FRONTENDS.get(name)(sample_rate=sample_rate, **kwargs)
