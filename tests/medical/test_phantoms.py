"""mmseq.medical.phantoms: CT-RATE layout read back by CTRate, right-side-up volumes, each finding drawn where the
report says, byte-identical output per seed, argument errors."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mmseq.medical.ctrate import ABNORMALITIES, METADATA_COLUMNS, CTRate, parse_xy_spacing
from mmseq.medical.io import load_ct
from mmseq.medical.phantoms import LOBES, METADATA_CSV_COLUMNS, PREVALENCE, make_ct_phantoms, render_phantom

from .conftest import TINY_PHANTOMS

SEEDS = (0, 1, 2)


def _index(info: dict, point) -> tuple[int, int, int]:
    """Voxel index (d, h, w) of a (z, x, y) mm point of ``info``'s frame."""
    idx = np.rint((np.asarray(point) - np.asarray(info["origin_mm"])) / np.asarray(info["spacing"])).astype(int)
    return tuple(int(i) for i in idx)


def _block(hu: np.ndarray, idx, r=(1, 1, 1)) -> np.ndarray:
    return hu[tuple(slice(max(i - k, 0), i + k + 1) for i, k in zip(idx, r))]


# --------------------------------------------------------------------------------------------------- layout


def test_ctrate_reads_both_splits(ct_phantoms):
    root, summary = ct_phantoms
    meta = json.loads((root / "phantoms.json").read_text())["volumes"]
    assert (root / "README.md").is_file() and "CT-RATE" in (root / "README.md").read_text()
    assert all((root / f).is_file() for f in summary["files"])
    assert sum(c["volumes"] for c in summary["splits"].values()) == summary["volumes"] == 10
    assert summary["splits"]["valid"]["volumes"] == 2  # round(10 * 0.25)
    seen = 0
    for split in ("train", "valid"):
        ds = CTRate(root, split)
        assert len(ds) == summary["splits"][split]["volumes"]
        for i in range(len(ds)):
            item = ds[i]
            m = meta[item["name"]]
            assert m["split"] == split and item["path"].is_file()
            assert [a for a, v in zip(ABNORMALITIES, item["labels"].tolist()) if v] == m["labels"]
            assert item["slope"] == 1.0 and item["intercept"] in (-1024.0, -8192.0)
            assert item["intercept"] == m["intercept"]
            assert item["xy_spacing"] == pytest.approx((m["spacing"][1],) * 2, rel=1e-5)
            assert item["z_spacing"] == pytest.approx(m["spacing"][0])
            assert item["findings"] != "Not given." and item["impressions"] != "Not given."
            assert item["clinical_information"] != "Not given." and f"{item['z_spacing']:.1f} mm" in item["technique"]
            assert set(METADATA_CSV_COLUMNS) <= set(item["metadata"]) and set(METADATA_COLUMNS) <= set(item["metadata"])
            assert int(item["metadata"]["NumberofSlices"]) == m["shape"][0]
            assert int(item["metadata"]["Rows"]) == int(item["metadata"]["Columns"]) == m["shape"][1] == m["shape"][2]
            assert parse_xy_spacing(item["metadata"]["XYSpacing"]) == item["xy_spacing"]
            seen += 1
    assert seen == 10
    assert sum(summary["findings"].values()) == sum(len(m["labels"]) for m in meta.values())


@pytest.mark.parametrize("siemens_fraction", [0.0, 1.0], ids=["intercept-1024", "intercept-8192"])
def test_written_volume_equals_render_and_loads_in_ctrate_axes(tmp_path, siemens_fraction):
    """The file holds raw = HU - intercept as int16 with CT-RATE's (L, P, S) axes; load_ct with the metadata's
    intercept gives back exactly the in-memory render in the canonical (S, L, P) layout."""
    make_ct_phantoms(tmp_path / "set", n=2, seed=4, progress=False, siemens_fraction=siemens_fraction)
    item = CTRate(tmp_path / "set", "train")[0]
    assert item["name"] == "train_1_a_1"
    assert item["intercept"] == (-8192.0 if siemens_fraction else -1024.0)
    img = nib.load(str(item["path"]))
    assert img.get_data_dtype() == np.int16
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    assert np.allclose(nib.affines.voxel_sizes(img.affine), (*item["xy_spacing"], item["z_spacing"]))
    vol = load_ct(item["path"], slope=item["slope"], intercept=item["intercept"])
    hu, info = render_phantom(4, siemens_fraction=siemens_fraction)
    assert vol.source_axcodes == ("L", "P", "S")
    assert np.array_equal(vol.array.numpy(), hu)
    assert np.allclose(vol.spacing, info["spacing"], rtol=1e-5)
    assert np.asarray(img.dataobj).min() >= 0  # -1024 HU is raw 0 at either intercept: nothing below air


@pytest.mark.parametrize("seed", SEEDS)
def test_anatomy_right_side_up(seed):
    """Trachea at the top (high D), liver under the right dome (low D, low H), heart left of the midline
    (high H), spine posterior (high W); each landmark checked against its mirror image."""
    hu, info = _render(seed, ())
    lm = info["landmarks_mm"]
    mean = {k: float(_block(hu, _index(info, p)).mean()) for k, p in lm.items()}
    d, h, w = hu.shape
    assert mean["trachea"] < -900 and _index(info, lm["trachea"])[0] > 0.8 * d
    assert 45 < mean["liver"] < 80 and _index(info, lm["liver"])[0] < 0.3 * d
    assert -20 < mean["heart"] < 100 and _index(info, lm["heart"])[1] > h / 2
    assert mean["vertebra"] > 150 and _index(info, lm["vertebra"])[2] > w / 2
    assert -20 < mean["descending_aorta"] < 100
    assert mean["right_lung"] < -700 and mean["left_lung"] < -700
    mirror = {
        "trachea": lambda p: (info["origin_mm"][0] + (d - 1) * info["spacing"][0] - p[0], p[1], p[2]),  # flip D
        "liver": lambda p: (p[0], -p[1], p[2]),  # flip H
        "vertebra": lambda p: (p[0], p[1], -p[2]),  # flip W
    }
    assert float(_block(hu, _index(info, mirror["trachea"](lm["trachea"]))).mean()) > -500
    assert float(_block(hu, _index(info, mirror["liver"](lm["liver"]))).mean()) < 45
    assert float(_block(hu, _index(info, mirror["vertebra"](lm["vertebra"]))).mean()) < 150


def test_default_sizes_and_noise(ct_phantoms):
    root, _ = ct_phantoms
    meta = json.loads((root / "phantoms.json").read_text())["volumes"]
    for m in meta.values():
        dd, hh, ww = m["shape"]
        sz, s, _ = m["spacing"]
        assert 40 <= dd <= 56 and 2.5 <= sz <= 3.5 and 96 <= hh == ww <= 128 and 2.8 <= s <= 3.6
        assert 33 <= dd * sz / 3.0 <= 66 and 80 <= hh * s / 3.0 <= 160  # about 40 x 100 x 100 voxels at 3 mm
    hu, _ = render_phantom(0, [])
    corner = hu[:, :8, :8]  # air outside the body
    assert -1025 <= corner.mean() < -960 and 3 < corner[corner > -1024].std() < 40


# --------------------------------------------------------------------------------------------------- findings


@functools.cache
def _render(seed: int, names: tuple[str, ...]):
    hu, info = render_phantom(seed, list(names))
    hu.flags.writeable = False  # shared between tests
    return hu, info


def _diff(seed: int, name: str):
    """(phantom without findings, the same phantom with ``name`` only, its info)."""
    return _render(seed, ())[0], *_render(seed, (name,))


@pytest.mark.parametrize("name", ABNORMALITIES)
def test_each_finding_is_drawn_and_labelled(name):
    """render(seed, [name]) - render(seed, []) changes voxels for every abnormality, and only its label is set."""
    for seed in SEEDS:
        base, hu, info = _diff(seed, name)
        assert info["labels"] == [name] and list(info["findings"]) == [name]
        changed = np.abs(hu - base) > 50
        assert changed.sum() >= 8, f"{name}: {changed.sum()} voxels changed (seed {seed})"


@pytest.mark.parametrize("seed", SEEDS)
def test_pleural_effusion_fluid_in_the_dependent_lung_of_its_side(seed):
    base, hu, info = _diff(seed, "Pleural effusion")
    side = info["findings"]["Pleural effusion"]["side"]
    changed = np.argwhere(np.abs(hu - base) > 200)
    d, h, w = hu.shape
    left = (changed[:, 1] > h / 2).mean()
    assert {"left": left > 0.95, "right": left < 0.05, "bilateral": 0.2 < left < 0.8}[side]
    assert (changed[:, 2] > w / 2).mean() > 0.95  # posterior (supine: dependent)
    assert (changed[:, 0] < d / 2).mean() > 0.8  # mostly at the bases
    assert -120 < np.median(hu[tuple(changed.T)]) < 60  # fluid, not lung


@pytest.mark.parametrize("seed", SEEDS)
def test_nodules_consolidation_opacity_at_their_centres(seed):
    for name in ("Lung nodule", "Consolidation", "Lung opacity", "Lymphadenopathy", "Atelectasis"):
        base, hu, info = _diff(seed, name)
        f = info["findings"][name]
        if name == "Lung nodule":
            for nod in f["nodules"]:
                assert nod["lobe"] in LOBES
                if nod["diameter_mm"] >= 8:
                    assert hu[_index(info, nod["center_mm"])] > -300, nod
        elif name == "Consolidation":
            assert float(_block(hu, _index(info, f["center_mm"])).mean()) > -250
        elif name == "Lung opacity":
            for p in f["patches"]:
                assert -760 < hu[_index(info, p["center_mm"])] < -350, p
        elif name == "Lymphadenopathy":
            for nd in f["nodes"]:
                assert -30 < hu[_index(info, nd["center_mm"])] < 110, nd
        else:
            assert hu[_index(info, f["center_mm"])] > -450


@pytest.mark.parametrize("seed", SEEDS)
def test_heart_and_dense_findings(seed):
    base, hu, _ = _diff(seed, "Cardiomegaly")
    gained, lost = ((hu > -30) & (base < -30)).sum(), ((hu < -30) & (base > -30)).sum()
    assert gained > 2000 and lost < 0.05 * gained  # the heart grew into fat and lung
    base, hu, info = _diff(seed, "Pericardial effusion")
    assert ((hu - base) > 50).sum() > 500  # fat/lung around the heart turned to fluid
    for name, lo in (("Arterial wall calcification", 250), ("Coronary artery wall calcification", 200),
                     ("Medical material", 1000)):
        base, hu, info = _diff(seed, name)
        assert hu[np.abs(hu - base) > 50].max() > lo, name
    base, hu, _ = _diff(seed, "Emphysema")
    assert (hu < -940).sum() > (base < -940).sum() + 50
    base, hu, _ = _diff(seed, "Bronchiectasis")
    assert (hu < -900).sum() > (base < -900).sum() + 20


# --------------------------------------------------------------------------------------------------- determinism


def test_byte_identical_per_seed_and_prefix_stable(tmp_path):
    kw = dict(progress=False, **TINY_PHANTOMS)
    make_ct_phantoms(tmp_path / "a", n=6, seed=7, **kw)
    make_ct_phantoms(tmp_path / "b", n=6, seed=7, **kw)
    make_ct_phantoms(tmp_path / "c", n=6, seed=8, **kw)
    make_ct_phantoms(tmp_path / "d", n=12, seed=7, **kw)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 6 + 6 + 2
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    vol = Path("dataset/train/train_1/train_1_a/train_1_a_1.nii.gz")
    assert (tmp_path / "a" / vol).read_bytes() != (tmp_path / "c" / vol).read_bytes()
    assert (tmp_path / "a" / vol).read_bytes() == (tmp_path / "d" / vol).read_bytes()  # patients do not depend on n


def test_prevalence_and_normal_fraction(tmp_path):
    s = make_ct_phantoms(tmp_path / "all", n=4, seed=0, progress=False, normal_fraction=0.0,
                         prevalence=dict.fromkeys(PREVALENCE, 1.0), **TINY_PHANTOMS)
    assert all(k == 4 for k in s["findings"].values())
    s = make_ct_phantoms(tmp_path / "none", n=4, seed=0, progress=False, normal_fraction=1.0, **TINY_PHANTOMS)
    assert not any(s["findings"].values())


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "n must be a positive integer"),
    ({"valid_fraction": 1.0}, "valid_fraction must be in"),
    ({"slices": (56, 40)}, "slices must be a range"),
    ({"pixel_mm": (0, 1)}, "pixel_mm must be a range"),
    ({"prevalence": {"Pneumothorax": 0.5}}, "not one of the 18 abnormalities"),
    ({"prevalence": {"Emphysema": 1.5}}, r"prevalence\['Emphysema'\] must be in"),
    ({"seed": -1}, "seed must be a non-negative integer"),
], ids=["n", "valid_fraction", "slices", "pixel_mm", "prevalence-key", "prevalence-value", "seed"])
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"n": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_ct_phantoms(tmp_path / "x", progress=False, **args)


def test_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="must be a new or empty folder"):
        make_ct_phantoms(tmp_path, n=1, progress=False)
    with pytest.raises(ValueError, match="not among the 18 abnormalities"):
        render_phantom(0, ["Pneumothorax"])
