"""Reading, writing and shaping audio clips.

Decoding goes through soundfile (libsndfile) for the formats it reads; anything else (m4a, aac, ...) goes through
torchcodec when it is installed. Every problem with a file the user pointed at is raised as ``AudioError`` with one
line naming the file.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from mmseq.errors import UserError

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "AudioError",
    "AudioInfo",
    "audio_info",
    "fix_length",
    "load_audio",
    "resample",
    "save_audio",
    "sliding_windows",
]


class AudioError(UserError):
    """A bad audio input: missing, empty, not audio, truncated, too long, or a format nothing here can decode."""


def _supported_extensions() -> tuple[str, ...]:
    # MP3 support arrived in libsndfile 1.1; older system builds lack it, so ask the library rather than assume.
    formats = sf.available_formats()
    exts = [".wav", ".flac", ".ogg"]
    if "MP3" in formats:
        exts.append(".mp3")
    return tuple(exts)


SUPPORTED_EXTENSIONS: tuple[str, ...] = _supported_extensions()

# Extension -> libsndfile major format, for writing (the temp file's name cannot be trusted to carry it).
_WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}

_INSTALL_HINT = "pip install torchcodec, and the Debian package ffmpeg (apt-get install ffmpeg)"


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: rate in Hz, channel count, frames per channel, seconds, container format."""

    sample_rate: int
    channels: int
    num_frames: int
    duration: float
    format: str


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise AudioError(f"audio file not found: {p}; expected an existing file ({', '.join(SUPPORTED_EXTENSIONS)})")
    if p.is_dir():
        raise AudioError(f"{p} is a directory, not an audio file; pass the path of one audio file")
    if p.stat().st_size == 0:
        raise AudioError(f"{p} is empty (0 bytes); expected an audio file, re-create or re-download it")
    return p


def _sf_info(p: Path) -> sf._SoundFileInfo | None:
    """The libsndfile header of ``p``, or None when libsndfile does not recognise the file."""
    try:
        return sf.info(str(p))
    except (sf.LibsndfileError, RuntimeError):
        return None


def _import_decoder(p: Path):
    try:
        from torchcodec.decoders import AudioDecoder
    except ImportError as e:
        fmt = p.suffix.lstrip(".") or "extension-less"
        raise AudioError(
            f"{p}: cannot decode {fmt} audio: soundfile does not read it and torchcodec is not installed; "
            f"{_INSTALL_HINT}, or convert the file to one of {', '.join(SUPPORTED_EXTENSIONS)}"
        ) from e
    return AudioDecoder


def _open_decoder(p: Path):
    decoder_cls = _import_decoder(p)
    try:
        return decoder_cls(str(p))
    except Exception as e:
        raise AudioError(f"{p} is not a readable audio file ({e}); expected audio in a format ffmpeg decodes") from e


def _codec_info(p: Path, decoder) -> AudioInfo:
    md = decoder.metadata
    sr = int(md.sample_rate)
    duration = getattr(md, "duration_seconds_from_header", None)
    if duration is None:
        duration = getattr(md, "duration_seconds", None)
    duration = float(duration) if duration is not None else float("nan")
    frames = round(duration * sr) if math.isfinite(duration) else -1
    return AudioInfo(sr, int(md.num_channels), frames, duration, p.suffix.lstrip(".").upper() or "UNKNOWN")


def _not_audio(p: Path) -> AudioError:
    return AudioError(
        f"{p} is not a readable audio file (libsndfile does not recognise its contents); "
        f"expected audio such as {', '.join(SUPPORTED_EXTENSIONS)}"
    )


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header facts of an audio file, without decoding its samples."""
    p = _check_file(path)
    info = _sf_info(p)
    if info is not None:
        return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames),
                         info.frames / info.samplerate, str(info.format))
    if p.suffix.lower() in SUPPORTED_EXTENSIONS:
        raise _not_audio(p)
    return _codec_info(p, _open_decoder(p))


def _check_length(p: Path, info: AudioInfo, max_seconds: float | None) -> None:
    if max_seconds is not None and math.isfinite(info.duration) and info.duration > max_seconds:
        raise AudioError(
            f"{p} is {info.duration:.1f} s long, over the limit max_seconds={max_seconds:g}; "
            f"pass a larger max_seconds (or max_seconds=None) to load_audio to read it"
        )


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None = 16000,
    *,
    mono: bool = True,
    max_seconds: float | None = 3600.0,
) -> torch.Tensor:
    """Decode an audio file to float32 in [-1, 1].

    Returns ``wave: [T]`` when ``mono`` (channels averaged) or ``[C, T]`` otherwise, resampled to ``sample_rate``
    (None keeps the file's own rate). The length is checked against ``max_seconds`` from the header before any
    sample is decoded, so a huge file is refused cheaply.
    """
    if sample_rate is not None and (not isinstance(sample_rate, int) or sample_rate <= 0):
        raise ValueError(f"sample_rate must be a positive int or None, got {sample_rate!r}")
    p = _check_file(path)
    header = _sf_info(p)
    if header is not None:
        _check_wav_complete(p)
        info = AudioInfo(int(header.samplerate), int(header.channels), int(header.frames),
                         header.frames / header.samplerate, str(header.format))
        _check_length(p, info, max_seconds)
        try:
            data, file_sr = sf.read(str(p), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            # The header parsed but the sample data did not: a download or copy cut short (seen with FLAC).
            raise AudioError(
                f"{p} is truncated or corrupt: its header is valid but decoding the samples failed ({e}); "
                f"re-create or re-download the file"
            ) from e
        wave = torch.from_numpy(np.ascontiguousarray(data.T))  # [C, T]
    else:
        if p.suffix.lower() in SUPPORTED_EXTENSIONS:
            raise _not_audio(p)
        decoder = _open_decoder(p)
        info = _codec_info(p, decoder)
        _check_length(p, info, max_seconds)
        try:
            samples = decoder.get_all_samples()
        except Exception as e:
            raise AudioError(f"{p} is truncated or corrupt: decoding failed ({e}); re-create or re-download it") from e
        wave = samples.data.to(torch.float32)
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        file_sr = int(samples.sample_rate)
    if wave.shape[-1] == 0:
        raise AudioError(f"{p} holds no audio samples (0 frames); expected a clip of at least one sample")
    if not torch.isfinite(wave).all():
        bad = int((~torch.isfinite(wave)).sum())
        raise AudioError(f"{p} holds {bad} NaN or infinite sample(s); a clip must hold finite values in [-1, 1]")
    if mono:
        wave = wave.mean(dim=0)
    if sample_rate is not None and sample_rate != file_sr:
        wave = resample(wave, int(file_sr), sample_rate)
    # Float files may hold values past full scale, and resampling overshoots on sharp edges.
    return wave.clamp_(-1.0, 1.0).contiguous()


def _check_wav_complete(p: Path) -> None:
    """Refuse a WAV whose data chunk is shorter than its header says (libsndfile reads what is there silently)."""
    if p.suffix.lower() != ".wav":
        return
    size = p.stat().st_size
    with p.open("rb") as f:
        if f.read(4) != b"RIFF" or len(f.read(4)) < 4 or f.read(4) != b"WAVE":
            return  # RF64, W64 and others: leave them to libsndfile
        while True:
            head = f.read(8)
            if len(head) < 8:
                return
            chunk, length = head[:4], int.from_bytes(head[4:], "little")
            if chunk == b"data":
                available = size - f.tell()
                # 0 and 0xFFFFFFFF mark a stream written without a final length: nothing to compare with.
                if length not in (0, 0xFFFFFFFF) and length > available:
                    raise AudioError(f"{p} is truncated: its header announces {length} bytes of audio but the file "
                                     f"holds {available}; re-create or re-download it")
                return
            f.seek(length + (length & 1), os.SEEK_CUR)


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited resampling of ``wave: [..., T]`` from ``orig_sr`` to ``new_sr`` Hz -> ``[..., T']``."""
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got orig_sr={orig_sr}, new_sr={new_sr}")
    if orig_sr == new_sr:
        return wave
    if not wave.is_floating_point():
        wave = wave.to(torch.float32)
    return AF.resample(wave, int(orig_sr), int(new_sr))


def fix_length(wave: torch.Tensor, num_samples: int, *, align: str = "center") -> torch.Tensor:
    """Zero-pad or crop the last dim of ``wave: [..., T]`` to ``[..., num_samples]``.

    ``align`` says which part is kept when cropping and where the clip sits when padding: "start" keeps the
    beginning (pads at the end), "end" keeps the end (pads at the front), "center" keeps the middle.
    """
    if align not in ("start", "center", "end"):
        raise ValueError(f"align must be 'start', 'center' or 'end', got {align!r}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    length = wave.shape[-1]
    diff = num_samples - length
    if diff == 0:
        return wave
    lead = {"start": 0, "center": abs(diff) // 2, "end": abs(diff)}[align]
    if diff < 0:
        return wave[..., lead:lead + num_samples]
    return torch.nn.functional.pad(wave, (lead, diff - lead))


def sliding_windows(wave: torch.Tensor, window: int, hop: int) -> torch.Tensor:
    """Cut ``wave: [..., T]`` into overlapping windows ``[..., N, window]`` that cover the whole clip.

    Window i starts at ``i * hop``; the last one is zero-padded past the end, and a clip shorter than ``window``
    gives a single padded window.
    """
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got window={window}, hop={hop}")
    length = wave.shape[-1]
    n = 1 if length <= window else 1 + math.ceil((length - window) / hop)
    padded = torch.nn.functional.pad(wave, (0, (n - 1) * hop + window - length))
    return padded.unfold(-1, window, hop)


def save_audio(
    path: str | os.PathLike,
    wave: torch.Tensor,
    sample_rate: int,
    *,
    subtype: str = "PCM_16",
    overwrite: bool = False,
) -> Path:
    """Write ``wave: [T]`` or ``[C, T]`` (clipped to [-1, 1]) to ``path``; the format follows the extension.

    The file appears whole or not at all: it is written next to its destination and moved into place. For
    formats without PCM (OGG, MP3) the default subtype falls back to the format's own codec.
    """
    p = Path(path)
    fmt = _WRITE_FORMATS.get(p.suffix.lower())
    if fmt is None or fmt not in sf.available_formats():
        writable = [e for e, f in _WRITE_FORMATS.items() if f in sf.available_formats()]
        raise AudioError(f"{p}: cannot write {p.suffix or 'extension-less'} files; use one of {', '.join(writable)}")
    if p.exists() and not overwrite:
        raise AudioError(f"{p} already exists; pass overwrite=True to replace it, or choose another path")
    if p.is_dir():
        raise AudioError(f"{p} is a directory; pass a file path ending in {p.suffix}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if wave.dim() not in (1, 2):
        raise ValueError(f"wave must be [T] or [C, T], got shape {tuple(wave.shape)}")
    if not sf.check_format(fmt, subtype):
        if subtype != "PCM_16":
            valid = ", ".join(sf.available_subtypes(fmt))
            raise ValueError(f"subtype {subtype!r} is not valid for {fmt}; valid: {valid}")
        subtype = sf.default_subtype(fmt)
    data = wave.detach().to("cpu", torch.float32)
    if not torch.isfinite(data).all():
        raise ValueError(f"wave for {p} holds NaN or inf values")
    data = data.clamp(-1.0, 1.0).numpy()
    data = data if data.ndim == 1 else data.T  # soundfile wants [T, C]
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        sf.write(tmp, data, sample_rate, subtype=subtype, format=fmt)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
