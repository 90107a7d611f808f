"""mmseq.vision.scenes: deterministic street scenes, labels shared across domains, the Cityscapes layout on disk,
domains that look different, all 19 classes covered, argument errors."""

from __future__ import annotations

import collections
import functools
import re

import numpy as np
import pytest
from PIL import Image

from mmseq.errors import UserError
from mmseq.vision.labels import CITYSCAPES_TO_TRAIN, IGNORE, NUM_CLASSES, PALETTE, lut
from mmseq.vision.scenes import ADVERSE_EFFECTS, DOMAINS, adverse_effect, make_street_scenes, render_scene

SMALL = (64, 128)


@functools.cache
def _scene(seed: int, index: int, domain: str, size: tuple[int, int] = SMALL) -> tuple[np.ndarray, np.ndarray]:
    return render_scene(seed, index, domain, size)


def test_shapes_dtypes_and_label_values():
    for i in range(3):
        img, lab = _scene(0, i, "synthetic")
        assert img.shape == (*SMALL, 3) and img.dtype == np.uint8
        assert lab.shape == SMALL and lab.dtype == np.uint8
        assert set(np.unique(lab).tolist()) <= set(range(NUM_CLASSES)) | {IGNORE}


def test_deterministic():
    for domain in DOMAINS:
        a = render_scene(3, 5, domain, SMALL)
        b = render_scene(3, 5, domain, SMALL)
        assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()


def test_layout_shared_across_domains_and_differs_across_indices():
    for i in range(4):
        labels = [_scene(0, i, d)[1] for d in DOMAINS]
        assert all(np.array_equal(labels[0], lab) for lab in labels[1:])
    a, b = _scene(0, 0, "synthetic")[1], _scene(0, 1, "synthetic")[1]
    assert (a != b).mean() > 0.1
    c = render_scene(1, 0, "synthetic", SMALL)[1]
    assert (a != c).mean() > 0.1


def test_domains_look_different():
    syn, real = _scene(0, 2, "synthetic")[0], _scene(0, 2, "realistic")[0]
    adv = _scene(0, 2, "adverse")[0]
    mad = lambda x, y: float(np.abs(x.astype(np.float32) - y.astype(np.float32)).mean())  # noqa: E731
    assert mad(syn, real) > 30
    assert mad(real, adv) > 8
    # synthetic is flat: within a class, pixels take few distinct colours; realistic ones are textured
    _, lab = _scene(0, 2, "synthetic")
    road = lab == 0
    assert len(np.unique(syn[road], axis=0)) < len(np.unique(real[road], axis=0)) / 4


def test_adverse_effects_all_occur():
    assert {adverse_effect(0, i) for i in range(40)} == set(ADVERSE_EFFECTS)


def test_class_coverage():
    seen = np.zeros(256, dtype=np.int64)
    per_scene = []
    for i in range(40):
        lab = render_scene(0, i, "synthetic", (96, 192))[1]
        present = np.bincount(lab.ravel(), minlength=256) > 0
        seen += present
        per_scene.append(int(present[:NUM_CLASSES].sum()))
    assert (seen[:NUM_CLASSES] > 0).all(), np.flatnonzero(seen[:NUM_CLASSES] == 0)
    assert np.median(per_scene) >= 8


def test_writes_cityscapes_layout(tmp_path):
    out = tmp_path / "scenes"
    s = make_street_scenes(out, "realistic", n=5, seed=2, size=SMALL, val_fraction=0.4, progress=False)
    assert s["counts"] == {"train": 3, "val": 2}
    assert (out / "README.md").is_file()
    readme = (out / "README.md").read_text()
    assert "mmseq data make street-scenes OUT --domain realistic --n 5 --seed 2" in readme
    images = sorted(out.glob("leftImg8bit/*/*/*_leftImg8bit.png"))
    assert len(images) == 5
    pat = re.compile(r"leftImg8bit/(train|val)/(realistic\d)/(\2_\d{6}_\d{6})_leftImg8bit\.png$")
    val_stems = []
    for p in images:
        m = pat.search(p.as_posix())
        assert m, p
        split, city, stem = m.groups()
        i = int(stem.split("_")[1])
        assert split == ("val" if i >= 3 else "train")
        if split == "val":
            val_stems.append(stem)
        gt = out / "gtFine" / split / city
        train_ids = np.asarray(Image.open(gt / f"{stem}_gtFine_labelTrainIds.png"))
        ids = np.asarray(Image.open(gt / f"{stem}_gtFine_labelIds.png"))
        color = np.asarray(Image.open(gt / f"{stem}_gtFine_color.png"))
        img = np.asarray(Image.open(p))
        assert img.shape == (*SMALL, 3) and train_ids.shape == SMALL and color.shape == (*SMALL, 3)
        ref_img, ref_lab = _scene(2, i, "realistic")
        assert np.array_equal(img, ref_img) and np.array_equal(train_ids, ref_lab)
        assert np.array_equal(lut(CITYSCAPES_TO_TRAIN)[ids], train_ids)
        assert (ids[train_ids == IGNORE] == 0).all()
        road = train_ids == 0
        assert (color[road] == PALETTE[0]).all()
    assert len(val_stems) == 2 and all(st.startswith("realistic3_") for st in val_stems)
    assert not list(out.rglob(".*.tmp"))
    assert s["class_share"]["road"] > 0.05 and abs(sum(s["class_share"].values()) + s["ignore_share"] - 1) < 1e-6


def test_val_split_shares_labels_across_domains(tmp_path):
    a = make_street_scenes(tmp_path / "a", "synthetic", n=3, seed=1, size=SMALL, val_fraction=0.34, progress=False)
    b = make_street_scenes(tmp_path / "b", "adverse", n=3, seed=1, size=SMALL, val_fraction=0.34, progress=False)
    la = np.asarray(Image.open(next((tmp_path / "a/gtFine/val").glob("*/*_labelTrainIds.png"))))
    lb = np.asarray(Image.open(next((tmp_path / "b/gtFine/val").glob("*/*_labelTrainIds.png"))))
    assert np.array_equal(la, lb)
    assert a["counts"] == b["counts"] == {"train": 2, "val": 1}
    assert b["effects"] == dict(sorted(collections.Counter(adverse_effect(1, i) for i in range(3)).items()))


def test_refuses_non_empty_out_dir(tmp_path):
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        make_street_scenes(tmp_path, n=1, size=SMALL, progress=False)
    assert (tmp_path / "x").read_text() == "keep me"


@pytest.mark.parametrize(
    "kwargs",
    [{"domain": "cartoon"}, {"n": 0}, {"n": 2.5}, {"size": (32, 128)}, {"size": (64,)}, {"val_fraction": 1.0},
     {"seed": -1}],
)
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(UserError) as e:
        make_street_scenes(tmp_path / "out", **{"size": SMALL, "progress": False, **kwargs})
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_render_scene_bad_arguments():
    with pytest.raises(UserError):
        render_scene(0, 0, "night")
    with pytest.raises(UserError):
        render_scene(0, 0, "synthetic", (63, 128))
    with pytest.raises(UserError):
        render_scene(0, -1, "synthetic", SMALL)
