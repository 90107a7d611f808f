"""Clip datasets read from disk: the Speech Commands v2 tree and a generic folder-per-class tree.

Both yield ``(wave: [num_samples] float32, label: int)`` with ``num_samples = round(clip_seconds * sample_rate)``:
clips are resampled to ``sample_rate``, then zero-padded or cropped around their centre.
"""

from __future__ import annotations

import hashlib
import os
import random
import warnings
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mmseq.audio.io import SUPPORTED_EXTENSIONS, fix_length, load_audio
from mmseq.audio.labels import BACKGROUND_NOISE_DIR, SILENCE, UNKNOWN, resolve_words
from mmseq.errors import UserError

__all__ = ["AudioFolder", "DatasetError", "SpeechCommands", "speaker_of", "which_split"]

_SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test", "testing": "test"}
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_NOHASH = "_nohash_"
_SC_LAYOUT = ("expected the Speech Commands layout root/<word>/<speaker>_nohash_<n>.wav with "
              "root/validation_list.txt, root/testing_list.txt and optionally root/_background_noise_/*.wav")


class DatasetError(UserError):
    """A dataset folder that does not have the expected layout."""


def speaker_of(path: str | os.PathLike) -> str:
    """The speaker id of a Speech Commands file: the name up to ``_nohash_`` (the whole stem when absent)."""
    name = Path(path).name
    if _NOHASH in name:
        return name.split(_NOHASH, 1)[0]
    return Path(name).stem


def which_split(path: str | os.PathLike, val_percent: float = 10.0, test_percent: float = 10.0) -> str:
    """"train", "val" or "test" for a file, fixed by a hash of its speaker part (see ``speaker_of``).

    Hashing the speaker rather than the file keeps every clip of one speaker in one split, and the assignment
    of existing files does not move when new files are added.
    """
    if val_percent < 0 or test_percent < 0 or val_percent + test_percent > 100:
        raise ValueError(f"val_percent and test_percent must be >= 0 and sum to <= 100, "
                         f"got {val_percent} and {test_percent}")
    digest = hashlib.sha1(speaker_of(path).encode("utf-8")).digest()
    # 2**32 buckets: fine-grained enough that the split sizes follow the percentages closely.
    pct = int.from_bytes(digest[:4], "big") / 2**32 * 100.0
    if pct < val_percent:
        return "val"
    if pct < val_percent + test_percent:
        return "test"
    return "train"


def _normalise_split(split: str) -> str:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of train, val, test (or validation, testing), got {split!r}")
    return _SPLITS[split]


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS)


def _stable_seed(*parts: object) -> int:
    # Python's hash() of a str changes between processes; a digest keeps items identical across runs and workers.
    return int.from_bytes(hashlib.sha1(repr(parts).encode("utf-8")).digest()[:8], "big")


class _ClipDataset(Dataset):
    """Shared item logic: decode, resample, fix length, optionally keep the result in memory as int16."""

    labels: list[str]
    files: list[Path]
    targets: list[int]
    background_noise: list[torch.Tensor]

    def __init__(self, root: str | os.PathLike, sample_rate: int, clip_seconds: float, cache: bool) -> None:
        if sample_rate <= 0 or clip_seconds <= 0:
            raise ValueError(f"sample_rate and clip_seconds must be positive, got {sample_rate} and {clip_seconds}")
        self.root = Path(root)
        self.sample_rate = int(sample_rate)
        self.clip_seconds = float(clip_seconds)
        self.num_samples = round(clip_seconds * sample_rate)
        self.cache = cache
        self._cache: dict[int, torch.Tensor] = {}
        self.files = []
        self.targets = []
        self.background_noise = []

    def _load_noise(self) -> None:
        folder = self.root / BACKGROUND_NOISE_DIR
        if folder.is_dir():
            self.background_noise = [load_audio(p, self.sample_rate) for p in _audio_files(folder)]

    def __len__(self) -> int:
        return len(self.targets)

    def _read(self, index: int) -> torch.Tensor:
        wave = load_audio(self.files[index], self.sample_rate)
        return fix_length(wave, self.num_samples, align="center")

    def _clip(self, index: int) -> torch.Tensor:
        q = self._cache.get(index)
        if q is None:
            # int16 halves the memory of float32 and is lossless for the 16-bit PCM the datasets ship as. Items
            # go through it with or without the cache, so that they do not depend on the cache setting.
            q = (self._read(index) * 32768.0).round().clamp_(-32768, 32767).to(torch.int16)
            if self.cache:
                self._cache[index] = q
        return q.to(torch.float32) / 32768.0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        return self._clip(index), self.targets[index]

    def class_counts(self) -> dict[str, int]:
        """Number of items per class name, in label order (zero for classes without items)."""
        counts = dict.fromkeys(self.labels, 0)
        for t in self.targets:
            counts[self.labels[t]] += 1
        return counts


class SpeechCommands(_ClipDataset):
    """One split of a Speech Commands v2 tree on disk.

    Classes are the words of ``words`` (a set name from labels.py or a list) in that order, then ``_unknown_``
    when ``unknown`` (every other word folder), then ``_silence_`` when ``silence`` (crops of the background noise
    recordings at a random gain in [0, 1]). Items are ``(wave: [num_samples] float32, label: int)``. Silence items
    have ``Path("_silence_")`` in ``files``; everything about them follows from (seed, split, index).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        words: str | list[str] = "sc35",
        *,
        unknown: bool = False,
        silence: bool = False,
        silence_fraction: float = 0.1,
        unknown_fraction: float | None = None,
        sample_rate: int = 16000,
        clip_seconds: float = 1.0,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        super().__init__(root, sample_rate, clip_seconds, cache)
        self.split = _normalise_split(split)
        self.seed = seed
        word_set = resolve_words(words)
        if silence_fraction < 0 or (unknown_fraction is not None and unknown_fraction < 0):
            raise ValueError("silence_fraction and unknown_fraction must be >= 0")
        root = self.root
        if not root.is_dir():
            raise DatasetError(f"Speech Commands root {root} does not exist or is not a folder; {_SC_LAYOUT}")
        present = [w for w in word_set if (root / w).is_dir()]
        if not present:
            raise DatasetError(f"{root} has none of the word folders of the set ({', '.join(word_set[:5])}, ...); "
                               f"{_SC_LAYOUT}")
        held_out = {"val": self._read_list("validation_list.txt"), "test": self._read_list("testing_list.txt")}
        absent = [w for w in word_set if w not in present]
        if absent:
            warnings.warn(f"{root} lacks the word folders {', '.join(absent)}: those words get no clips",
                          stacklevel=2)

        def in_split(rel: str) -> bool:
            if rel in held_out["val"]:
                return self.split == "val"
            if rel in held_out["test"]:
                return self.split == "test"
            return self.split == "train"

        def split_files(word: str) -> list[Path]:
            return [p for p in _audio_files(root / word) if in_split(f"{word}/{p.name}")]

        self.labels = list(word_set) + ([UNKNOWN] if unknown else []) + ([SILENCE] if silence else [])
        for target, w in enumerate(word_set):
            if w in present:
                found = split_files(w)
                self.files += found
                self.targets += [target] * len(found)
        n_words = len(self.files)

        if unknown:
            others = sorted(p.name for p in root.iterdir()
                            if p.is_dir() and p.name not in word_set and not p.name.startswith(("_", ".")))
            pool = [f for w in others for f in split_files(w)]
            if unknown_fraction is not None:
                k = min(len(pool), round(unknown_fraction * n_words))
                rng = random.Random(_stable_seed(seed, self.split, "unknown"))
                pool = sorted(rng.sample(pool, k))
            self.files += pool
            self.targets += [self.labels.index(UNKNOWN)] * len(pool)

        self._first_silence = len(self.files)
        if silence:
            n_silence = round(silence_fraction * n_words)
            self.files += [Path(SILENCE)] * n_silence
            self.targets += [self.labels.index(SILENCE)] * n_silence
        self._load_noise()

    def _read_list(self, name: str) -> set[str]:
        path = self.root / name
        if not path.is_file():
            raise DatasetError(f"{path} is missing; {_SC_LAYOUT}")
        lines = path.read_text(encoding="utf-8").splitlines()
        # Entries are root-relative with forward slashes; a list saved on Windows may carry backslashes.
        return {ln.strip().replace("\\", "/") for ln in lines if ln.strip()}

    def _silence(self, index: int) -> torch.Tensor:
        if not self.background_noise:
            return torch.zeros(self.num_samples)
        g = torch.Generator().manual_seed(_stable_seed(self.seed, self.split, index) % 2**63)
        noise = self.background_noise[int(torch.randint(len(self.background_noise), (1,), generator=g))]
        start = int(torch.randint(max(1, noise.numel() - self.num_samples + 1), (1,), generator=g))
        gain = float(torch.rand((), generator=g))
        return fix_length(noise[start:start + self.num_samples], self.num_samples, align="start") * gain

    def _clip(self, index: int) -> torch.Tensor:
        if index >= self._first_silence:
            return self._silence(index)
        return super()._clip(index)


class AudioFolder(_ClipDataset):
    """A generic ``root/<class>/<file>`` tree of clips in any of ``SUPPORTED_EXTENSIONS``.

    Classes are the folder names sorted alphabetically, or ``labels`` in the given order (folders starting with
    "_" or "." are not classes; ``_background_noise_`` fills ``background_noise``). With ``split`` set, files are
    assigned to train/val/test by ``which_split`` (by speaker, deterministic); ``split=None`` keeps all files.
    Items are ``(wave: [num_samples] float32, label: int)``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        *,
        labels: list[str] | None = None,
        val_percent: float = 10.0,
        test_percent: float = 10.0,
        sample_rate: int = 16000,
        clip_seconds: float = 1.0,
        cache: bool = True,
    ) -> None:
        super().__init__(root, sample_rate, clip_seconds, cache)
        self.split = None if split is None else _normalise_split(split)
        root = self.root
        layout = f"expected root/<class>/<clip> with clips in {', '.join(SUPPORTED_EXTENSIONS)}"
        if not root.is_dir():
            raise DatasetError(f"audio folder {root} does not exist or is not a folder; {layout}")
        if labels is None:
            labels = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
            if not labels:
                raise DatasetError(f"{root} has no class folders; {layout}")
        else:
            labels = list(labels)
            missing = [c for c in labels if not (root / c).is_dir()]
            if missing:
                raise DatasetError(f"{root} lacks the class folders {', '.join(missing)}; {layout}")
        self.labels = labels
        total = 0
        for target, name in enumerate(labels):
            found = _audio_files(root / name)
            total += len(found)
            if self.split is not None:
                found = [p for p in found if which_split(p, val_percent, test_percent) == self.split]
            self.files += found
            self.targets += [target] * len(found)
        if total == 0:
            raise DatasetError(f"{root} has class folders but no audio files in them; {layout}")
        self._load_noise()

