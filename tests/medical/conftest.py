"""Shared medical fixtures: writers of tiny real-format CT files (NIfTI with nibabel, DICOM series with pydicom)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.medical import _writers as writers


@pytest.fixture
def write_nifti() -> Callable[..., Path]:
    """``write_nifti(path, array, affine, *, slope=None, inter=None, dtype=None, qform_only=False) -> path``."""
    return writers.write_nifti


@pytest.fixture
def write_dicom_series() -> Callable[..., Path]:
    """``write_dicom_series(folder, hu[K, R, C], *, spacing=(sz, row, col), slope, intercept, ...) -> folder``."""
    return writers.write_dicom_series


# Small phantom sizes for tests that need many volumes quickly (about 10 x 40 x 40 voxels).
TINY_PHANTOMS = {"slices": (8, 12), "slice_mm": (10.0, 14.0), "pixels": (36, 44), "pixel_mm": (8.0, 9.5)}


@pytest.fixture(scope="session")
def ct_phantoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """``(root, summary)`` of ``make_ct_phantoms(root, n=10, seed=0)`` at default sizes, written once per session.

    Read-only: a test that damages the set copies it first (``shutil.copytree``).
    """
    from mmseq.medical.phantoms import make_ct_phantoms

    root = tmp_path_factory.mktemp("ct_phantoms") / "ctrate"
    return root, make_ct_phantoms(root, n=10, seed=0, progress=False)
