"""Shared audio fixtures: a small synthetic keyword set, generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmseq.audio.synth import ENGINES, get_engine


def fast_engines() -> list[str]:
    """espeak and flite where installed (they start in milliseconds), else every installed engine."""
    fast = [e for e in ("espeak", "flite") if get_engine(e).available()]
    return fast or [e for e in ENGINES if get_engine(e).available()]


@pytest.fixture(scope="session")
def tiny_keywords_args() -> dict:
    """The make_keywords arguments behind ``tiny_keywords`` (less the output folder)."""
    engines = fast_engines()
    if not engines:
        pytest.skip("needs a speech engine (espeak-ng, flite, festival or piper-tts)")
    return {"words": ["yes", "no", "up", "down"], "per_word": 60, "seed": 0, "engines": engines, "jobs": 2,
            "progress": False, "noise_seconds": 2.0}  # fmt: skip


@pytest.fixture(scope="session")
def tiny_keywords(tmp_path_factory: pytest.TempPathFactory, tiny_keywords_args: dict) -> Path:
    """A Speech Commands-layout keyword set: 4 words x 60 clips, 2 s background-noise files. -> its folder."""
    from mmseq.audio.keywords import make_keywords

    out = tmp_path_factory.mktemp("tiny_keywords") / "set"
    make_keywords(out, **tiny_keywords_args)
    return out
