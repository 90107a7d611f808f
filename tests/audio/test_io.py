"""mmseq.audio.io: decoding, resampling, shaping and writing clips, and one clear error per bad file."""

from __future__ import annotations

import builtins
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from mmseq.audio import io
from mmseq.audio.io import (
    SUPPORTED_EXTENSIONS,
    AudioError,
    audio_info,
    fix_length,
    load_audio,
    resample,
    save_audio,
    sliding_windows,
)
from mmseq.errors import UserError


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write(path, data: np.ndarray, sr: int, **kw):
    sf.write(str(path), data, sr, **kw)
    return path


def test_supported_extensions():
    assert {".wav", ".flac", ".ogg"} <= set(SUPPORTED_EXTENSIONS)
    assert (".mp3" in SUPPORTED_EXTENSIONS) == ("MP3" in sf.available_formats())
    assert issubclass(AudioError, UserError)


@pytest.mark.parametrize("ext", [".wav", ".flac"])
def test_lossless_round_trip(tmp_path, ext):
    x = torch.from_numpy(_sine(440, 16000, 0.25))
    out = save_audio(tmp_path / f"a{ext}", x, 16000)
    assert out == tmp_path / f"a{ext}"
    y = load_audio(out, 16000)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert (y - x).abs().max() < 1e-4
    info = audio_info(out)
    assert (info.sample_rate, info.channels, info.num_frames) == (16000, 1, x.numel())
    assert math.isclose(info.duration, 0.25)
    assert info.format == ext[1:].upper()


def test_ogg_round_trip(tmp_path):
    # Vorbis is lossy: the default PCM_16 falls back to VORBIS, and the waveform only matches approximately.
    x = torch.from_numpy(_sine(440, 16000, 0.5))
    out = save_audio(tmp_path / "a.ogg", x, 16000)
    y = load_audio(out, 16000)
    assert abs(y.numel() - x.numel()) <= 1
    n = min(y.numel(), x.numel())
    assert (y[:n] - x[:n]).pow(2).mean().sqrt() < 0.05
    assert torch.corrcoef(torch.stack([y[:n], x[:n]]))[0, 1] > 0.99


def test_save_clips_and_refuses_overwrite(tmp_path):
    p = save_audio(tmp_path / "loud.wav", torch.tensor([2.0, -3.0, 0.5]), 8000)
    y = load_audio(p, None)
    assert y[0] > 0.999 and y[1] < -0.999 and abs(y[2] - 0.5) < 1e-4
    with pytest.raises(AudioError, match=r"loud\.wav.*overwrite=True"):
        save_audio(p, torch.zeros(3), 8000)
    save_audio(p, torch.zeros(3), 8000, overwrite=True)
    assert load_audio(p, None).abs().max() == 0
    # No temp files left behind by the atomic write.
    assert sorted(f.name for f in tmp_path.iterdir()) == ["loud.wav"]
    with pytest.raises(AudioError, match=r"x\.xyz"):
        save_audio(tmp_path / "x.xyz", torch.zeros(3), 8000)


def test_resample_keeps_sine_frequency(tmp_path):
    x = _sine(440, 44100, 1.0)
    p = _write(tmp_path / "s.wav", x, 44100, subtype="FLOAT")
    y = load_audio(p, 16000)
    assert y.numel() == 16000
    spec = torch.fft.rfft(y * torch.hann_window(y.numel(), periodic=False))
    peak_hz = spec.abs().argmax().item() * 16000 / y.numel()
    assert abs(peak_hz - 440) <= 1
    ref = torch.from_numpy(_sine(440, 16000, 1.0))
    # Edges are affected by the filter's support; compare the interior with the analytic sine at the new rate.
    assert (y[200:-200] - ref[200:-200]).abs().max() < 2e-3
    # Same through the tensor API, with leading dims.
    z = resample(torch.from_numpy(x).repeat(2, 3, 1), 44100, 16000)
    assert z.shape == (2, 3, 16000)
    assert torch.allclose(z[1, 2], y, atol=1e-5)


def test_resample_8k_to_16k_and_identity(tmp_path):
    p = _write(tmp_path / "s.wav", _sine(300, 8000, 0.5), 8000)
    assert load_audio(p, 16000).numel() == 8000
    assert load_audio(p, None).numel() == 4000
    w = torch.randn(5)
    assert resample(w, 16000, 16000) is w
    with pytest.raises(ValueError):
        resample(w, 0, 16000)
    with pytest.raises(ValueError):
        resample(w, 16000, -1)


def test_stereo_to_mono_and_keep_channels(tmp_path):
    left, right = _sine(300, 16000, 0.2), _sine(700, 16000, 0.2, amp=0.3)
    p = _write(tmp_path / "st.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    mono = load_audio(p)
    assert mono.shape == (3200,)
    assert torch.allclose(mono, torch.from_numpy((left + right) / 2), atol=1e-6)
    both = load_audio(p, mono=False)
    assert both.shape == (2, 3200)
    assert torch.allclose(both[1], torch.from_numpy(right), atol=1e-6)
    assert audio_info(p).channels == 2


@pytest.mark.parametrize("seconds", [0.1, 60.0])
def test_short_and_long_clips(tmp_path, seconds):
    n = round(16000 * seconds)
    p = _write(tmp_path / "c.wav", np.zeros(n, np.int16), 16000)
    assert load_audio(p).shape == (n,)


def test_fix_length_alignments():
    w = torch.arange(1.0, 6.0)  # [1, 2, 3, 4, 5]
    assert fix_length(w, 5) is w
    assert fix_length(w, 8, align="start").tolist() == [1, 2, 3, 4, 5, 0, 0, 0]
    assert fix_length(w, 8, align="center").tolist() == [0, 1, 2, 3, 4, 5, 0, 0]
    assert fix_length(w, 8, align="end").tolist() == [0, 0, 0, 1, 2, 3, 4, 5]
    assert fix_length(w, 2, align="start").tolist() == [1, 2]
    assert fix_length(w, 2, align="center").tolist() == [2, 3]
    assert fix_length(w, 2, align="end").tolist() == [4, 5]
    assert fix_length(w.repeat(3, 1), 3).shape == (3, 3)
    with pytest.raises(ValueError):
        fix_length(w, 3, align="middle")


def test_sliding_windows_cover_the_clip():
    w = torch.randn(1000)
    win = sliding_windows(w, 300, 300)
    assert win.shape == (4, 300)
    flat = win.reshape(-1)
    assert torch.equal(flat[:1000], w) and flat[1000:].abs().sum() == 0
    over = sliding_windows(w, 300, 100)
    assert over.shape == (8, 300)  # starts 0..700: the last reaches 1000 exactly
    assert torch.equal(over[3], w[300:600])
    assert torch.equal(over[-1], w[700:1000])
    short = sliding_windows(w[:50], 300, 100)
    assert short.shape == (1, 300) and torch.equal(short[0, :50], w[:50]) and short[0, 50:].abs().sum() == 0
    assert sliding_windows(w[:300], 300, 100).shape == (1, 300)


# ---- errors: each names the file --------------------------------------------------------------------------------


def _wav_bytes(tmp_path, n: int = 16000) -> bytes:
    p = _write(tmp_path / "_src.wav", (np.random.default_rng(0).uniform(-0.5, 0.5, n)).astype(np.float32),
               16000, subtype="PCM_16")
    data = p.read_bytes()
    p.unlink()
    return data


def test_missing_directory_empty_notaudio(tmp_path):
    with pytest.raises(AudioError, match=r"not found.*nope\.wav"):
        load_audio(tmp_path / "nope.wav")
    (tmp_path / "folder.wav").mkdir()
    with pytest.raises(AudioError, match=r"folder\.wav.*directory"):
        load_audio(tmp_path / "folder.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav.*0 bytes"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "text.wav").write_text("this is not a riff header, just text\n" * 20)
    with pytest.raises(AudioError, match=r"text\.wav.*not a readable audio file"):
        load_audio(tmp_path / "text.wav")
    with pytest.raises(AudioError, match=r"text\.wav"):
        audio_info(tmp_path / "text.wav")


def test_truncated_flac_is_one_clear_error(tmp_path):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32)
    full = _write(tmp_path / "full.flac", x, 16000)
    p = tmp_path / "cut.flac"
    p.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    try:
        y = load_audio(p)
    except AudioError as e:
        assert "cut.flac" in str(e) and "truncated" in str(e)
    else:  # another libsndfile build may stop cleanly at the cut instead
        assert 0 < y.numel() <= 16000


def test_zero_sample_clip(tmp_path):
    data = _wav_bytes(tmp_path)
    p = tmp_path / "hdr.wav"
    p.write_bytes(data[:44])  # header only
    with pytest.raises(AudioError, match=r"hdr\.wav is truncated: its header announces 32000 bytes.*holds 0"):
        load_audio(p)
    q = _write(tmp_path / "zero.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match=r"zero\.wav.*no audio samples"):
        load_audio(q)


def test_max_seconds_checked_before_decoding(tmp_path, monkeypatch):
    p = _write(tmp_path / "long.wav", np.zeros(16000 * 3, np.int16), 16000)

    def no_decoding(*a, **k):
        raise AssertionError("samples were decoded")

    monkeypatch.setattr(sf, "read", no_decoding)
    with pytest.raises(AudioError, match=r"long\.wav.*3\.0 s.*max_seconds"):
        load_audio(p, max_seconds=2.0)
    monkeypatch.undo()
    assert load_audio(p, max_seconds=None).numel() == 48000
    assert load_audio(p, max_seconds=3.0).numel() == 48000


def test_torchcodec_missing_message(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("torchcodec"):
            raise ImportError("No module named 'torchcodec'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    p = tmp_path / "clip.m4a"
    p.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(200))
    with pytest.raises(AudioError) as ei:
        load_audio(p)
    msg = str(ei.value)
    assert "clip.m4a" in msg and "torchcodec" in msg and "ffmpeg" in msg and "m4a" in msg
    assert "\n" not in msg
    with pytest.raises(AudioError, match="torchcodec"):
        audio_info(p)


def test_module_exports():
    assert set(io.__all__) >= {"load_audio", "resample", "fix_length", "sliding_windows", "save_audio", "AudioError"}


def test_non_finite_samples_are_refused(tmp_path):
    wave = np.zeros(1600, dtype=np.float32)
    wave[10] = np.nan
    sf.write(tmp_path / "nan.wav", wave, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="1 NaN or infinite sample"):
        load_audio(tmp_path / "nan.wav")


def test_wav_cut_short_is_refused(tmp_path):
    sf.write(tmp_path / "full.wav", np.zeros(16000, dtype=np.float32), 16000, subtype="PCM_16")
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    assert load_audio(tmp_path / "full.wav").shape == (16000,)
    with pytest.raises(AudioError, match="truncated: its header announces 32000 bytes of audio but the file holds"):
        load_audio(tmp_path / "cut.wav")
