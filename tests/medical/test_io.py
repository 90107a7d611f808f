"""mmseq.medical.io: canonical (S, L, P) layout, NIfTI/DICOM reading, exact write-back, preprocessing, bad input."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mmseq.errors import UserError
from mmseq.medical.io import (
    CANONICAL_AXCODES,
    CTError,
    CTPreprocess,
    CTVolume,
    crop_or_pad,
    hu_from_raw,
    load_ct,
    looks_like_hu,
    preprocess,
    resample,
    save_ct,
    unwindow,
    window,
)

SHAPE = (20, 24, 7)  # source voxel order; the 7-voxel axis is the slice axis unless an affine says otherwise


def _affine(columns: list[tuple[float, float, float]], origin=(10.0, -20.0, 5.0)) -> np.ndarray:
    """RAS affine whose i, j, k columns are the given vectors (mm per voxel)."""
    a = np.eye(4)
    a[:3, :3] = np.array(columns, dtype=np.float64).T
    a[:3, 3] = origin
    return a


# Source orientations, named by nibabel axis codes; voxel sizes 0.7, 0.8 in-plane and 2.0 along the slices.
AFFINES = {
    "RAS": _affine([(0.7, 0, 0), (0, 0.8, 0), (0, 0, 2.0)]),
    "LPS": _affine([(-0.7, 0, 0), (0, -0.8, 0), (0, 0, 2.0)]),  # CT-RATE
    "LPI": _affine([(-0.7, 0, 0), (0, -0.8, 0), (0, 0, -2.0)]),  # slices stored head first
    "PRS": _affine([(0, -0.7, 0), (0.8, 0, 0), (0, 0, 2.0)]),  # in-plane axes swapped
}


def _rotz(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    r = np.eye(4)
    r[:2, :2] = [[c, -s], [s, c]]
    return r


AFFINES["RAS-oblique"] = _rotz(10.0) @ AFFINES["RAS"]


def _hu_volume(shape=SHAPE, seed: int = 0) -> np.ndarray:
    """Integer HU in the source's voxel order: air background, a soft-tissue block, random 'anatomy' inside."""
    rng = np.random.default_rng(seed)
    v = np.full(shape, -1000.0, dtype=np.float32)
    v[3:-3, 3:-3, :] = rng.integers(-900, 1500, size=(shape[0] - 6, shape[1] - 6, shape[2]))
    return v


def _canonical_affine(sd: float, sh: float, sw: float, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Affine of an (S, L, P) array with voxel sizes (sd, sh, sw)."""
    return _affine([(0, 0, sd), (-sh, 0, 0), (0, -sw, 0)], origin)


def _world(affine: np.ndarray, idx) -> np.ndarray:
    return (affine @ np.append(np.asarray(idx, dtype=np.float64), 1.0))[:3]


def _assert_one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg and "\r" not in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


# --------------------------------------------------------------------------------------------------- orientation


def test_ct_rate_lps_is_btb3d_layout(tmp_path, write_nifti):
    """CT-RATE files (L, P, S) give exactly the array BTB3D builds: data.transpose(2, 0, 1), no flips."""
    data = _hu_volume()
    path = write_nifti(tmp_path / "train_1_a_1.nii.gz", data, AFFINES["LPS"])
    vol = load_ct(path)
    assert vol.source_axcodes == ("L", "P", "S")
    assert tuple(nib.aff2axcodes(vol.affine)) == CANONICAL_AXCODES == ("S", "L", "P")
    np.testing.assert_array_equal(vol.array.numpy(), data.transpose(2, 0, 1))
    assert vol.array.dtype == torch.float32 and vol.shape == (7, 20, 24)
    assert vol.spacing == pytest.approx((2.0, 0.7, 0.8))


@pytest.mark.parametrize(
    "name, expected, spacing",
    [
        ("RAS", lambda v: v.transpose(2, 0, 1)[:, ::-1, ::-1], (2.0, 0.7, 0.8)),  # R->L and A->P flip in-plane
        ("LPI", lambda v: v.transpose(2, 0, 1)[::-1], (2.0, 0.7, 0.8)),  # slices reversed so D runs up
        ("PRS", lambda v: v.transpose(2, 1, 0)[:, ::-1, :], (2.0, 0.8, 0.7)),  # axis 1 runs R: flip to L
    ],
    ids=["RAS", "LPI", "PRS"],
)
def test_canonical_layout_hand_computed(tmp_path, write_nifti, name, expected, spacing):
    data = _hu_volume()
    vol = load_ct(write_nifti(tmp_path / f"{name}.nii", data, AFFINES[name]))
    np.testing.assert_array_equal(vol.array.numpy(), expected(data))
    assert vol.source_axcodes == tuple(name)
    assert vol.spacing == pytest.approx(spacing)


@pytest.mark.parametrize("name", list(AFFINES))
def test_marker_near_head_lands_at_high_d_at_same_world_point(tmp_path, write_nifti, name):
    """A marker in the most superior slice but one ends at index D-2, at the same world position."""
    src = AFFINES[name]
    data = np.full(SHAPE, -1000.0, dtype=np.float32)
    slice_axis = int(np.argmax(np.abs(src[2, :3])))  # the axis moving along world z
    superior_end = SHAPE[slice_axis] - 2 if src[2, slice_axis] > 0 else 1
    idx = [4, 5, 3]
    idx[slice_axis] = superior_end
    data[tuple(idx)] = 3000.0
    vol = load_ct(write_nifti(tmp_path / "m.nii.gz", data, src))
    d, h, w = np.unravel_index(int(torch.argmax(vol.array)), vol.shape)
    assert d == vol.shape[0] - 2
    np.testing.assert_allclose(_world(vol.affine, (d, h, w)), _world(src, idx), atol=1e-5)


def test_four_d_with_singleton_is_squeezed(tmp_path, write_nifti):
    data = _hu_volume()
    vol = load_ct(write_nifti(tmp_path / "v4.nii.gz", data[..., None], AFFINES["LPS"]))
    np.testing.assert_array_equal(vol.array.numpy(), data.transpose(2, 0, 1))


# --------------------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", list(AFFINES))
@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_nifti_round_trip_keeps_source_geometry(tmp_path, write_nifti, name, ext):
    data = _hu_volume().astype(np.int16)
    src = write_nifti(tmp_path / f"src{ext}", data, AFFINES[name])
    vol = load_ct(src)
    out = save_ct(vol, tmp_path / f"out{ext}")
    a, b = nib.load(src), nib.load(out)
    assert b.shape == a.shape == SHAPE
    np.testing.assert_array_equal(b.affine, a.affine)
    assert nib.aff2axcodes(b.affine) == nib.aff2axcodes(a.affine) == tuple(name.split("-")[0])
    np.testing.assert_array_equal(b.get_fdata(dtype=np.float32), a.get_fdata(dtype=np.float32))
    again = load_ct(out)
    torch.testing.assert_close(again.array, vol.array, rtol=0, atol=0)
    np.testing.assert_array_equal(again.affine, vol.affine)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, out.name])  # no temp file left


def test_round_trip_qform_only_source_keeps_qform(tmp_path, write_nifti):
    data = _hu_volume()
    src = write_nifti(tmp_path / "q.nii.gz", data, AFFINES["RAS-oblique"], qform_only=True)
    out = save_ct(load_ct(src), tmp_path / "out.nii.gz")
    a, b = nib.load(src), nib.load(out)
    assert (int(b.header["qform_code"]), int(b.header["sform_code"])) == (1, 0)
    np.testing.assert_array_equal(b.affine, a.affine)
    np.testing.assert_array_equal(b.get_fdata(), a.get_fdata())


def test_save_array_with_like_and_overwrite(tmp_path, write_nifti):
    data = _hu_volume()
    vol = load_ct(write_nifti(tmp_path / "src.nii.gz", data, AFFINES["PRS"]))
    out = tmp_path / "sub" / "dec.nii.gz"
    save_ct(vol.array + 5.0, out, like=vol)
    np.testing.assert_allclose(nib.load(out).get_fdata(), data + 5.0)
    with pytest.raises(CTError) as e:
        save_ct(vol.array, out, like=vol)
    _assert_one_line(e, "dec.nii.gz", "overwrite=True")
    save_ct(vol.array.numpy(), out, like=vol, overwrite=True)
    np.testing.assert_allclose(nib.load(out).get_fdata(), data)
    with pytest.raises(ValueError, match="like"):
        save_ct(vol.array, tmp_path / "x.nii", like=None)
    with pytest.raises(ValueError, match=r"like.shape"):
        save_ct(vol.array[1:], tmp_path / "x.nii", like=vol)
    with pytest.raises(CTError) as e:
        save_ct(vol, tmp_path / "x.mha")
    _assert_one_line(e, "x.mha", ".nii.gz")


def test_save_resampled_volume_keeps_source_axis_order(tmp_path, write_nifti):
    vol = load_ct(write_nifti(tmp_path / "src.nii.gz", _hu_volume(), AFFINES["RAS"]))
    small = resample(vol, (3.0, 1.4, 1.6))
    out = save_ct(small, tmp_path / "small.nii.gz")
    assert nib.aff2axcodes(nib.load(out).affine) == ("R", "A", "S")
    back = load_ct(out)
    np.testing.assert_allclose(back.affine, small.affine, atol=1e-5)
    torch.testing.assert_close(back.array, small.array)


# --------------------------------------------------------------------------------------------------- HU


def test_scl_slope_inter_honoured(tmp_path, write_nifti):
    raw = np.random.default_rng(1).integers(0, 2000, size=SHAPE).astype(np.int16)
    vol = load_ct(write_nifti(tmp_path / "s.nii.gz", raw, AFFINES["LPS"], slope=2.0, inter=-1024.0))
    np.testing.assert_array_equal(vol.array.numpy(), raw.transpose(2, 0, 1) * 2.0 - 1024.0)
    out = save_ct(vol, tmp_path / "o.nii.gz")
    np.testing.assert_array_equal(nib.load(out).get_fdata(), raw * 2.0 - 1024.0)
    with pytest.raises(CTError) as e:  # the header already rescales: an intercept on top would double it
        load_ct(tmp_path / "s.nii.gz", intercept=-1024)
    _assert_one_line(e, "s.nii.gz", "scl_inter=-1024")


@pytest.mark.parametrize("intercept", [-1024, -8192])
def test_ct_rate_raw_with_metadata_intercept(tmp_path, write_nifti, intercept):
    hu = _hu_volume()
    raw = (hu - intercept).astype(np.int16)  # stored raw, the rescale lives in the metadata CSV
    path = write_nifti(tmp_path / "raw.nii.gz", raw, AFFINES["LPS"])
    assert not looks_like_hu(raw) and looks_like_hu(hu)
    for already_hu in (None, False):
        vol = load_ct(path, slope="1.0", intercept=str(intercept), already_hu=already_hu)
        np.testing.assert_array_equal(vol.array.numpy(), hu.transpose(2, 0, 1))


def test_already_hu_fixed_volume_not_rescaled_twice(tmp_path, write_nifti):
    hu = _hu_volume()
    path = write_nifti(tmp_path / "fixed.nii.gz", hu.astype(np.int16), AFFINES["LPS"])
    expected = hu.transpose(2, 0, 1)
    np.testing.assert_array_equal(load_ct(path, slope=1, intercept=-8192).array.numpy(), expected)  # detected
    np.testing.assert_array_equal(load_ct(path, intercept=-8192, already_hu=True).array.numpy(), expected)
    forced = load_ct(path, intercept=-1024, already_hu=False).array.numpy()
    np.testing.assert_array_equal(forced, expected - 1024)


def test_hu_from_raw():
    raw = torch.tensor([0, 24, 1024, 7192], dtype=torch.int16)
    assert hu_from_raw(raw, 1, -1024).tolist() == [-1024, -1000, 0, 6168]
    assert hu_from_raw(raw.numpy(), "2", "-8192").tolist() == [-8192, -8144, -6144, 6192]
    assert hu_from_raw(raw, 1, -1024, already_hu=True).tolist() == [0, 24, 1024, 7192]
    assert hu_from_raw(raw, 1, -1024).dtype == torch.float32
    for slope, inter in [(0, -1024), (float("nan"), 0), (1, "n/a")]:
        with pytest.raises(ValueError):
            hu_from_raw(raw, slope, inter)


# --------------------------------------------------------------------------------------------------- DICOM


@pytest.mark.parametrize("slope, intercept", [(1.0, -1024.0), (2.0, -8192.0)])
def test_dicom_series_values_spacing_and_order(tmp_path, write_dicom_series, slope, intercept):
    rng = np.random.default_rng(2)
    raw = (rng.integers(-1000, 1500, size=(7, 20, 24)) - intercept) // slope  # stored int16, [K, R, C]
    hu = raw * slope + intercept
    folder = write_dicom_series(tmp_path / "series", hu, spacing=(2.5, 0.6, 0.8), slope=slope, intercept=intercept,
                                origin=(-10.0, -20.0, 30.0))
    vol = load_ct(folder)
    # rows run +y LPS (posterior), columns +x LPS (patient left), slices +z (superior): (S, L, P) = [K, C, R]
    np.testing.assert_array_equal(vol.array.numpy(), hu.transpose(0, 2, 1).astype(np.float32))
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.6))
    assert vol.source_axcodes == ("S", "P", "L")
    # voxel (k, r, c) sits at LPS (-10 + 0.8 c, -20 + 0.6 r, 30 + 2.5 k), i.e. RAS (10 - 0.8 c, 20 - 0.6 r, ...)
    k, r, c = 4, 11, 17
    np.testing.assert_allclose(_world(vol.affine, (k, c, r)), [10 - 0.8 * c, 20 - 0.6 * r, 30 + 2.5 * k])


def test_dicom_series_normal_pointing_down(tmp_path, write_dicom_series):
    """Rows stepping anterior (IOP column direction -y) put the slice normal along -z: D still runs up."""
    hu = _hu_volume((7, 20, 24), seed=3)
    folder = write_dicom_series(tmp_path / "s", hu, orientation=(1, 0, 0, 0, -1, 0), spacing=(2.0, 0.6, 0.8))
    vol = load_ct(folder)
    np.testing.assert_array_equal(vol.array.numpy(), hu[::-1].transpose(0, 2, 1)[:, :, ::-1])
    assert vol.spacing == pytest.approx((2.0, 0.8, 0.6))


def test_dicom_to_nifti_and_back(tmp_path, write_dicom_series):
    hu = _hu_volume((7, 20, 24), seed=4)
    vol = load_ct(write_dicom_series(tmp_path / "s", hu))
    again = load_ct(save_ct(vol, tmp_path / "s.nii.gz"))
    torch.testing.assert_close(again.array, vol.array, rtol=0, atol=0)
    np.testing.assert_allclose(again.affine, vol.affine, atol=1e-4)
    assert again.source_axcodes == vol.source_axcodes


def test_dicom_zip_equals_its_folder(tmp_path, write_dicom_series):
    import zipfile

    hu = _hu_volume((6, 16, 20), seed=5)
    folder = write_dicom_series(tmp_path / "series", hu, spacing=(2.5, 0.6, 0.8))
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, f in enumerate(sorted(folder.iterdir(), reverse=True)):  # nested, shuffled names inside
            zf.write(f, f"patient/study/{i}_{f.name}")
        zf.writestr("patient/README.txt", "not DICOM")
    a, b = load_ct(folder), load_ct(archive)
    torch.testing.assert_close(b.array, a.array, rtol=0, atol=0)
    np.testing.assert_allclose(b.affine, a.affine)

    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK not really a zip")
    with pytest.raises(CTError, match="not a readable zip"):
        load_ct(bad)
    empty = tmp_path / "text.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("notes.txt", "hello")
    with pytest.raises(CTError, match=r"text\.zip: no readable DICOM slice"):
        load_ct(empty)


# --------------------------------------------------------------------------------------------------- preprocessing


def _ramp_volume(shape=(7, 20, 24), spacing=(3.0, 1.0, 0.5)) -> tuple[CTVolume, np.ndarray]:
    """A volume whose value is linear in world position: 5 z + 3 x - 2 y (RAS mm)."""
    affine = _canonical_affine(*spacing, origin=(4.0, -3.0, 2.0))
    coef = np.array([3.0, -2.0, 5.0])
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    values = (world @ coef).reshape(shape).astype(np.float32)
    return CTVolume(torch.from_numpy(values), affine), coef


def test_resample_shape_spacing_and_linear_ramp():
    vol, coef = _ramp_volume()
    out = resample(vol, (1.5, 0.75, 0.75))
    assert out.shape == (14, 26, 16)  # floor(n * current / target), as BTB3D's int(n * current / target)
    assert out.spacing == pytest.approx((1.5, 0.75, 0.75))
    assert tuple(nib.aff2axcodes(out.affine)) == CANONICAL_AXCODES
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ out.affine[:3, :3].T + out.affine[:3, 3]
    src_idx = (world - vol.affine[:3, 3]) @ np.linalg.inv(vol.affine[:3, :3]).T
    inside = ((src_idx >= 0) & (src_idx <= np.array(vol.shape) - 1)).all(1)
    assert inside.mean() > 0.7
    got = out.array.numpy().reshape(-1)[inside]
    np.testing.assert_allclose(got, (world @ coef)[inside], rtol=1e-5, atol=1e-3)
    assert resample(vol, (None, 0.5, None)).shape == (7, 40, 24)


def test_window_unwindow_inverse():
    hu = torch.linspace(-1500, 1500, 301)
    w = window(hu)
    assert w.min() == -1 and w.max() == 1
    torch.testing.assert_close(unwindow(w), hu.clamp(-1000, 1000))
    y = torch.linspace(-1, 1, 101)
    torch.testing.assert_close(window(unwindow(y, -1000, 200), -1000, 200), y)
    assert window(torch.tensor([-400.0]), -1000, 200).item() == pytest.approx(0.0)
    vol, _ = _ramp_volume()
    torch.testing.assert_close(window(vol), (vol.array / 1000).clamp(-1, 1))
    with pytest.raises(ValueError):
        window(hu, 100, 100)


def test_crop_or_pad_centre_and_affine():
    vol, _ = _ramp_volume()
    out = crop_or_pad(vol, (10, 16, None))
    assert out.shape == (10, 16, 24)
    # D padded 7 -> 10: 1 in front, 2 behind; H cropped 20 -> 16 from index 2
    assert (out.array[0] == -1000).all() and (out.array[-2:] == -1000).all()
    torch.testing.assert_close(out.array[1:8], vol.array[:, 2:18])
    np.testing.assert_allclose(_world(out.affine, (1, 0, 0)), _world(vol.affine, (0, 2, 0)))
    back = crop_or_pad(out, vol.shape)
    torch.testing.assert_close(back.array[:, 2:18], vol.array[:, 2:18])
    np.testing.assert_allclose(back.affine, vol.affine)
    t = torch.zeros(2, 1, 5, 6, 7)
    assert crop_or_pad(t, (8, 4, 7), value=-1.0).shape == (2, 1, 8, 4, 7)
    assert crop_or_pad(t, (8, 4, 7), value=-1.0)[..., 0, :, :].eq(-1).all()


def test_preprocess_is_the_chain(tmp_path, write_nifti):
    vol = load_ct(write_nifti(tmp_path / "src.nii.gz", _hu_volume(), AFFINES["LPS"]))
    cfg = CTPreprocess(spacing=(1.5, 0.75, 0.75), hu_min=-1000, hu_max=1000, size=(9, 16, 16))
    x, grid = preprocess(vol, cfg)
    assert x.shape == grid.shape == (9, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x, window(crop_or_pad(resample(vol, cfg.spacing), cfg.size)))
    out = save_ct(unwindow(x), tmp_path / "dec.nii.gz", like=grid)
    back = load_ct(out)
    assert back.source_axcodes == ("L", "P", "S")
    np.testing.assert_allclose(back.affine, grid.affine, atol=1e-5)
    x2, _ = preprocess(vol, CTPreprocess(spacing=None))
    assert x2.shape == vol.shape


@pytest.mark.parametrize(
    "kwargs",
    [{"spacing": (1.5, 0.75)}, {"spacing": (1.5, 0.0, 0.75)}, {"hu_min": 10, "hu_max": 10}, {"size": (0, 4, 4)},
     {"size": (4.5, 4, 4)}],
    ids=["spacing-len", "spacing-zero", "window", "size-zero", "size-float"],
)
def test_preprocess_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        CTPreprocess(**kwargs)


def test_volume_must_be_canonical():
    with pytest.raises(ValueError, match="load_ct"):
        CTVolume(torch.zeros(3, 4, 5), np.eye(4))
    with pytest.raises(ValueError, match=r"\[D, H, W\]"):
        CTVolume(torch.zeros(3, 4), _canonical_affine(1, 1, 1))


# --------------------------------------------------------------------------------------------------- bad input


def _nifti_with_srow(path: Path, diag: tuple[float, float, float]) -> Path:
    """A NIfTI whose sform says voxel sizes ``diag`` (values nibabel would refuse to write through an affine)."""
    img = nib.Nifti1Image(np.zeros((5, 6, 7), np.float32), np.eye(4))
    hdr = img.header
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = [diag[0], 0, 0, 0], [0, diag[1], 0, 0], [0, 0, diag[2], 0]
    hdr["sform_code"], hdr["qform_code"] = 2, 0
    nib.Nifti1Image(img.dataobj, None, header=hdr).to_filename(str(path))
    return path


def _bad_inputs(tmp: Path, write_nifti, write_dicom_series) -> dict[str, tuple[Path, str]]:
    """name -> (path, a phrase the error must contain); each built on demand in ``tmp``."""
    rng = np.random.default_rng(0)
    ok = _hu_volume()

    def corrupt_gz():
        p = tmp / "corrupt.nii.gz"
        p.write_bytes(rng.bytes(4096))
        return p, "not a readable NIfTI"

    def corrupt_nii():
        p = tmp / "corrupt.nii"
        p.write_bytes(rng.bytes(4096))
        return p, "not a readable NIfTI"

    def truncated():
        p = write_nifti(tmp / "trunc.nii.gz", rng.normal(size=(40, 40, 30)).astype(np.float32), AFFINES["LPS"])
        blob = p.read_bytes()
        p.write_bytes(blob[: len(blob) // 2])
        return p, "truncated"

    def truncated_plain():
        p = write_nifti(tmp / "trunc.nii", ok, AFFINES["LPS"])
        p.write_bytes(p.read_bytes()[:-500])
        return p, "truncated"

    def nan_voxel():
        v = ok.copy()
        v[1, 2, 3] = np.nan
        return write_nifti(tmp / "nan.nii.gz", v, AFFINES["LPS"]), "NaN or inf"

    def inf_voxel():
        v = ok.copy()
        v[0, 0, 0] = np.inf
        return write_nifti(tmp / "inf.nii.gz", v, AFFINES["LPS"]), "NaN or inf"

    def dicom_mixed():
        write_dicom_series(tmp / "mixed", ok[:, :, :4].transpose(2, 0, 1), seed=1)
        write_dicom_series(tmp / "mixed", ok[:, :, 3:].transpose(2, 0, 1), seed=2)
        return tmp / "mixed", "mixes 2 DICOM series"

    def dicom_gap():
        folder = write_dicom_series(tmp / "gap", ok.transpose(2, 0, 1))
        import pydicom

        middle = [f for f in folder.iterdir() if int(pydicom.dcmread(f).InstanceNumber) == 4]
        middle[0].unlink()
        return folder, "uneven slice spacing"

    def dicom_junk():
        (tmp / "junk").mkdir()
        (tmp / "junk" / "notes.txt").write_text("not dicom\n")
        (tmp / "junk" / "x.dcm").write_bytes(rng.bytes(300))
        return tmp / "junk", "no readable DICOM slice"

    def dicom_empty():
        (tmp / "empty").mkdir()
        return tmp / "empty", "no readable DICOM slice"

    def single_dcm():
        folder = write_dicom_series(tmp / "one", ok[:, :, :2].transpose(2, 0, 1))
        return next(folder.iterdir()), "pass the folder"

    def unknown_ext():
        p = tmp / "volume.mha"
        p.write_bytes(b"ObjectType = Image\n")
        return p, "unknown extension .mha"

    def empty_file():
        p = tmp / "empty.nii.gz"
        p.write_bytes(b"")
        return p, "empty"

    return {
        "missing": lambda: (tmp / "nope.nii.gz", "not found"),
        "corrupt-gz": corrupt_gz,
        "corrupt-nii": corrupt_nii,
        "truncated-gz": truncated,
        "truncated-nii": truncated_plain,
        "empty-file": empty_file,
        "2d": lambda: (write_nifti(tmp / "flat.nii.gz", ok[:, :, 0], np.eye(4)), "2D image"),
        "4d": lambda: (write_nifti(tmp / "vols.nii.gz", np.stack([ok] * 3, -1), np.eye(4)), "4D image"),
        "zero-size": lambda: (write_nifti(tmp / "zero.nii.gz", np.zeros((0, 5, 5), np.float32), np.eye(4)),
                              "zero-size"),
        "nan": nan_voxel,
        "inf": inf_voxel,
        "spacing-zero": lambda: (_nifti_with_srow(tmp / "sp0.nii", (0.0, 1.0, 1.0)), "absurd voxel spacing"),
        "spacing-nan": lambda: (_nifti_with_srow(tmp / "spnan.nii", (np.nan, 1.0, 1.0)), "NaN or inf"),
        "spacing-huge": lambda: (write_nifti(tmp / "sp25.nii", ok, np.diag([0.7, 0.7, 25.0, 1])),
                                 "absurd voxel spacing"),
        "spacing-tiny": lambda: (write_nifti(tmp / "sp001.nii", ok, np.diag([0.01, 0.7, 2.0, 1])),
                                 "absurd voxel spacing"),
        "unknown-ext": unknown_ext,
        "single-dcm": single_dcm,
        "dicom-empty": dicom_empty,
        "dicom-junk": dicom_junk,
        "dicom-mixed": dicom_mixed,
        "dicom-gap": dicom_gap,
    }


BAD = ["missing", "corrupt-gz", "corrupt-nii", "truncated-gz", "truncated-nii", "empty-file", "2d", "4d",
       "zero-size", "nan", "inf", "spacing-zero", "spacing-nan", "spacing-huge", "spacing-tiny", "unknown-ext",
       "single-dcm", "dicom-empty", "dicom-junk", "dicom-mixed", "dicom-gap"]  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_ct_error(tmp_path, write_nifti, write_dicom_series, case):
    path, phrase = _bad_inputs(tmp_path, write_nifti, write_dicom_series)[case]()
    with pytest.raises(CTError) as e:
        load_ct(path)
    assert isinstance(e.value, UserError)
    _assert_one_line(e, path.name, phrase)


def test_bad_case_list_is_complete(tmp_path, write_nifti, write_dicom_series):
    assert sorted(BAD) == sorted(_bad_inputs(tmp_path, write_nifti, write_dicom_series))


def test_ct_error_folds_newlines():
    assert str(CTError("a.nii: bad\n  header\r\nfix it")) == "a.nii: bad header fix it"


def test_gzip_of_garbage_is_corrupt(tmp_path):
    p = tmp_path / "garbage.nii.gz"
    p.write_bytes(gzip.compress(b"\x00" * 10 + b"not a nifti header" * 30))
    with pytest.raises(CTError) as e:
        load_ct(p)
    _assert_one_line(e, "garbage.nii.gz")
