"""The log-mel front end against log mel energies written out in float64: Hann-windowed frames, a DFT as
cosine and sine sums, |X|^2, and HTK-mel triangular filters built here."""

import math

import pytest
import torch
import torchaudio

from mmseq.audio.frontends import LogMel


def _hz_to_mel(f):
    return 2595.0 * math.log10(1.0 + f / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def _mel_filters(n_freqs, sample_rate, f_min, f_max, n_mels):
    """[n_freqs, n_mels]: triangle m rises from edge m to m+1 and falls to m+2 (in Hz), edges evenly spaced on
    the HTK mel scale from f_min to f_max; bin f sits at f * (sample_rate / 2) / (n_freqs - 1) Hz."""
    lo, hi = _hz_to_mel(f_min), _hz_to_mel(f_max)
    edges = [_mel_to_hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    fb = torch.zeros(n_freqs, n_mels, dtype=torch.float64)
    for b in range(n_freqs):
        f = b * (sample_rate / 2) / (n_freqs - 1)
        for m in range(n_mels):
            rise = (f - edges[m]) / (edges[m + 1] - edges[m])
            fall = (edges[m + 2] - f) / (edges[m + 2] - edges[m + 1])
            fb[b, m] = max(0.0, min(rise, fall))
    return fb


def _log_mel(wave, sample_rate, n_mels, win, hop, f_min, f_max):
    """wave [T] float64 -> [L, n_mels]: log(|DFT(hann * frame)|^2 @ filters + 1e-6), frames without padding."""
    n = torch.arange(win, dtype=torch.float64)
    hann = 0.5 - 0.5 * torch.cos(2 * math.pi * n / win)  # periodic Hann
    freqs = torch.arange(win // 2 + 1, dtype=torch.float64)[:, None]
    cos, sin = torch.cos(2 * math.pi * freqs * n / win), torch.sin(2 * math.pi * freqs * n / win)
    fb = _mel_filters(win // 2 + 1, sample_rate, f_min, f_max, n_mels)
    rows = []
    for start in range(0, wave.shape[0] - win + 1, hop):
        frame = wave[start:start + win] * hann
        power = (cos @ frame) ** 2 + (sin @ frame) ** 2
        rows.append(torch.log(power @ fb + 1e-6))
    return torch.stack(rows)


@pytest.mark.parametrize("kw", [{"n_mels": 32}, {"n_mels": 20, "f_min": 50.0, "f_max": 6000.0, "hop_ms": 12.5}],
                         ids=["default-band", "narrow-band"])
def test_logmel_values_equal_the_log_mel_energies_written_out(kw):
    sr = 16000
    fe = LogMel(sr, **kw).double()
    g = torch.Generator().manual_seed(0)
    t = torch.arange(sr // 2, dtype=torch.float64) / sr
    wave = 0.3 * torch.randn(sr // 2, generator=g, dtype=torch.float64) + 0.5 * torch.sin(2 * math.pi * 1000 * t)
    got = fe(wave[None])[0]
    want = _log_mel(wave, sr, kw["n_mels"], fe.window, fe.hop, kw.get("f_min", 20.0), kw.get("f_max", sr / 2))
    assert got.shape == want.shape == (fe.num_frames(sr // 2), kw["n_mels"])
    # torchaudio builds its filters in float32, hence the tolerance (the log values are of order 1 to 10)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_logmel_frames_line_up_with_kaldi_fbank():
    """Same frame count as torchaudio's Kaldi fbank (snip_edges) for 25 ms / 10 ms frames."""
    fe = LogMel(16000, n_mels=32)
    for n in (400, 401, 559, 560, 16000):
        wave = torch.randn(1, n)
        assert fe(wave).shape[1] == fe.num_frames(n)
        assert fe.num_frames(n) == torchaudio.compliance.kaldi.fbank(wave, num_mel_bins=32, dither=0.0).shape[0]
