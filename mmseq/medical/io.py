"""CT volumes in and out: NIfTI files and DICOM series, one canonical array layout, BTB3D-style preprocessing.

Canonical layout (used by the whole ``mmseq.medical`` package)
--------------------------------------------------------------
Every loaded volume is a float32 tensor ``[D, H, W]`` in Hounsfield units whose axes point, in nibabel axis
codes, to ``("S", "L", "P")`` (:data:`CANONICAL_AXCODES`):

- ``D``, the slice axis and the tokenizer's causal axis, runs inferior -> superior (feet to head);
- ``H`` runs from the patient's right to the patient's left;
- ``W`` runs from anterior to posterior.

This is the layout BTB3D (and CT-CLIP before it) fed its networks: they read CT-RATE's NIfTI files, whose axis codes
are L, P, S, without reorienting and moved the last axis first, giving (S, L, P). Loading CT-RATE through this module
therefore yields exactly their arrays (``array == data.transpose(2, 0, 1)``), and any other file (RAS NIfTI, a DICOM
series in any slice order) lands in that same layout. An axial slice ``array[d]`` is the radiological view
transposed: ``array[d].T`` shows anterior at the top and the patient's right on the viewer's left.

``CTVolume.affine`` is the nibabel-style affine of that array: it maps an index ``(d, h, w, 1)`` to RAS+ world
millimetres. ``CTVolume.spacing`` is the voxel size along ``(D, H, W)``, i.e. (S-I, R-L, A-P) mm. The source file's
geometry (affine, shape, axis codes, NIfTI header) rides along, so :func:`save_ct` writes results back in the
input's own voxel order and affine.

Readers: nibabel for ``.nii`` / ``.nii.gz`` (``get_fdata`` honours ``scl_slope`` / ``scl_inter``); pydicom for a
folder of DICOM slices. MONAI's ``PydicomReader`` is not used for series because it orders slices by
InstanceNumber (skipping slices without one), measures slice spacing along world z only, and does not notice two
series in one folder; here slices are ordered by their position along the slice normal and each slice's
RescaleSlope / RescaleIntercept is applied on its own.

Every problem with a file the user pointed at raises :class:`CTError`, one line naming the file.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from mmseq.errors import UserError

__all__ = [
    "AIR_HU",
    "CANONICAL_AXCODES",
    "MAX_SPACING_MM",
    "MIN_SPACING_MM",
    "NIFTI_EXTENSIONS",
    "CTError",
    "CTPreprocess",
    "CTVolume",
    "crop_or_pad",
    "hu_from_raw",
    "load_ct",
    "looks_like_hu",
    "preprocess",
    "resample",
    "save_ct",
    "unwindow",
    "window",
]

CANONICAL_AXCODES: tuple[str, str, str] = ("S", "L", "P")
"""Where the array axes (D, H, W) point: superior, patient-left, posterior (see the module docstring)."""

NIFTI_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz")
MIN_SPACING_MM = 0.05  # below any CT voxel (micro-CT aside); smaller means a unit or header error
MAX_SPACING_MM = 20.0  # thicker than any diagnostic slice; larger means a unit or header error
AIR_HU = -1000.0  # pad value for crop_or_pad; windows to -1 for any window whose lower end is >= -1000 HU

_CANONICAL_ORNT = axcodes2ornt(CANONICAL_AXCODES)
_CT_IMAGE_HINT = "expected a .nii / .nii.gz file, a folder of DICOM slices or a .zip of one DICOM series"
MAX_ZIP_BYTES = 4 * 2**30  # uncompressed; a CT series is a few hundred MB at most


class CTError(UserError):
    """A bad CT input: missing, unreadable, truncated, wrong dimensionality, non-finite, or absurd geometry.

    The message is always one line (newlines from underlying libraries are folded), naming the file first.
    """

    def __init__(self, message: str) -> None:
        super().__init__(re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip())


# --------------------------------------------------------------------------------------------------- the volume


@dataclass(frozen=True, eq=False)
class CTVolume:
    """A CT volume in the canonical layout, with the geometry of the file it came from.

    Attributes:
        array: ``[D, H, W]`` float32 Hounsfield units; axes point to :data:`CANONICAL_AXCODES` (S, L, P).
        affine: ``[4, 4]`` float64, maps ``(d, h, w, 1)`` of ``array`` to RAS+ world mm.
        source_affine: ``[4, 4]`` float64 affine of the source file's own voxel array (RAS+ mm).
        source_shape: the source file's 3D voxel shape, in its own axis order.
        source_axcodes: the source array's axis codes, e.g. ``("L", "P", "S")`` for CT-RATE.
        source_header: the source NIfTI header (None for DICOM or a volume built in memory); :func:`save_ct`
            reuses it so that a file written back in the source geometry keeps the source's sform/qform exactly.

    Only ``array`` and ``affine`` are required: built in memory, the volume is its own source.
    """

    array: torch.Tensor
    affine: np.ndarray
    source_affine: np.ndarray | None = None
    source_shape: tuple[int, int, int] | None = None
    source_axcodes: tuple[str, str, str] | None = None
    source_header: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.array, torch.Tensor) or self.array.dim() != 3:
            got = tuple(self.array.shape) if hasattr(self.array, "shape") else type(self.array).__name__
            raise ValueError(f"CTVolume.array must be a [D, H, W] tensor, got {got}")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"CTVolume.affine must be 4x4, got shape {affine.shape}")
        codes = tuple(nib.aff2axcodes(affine))
        if codes != CANONICAL_AXCODES:
            raise ValueError(
                f"CTVolume.affine must point the axes (D, H, W) to {CANONICAL_AXCODES}, got {codes}; "
                "load files with load_ct, which reorients"
            )
        object.__setattr__(self, "affine", affine)
        if self.source_affine is None:
            object.__setattr__(self, "source_affine", affine.copy())
            object.__setattr__(self, "source_shape", tuple(self.array.shape))
            object.__setattr__(self, "source_axcodes", CANONICAL_AXCODES)
        else:
            object.__setattr__(self, "source_affine", np.asarray(self.source_affine, dtype=np.float64))
            object.__setattr__(self, "source_shape", tuple(int(n) for n in self.source_shape))
            object.__setattr__(self, "source_axcodes", tuple(self.source_axcodes))

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(D, H, W)``."""
        return tuple(self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along ``(D, H, W)``: (superior-inferior, right-left, anterior-posterior)."""
        return tuple(float(s) for s in _voxel_sizes(self.affine))

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.4g}" for s in self.spacing)
        return (
            f"CTVolume(shape={self.shape}, spacing=({sp}) mm, dtype={self.array.dtype}, "
            f"source_shape={self.source_shape}, source_axcodes={''.join(self.source_axcodes)})"
        )


def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def _to_canonical_transform(source_affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform from the source array's axes to the canonical ones."""
    return ornt_transform(io_orientation(source_affine), _CANONICAL_ORNT)


# --------------------------------------------------------------------------------------------------- HU helpers


def hu_from_raw(
    raw: torch.Tensor | np.ndarray,
    slope: float | str,
    intercept: float | str,
    *,
    already_hu: bool = False,
) -> torch.Tensor:
    """``HU = slope * raw + intercept`` as float32, for volumes stored raw with a metadata row beside them.

    CT-RATE keeps RescaleSlope / RescaleIntercept in ``dataset/metadata/*_metadata.csv`` (columns of those names):
    the slope is 1 and the intercept is -1024 for most volumes and -8192 for Siemens ones (850 of the 3,039
    validation volumes). CT-RATE v2's ``train_fixed`` / ``valid_fixed`` volumes are already in HU while the
    metadata still lists those intercepts: pass ``already_hu=True`` for them (or test with :func:`looks_like_hu`),
    otherwise air lands at -2024 or -9192 HU.

    Args:
        raw: stored values, any shape, e.g. ``[D, H, W]``.
        slope, intercept: numbers, or the strings a CSV reader returns.
        already_hu: return ``raw`` (as float32) unchanged.
    Returns:
        float32 tensor of the shape of ``raw``.
    """
    t = raw if isinstance(raw, torch.Tensor) else torch.from_numpy(np.asarray(raw))
    t = t.to(torch.float32)
    if already_hu:
        return t
    try:
        s, b = float(slope), float(intercept)
    except (TypeError, ValueError) as e:
        raise ValueError(f"slope and intercept must be numbers, got {slope!r} and {intercept!r}") from e
    if not (math.isfinite(s) and s != 0.0 and math.isfinite(b)):
        raise ValueError(f"slope must be finite and non-zero and intercept finite, got {s} and {b}")
    return t * s + b if s != 1.0 else t + b


def looks_like_hu(values: torch.Tensor | np.ndarray, *, min_fraction: float = 0.01) -> bool:
    """Whether a volume already holds HU: at least ``min_fraction`` of its voxels are air, within [-1100, -900].

    A chest CT in HU has far more air than that (outside the body and in the lungs); the same volume stored raw
    with intercept -1024 or -8192 puts air near +24 or +7192 and has nothing near -1000.

    Args:
        values: any shape, e.g. ``[D, H, W]``.
    """
    t = values if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))
    if t.numel() == 0:
        return False
    air = ((t >= -1100) & (t <= -900)).sum().item()  # no reshape: nibabel arrays are Fortran-ordered
    return air >= min_fraction * t.numel()


# --------------------------------------------------------------------------------------------------- loading


def load_ct(
    path: str | os.PathLike,
    *,
    slope: float | str | None = None,
    intercept: float | str | None = None,
    already_hu: bool | None = None,
) -> CTVolume:
    """Read a CT volume into the canonical layout: ``array [D, H, W]`` float32 HU, axes (S, L, P).

    Args:
        path: a ``.nii`` / ``.nii.gz`` file (scl_slope / scl_inter applied by nibabel), a folder of DICOM
            slices of one series (each slice's RescaleSlope / RescaleIntercept applied; slices ordered by
            ImagePositionPatient along the slice normal, whatever their file names or InstanceNumbers), or a
            ``.zip`` of such a series (its files anywhere inside the archive).
            A 4D NIfTI whose extra dimensions are all 1 is squeezed to 3D.
        slope, intercept: for NIfTI files stored raw with the rescale kept elsewhere (a CT-RATE metadata row):
            applied as ``HU = slope * stored + intercept`` (slope defaults to 1 when only the intercept is given).
            Refused when the file's header already scales its values, and for DICOM (slices carry their own).
        already_hu: only matters with ``slope`` / ``intercept``. True: the file is already HU (CT-RATE
            ``*_fixed`` volumes), do not apply them. False: always apply. None (default): apply unless the data
            already looks like HU (:func:`looks_like_hu`), which guards against CT-RATE v2's double rescale.
    Returns:
        a :class:`CTVolume`; ``spacing`` is ``(D, H, W)`` mm.
    Raises:
        CTError: missing path, unknown extension, corrupt or truncated file, not 3D, NaN/inf voxels, a zero-size
            dimension, spacing outside [0.05, 20] mm, a DICOM folder with no readable slice or with mixed series.
    """
    p = Path(path)
    if not p.exists():
        raise CTError(f"CT input not found: {p}; {_CT_IMAGE_HINT}")
    if (slope is not None or intercept is not None) and p.is_dir():
        raise CTError(
            f"{p}: slope/intercept given for a DICOM folder; DICOM slices carry their own RescaleSlope/"
            "RescaleIntercept, which are applied, so drop the arguments"
        )
    if p.is_dir():
        data, affine = _read_dicom_folder(p)
        header = None
    elif p.suffix.lower() == ".zip":
        if slope is not None or intercept is not None:
            raise CTError(f"{p}: slope/intercept given for a DICOM archive; its slices carry their own rescale "
                          "values, which are applied, so drop the arguments")
        data, affine = _read_dicom_zip(p)
        header = None
    else:
        ext = _nifti_ext(p)
        if ext is None:
            if p.suffix.lower() in (".dcm", ".dicom", ".ima"):
                raise CTError(f"{p} is a single DICOM file; pass the folder that holds the whole series")
            raise CTError(f"{p}: unknown extension {''.join(p.suffixes) or '(none)'}; {_CT_IMAGE_HINT}")
        data, affine, header = _read_nifti(p, slope=slope, intercept=intercept, already_hu=already_hu)
    return _finish(p, data, affine, header)


def _nifti_ext(p: Path) -> str | None:
    name = p.name.lower()
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return ext
    return None


def _read_nifti(
    p: Path, *, slope: float | str | None, intercept: float | str | None, already_hu: bool | None
) -> tuple[np.ndarray, np.ndarray, Any]:
    """-> (data [X, Y, Z] float32 in the file's own axis order, its affine, its header)."""
    if p.stat().st_size == 0:
        raise CTError(f"{p} is empty (0 bytes); {_CT_IMAGE_HINT}")
    try:
        img = nib.load(str(p))
    except Exception as e:  # nibabel, gzip and zlib raise a zoo of types for a bad file
        raise CTError(f"{p} is not a readable NIfTI file ({type(e).__name__}: {e}); re-export or re-download it") from e
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise CTError(f"{p} holds a {type(img).__name__}, not a NIfTI image; {_CT_IMAGE_HINT}")
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 3:
        raise CTError(f"{p} is a {len(shape)}D image of shape {shape}; expected a 3D volume [X, Y, Z]")
    if any(n == 0 for n in shape):
        raise CTError(f"{p} has a zero-size dimension, shape {shape}; expected a non-empty 3D volume")
    if len(shape) > 3 and any(n != 1 for n in shape[3:]):
        raise CTError(
            f"{p} is a {len(shape)}D image of shape {shape}; expected one 3D volume (extra dimensions of size 1 "
            "are accepted), e.g. save one volume with nibabel: img.slicer[..., 0]"
        )
    # nibabel moves scl_slope/scl_inter from the header into the array proxy on load
    header_scale = (float(getattr(img.dataobj, "slope", 1.0)), float(getattr(img.dataobj, "inter", 0.0)))
    header_scaled = header_scale != (1.0, 0.0)
    try:
        data = img.get_fdata(dtype=np.float32)
    except Exception as e:
        raise CTError(f"{p}: cannot read its voxels, the file looks truncated or corrupt ({type(e).__name__}: {e}); "
                      "re-export or re-download it") from e
    data = data.reshape(shape[:3])
    if slope is not None or intercept is not None:
        if header_scaled:
            raise CTError(
                f"{p}: the header already rescales values (scl_slope={header_scale[0]}, scl_inter={header_scale[1]}), "
                "so slope/intercept would be applied twice; drop them"
            )
        if already_hu is None:
            already_hu = looks_like_hu(data)
        data = hu_from_raw(data, 1.0 if slope is None else slope, 0.0 if intercept is None else intercept,
                           already_hu=already_hu).numpy()
    return data, np.asarray(img.affine, dtype=np.float64), img.header.copy()


def _read_dicom_zip(archive: Path) -> tuple[np.ndarray, np.ndarray]:
    """A .zip of one DICOM series: its files extracted (flat, names sanitised) into a temporary folder and read."""
    import shutil
    import tempfile
    import zipfile

    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            total = sum(m.file_size for m in members)
            if total > MAX_ZIP_BYTES:
                raise CTError(f"{archive}: {total / 2**30:.1f} GiB uncompressed, over the "
                              f"{MAX_ZIP_BYTES / 2**30:.0f} GiB limit for a DICOM archive")
            if not members:
                raise CTError(f"{archive}: the archive is empty; {_CT_IMAGE_HINT}")
            with tempfile.TemporaryDirectory(prefix="mmseq-dicom-") as tmp:
                for i, m in enumerate(members):
                    # Flattened to numbered names: no member path can point outside the temporary folder.
                    with zf.open(m) as src, open(Path(tmp) / f"{i:06d}.dcm", "wb") as dst:
                        shutil.copyfileobj(src, dst)
                try:
                    return _read_dicom_folder(Path(tmp))
                except CTError as e:
                    raise CTError(str(e).replace(tmp, str(archive))) from None
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise CTError(f"{archive} is not a readable zip archive ({e}); {_CT_IMAGE_HINT}") from None


def _read_dicom_folder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """-> (data [K, R, C] float32 HU: slices sorted along the normal, rows, columns; its RAS affine)."""
    import pydicom

    try:
        from pydicom.pixels import apply_modality_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut

    files = sorted(f for f in folder.iterdir() if f.is_file())
    slices: list[tuple[Path, Any]] = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except Exception:  # not DICOM (a README, a DICOMDIR index is fine too): skip it
            continue
        if "PixelData" in ds:
            slices.append((f, ds))
    if not slices:
        raise CTError(
            f"{folder}: no readable DICOM slice with pixel data among its {len(files)} files; expected a folder "
            "holding the .dcm files of one CT series"
        )
    series = Counter(str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in slices)
    if len(series) > 1:
        listed = ", ".join(f"{uid or '(no UID)'} ({n} slices)" for uid, n in series.most_common())
        raise CTError(f"{folder} mixes {len(series)} DICOM series: {listed}; put each series in its own folder")
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        for f, ds in slices:
            if tag not in ds:
                raise CTError(f"{f}: DICOM slice lacks {tag}; cannot place it in a volume")

    iop = np.array([float(v) for v in slices[0][1].ImageOrientationPatient], dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]  # direction of increasing column index, of increasing row index (LPS)
    normal = np.cross(row_dir, col_dir)
    ref_f, ref = slices[0]
    for f, ds in slices[1:]:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-4):
            raise CTError(f"{folder}: slices {ref_f.name} and {f.name} have different ImageOrientationPatient; "
                          "expected one series with one orientation")
        if (int(ds.Rows), int(ds.Columns)) != (int(ref.Rows), int(ref.Columns)):
            raise CTError(f"{folder}: slices {ref_f.name} ({ref.Rows}x{ref.Columns}) and {f.name} "
                          f"({ds.Rows}x{ds.Columns}) differ in size; expected one series")
        if not np.allclose([float(v) for v in ds.PixelSpacing], [float(v) for v in ref.PixelSpacing], rtol=1e-4):
            raise CTError(f"{folder}: slices {ref_f.name} and {f.name} have different PixelSpacing; "
                          "expected one series")

    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in slices], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    positions, along = positions[order], along[order]
    n = len(slices)
    if n > 1:
        gaps = np.diff(along)
        i = int(np.argmin(gaps))
        if gaps[i] < 1e-3:
            raise CTError(f"{folder}: slices {slices[i][0].name} and {slices[i + 1][0].name} share one position; "
                          "expected one series with one slice per position")
        med = float(np.median(gaps))
        if np.abs(gaps - med).max() > 0.1 * med:
            raise CTError(f"{folder}: uneven slice spacing ({gaps.min():.4g} to {gaps.max():.4g} mm, median "
                          f"{med:.4g}); slices are missing or the series is irregular")
        step = (positions[-1] - positions[0]) / (n - 1)  # keeps a gantry tilt as a shear
    else:
        thick = getattr(slices[0][1], "SpacingBetweenSlices", None) or getattr(slices[0][1], "SliceThickness", None)
        if thick is None:
            raise CTError(f"{folder}: a single slice without SliceThickness; cannot tell its thickness")
        step = normal * float(thick)

    planes = []
    for f, ds in slices:
        try:
            arr = ds.pixel_array
        except Exception as e:
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
            raise CTError(f"{f}: cannot decode DICOM pixel data (transfer syntax {ts}; {type(e).__name__}: {e}); "
                          "install a decoder plugin for it (pylibjpeg or gdcm) or convert the series") from e
        if arr.ndim != 2:
            raise CTError(f"{f}: pixel data of shape {arr.shape}; expected one 2D grayscale slice per file")
        planes.append(np.asarray(apply_modality_lut(arr, ds), dtype=np.float32))
    data = np.stack(planes, axis=0)

    dr, dc = (float(v) for v in ref.PixelSpacing)  # spacing between rows, between columns
    lps = np.eye(4)
    lps[:3, 0] = step
    lps[:3, 1] = col_dir * dr
    lps[:3, 2] = row_dir * dc
    lps[:3, 3] = positions[0]
    return data, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _finish(p: Path, data: np.ndarray, affine: np.ndarray, header: Any) -> CTVolume:
    """Check geometry and values, then reorient ``data`` (source axis order) to the canonical layout."""
    if any(n == 0 for n in data.shape):
        raise CTError(f"{p} has a zero-size dimension, shape {data.shape}; expected a non-empty 3D volume")
    sizes = _voxel_sizes(affine)
    sp = ", ".join(f"{s:.4g}" for s in sizes)
    if not np.isfinite(affine).all() or not np.isfinite(sizes).all():
        raise CTError(f"{p}: its affine holds NaN or inf (voxel sizes {sp} mm); fix the header's sform/qform/pixdim")
    if (sizes < MIN_SPACING_MM).any() or (sizes > MAX_SPACING_MM).any():
        raise CTError(f"{p}: absurd voxel spacing ({sp}) mm; expected each in [{MIN_SPACING_MM}, {MAX_SPACING_MM}] "
                      "mm, check the header's pixdim/sform or the DICOM PixelSpacing and slice positions")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-6 * float(np.prod(sizes)):
        raise CTError(f"{p}: its affine is singular (two axes point the same way); fix the header's sform/qform")
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise CTError(f"{p}: {bad} of {data.size} voxels are NaN or inf; expected finite values (HU)")

    xform = _to_canonical_transform(affine)
    array = np.ascontiguousarray(apply_orientation(data, xform), dtype=np.float32)
    canon_affine = affine @ inv_ornt_aff(xform, data.shape)
    return CTVolume(
        array=torch.from_numpy(array),
        affine=canon_affine,
        source_affine=affine,
        source_shape=tuple(int(n) for n in data.shape),
        source_axcodes=tuple(nib.aff2axcodes(affine)),
        source_header=header,
    )


# --------------------------------------------------------------------------------------------------- saving


def save_ct(
    data: CTVolume | torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    *,
    like: CTVolume | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a canonical ``[D, H, W]`` HU volume to ``.nii`` / ``.nii.gz`` in the source file's voxel order.

    The canonical reorientation is undone, so the file has the source's axis order and axis codes. When the grid
    is the source's own (same shape, same affine as ``like`` straight from :func:`load_ct`), the source's
    affine and, for a NIfTI source, its sform/qform are written exactly: load -> save -> load keeps shape, affine,
    axis codes and values (float32). A resampled or cropped volume is written on its own grid, still in the
    source's axis order, so it overlays the source in a viewer.

    Args:
        data: a :class:`CTVolume`, or a ``[D, H, W]`` tensor/array on the grid of ``like`` (e.g. a decoded volume).
        path: destination ending in .nii or .nii.gz; written to a temp file beside it, then moved into place.
        like: the volume whose geometry an array is written with (required for an array; for a CTVolume its
            own geometry is used and ``like`` only lends the source axis order and header, default itself).
        overwrite: replace an existing file.
    Returns:
        the path written. Values are stored as float32, unscaled.
    """
    p = Path(path)
    if _nifti_ext(p) is None:
        raise CTError(f"{p}: cannot write {''.join(p.suffixes) or 'extension-less'} files; use .nii or .nii.gz")
    if p.is_dir():
        raise CTError(f"{p} is a directory; pass a file path ending in .nii or .nii.gz")
    if p.exists() and not overwrite:
        raise CTError(f"{p} already exists; pass overwrite=True to replace it, or choose another path")
    if isinstance(data, CTVolume):
        grid, like = data, like if like is not None else data
        array = data.array
    else:
        if like is None:
            raise ValueError("save_ct needs like=CTVolume to place a bare array; pass the volume it was made from")
        grid = like
        array = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.asarray(data))
        if tuple(array.shape) != like.shape:
            raise ValueError(f"array must be [D, H, W] == like.shape {like.shape}, got {tuple(array.shape)}")
    arr = array.detach().to("cpu", torch.float32).numpy()
    if not np.isfinite(arr).all():
        raise ValueError(f"volume for {p} holds NaN or inf values")

    back = ornt_transform(_CANONICAL_ORNT, axcodes2ornt(like.source_axcodes))
    out = np.ascontiguousarray(apply_orientation(arr, back))
    src_xform = _to_canonical_transform(like.source_affine)
    src_canon_affine = like.source_affine @ inv_ornt_aff(src_xform, like.source_shape)
    same_grid = (tuple(out.shape) == tuple(like.source_shape)
                 and np.allclose(grid.affine, src_canon_affine, rtol=0, atol=1e-6))
    if same_grid and like.source_header is not None:
        hdr = like.source_header.copy()
        hdr.set_data_dtype(np.float32)
        hdr.set_slope_inter(1.0, 0.0)
        img_cls = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
        img = img_cls(out, None, header=hdr)  # affine None: the header's sform/qform stay as they are
    else:
        affine = like.source_affine if same_grid else grid.affine @ inv_ornt_aff(back, arr.shape)
        img = nib.Nifti1Image(out, affine)
        img.header.set_qform(affine, code=1)  # scanner coordinates
        img.header.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm")

    p.parent.mkdir(parents=True, exist_ok=True)
    # nibabel picks compression from the name, so the temp file keeps the real extension
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=f".tmp{_nifti_ext(p)}", dir=p.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


# --------------------------------------------------------------------------------------------------- preprocessing


def resample(
    volume: CTVolume,
    spacing: tuple[float | None, float | None, float | None] = (1.5, 0.75, 0.75),
) -> CTVolume:
    """Trilinear resampling to ``spacing`` mm along ``(D, H, W)`` (None keeps that axis); returns a new volume.

    Output size per axis is ``floor(n * current / target)`` (BTB3D's ``int(n * current / target)``, at least 1).
    The new grid has exactly the target spacing and shares the old grid's field-of-view edge: output voxel ``j``
    samples input index ``(j + 0.5) * target / current - 0.5`` (align_corners=False), clamped at the borders; the
    returned affine says so. No anti-aliasing when downsampling (as BTB3D).

    Args:
        volume: ``array [D, H, W]`` on any device.
    Returns:
        a :class:`CTVolume` with ``array [D', H', W']`` on the same device, float32.
    """
    if len(spacing) != 3:
        raise ValueError(f"spacing must be 3 values (D, H, W) in mm, got {spacing!r}")
    cur = volume.spacing
    target = [c if t is None else float(t) for c, t in zip(cur, spacing)]
    if not all(math.isfinite(t) and t > 0 for t in target):
        raise ValueError(f"spacing must be positive finite mm (or None), got {spacing!r}")
    ratio = [c / t for c, t in zip(cur, target)]  # output voxels per input voxel
    size = [max(1, math.floor(n * r + 1e-6)) for n, r in zip(volume.shape, ratio)]
    x = volume.array.to(torch.float32)[None, None]
    y = torch.ops.aten.upsample_trilinear3d(x, size, False, *ratio)[0, 0]
    step = np.array([1.0 / r for r in ratio])
    index_map = np.eye(4)
    index_map[:3, :3] = np.diag(step)
    index_map[:3, 3] = 0.5 * step - 0.5
    return replace(volume, array=y, affine=volume.affine @ index_map)


def crop_or_pad(
    x: CTVolume | torch.Tensor,
    size: tuple[int | None, int | None, int | None],
    *,
    value: float = AIR_HU,
) -> CTVolume | torch.Tensor:
    """Centre-crop or centre-pad the last three axes to ``size`` (None keeps an axis).

    An axis of length ``n`` cropped to ``t`` keeps ``[(n - t) // 2, (n - t) // 2 + t)``; padded, it gets
    ``(t - n) // 2`` voxels of ``value`` in front and the rest behind, so padding then cropping back is exact.

    Args:
        x: a :class:`CTVolume` (its affine is shifted to match) or a tensor ``[..., D, H, W]``.
        size: ``(D, H, W)`` target.
        value: pad value: -1000 HU (air) for HU data; use -1 on windowed data.
    Returns:
        the same kind as ``x``, with the last three axes of length ``size``.
    """
    t = x.array if isinstance(x, CTVolume) else x
    if t.dim() < 3 or len(size) != 3:
        raise ValueError(f"x must be [..., D, H, W] and size (D, H, W), got {tuple(t.shape)} and {size!r}")
    shape = t.shape[-3:]
    target = [n if s is None else int(s) for n, s in zip(shape, size)]
    if any(s < 1 for s in target):
        raise ValueError(f"size must be positive (or None), got {size!r}")
    starts = [(n - s) // 2 if n >= s else -((s - n) // 2) for n, s in zip(shape, target)]  # < 0: pad in front
    crop = tuple(slice(max(a, 0), max(a, 0) + min(n, s)) for a, n, s in zip(starts, shape, target))
    t = t[(..., *crop)]
    pad: list[int] = []
    for a, n, s in reversed(list(zip(starts, shape, target))):  # F.pad lists the last axis first
        before = max(-a, 0)
        pad += [before, s - min(n, s) - before]
    if any(pad):
        t = torch.nn.functional.pad(t, pad, mode="constant", value=value)
    if not isinstance(x, CTVolume):
        return t
    shift = np.eye(4)
    shift[:3, 3] = starts
    return replace(x, array=t.contiguous(), affine=x.affine @ shift)


def window(x: CTVolume | torch.Tensor, hu_min: float = -1000.0, hu_max: float = 1000.0) -> torch.Tensor:
    """Clip HU to ``[hu_min, hu_max]`` and map linearly to ``[-1, 1]`` (BTB3D: clip to +-1000, divide by 1000).

    Args:
        x: a :class:`CTVolume` or a HU tensor of any shape.
    Returns:
        float32 tensor of the same shape, in ``[-1, 1]``.
    """
    if not hu_max > hu_min:
        raise ValueError(f"hu_max must be greater than hu_min, got {hu_min} and {hu_max}")
    t = x.array if isinstance(x, CTVolume) else x
    centre, half = (hu_max + hu_min) / 2.0, (hu_max - hu_min) / 2.0
    return ((t.to(torch.float32) - centre) / half).clamp_(-1.0, 1.0)


def unwindow(x: torch.Tensor, hu_min: float = -1000.0, hu_max: float = 1000.0) -> torch.Tensor:
    """Inverse of :func:`window` on ``[-1, 1]``: back to HU in ``[hu_min, hu_max]`` (inputs are clipped first).

    Args:
        x: any shape, values nominally in ``[-1, 1]`` (a decoder output).
    Returns:
        float32 HU tensor of the same shape.
    """
    if not hu_max > hu_min:
        raise ValueError(f"hu_max must be greater than hu_min, got {hu_min} and {hu_max}")
    centre, half = (hu_max + hu_min) / 2.0, (hu_max - hu_min) / 2.0
    return x.to(torch.float32).clamp(-1.0, 1.0) * half + centre


@dataclass(frozen=True)
class CTPreprocess:
    """Preprocessing for the tokenizer; each field is an argument of :func:`preprocess`'s steps.

    Attributes:
        spacing: target ``(D, H, W)`` mm for :func:`resample`; None skips resampling (BTB3D: 1.5, 0.75, 0.75).
        hu_min, hu_max: the HU window mapped to [-1, 1] by :func:`window` (BTB3D: -1000, 1000).
        size: ``(D, H, W)`` for :func:`crop_or_pad` (air-padded); None keeps the resampled size
            (BTB3D: 241, 512, 512).
    """

    spacing: tuple[float, float, float] | None = (1.5, 0.75, 0.75)
    hu_min: float = -1000.0
    hu_max: float = 1000.0
    size: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.spacing is not None:
            sp = tuple(self.spacing)
            if len(sp) != 3 or not all(isinstance(s, int | float) and math.isfinite(s) and s > 0 for s in sp):
                raise ValueError(f"spacing must be 3 positive numbers (D, H, W) in mm, or None, got {self.spacing!r}")
            object.__setattr__(self, "spacing", tuple(float(s) for s in sp))
        if not self.hu_max > self.hu_min:
            raise ValueError(f"hu_max must be greater than hu_min, got {self.hu_min} and {self.hu_max}")
        if self.size is not None:
            sz = tuple(self.size)
            if len(sz) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sz):
                raise ValueError(f"size must be 3 positive integers (D, H, W), or None, got {self.size!r}")
            object.__setattr__(self, "size", sz)


def preprocess(volume: CTVolume, cfg: CTPreprocess | None = None) -> tuple[torch.Tensor, CTVolume]:
    """Resample, centre-crop/pad with air, then window: the tokenizer's input.

    Args:
        volume: a canonical volume from :func:`load_ct`.
        cfg: the steps' settings (defaults: 1.5/0.75/0.75 mm, window [-1000, 1000] HU, no crop).
    Returns:
        ``(x, grid)``: ``x [D, H, W]`` float32 in [-1, 1], and ``grid``, the HU volume on the same grid, whose
        geometry writes decoded outputs back: ``save_ct(unwindow(y), path, like=grid)``.
    """
    cfg = cfg or CTPreprocess()
    grid = resample(volume, cfg.spacing) if cfg.spacing is not None else volume
    if cfg.size is not None:
        grid = crop_or_pad(grid, cfg.size, value=AIR_HU)
    return window(grid, cfg.hu_min, cfg.hu_max), grid
