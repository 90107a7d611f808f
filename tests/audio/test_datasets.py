"""mmseq.audio.datasets on a miniature Speech Commands tree and a folder-per-class tree built in tmp_path."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mmseq.audio.datasets import AudioFolder, DatasetError, SpeechCommands, speaker_of, which_split
from mmseq.audio.io import AudioError
from mmseq.audio.labels import SC10, SILENCE, UNKNOWN
from mmseq.errors import UserError

SPEAKERS = ("aaaa1111", "bbbb2222", "cccc3333")
WORDS = ("yes", "no", "up", "bed")  # "bed" is in SC35 but not in SC10
NOISE_SECONDS = 1.5


def _make_sc_tree(root: Path, noise: bool = True) -> dict[str, float]:
    """Every clip is a constant whose value identifies it; returns relative path -> value."""
    values: dict[str, float] = {}
    k = 0
    for word in WORDS:
        (root / word).mkdir(parents=True)
        for spk in SPEAKERS:
            for n in range(2):
                k += 1
                rel = f"{word}/{spk}_nohash_{n}.wav"
                values[rel] = 0.01 * k
                # Half the clips at 8 kHz, half at 16 kHz: both must come back at 16 kHz and 1 s.
                sr = 8000 if n == 0 else 16000
                sf.write(str(root / rel), np.full(sr // 2, values[rel], np.float32), sr, subtype="PCM_16")
    # Lists are not by speaker on purpose: one train-speaker file is held out to check the lists win.
    val = [f"{w}/bbbb2222_nohash_{n}.wav" for w in WORDS for n in range(2)] + ["yes/aaaa1111_nohash_1.wav"]
    test = [f"{w}/cccc3333_nohash_{n}.wav" for w in WORDS for n in range(2)]
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    if noise:
        (root / "_background_noise_").mkdir()
        rng = np.random.default_rng(0)
        for name in ("white.wav", "pink.wav"):
            data = rng.uniform(-0.8, 0.8, round(16000 * NOISE_SECONDS)).astype(np.float32)
            sf.write(str(root / "_background_noise_" / name), data, 16000, subtype="PCM_16")
    return values


@pytest.fixture
def sc_tree(tmp_path) -> tuple[Path, dict[str, float]]:
    root = tmp_path / "speech_commands_v0.02"
    return root, _make_sc_tree(root)


def _sc(root, split, words=("yes", "no", "up"), **kw) -> SpeechCommands:
    return SpeechCommands(root, split, list(words), **kw)


def _rel(p: Path) -> str:
    return f"{p.parent.name}/{p.name}"


def test_splits_follow_the_lists(sc_tree):
    root, values = sc_tree
    val_list = set((root / "validation_list.txt").read_text().split())
    test_list = set((root / "testing_list.txt").read_text().split())
    words = ("yes", "no", "up")
    expect = {
        "train": {r for r in values if r.split("/")[0] in words and r not in val_list | test_list},
        "val": {r for r in values if r.split("/")[0] in words and r in val_list},
        "test": {r for r in values if r.split("/")[0] in words and r in test_list},
    }
    for split, alias in (("train", "train"), ("val", "validation"), ("test", "testing")):
        ds = _sc(root, split)
        assert {_rel(p) for p in ds.files} == expect[split]
        assert {_rel(p) for p in _sc(root, alias).files} == expect[split]
        assert len(ds) == len(ds.files) == len(ds.targets)
    assert "yes/aaaa1111_nohash_1.wav" in expect["val"]
    with pytest.raises(ValueError, match="split"):
        _sc(root, "dev")


def test_items_are_the_right_files_resampled_and_fixed_length(sc_tree):
    root, values = sc_tree
    ds = _sc(root, "train")
    assert ds.labels == ["yes", "no", "up"]
    for i in range(len(ds)):
        wave, label = ds[i]
        assert wave.shape == (16000,) and wave.dtype == torch.float32
        assert ds.labels[label] == ds.files[i].parent.name
        # 0.5 s clips sit in the middle of the 1 s window: constant there, zero at both ends.
        assert abs(wave[8000].item() - values[_rel(ds.files[i])]) < 2e-3
        assert wave[:3000].abs().max() == 0 and wave[-3000:].abs().max() == 0
    # The cached second read gives the same tensor.
    assert torch.equal(ds[0][0], ds[0][0])


def test_long_clip_is_cropped_around_its_centre(tmp_path):
    root = tmp_path / "sc"
    _make_sc_tree(root, noise=False)
    ramp = np.linspace(-0.9, 0.9, 24000).astype(np.float32)
    sf.write(str(root / "yes" / "dddd4444_nohash_0.wav"), ramp, 16000, subtype="FLOAT")
    ds = _sc(root, "train", cache=False)
    i = [p.name for p in ds.files].index("dddd4444_nohash_0.wav")
    assert torch.allclose(ds[i][0], torch.from_numpy(ramp[4000:20000]), atol=1 / 32768)  # int16 precision


def test_sc10_unknown_silence_classes_and_counts(sc_tree):
    root, values = sc_tree
    with pytest.warns(UserWarning, match="down"):
        ds = SpeechCommands(root, "train", "sc10", unknown=True, silence=True, silence_fraction=0.5)
    assert ds.labels == [*SC10, UNKNOWN, SILENCE]
    counts = ds.class_counts()
    assert list(counts) == ds.labels
    # Train: speaker aaaa1111's two clips per word, less yes/aaaa1111_nohash_1.wav, which the val list holds.
    assert counts["yes"] == 1 and counts["no"] == 2 and counts["up"] == 2
    assert all(counts[w] == 0 for w in SC10 if w not in ("yes", "no", "up"))
    assert counts[UNKNOWN] == 2  # bed/aaaa1111_nohash_{0,1}
    assert counts[SILENCE] == round(0.5 * 5)
    unknown_files = [f for f, t in zip(ds.files, ds.targets, strict=True) if ds.labels[t] == UNKNOWN]
    assert {p.parent.name for p in unknown_files} == {"bed"}
    assert len(ds.background_noise) == 2 and all(n.shape == (24000,) for n in ds.background_noise)
    # Without unknown, the non-set word is skipped altogether.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = SpeechCommands(root, "test", "sc10")
    assert plain.labels == list(SC10) and all(p.parent.name != "bed" for p in plain.files)


def test_unknown_fraction_subsamples_deterministically(sc_tree):
    root, _ = sc_tree
    words = ("yes", "no")
    full = _sc(root, "val", words, unknown=True)
    assert full.class_counts()[UNKNOWN] == 4  # up and bed, two clips each
    a = _sc(root, "val", words, unknown=True, unknown_fraction=0.4, seed=3)
    b = _sc(root, "val", words, unknown=True, unknown_fraction=0.4, seed=3)
    n_words = full.class_counts()["yes"] + full.class_counts()["no"]
    assert a.class_counts()[UNKNOWN] == round(0.4 * n_words)
    assert a.files == b.files
    picks = {tuple(_sc(root, "val", words, unknown=True, unknown_fraction=0.4, seed=s).files) for s in range(8)}
    assert len(picks) > 1


def _match_noise(wave: torch.Tensor, noises: list[torch.Tensor]) -> float:
    """Smallest relative residual of ``wave`` against the best gain * crop of any noise recording."""
    best = float("inf")
    for noise in noises:
        corr = torch.nn.functional.conv1d(noise[None, None], wave[None, None])[0, 0]
        start = int(corr.argmax())
        seg = noise[start:start + wave.numel()]
        gain = (wave @ seg) / (seg @ seg)
        assert -1e-6 <= gain <= 1 + 1e-6
        best = min(best, ((wave - gain * seg).norm() / wave.norm()).item())
    return best


def test_silence_items_are_scaled_noise_crops(sc_tree):
    root, _ = sc_tree
    ds = _sc(root, "train", silence=True, silence_fraction=0.8)
    sil = [i for i, t in enumerate(ds.targets) if ds.labels[t] == SILENCE]
    assert len(sil) == round(0.8 * 5)
    for i in sil:
        wave, label = ds[i]
        assert wave.shape == (16000,) and label == ds.labels.index(SILENCE)
        if wave.norm() > 1e-3:
            assert _match_noise(wave, ds.background_noise) < 1e-5
    assert len({ds[i][0].sum().item() for i in sil}) == len(sil)  # distinct crops/gains


def test_silence_without_noise_folder_is_zeros(tmp_path):
    root = tmp_path / "sc"
    _make_sc_tree(root, noise=False)
    ds = _sc(root, "train", silence=True)
    assert ds.background_noise == []
    sil = [i for i, t in enumerate(ds.targets) if ds.labels[t] == SILENCE]
    assert len(sil) == round(0.1 * 5) == 0
    ds = _sc(root, "train", silence=True, silence_fraction=1.0)
    sil = [i for i, t in enumerate(ds.targets) if ds.labels[t] == SILENCE]
    assert len(sil) == 5 and all(ds[i][0].abs().max() == 0 for i in sil)


def test_same_seed_same_items(sc_tree):
    root, _ = sc_tree
    kw = dict(unknown=True, silence=True, silence_fraction=1.0, unknown_fraction=0.5)
    a, b = _sc(root, "train", seed=7, **kw), _sc(root, "train", seed=7, cache=False, **kw)
    assert a.files == b.files and a.targets == b.targets
    for i in range(len(a)):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
    c = _sc(root, "train", seed=8, **kw)
    sil = [i for i, t in enumerate(a.targets) if a.labels[t] == SILENCE]
    assert any(not torch.equal(a[i][0], c[i][0]) for i in sil)


def test_layout_errors_name_what_is_missing(tmp_path, sc_tree):
    root, _ = sc_tree
    with pytest.raises(DatasetError, match=r"nowhere.*validation_list\.txt"):
        SpeechCommands(tmp_path / "nowhere", "train")
    assert issubclass(DatasetError, UserError)
    with pytest.raises(DatasetError, match=r"none of the word folders"):
        SpeechCommands(root, "train", ["zero", "one"])
    (root / "testing_list.txt").unlink()
    with pytest.raises(DatasetError, match=r"testing_list\.txt is missing.*<word>"):
        _sc(root, "train")


def test_corrupt_clip_names_the_file(sc_tree):
    root, _ = sc_tree
    (root / "no" / "aaaa1111_nohash_0.wav").write_text("not audio at all " * 10)
    ds = _sc(root, "train")
    i = [_rel(p) for p in ds.files].index("no/aaaa1111_nohash_0.wav")
    with pytest.raises(AudioError, match=r"aaaa1111_nohash_0\.wav"):
        ds[i]


def test_speaker_of_and_which_split():
    assert speaker_of("yes/0a7c2a8d_nohash_0.wav") == "0a7c2a8d"
    assert speaker_of(Path("/x/clip.flac")) == "clip"
    assert which_split("a/spk_nohash_0.wav") == which_split("b/spk_nohash_3.wav")
    assert which_split("a/spk_nohash_0.wav", 0, 0) == "train"
    assert which_split("a/spk_nohash_0.wav", 100, 0) == "val"
    splits = [which_split(f"s{i:04d}_nohash_0.wav", 10, 20) for i in range(2000)]
    assert 150 < splits.count("val") < 250 and 320 < splits.count("test") < 480


# ---- AudioFolder ------------------------------------------------------------------------------------------------


@pytest.fixture
def folder_tree(tmp_path) -> Path:
    root = tmp_path / "clips"
    rng = np.random.default_rng(1)
    for cls, ext in (("dog", ".wav"), ("cat", ".flac"), ("bird", ".wav")):
        (root / cls).mkdir(parents=True)
        for s in range(20):
            for n in range(2):
                sf.write(str(root / cls / f"spk{s:02d}_nohash_{n}{ext}"), rng.uniform(-0.5, 0.5, 800), 8000)
    (root / cls / "notes.txt").write_text("not a clip")
    (root / "_background_noise_").mkdir()
    sf.write(str(root / "_background_noise_" / "hum.wav"), np.zeros(4000), 8000)
    return root


def test_audio_folder_classes_and_items(folder_tree):
    ds = AudioFolder(folder_tree)
    assert ds.labels == ["bird", "cat", "dog"]
    assert len(ds) == 120 and ds.class_counts() == {"bird": 40, "cat": 40, "dog": 40}
    wave, label = ds[len(ds) - 1]
    assert wave.shape == (16000,) and ds.labels[label] == "dog"
    assert len(ds.background_noise) == 1 and ds.background_noise[0].shape == (8000,)
    ordered = AudioFolder(folder_tree, labels=["dog", "cat"], clip_seconds=0.5, sample_rate=8000)
    assert ordered.labels == ["dog", "cat"] and len(ordered) == 80 and ordered[0][0].shape == (4000,)
    assert ordered[0][1] == 0 and ordered.files[0].parent.name == "dog"
    with pytest.raises(DatasetError, match="fish"):
        AudioFolder(folder_tree, labels=["dog", "fish"])
    with pytest.raises(DatasetError, match="missing_root"):
        AudioFolder(folder_tree.parent / "missing_root")


def test_audio_folder_split_by_speaker(folder_tree):
    parts = {s: AudioFolder(folder_tree, s, val_percent=20, test_percent=20) for s in ("train", "val", "test")}
    everything = AudioFolder(folder_tree, None)
    seen = [f for ds in parts.values() for f in ds.files]
    assert sorted(seen) == sorted(everything.files) and len(seen) == len(set(seen))
    speakers = {s: {speaker_of(f) for f in ds.files} for s, ds in parts.items()}
    assert all(speakers[s] for s in speakers)  # 20 speakers at 60/20/20: each split gets some
    assert not (speakers["train"] & speakers["val"] or speakers["train"] & speakers["test"]
                or speakers["val"] & speakers["test"])
    assert all(ds.targets[i] == ds.labels.index(f.parent.name) for ds in parts.values()
               for i, f in enumerate(ds.files))
