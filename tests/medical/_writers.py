"""Writers of tiny real-format CT files (NIfTI with nibabel, DICOM series with pydicom) for the tests.

Test files import them as ``from tests.medical._writers import ...`` (the medical fixtures hand them out too).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np


def write_nifti(
    path: str | Path,
    array: np.ndarray,
    affine: np.ndarray,
    *,
    slope: float | None = None,
    inter: float | None = None,
    dtype: type | None = None,
    qform_only: bool = False,
) -> Path:
    """Write ``array`` (stored as ``dtype``, default its own) with ``affine`` to ``path`` (.nii or .nii.gz).

    ``slope``/``inter`` set scl_slope/scl_inter, so a reader must return ``array * slope + inter``;
    ``qform_only`` writes the affine as a qform (code 1) with sform code 0, as some scanners' converters do.
    """
    path = Path(path)
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64), dtype=dtype)
    if slope is not None or inter is not None:  # nibabel keeps a header's scaling when it writes
        img.header.set_slope_inter(1.0 if slope is None else slope, 0.0 if inter is None else inter)
    if qform_only:
        img.header.set_qform(affine, code=1)
        img.header.set_sform(None, code=0)
        img = nib.Nifti1Image(img.dataobj, None, header=img.header)  # affine None: keep the header's forms
    path.parent.mkdir(parents=True, exist_ok=True)
    img.to_filename(str(path))
    return path


def write_dicom_series(
    folder: str | Path,
    hu: np.ndarray,
    *,
    spacing: Sequence[float] = (2.0, 0.6, 0.8),
    slope: float = 1.0,
    intercept: float = -1024.0,
    origin: Sequence[float] = (-10.0, -20.0, 30.0),
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    series_uid: str | None = None,
    seed: int = 0,
) -> Path:
    """Write ``hu [K, R, C]`` as K CT Image Storage files in ``folder``; returns the folder.

    Slice ``k`` sits at ``origin + k * spacing[0] * normal`` (LPS mm, normal = row x column direction of
    ``orientation``, the ImageOrientationPatient); rows are ``spacing[1]`` apart and columns ``spacing[2]``
    (PixelSpacing = [row spacing, column spacing]). Pixels are stored as int16 ``(hu - intercept) / slope``.
    File names are shuffled and InstanceNumbers reversed, so a reader can only order slices by position.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hu = np.asarray(hu, dtype=np.float64)
    k_n, rows, cols = hu.shape
    raw = np.rint((hu - intercept) / slope)
    assert np.abs(raw).max() < 32768 and np.allclose(raw * slope + intercept, hu), "hu not representable as int16"
    iop = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    names = [f"IM{n:04d}.dcm" for n in random.Random(seed).sample(range(1000, 9999), k_n)]
    for k in range(k_n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "CT"
        ds.InstanceNumber = k_n - k
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * spacing[0] * normal]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]
        ds.SliceThickness = float(spacing[0])
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
        ds.PixelData = raw[k].astype("<i2").tobytes()
        try:
            pydicom.dcmwrite(folder / names[k], ds, enforce_file_format=True)
        except TypeError:  # pydicom 2.x
            ds.is_little_endian, ds.is_implicit_VR = True, False
            pydicom.dcmwrite(folder / names[k], ds, write_like_original=False)
    return folder
