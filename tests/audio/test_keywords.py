"""The synthetic keyword generator: Speech Commands layout, voice-disjoint splits, determinism, speech content."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mmseq.audio.keywords import BABBLE_SENTENCES, make_keywords
from mmseq.audio.labels import BACKGROUND_NOISE_DIR, SC35
from mmseq.audio.synth import ENGINES, get_engine
from mmseq.errors import UserError

HAS = {
    "espeak": shutil.which("espeak-ng") is not None,
    "flite": shutil.which("flite") is not None,
    "festival": shutil.which("festival") is not None and get_engine("festival").available(),
    "piper": get_engine("piper").available(),
}
# espeak and flite start in milliseconds; the tests lean on them and use the others only where they must
FAST = [e for e in ("espeak", "flite") if HAS[e]]
WORDS = ["yes", "no", "sheila"]
NAME = re.compile(r"^[0-9a-f]{8}_nohash_\d+\.wav$")

pytestmark = pytest.mark.skipif(not FAST, reason="needs espeak-ng or flite")


# made by the session-scoped ``tiny_keywords`` fixture (tests/audio/conftest.py)
TINY_WORDS = ["yes", "no", "up", "down"]
TINY_PER_WORD = 60


def _wavs(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.wav") if p.parent.name != BACKGROUND_NOISE_DIR)


def _check_noise(root: Path) -> list[int]:
    """Background-noise files are 16 kHz mono and not silent. -> their lengths in samples."""
    noise = sorted((root / BACKGROUND_NOISE_DIR).glob("*.wav"))
    assert len(noise) >= 5
    frames = []
    for p in noise:
        info = sf.info(str(p))
        assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
        wave, _ = sf.read(str(p))
        assert np.sqrt(np.mean(wave**2)) > 1e-3
        frames.append(info.frames)
    return frames


@pytest.fixture(scope="module")
def one_word(tmp_path_factory: pytest.TempPathFactory, tiny_keywords_args: dict) -> tuple[Path, dict]:
    """One word of the ``tiny_keywords`` set made again, in this process (``tiny_keywords`` uses two workers)."""
    out = tmp_path_factory.mktemp("kw") / "one"
    summary = make_keywords(out, **{**tiny_keywords_args, "words": ["yes"], "jobs": 1})
    return out, summary


def test_layout_is_speech_commands(tiny_keywords: Path) -> None:
    out = tiny_keywords
    top = {p.name for p in out.iterdir()}
    assert top == set(TINY_WORDS) | {BACKGROUND_NOISE_DIR, "validation_list.txt", "testing_list.txt", "voices.json",
                                     "README.md", "LICENSE"}  # fmt: skip
    files = _wavs(out)
    assert len(files) == len(TINY_WORDS) * TINY_PER_WORD
    for rel in files:
        assert NAME.match(rel.split("/")[1]), rel
        info = sf.info(str(out / rel))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")
    frames = _check_noise(out)
    assert len(set(frames)) == 1 and frames[0] >= 16000  # noise_seconds: every file the same, shortened length


@pytest.mark.slow
def test_background_noise_full_length(tmp_path: Path) -> None:
    make_keywords(tmp_path / "set", words=["yes"], per_word=1, engines=FAST, jobs=1, progress=False)
    assert all(30 * 16000 <= n <= 60 * 16000 for n in _check_noise(tmp_path / "set"))


def test_splits_are_by_voice(tiny_keywords: Path) -> None:
    out = tiny_keywords
    val = (out / "validation_list.txt").read_text().splitlines()
    test = (out / "testing_list.txt").read_text().splitlines()
    assert val == sorted(val) and test == sorted(test) and not set(val) & set(test)
    files = set(_wavs(out))
    assert set(val) <= files and set(test) <= files
    train = files - set(val) - set(test)
    assert train and val and test
    speakers = {name: {r.split("/")[1].split("_nohash_")[0] for r in rows}
                for name, rows in (("train", train), ("val", val), ("test", test))}  # fmt: skip
    assert not speakers["train"] & speakers["val"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["val"] & speakers["test"]
    voices = json.loads((out / "voices.json").read_text())
    expected = {"train": "train", "val": "validation", "test": "testing"}
    for name, sids in speakers.items():
        assert all(voices[s]["split"] == expected[name] for s in sids)
    for engine in {v["engine"] for v in voices.values()}:
        assert {v["split"] for v in voices.values() if v["engine"] == engine} == set(expected.values()), engine


def test_summary(one_word: tuple[Path, dict]) -> None:
    out, summary = one_word
    files = _wavs(out)
    assert len(files) == TINY_PER_WORD == summary["clips"]
    assert sum(summary["splits"].values()) == len(files)
    assert sum(e["clips"] for e in summary["engines"].values()) == len(files)
    for engine in FAST:
        assert all(n > 0 for n in summary["engines"][engine]["voices"].values()), engine
    assert len(set(_check_noise(out))) == 1


def test_speech_is_present(tiny_keywords: Path) -> None:
    out = tiny_keywords
    for rel in _wavs(out):
        wave, sr = sf.read(str(out / rel))
        frames = wave[: len(wave) // 1600 * 1600].reshape(-1, 1600)
        rms = np.sqrt(np.mean(frames**2, axis=1))
        assert 20 * np.log10(rms.max() / max(rms.min(), 1e-6)) > 15, rel
        assert np.abs(wave).max() > 10 ** (-21 / 20)


def test_deterministic(one_word: tuple[Path, dict], tiny_keywords: Path, tmp_path: Path) -> None:
    one, _ = one_word
    # same seed, one process vs two worker processes, one word vs four: the word's clips, the noise and the voice
    # table are byte-identical (every clip is a function of seed, word, voice and index only)
    files = _wavs(one)
    assert files == [r for r in _wavs(tiny_keywords) if r.startswith("yes/")]
    noise = sorted(p.relative_to(one).as_posix() for p in (one / BACKGROUND_NOISE_DIR).glob("*.wav"))
    assert len(noise) >= 5
    for rel in [*files, *noise, "voices.json"]:
        assert (one / rel).read_bytes() == (tiny_keywords / rel).read_bytes(), rel
    for name in ("validation_list.txt", "testing_list.txt"):
        rows = (tiny_keywords / name).read_text().splitlines()
        assert (one / name).read_text().splitlines() == [r for r in rows if r.startswith("yes/")], name
    # another seed: no clip in common
    other = make_keywords(tmp_path / "b", words=WORDS[:1], per_word=6, seed=4, engines=FAST, jobs=1, progress=False,
                          noise_seconds=1.0)  # fmt: skip
    assert other["clips"] == 6
    first = {p.read_bytes() for p in (one / "yes").glob("*.wav")}
    assert not first & {p.read_bytes() for p in (tmp_path / "b" / "yes").glob("*.wav")}


def test_refuses_non_empty_output(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        make_keywords(tmp_path / "x", words=["yes"], per_word=1, engines=FAST, progress=False)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no partial folder left behind


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown speech engine"):
        make_keywords(tmp_path / "a", words=["yes"], per_word=1, engines=["nope"], progress=False)
    with pytest.raises(UserError, match="unknown word set"):
        make_keywords(tmp_path / "a", words="sc99", per_word=1, engines=FAST, progress=False)
    with pytest.raises(UserError, match="noise_seconds"):
        make_keywords(tmp_path / "a", words=["yes"], per_word=1, engines=FAST, progress=False, noise_seconds=0.5)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("engine", list(ENGINES))
def test_engine_speaks(engine: str) -> None:
    if not HAS[engine]:
        pytest.skip(f"{engine} is not installed")
    eng = get_engine(engine)
    voices = eng.voices()
    assert voices and len({v.id for v in voices}) == len(voices)
    wave, sr = eng.synthesize("Yes!", voices[len(voices) // 2], rate=1.1, pitch=0.5)
    assert wave.dtype == np.float32 and wave.ndim == 1 and sr > 4000
    assert 0.1 * sr < len(wave) < 3 * sr and np.abs(wave).max() > 0.01


def test_every_engine_in_a_set(tmp_path: Path) -> None:
    engines = [e for e in ENGINES if HAS[e]]
    # 8 clips: enough for every engine's share (the smallest is 0.15) to round to at least one clip
    summary = make_keywords(tmp_path / "all", words=["go"], per_word=8, engines=engines, jobs=1, progress=False,
                            noise_seconds=1.0)  # fmt: skip
    assert all(summary["engines"][e]["clips"] > 0 for e in engines)
    assert summary["clips"] == 8 == len(_wavs(tmp_path / "all"))


def test_babble_has_no_keywords() -> None:
    for sentence in BABBLE_SENTENCES:
        assert not set(re.findall(r"[a-z]+", sentence.lower())) & set(SC35), sentence
