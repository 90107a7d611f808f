"""Waveform augmentation for keyword spotting on short speech clips (16 kHz by default).

Every random draw comes from an explicit ``torch.Generator`` so that a fixed seed gives the same output. Functions
take a single clip ``[T]`` or a batch ``[B, T]`` (float32; batch examples get their own random draws), return the
same layout, and never modify their input in place.

Building blocks: :func:`colored_noise`, :func:`rms`, :func:`add_noise`, :func:`apply_gain`, :func:`time_shift`,
:func:`synthetic_rir`, :func:`reverberate`, :func:`speed_perturb`. :class:`WaveAugment` chains them with random
parameters drawn from an :class:`AugmentConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
import torchaudio.functional as AF

from mmseq.audio.io import fix_length

__all__ = [
    "COLORS",
    "AugmentConfig",
    "WaveAugment",
    "add_noise",
    "apply_gain",
    "colored_noise",
    "reverberate",
    "rms",
    "speed_perturb",
    "synthetic_rir",
    "time_shift",
]

# Power-spectrum exponent per color: P(f) ~ f**exponent.
COLORS: dict[str, float] = {"white": 0.0, "pink": -1.0, "brown": -2.0, "blue": 1.0}

# Power floor used when the signal is silent, so the noise level stays finite (-80 dBFS, i.e. RMS 1e-4).
_POWER_FLOOR = 1e-8
# Largest denominator of the rational resampling ratio; it bounds the number of filter phases torchaudio builds.
_MAX_RATIO_DENOMINATOR = 1000


def _as_batch(wave: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``[T]`` or ``[B, T]`` -> (``[B, T]``, whether the input was a single clip)."""
    if wave.ndim == 1:
        return wave.unsqueeze(0), True
    if wave.ndim == 2:
        return wave, False
    raise ValueError(f"wave must be [T] or [B, T], got shape {tuple(wave.shape)}")


def _restore(out: torch.Tensor, single: bool) -> torch.Tensor:
    return out.squeeze(0) if single else out


def _gen_device(generator: torch.Generator | None) -> torch.device:
    # Random tensors must be created on the generator's device; results are moved to the data's device afterwards.
    return generator.device if generator is not None else torch.device("cpu")


def _per_example(value: float | torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """A scalar or a ``[B]`` tensor -> ``[B]`` float64 tensor on the CPU."""
    t = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    if t.ndim == 0:
        return t.expand(batch).clone()
    if t.shape != (batch,):
        raise ValueError(f"{name} must be a float or a [B] tensor with B={batch}, got shape {tuple(t.shape)}")
    return t


def colored_noise(
    num_samples: int,
    color: str = "white",
    generator: torch.Generator | None = None,
    *,
    batch: int | None = None,
) -> torch.Tensor:
    """Gaussian noise with a power spectrum ``P(f) ~ f**k``, scaled to unit RMS.

    ``k`` is 0 for "white", -1 for "pink", -2 for "brown" and +1 for "blue". White Gaussian noise is shaped in the
    frequency domain (rfft, multiply the amplitudes by ``f**(k/2)``, irfft); the DC bin is zeroed because ``f**k`` is
    infinite there for pink and brown noise, which also makes every color zero-mean.

    Returns ``[num_samples]``, or ``[batch, num_samples]`` when ``batch`` is given, float32 on the generator's device.
    """
    if color not in COLORS:
        raise ValueError(f"unknown noise color {color!r}; allowed colors: {', '.join(COLORS)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    rows = 1 if batch is None else batch
    device = _gen_device(generator)
    white = torch.randn(rows, num_samples, generator=generator, device=device, dtype=torch.float32)
    exponent = COLORS[color]
    if exponent != 0.0:
        spec = torch.fft.rfft(white, dim=-1)
        freqs = torch.fft.rfftfreq(num_samples, device=device)
        scale = torch.zeros_like(freqs)
        scale[1:] = freqs[1:].pow(exponent / 2.0)
        white = torch.fft.irfft(spec * scale, n=num_samples, dim=-1)
    # A one-sample clip has only a DC bin; fall back to a fixed unit value rather than dividing by zero.
    level = white.pow(2).mean(dim=-1, keepdim=True).sqrt().clamp_min(1e-12)
    out = white / level
    if num_samples == 1 and exponent != 0.0:
        out = torch.ones_like(out)
    return out.squeeze(0) if batch is None else out


def rms(wave: torch.Tensor) -> torch.Tensor:
    """Root-mean-square level per example: ``[T]`` -> scalar tensor, ``[B, T]`` -> ``[B]``."""
    return wave.pow(2).mean(dim=-1).sqrt()


def add_noise(
    wave: torch.Tensor,
    noise: torch.Tensor,
    snr_db: float | torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mix ``noise`` into ``wave`` at a signal-to-noise ratio of exactly ``snr_db``.

    ``wave``: ``[T]`` or ``[B, T]``. ``noise``: either the same shape as ``wave``, or a 1-D recording ``[T_noise]``
    from which each example takes a random crop of length ``T`` (wrapping around, i.e. tiling, when
    ``T_noise < T``). ``snr_db``: a float or a ``[B]`` tensor. The noise (after cropping) is scaled so that
    ``10 * log10(mean(wave**2) / mean(scaled_noise**2)) == snr_db``. A silent example is treated as having power
    ``1e-8`` (-80 dBFS), so the noise is added at the level that floor implies instead of dividing by zero; silent
    noise adds nothing. Returns the same shape as ``wave``.
    """
    x, single = _as_batch(wave)
    b, t = x.shape
    if noise.ndim == 1 and not (single and noise.shape[0] == t):
        n_len = noise.shape[0]
        if n_len < 1:
            raise ValueError("noise recording is empty")
        span = n_len - t + 1 if n_len >= t else n_len
        offsets = (torch.rand(b, generator=generator, device=_gen_device(generator)) * span).long().clamp_max(span - 1)
        idx = offsets.to(noise.device)[:, None] + torch.arange(t, device=noise.device)[None, :]
        # For a recording shorter than the clip the modulo tiles it; for a longer one it never triggers.
        n = noise[idx % n_len].to(device=x.device, dtype=x.dtype)
    elif noise.shape == wave.shape:
        n = noise.reshape(b, t).to(device=x.device, dtype=x.dtype)
    else:
        raise ValueError(
            f"noise must be a 1-D recording or match wave's shape {tuple(wave.shape)}, got {tuple(noise.shape)}"
        )
    snr = _per_example(snr_db, b, "snr_db")
    # Powers in float64 so the requested SNR is met to well within 0.01 dB even for quiet clips.
    p_sig = x.double().pow(2).mean(dim=-1).cpu().clamp_min(_POWER_FLOOR)
    p_noise = n.double().pow(2).mean(dim=-1).cpu()
    scale = torch.sqrt(p_sig / (p_noise.clamp_min(1e-30) * torch.pow(10.0, snr / 10.0)))
    scale = torch.where(p_noise > 0, scale, torch.zeros_like(scale))
    out = x + n * scale.to(device=x.device, dtype=x.dtype)[:, None]
    return _restore(out, single)


def apply_gain(wave: torch.Tensor, gain_db: float | torch.Tensor) -> torch.Tensor:
    """Scale ``wave`` (``[T]`` or ``[B, T]``) by ``gain_db`` decibels (a float, or a ``[B]`` tensor per example)."""
    x, single = _as_batch(wave)
    g = _per_example(gain_db, x.shape[0], "gain_db")
    factor = torch.pow(10.0, g / 20.0).to(device=x.device, dtype=x.dtype)
    return _restore(x * factor[:, None], single)


def time_shift(wave: torch.Tensor, shift: int | torch.Tensor) -> torch.Tensor:
    """Delay (``shift > 0``) or advance (``shift < 0``) ``wave`` by ``shift`` samples, filling with zeros.

    ``wave``: ``[T]`` or ``[B, T]``; ``shift``: an int, or a ``[B]`` integer tensor per example. Unlike
    ``torch.roll`` nothing wraps around, so the end of a word never reappears at the start of the clip.
    Returns the same shape as ``wave``.
    """
    x, single = _as_batch(wave)
    b, t = x.shape
    s = torch.as_tensor(shift).detach().to(device=x.device, dtype=torch.long)
    if s.ndim == 0:
        s = s.expand(b)
    elif s.shape != (b,):
        raise ValueError(f"shift must be an int or a [B] tensor with B={b}, got shape {tuple(s.shape)}")
    src = torch.arange(t, device=x.device)[None, :] - s[:, None]
    valid = (src >= 0) & (src < t)
    out = torch.gather(x, 1, src.clamp(0, t - 1)) * valid.to(x.dtype)
    return _restore(out, single)


def synthetic_rir(
    sample_rate: int,
    rt60: float,
    generator: torch.Generator | None = None,
    *,
    length_s: float | None = None,
) -> torch.Tensor:
    """A synthetic room impulse response ``[K]``: a direct path plus an exponentially decaying noise tail.

    The tail is Gaussian noise under an amplitude envelope ``exp(-3 ln(10) t / rt60)``, so its energy falls by 60 dB
    at ``t = rt60`` seconds. Index 0 is the direct path with amplitude 1, and the tail (indices ``1..K-1``) is scaled
    to unit energy, i.e. a direct-to-reverberant ratio of 0 dB, whatever ``rt60`` is; without this the tail energy
    would grow with ``rt60`` and swamp the dry signal. ``K = max(2, round(length_s * sample_rate))`` with
    ``length_s`` defaulting to ``rt60`` (the tail is 60 dB down by then). Float32 on the generator's device.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not rt60 > 0:
        raise ValueError(f"rt60 must be positive, got {rt60}")
    if length_s is None:
        length_s = rt60
    if not length_s > 0:
        raise ValueError(f"length_s must be positive, got {length_s}")
    k = max(2, round(length_s * sample_rate))
    device = _gen_device(generator)
    t = torch.arange(k, device=device, dtype=torch.float32) / sample_rate
    envelope = torch.exp(-3.0 * math.log(10.0) * t / rt60)
    rir = torch.randn(k, generator=generator, device=device, dtype=torch.float32) * envelope
    rir[0] = 0.0
    rir = rir / rir.pow(2).sum().sqrt().clamp_min(1e-12)
    rir[0] = 1.0
    return rir


def reverberate(wave: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """Convolve ``wave`` (``[T]`` or ``[B, T]``) with ``rir`` (``[K]``, or ``[B, K]`` one per example).

    The output is cut to the input length ``T`` (the reverberant tail past the clip is dropped) and rescaled to the
    input's RMS per example, so reverberation changes the sound but not the level. Returns the same shape as
    ``wave``.
    """
    x, single = _as_batch(wave)
    if rir.ndim not in (1, 2) or (rir.ndim == 2 and rir.shape[0] != x.shape[0]):
        raise ValueError(f"rir must be [K] or [B, K] with B={x.shape[0]}, got shape {tuple(rir.shape)}")
    h = rir.to(device=x.device, dtype=x.dtype)
    if h.ndim == 1:
        h = h.unsqueeze(0)
    out = AF.fftconvolve(x, h)[..., : x.shape[-1]]
    gain = rms(x) / rms(out).clamp_min(1e-12)
    return _restore(out * gain[:, None], single)


def speed_perturb(wave: torch.Tensor, factor: float, sample_rate: int = 16000) -> torch.Tensor:
    """Play ``wave`` (``[T]`` or ``[B, T]``) ``factor`` times faster, changing tempo and pitch together.

    As in Kaldi's speed perturbation, the clip is resampled from ``sample_rate * factor`` to ``sample_rate`` and then
    read at ``sample_rate``. The resampling ratio is the fraction nearest ``round(sample_rate * factor) /
    sample_rate`` with a denominator of at most 1000, which keeps torchaudio's polyphase filter small (the realised
    factor is within about 1e-6 of the requested one). Output ``[round(T / factor)]`` or ``[B, round(T / factor)]``.
    """
    if not factor > 0:
        raise ValueError(f"factor must be positive, got {factor}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    x, single = _as_batch(wave)
    t = x.shape[-1]
    target = max(1, round(t / factor))
    ratio = Fraction(max(1, round(sample_rate * factor)), sample_rate).limit_denominator(_MAX_RATIO_DENOMINATOR)
    if ratio == 1:
        out = x.clone()
    else:
        out = AF.resample(x, orig_freq=ratio.numerator, new_freq=ratio.denominator)
    # torchaudio rounds the length up; trim or zero-pad the last sample or so to the documented length.
    if out.shape[-1] >= target:
        out = out[..., :target]
    else:
        out = torch.nn.functional.pad(out, (0, target - out.shape[-1]))
    return _restore(out.contiguous(), single)


@dataclass
class AugmentConfig:
    """Probabilities and ranges for :class:`WaveAugment`; each ``(lo, hi)`` range is sampled uniformly.

    ``p_colored`` is the fraction of noise draws that use colored noise instead of a background recording (all of
    them when no background recordings are given). ``max_shift_s`` bounds the random time shift in seconds, either
    direction.
    """

    p_noise: float = 0.8
    snr_db: tuple[float, float] = (0.0, 30.0)
    gain_db: tuple[float, float] = (-20.0, 6.0)
    max_shift_s: float = 0.15
    p_reverb: float = 0.3
    rt60: tuple[float, float] = (0.1, 0.9)
    p_speed: float = 0.3
    speed: tuple[float, float] = (0.85, 1.15)
    p_colored: float = 0.3
    sample_rate: int = 16000

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        for name in ("p_noise", "p_reverb", "p_speed", "p_colored"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        for name, positive in (("snr_db", False), ("gain_db", False), ("rt60", True), ("speed", True)):
            value = getattr(self, name)
            if len(value) != 2 or not value[0] <= value[1]:
                raise ValueError(f"{name} must be a (lo, hi) pair with lo <= hi, got {value}")
            if positive and not value[0] > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not self.max_shift_s >= 0:
            raise ValueError(f"max_shift_s must be >= 0, got {self.max_shift_s}")
        if not (isinstance(self.sample_rate, int) and self.sample_rate > 0):
            raise ValueError(f"sample_rate must be a positive int, got {self.sample_rate}")


class WaveAugment:
    """Random waveform augmentation: speed -> reverb -> time shift -> noise -> gain -> clip to [-1, 1].

    ``WaveAugment(config, background)`` with ``background`` a sequence of 1-D noise recordings (any lengths, e.g. the
    Speech Commands ``_background_noise_`` files at the same sample rate). Calling it on ``[T]`` or ``[B, T]`` with a
    generator returns the same shape; every example of a batch gets its own random parameters.

    Per example: with probability ``p_speed`` the clip is speed-perturbed by a factor from ``speed`` (rounded to
    0.01 so the resampling filter stays small) and centre-cropped / zero-padded back to ``T``; with probability
    ``p_reverb`` it is convolved with a :func:`synthetic_rir` of an ``rt60`` from its range; it is shifted by a
    uniform whole number of samples in ``[-max_shift_s, max_shift_s]`` seconds; with probability ``p_noise`` noise is
    added at an SNR from ``snr_db`` (colored noise of a uniformly chosen color with probability ``p_colored`` or when
    there is no background, else a random crop of a random background recording); finally a gain from ``gain_db``
    is applied and the result is clipped to [-1, 1].
    """

    def __init__(self, config: AugmentConfig | None = None, background: Sequence[torch.Tensor] = ()) -> None:
        self.config = config if config is not None else AugmentConfig()
        self.config.validate()
        self.background: list[torch.Tensor] = []
        for i, rec in enumerate(background):
            rec = torch.as_tensor(rec)
            if rec.ndim != 1 or rec.numel() == 0:
                raise ValueError(f"background[{i}] must be a non-empty 1-D tensor, got shape {tuple(rec.shape)}")
            self.background.append(rec.detach().to(torch.float32))

    def __call__(self, wave: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``wave``: ``[T]`` or ``[B, T]`` float -> augmented tensor of the same shape, values in [-1, 1]."""
        x, single = _as_batch(wave)
        out = torch.stack([self._one(row, generator) for row in x]) if x.shape[0] > 0 else x.clone()
        return _restore(out, single)

    def _uniform(self, lo: float, hi: float, generator: torch.Generator | None) -> float:
        u = torch.rand((), generator=generator, device=_gen_device(generator)).item()
        return lo + (hi - lo) * u

    def _chance(self, p: float, generator: torch.Generator | None) -> bool:
        # Always draw, even for p in {0, 1}, so that the sequence of draws (and thus later parameters) does not
        # depend on which branches were taken before.
        return self._uniform(0.0, 1.0, generator) < p

    def _one(self, wave: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Augment one clip ``[T]`` -> ``[T]``."""
        cfg = self.config
        sr = cfg.sample_rate
        t = wave.shape[-1]
        x = wave

        do_speed = self._chance(cfg.p_speed, generator)
        factor = round(self._uniform(*cfg.speed, generator), 2)
        if do_speed and factor != 1.0:
            x = fix_length(speed_perturb(x, factor, sr), t, align="center")

        do_reverb = self._chance(cfg.p_reverb, generator)
        rt60 = self._uniform(*cfg.rt60, generator)
        if do_reverb:
            x = reverberate(x, synthetic_rir(sr, rt60, generator))

        max_shift = int(cfg.max_shift_s * sr)
        shift = round(self._uniform(-max_shift, max_shift, generator))
        if shift != 0:
            x = time_shift(x, shift)

        do_noise = self._chance(cfg.p_noise, generator)
        snr = self._uniform(*cfg.snr_db, generator)
        use_colored = self._chance(cfg.p_colored, generator) or not self.background
        pick = self._uniform(0.0, 1.0, generator)
        if do_noise:
            if use_colored:
                colors = list(COLORS)
                noise = colored_noise(t, colors[min(int(pick * len(colors)), len(colors) - 1)], generator)
            else:
                noise = self.background[min(int(pick * len(self.background)), len(self.background) - 1)]
            x = add_noise(x, noise.to(x.device), snr, generator)

        gain = self._uniform(*cfg.gain_db, generator)
        # clamp returns a new tensor, so the caller's input is never aliased even when nothing else ran.
        return apply_gain(x, gain).clamp(-1.0, 1.0)
