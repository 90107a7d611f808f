"""Tests for mmseq.audio.augment: spectra, SNR, shifts, reverb decay, speed perturbation and the seeded pipeline."""

from __future__ import annotations

import math

import pytest
import torch

from mmseq.audio.augment import (
    AugmentConfig,
    WaveAugment,
    add_noise,
    apply_gain,
    colored_noise,
    reverberate,
    rms,
    speed_perturb,
    synthetic_rir,
    time_shift,
)

SR = 16000


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sine(freq: float, n: int = SR, amp: float = 0.5) -> torch.Tensor:
    return amp * torch.sin(2 * math.pi * freq * torch.arange(n, dtype=torch.float64) / SR).float()


def _speechlike(batch: int | None = None, seed: int = 1) -> torch.Tensor:
    """A windowed harmonic burst in the middle of a 1 s clip: [T] or [B, T]."""
    n = SR
    t = torch.arange(n) / SR
    env = torch.exp(-(((t - 0.5) / 0.12) ** 2))
    wave = 0.4 * env * (torch.sin(2 * math.pi * 180 * t) + 0.5 * torch.sin(2 * math.pi * 540 * t))
    if batch is None:
        return wave
    return wave.repeat(batch, 1)


@pytest.mark.parametrize(("color", "slope"), [("white", 0.0), ("pink", -1.0), ("brown", -2.0), ("blue", 1.0)])
def test_colored_noise_slope_and_unit_rms(color: str, slope: float) -> None:
    n = 8192
    noise = colored_noise(n, color, _gen(3), batch=32)
    assert noise.shape == (32, n) and noise.dtype == torch.float32
    torch.testing.assert_close(rms(noise), torch.ones(32), atol=1e-4, rtol=0)
    power = torch.fft.rfft(noise.double(), dim=-1).abs().pow(2).mean(dim=0)[1:]
    freqs = torch.fft.rfftfreq(n, d=1 / SR, dtype=torch.float64)[1:]
    # Average into log-spaced bands so every octave weighs the same in the fit.
    edges = torch.logspace(math.log10(freqs[0]), math.log10(freqs[-1]), 25, dtype=torch.float64)
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (freqs >= lo) & (freqs < hi)
        if sel.any():
            xs.append(freqs[sel].log10().mean())
            ys.append(power[sel].mean().log10())
    x, y = torch.stack(xs), torch.stack(ys)
    fitted = ((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).pow(2).sum()
    assert abs(fitted.item() - slope) < 0.15, f"{color}: slope {fitted.item():.3f}, expected {slope}"


def test_colored_noise_single_and_deterministic() -> None:
    a = colored_noise(1000, "pink", _gen(5))
    b = colored_noise(1000, "pink", _gen(5))
    assert a.shape == (1000,)
    assert torch.equal(a, b)
    assert not torch.equal(a, colored_noise(1000, "pink", _gen(6)))


def test_colored_noise_bad_color_names_allowed() -> None:
    with pytest.raises(ValueError, match="white.*pink.*brown.*blue"):
        colored_noise(100, "purple")


def test_rms_per_example() -> None:
    wave = torch.stack([torch.full((100,), 0.5), torch.full((100,), -2.0)])
    torch.testing.assert_close(rms(wave), torch.tensor([0.5, 2.0]))
    assert rms(wave[0]).shape == ()


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 12.5, 30.0])
def test_add_noise_hits_snr_with_recording_crop(snr_db: float) -> None:
    wave = _speechlike(batch=3)
    recording = torch.randn(40000, generator=_gen(2))
    before = wave.clone()
    out = add_noise(wave, recording, snr_db, _gen(4))
    assert torch.equal(wave, before), "input modified in place"
    noise = (out - wave).double()
    measured = 10 * torch.log10(wave.double().pow(2).mean(-1) / noise.pow(2).mean(-1))
    torch.testing.assert_close(measured, torch.full((3,), snr_db, dtype=torch.float64), atol=0.01, rtol=0)
    # Per-example crops come from different places in the recording.
    assert not torch.allclose(noise[0] / noise[0].norm(), noise[1] / noise[1].norm())


def test_add_noise_per_example_snr_tiled_and_same_shape() -> None:
    wave = _speechlike(batch=3)
    snr = torch.tensor([0.0, 10.0, 20.0])
    # A recording shorter than the clip is tiled.
    out = add_noise(wave, torch.randn(3000, generator=_gen(1)), snr, _gen(2))
    noise = (out - wave).double()
    measured = 10 * torch.log10(wave.double().pow(2).mean(-1) / noise.pow(2).mean(-1))
    torch.testing.assert_close(measured, snr.double(), atol=0.01, rtol=0)
    # Noise with the wave's own shape is used as is (only scaled).
    same = torch.randn(wave.shape, generator=_gen(3))
    out = add_noise(wave, same, 6.0)
    ratio = (out - wave) / same
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), atol=1e-4, rtol=1e-4)


def test_add_noise_silent_signal_uses_floor() -> None:
    silent = torch.zeros(SR)
    out = add_noise(silent, torch.randn(SR, generator=_gen(0)), 20.0, _gen(1))
    assert torch.isfinite(out).all()
    level = rms(out).item()
    # Floor power 1e-8 at 20 dB SNR -> noise RMS 1e-4 / 10.
    assert level == pytest.approx(1e-5, rel=1e-3)


def test_apply_gain() -> None:
    wave = _speechlike(batch=2)
    out = apply_gain(wave, torch.tensor([6.0, -20.0]))
    torch.testing.assert_close(rms(out) / rms(wave), torch.tensor([10 ** (6 / 20), 0.1]))
    torch.testing.assert_close(apply_gain(wave[0], 0.0), wave[0])


@pytest.mark.parametrize("shift", [0, 7, -7, 120, -120])
def test_time_shift_moves_impulse_without_wrap(shift: int) -> None:
    n, pos = 200, 150
    wave = torch.zeros(n)
    wave[pos] = 1.0
    wave[5] = 0.5  # near the start: a left shift must drop it, not wrap it to the end
    out = time_shift(wave, shift)
    expected = torch.zeros(n)
    for p, v in ((pos, 1.0), (5, 0.5)):
        if 0 <= p + shift < n:
            expected[p + shift] = v
    assert torch.equal(out, expected)
    assert wave[pos] == 1.0 and wave.sum() == 1.5, "input modified in place"


def test_time_shift_per_example() -> None:
    wave = torch.zeros(3, 50)
    wave[:, 20] = 1.0
    out = time_shift(wave, torch.tensor([3, -4, 40]))
    assert out[0].argmax() == 23 and out[1].argmax() == 16
    assert out[2].abs().sum() == 0  # shifted past the end: all zeros, nothing wrapped
    assert out.abs().sum() == 2


@pytest.mark.parametrize("rt60", [0.2, 0.5, 0.8])
def test_rir_decays_60_db_at_rt60(rt60: float) -> None:
    rir = synthetic_rir(SR, rt60, _gen(7), length_s=1.5 * rt60)
    assert rir.ndim == 1 and rir.shape[0] == round(1.5 * rt60 * SR)
    assert rir[0] == 1.0 and rir[1:].abs().max() < 1.0
    assert rir[1:].pow(2).sum().item() == pytest.approx(1.0, rel=1e-4)
    # Schroeder backward integration of the tail; fit the line between -5 and -35 dB and extrapolate to -60 dB.
    energy = rir[1:].double().pow(2)
    edc = energy.flip(0).cumsum(0).flip(0)
    edc_db = 10 * torch.log10(edc / edc[0])
    sel = (edc_db <= -5) & (edc_db >= -35)
    t = (torch.arange(edc.shape[0], dtype=torch.float64) + 1) / SR
    x, y = t[sel], edc_db[sel]
    slope = ((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).pow(2).sum()
    measured = -60.0 / slope.item()
    assert measured == pytest.approx(rt60, rel=0.2)


def test_rir_default_length_and_determinism() -> None:
    a = synthetic_rir(SR, 0.3, _gen(1))
    assert a.shape == (round(0.3 * SR),)
    assert torch.equal(a, synthetic_rir(SR, 0.3, _gen(1)))
    with pytest.raises(ValueError, match="rt60"):
        synthetic_rir(SR, 0.0)


def test_reverberate_delta_is_identity_and_keeps_rms() -> None:
    wave = _speechlike(batch=2)
    delta = torch.zeros(64)
    delta[0] = 1.0
    torch.testing.assert_close(reverberate(wave, delta), wave, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reverberate(wave[0], delta), wave[0], atol=1e-5, rtol=1e-5)
    wet = reverberate(wave, synthetic_rir(SR, 0.6, _gen(0)))
    assert wet.shape == wave.shape
    torch.testing.assert_close(rms(wet), rms(wave), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(wet, wave, atol=1e-2)


def test_speed_perturb_sine_length_and_pitch() -> None:
    freq, n = 500.0, SR
    wave = _sine(freq, n)
    out = speed_perturb(wave, 1.1, SR)
    assert out.shape == (round(n / 1.1),)
    spectrum = torch.fft.rfft(out.double() * torch.hann_window(out.shape[0], dtype=torch.float64)).abs()
    peak = spectrum.argmax().item() * SR / out.shape[0]
    assert peak == pytest.approx(freq * 1.1, abs=2.0)
    slow = speed_perturb(wave.repeat(2, 1), 0.9, SR)
    assert slow.shape == (2, round(n / 0.9))
    assert torch.equal(speed_perturb(wave, 1.0), wave)


def test_wave_augment_deterministic_shape_and_range() -> None:
    background = [torch.randn(30000, generator=_gen(9)) * 0.3, torch.randn(5000, generator=_gen(10))]
    aug = WaveAugment(AugmentConfig(p_speed=0.5, p_reverb=0.5), background)
    wave = _speechlike(batch=4)
    before = wave.clone()
    a = aug(wave, _gen(11))
    b = aug(wave, _gen(11))
    c = aug(wave, _gen(12))
    assert torch.equal(wave, before), "input modified in place"
    assert a.shape == wave.shape and a.dtype == wave.dtype
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.abs().max() <= 1.0 and c.abs().max() <= 1.0
    single = aug(wave[0], _gen(11))
    assert single.shape == wave[0].shape


def test_wave_augment_clips_loud_gain() -> None:
    aug = WaveAugment(AugmentConfig(p_noise=0.0, gain_db=(20.0, 20.0), p_reverb=0.0, p_speed=0.0))
    out = aug(_speechlike(batch=2), _gen(0))
    assert out.abs().max() == 1.0


def test_wave_augment_batch_draws_per_example() -> None:
    # Only the gain is random here, so identical rows must differ by per-example gains.
    cfg = AugmentConfig(p_noise=0.0, p_reverb=0.0, p_speed=0.0, max_shift_s=0.0, gain_db=(-20.0, 0.0))
    wave = _speechlike(batch=4)
    levels = rms(WaveAugment(cfg)(wave, _gen(3)))
    assert len(set(levels.tolist())) == 4
    # With the full pipeline identical rows differ too.
    out = WaveAugment(AugmentConfig(p_noise=1.0))(wave, _gen(3))
    for i in range(1, 4):
        assert not torch.allclose(out[0], out[i])


def test_wave_augment_identity_when_everything_off() -> None:
    cfg = AugmentConfig(p_noise=0.0, p_reverb=0.0, p_speed=0.0, max_shift_s=0.0, gain_db=(0.0, 0.0))
    wave = _speechlike(batch=2)
    out = WaveAugment(cfg)(wave, _gen(0))
    torch.testing.assert_close(out, wave)
    assert out.data_ptr() != wave.data_ptr()


@pytest.mark.parametrize("factor", [0.85, 1.15], ids=["slower-cropped", "faster-padded"])
def test_wave_augment_speed_keeps_the_clip_centred(factor: float) -> None:
    """After speed perturbation the clip is cut or padded back to T around its middle: a burst at sample p moves to
    T/2 + (p - T/2) / factor (time scaled by 1/factor about the clip's centre)."""
    n, p = SR // 2, 2400
    t = torch.arange(n, dtype=torch.float64)
    wave = (0.5 * torch.exp(-(((t - p) / 160) ** 2)) * torch.sin(2 * math.pi * 300 * t / SR)).float()
    cfg = AugmentConfig(p_speed=1.0, speed=(factor, factor), p_reverb=0.0, max_shift_s=0.0, p_noise=0.0,
                        gain_db=(0.0, 0.0))
    out = WaveAugment(cfg)(wave, _gen(0))
    assert out.shape == (n,)
    energy = out.double() ** 2
    centroid = float((energy * t).sum() / energy.sum())
    assert abs(centroid - (n / 2 + (p - n / 2) / factor)) < 10


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("p_noise", 1.5),
        ("p_reverb", -0.1),
        ("p_speed", 2.0),
        ("p_colored", -1.0),
        ("snr_db", (30.0, 0.0)),
        ("gain_db", (6.0, -20.0)),
        ("rt60", (0.0, 0.5)),
        ("speed", (1.2, 0.9)),
        ("speed", (-1.0, 1.0)),
        ("max_shift_s", -0.1),
        ("sample_rate", 0),
    ],
)
def test_bad_config_names_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        WaveAugment(AugmentConfig(**{field: value}))


def test_bad_background_rejected() -> None:
    with pytest.raises(ValueError, match="background"):
        WaveAugment(AugmentConfig(), [torch.zeros(2, 10)])
