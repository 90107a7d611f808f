"""Speech Commands v2 label sets.

SC35 is every word of the v2 release; SC10 is the ten command words of the 12-class keyword-spotting setting
(with "_unknown_" and "_silence_" as the other two classes when asked for).
"""

from __future__ import annotations

SC35: tuple[str, ...] = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
    "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven",
    "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)
SC10: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
BACKGROUND_NOISE_DIR = "_background_noise_"
WORD_SETS: dict[str, tuple[str, ...]] = {"sc35": SC35, "sc10": SC10}


def resolve_words(words: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """A word-set name ("sc35", "sc10") or an explicit list of words -> tuple of words."""
    if isinstance(words, str):
        if words not in WORD_SETS:
            raise ValueError(f"unknown word set {words!r}; expected one of {', '.join(WORD_SETS)} or a list of words")
        return WORD_SETS[words]
    out = tuple(words)
    if not out or len(set(out)) != len(out):
        raise ValueError(f"word list must be non-empty and without repeats, got {list(out)}")
    return out
