"""Synthetic chest-CT phantoms written in the CT-RATE layout, with reports and the 18 abnormality labels.

``make_ct_phantoms(out_dir, n)`` writes ``n`` volumes that :class:`mmseq.medical.ctrate.CTRate` reads exactly as it
reads CT-RATE (refs/btb3d.md section 6)::

    out_dir/README.md                     what is here and how it was made
    out_dir/phantoms.json                 per volume: geometry and every drawn finding in mm (for tests, debugging)
    out_dir/dataset/train/train_1/train_1_a/train_1_a_1.nii.gz
    out_dir/dataset/valid/valid_1/valid_1_a/valid_1_a_1.nii.gz
    out_dir/dataset/radiology_text_reports/{train_reports,validation_reports}.csv
    out_dir/dataset/multi_abnormality_labels/{train,valid}_predicted_labels.csv
    out_dir/dataset/metadata/{train,validation}_metadata.csv

Volumes are int16 raw values, ``HU = raw * RescaleSlope + RescaleIntercept`` with slope 1 and intercept -1024
(or -8192 for the scans drawn as Siemens ones), read from the metadata row as CT-RATE requires. The NIfTI axes
are CT-RATE's (L, P, S): ``mmseq.medical.io.load_ct`` turns them into the canonical ``[D, H, W]`` = (S, L, P)
array with superior slices at high ``D``, the patient's left at high ``H`` and posterior at high ``W``.

Anatomy (mm, drawn per patient): body ellipse of subcutaneous fat (~-100 HU) around muscle (~40), two lungs
(~-850, denser posteriorly) with diaphragm domes (liver below the right one, stomach with a gas bubble below the
left), mediastinal fat, heart (~40) in epicardial fat, ascending aorta, arch and descending aorta, trachea, main
and lobar bronchi, pulmonary vessels, esophagus, vertebrae with discs and spinal canal, ribs, sternum, and
usually a table. Scanner look: a 3-tap blur (partial volume) and blurred Gaussian noise of 10-20 HU.

Findings are drawn per scan with the probabilities of :data:`PREVALENCE` (keys are CT-RATE's 18 label names,
``ABNORMALITIES``), drawn into the volume (visible ones clearly, subtle ones roughly) and written into the
report in varied wording; a scan's label row is exactly its drawn findings, and ``mmseq.medical.labeler``
recovers it from the report. All reconstructions of one scan share the anatomy, findings, report and labels
and differ in slice spacing, kernel (blur and noise) and noise draw.

Output is a pure function of (seed, n, valid_fraction and the size arguments): files are byte-identical run
to run (gzip with mtime 0), and each patient depends only on (seed, split, patient number), so a smaller ``n``
gives a prefix of a larger one's patients.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .ctrate import ABNORMALITIES, LABELS_DIR, METADATA_DIR, REPORT_COLUMNS, REPORTS_DIR, SPLITS

__all__ = ["LOBES", "METADATA_CSV_COLUMNS", "NORMAL_FRACTION", "PREVALENCE", "make_ct_phantoms", "render_phantom"]

# Probability that a scan shows each abnormality (roughly CT-RATE's prevalences, the rare ones raised to >= 10%
# so that a few hundred phantoms carry every label); a scan is drawn normal outright with NORMAL_FRACTION.
PREVALENCE: dict[str, float] = {
    "Medical material": 0.12,
    "Arterial wall calcification": 0.30,
    "Cardiomegaly": 0.12,
    "Pericardial effusion": 0.10,
    "Coronary artery wall calcification": 0.28,
    "Hiatal hernia": 0.12,
    "Lymphadenopathy": 0.25,
    "Emphysema": 0.20,
    "Atelectasis": 0.25,
    "Lung nodule": 0.45,
    "Lung opacity": 0.35,
    "Pulmonary fibrotic sequela": 0.25,
    "Pleural effusion": 0.14,
    "Mosaic attenuation pattern": 0.10,
    "Peribronchial thickening": 0.12,
    "Consolidation": 0.18,
    "Bronchiectasis": 0.12,
    "Interlobular septal thickening": 0.10,
}
assert tuple(PREVALENCE) == ABNORMALITIES
NORMAL_FRACTION = 0.2

# lobe -> (side: -1 right / +1 left, height range as a fraction of the covered z extent, AP zone: -1 anterior
# half, +1 posterior half, 0 either)
LOBES: dict[str, tuple[int, tuple[float, float], int]] = {
    "right upper lobe": (-1, (0.58, 0.92), 0),
    "right middle lobe": (-1, (0.30, 0.55), -1),
    "right lower lobe": (-1, (0.08, 0.50), 1),
    "left upper lobe": (1, (0.50, 0.92), 0),
    "left lower lobe": (1, (0.08, 0.48), 1),
}

# CT-RATE's metadata header (refs/btb3d.md section 6), in its order.
METADATA_CSV_COLUMNS: tuple[str, ...] = (
    "VolumeName", "Manufacturer", "SeriesDescription", "ManufacturerModelName", "PatientSex", "PatientAge",
    "ReconstructionDiameter", "DistanceSourceToDetector", "DistanceSourceToPatient", "GantryDetectorTilt",
    "TableHeight", "RotationDirection", "ExposureTime", "XRayTubeCurrent", "Exposure", "FilterType",
    "GeneratorPower", "FocalSpots", "ConvolutionKernel", "PatientPosition", "RevolutionTime",
    "SingleCollimationWidth", "TotalCollimationWidth", "TableSpeed", "TableFeedPerRotation", "SpiralPitchFactor",
    "DataCollectionCenterPatient", "ReconstructionTargetCenterPatient", "ExposureModulationType", "CTDIvol",
    "ImagePositionPatient", "ImageOrientationPatient", "SliceLocation", "SamplesPerPixel",
    "PhotometricInterpretation", "Rows", "Columns", "XYSpacing", "RescaleIntercept", "RescaleSlope", "RescaleType",
    "NumberofSlices", "ZSpacing", "StudyDate",
)

# manufacturer -> (models, (soft kernel, sharp kernel), RescaleIntercept)
_SCANNERS: dict[str, tuple[tuple[str, ...], tuple[str, str], int]] = {
    "SIEMENS": (("SOMATOM Definition Edge", "SOMATOM go.Now"), ("Br40d", "Bl57d"), -8192),
    "PHILIPS": (("Ingenuity CT", "Brilliance 64"), ("B", "YA"), -1024),
    "GE MEDICAL SYSTEMS": (("Revolution EVO", "Optima CT660"), ("STANDARD", "LUNG"), -1024),
    "TOSHIBA": (("Aquilion ONE", "Aquilion Prime"), ("FC07", "FC52"), -1024),
}
_HU_MIN, _HU_MAX = -1024.0, 3071.0

# --------------------------------------------------------------------------------------------------- geometry


@dataclass
class _Body:
    """One patient's anatomy in mm: x to the patient's left, y posterior (both from the image centre), z superior
    from the bottom of the covered extent ``zlen``."""

    fov: float  # reconstruction diameter (mm)
    n_px: int  # in-plane matrix
    zlen: float  # covered length (mm)
    a: float  # body semi-axes: lateral, AP
    b: float
    yc: float  # body centre (y)
    fat: float  # subcutaneous fat, as a fraction of the body radius
    fat_hu: float
    muscle_hu: float
    t_top: float  # lung apex height / zlen (> 1: apices above the covered extent)
    dome: tuple[float, float]  # diaphragm dome heights / zlen (right, left)
    lung_hu: float
    lung_grad: float  # HU added from the anterior to the posterior edge of a lung (dependent density)
    heart_c: tuple[float, float, float]  # (z, x, y)
    heart_r: tuple[float, float, float]
    trachea_r: float
    carina_t: float
    rib_rho: float
    rib_z0: float
    rib_gap: float
    rib_drop: float
    disc_phase: float
    aorta_r: tuple[float, float]  # ascending, descending
    arch_t: float

    def lung_center(self, side: int) -> tuple[float, float]:
        return side * 0.46 * self.a, self.yc + 0.04 * self.b

    def lung_axes(self, z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        f = np.sqrt(np.clip((self.t_top - np.asarray(z) / self.zlen) / 0.35, 0.0, 1.0))
        return 0.35 * self.a * f, 0.74 * self.b * f

    def dome_z(self, side: int, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        cx, cy = self.lung_center(side)
        q = np.minimum(((x - cx) / (0.35 * self.a)) ** 2 + ((y - cy) / (0.74 * self.b)) ** 2, 1.0)
        return self.zlen * (-0.06 + self.dome[0 if side < 0 else 1] * (1.0 - q))

    def in_lung(self, side: int, z, x, y, margin: float = 0.0) -> np.ndarray:
        cx, cy = self.lung_center(side)
        rx, ry = self.lung_axes(z)
        rx, ry = np.maximum(rx - margin, 1e-3), np.maximum(ry - margin, 1e-3)
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
        return inside & (np.asarray(z) >= self.dome_z(side, x, y) + margin) & (rx > 1e-3)

    @property
    def spine(self) -> tuple[float, float]:
        """(y centre, radius) of the vertebral bodies."""
        return self.yc + 0.50 * self.b, 0.15 * self.b

    @property
    def carina(self) -> tuple[float, float, float]:
        return self.carina_t * self.zlen, 0.0, self.yc - 0.08 * self.b

    def hilum(self, side: int) -> tuple[float, float, float]:
        return 0.52 * self.zlen, side * 0.2 * self.a, self.yc - 0.02 * self.b

    def aorta_path(self) -> tuple[tuple[float, float, float], tuple[float, float, float], float]:
        """(ascending top, descending top, arch z): the ascending aorta rises from the heart, the descending one
        runs down left of the spine."""
        za = self.arch_t * self.zlen
        ys, rv = self.spine
        asc = (za, -0.05 * self.a, self.yc - 0.30 * self.b)
        desc = (za, 0.7 * rv + 0.8 * self.aorta_r[1], ys - rv - 0.3 * self.aorta_r[1])
        return asc, desc, za


def _draw_body(rng: np.random.Generator, pixels: tuple[int, int], pixel_mm: tuple[float, float],
               slices: tuple[int, int], slice_mm: tuple[float, float]) -> _Body:
    n_px = int(rng.integers(pixels[0], pixels[1] + 1))
    s = float(rng.uniform(*pixel_mm))
    fov = n_px * s
    a = fov / 2 * float(rng.uniform(0.72, 0.86))
    b = a * float(rng.uniform(0.62, 0.76))
    zlen = int(rng.integers(slices[0], slices[1] + 1)) * float(rng.uniform(*slice_mm))
    heart_r = (min(50.0, 0.26 * zlen) * float(rng.uniform(0.9, 1.1)), 0.30 * a * float(rng.uniform(0.9, 1.1)),
               0.36 * b * float(rng.uniform(0.9, 1.1)))
    yc = -0.08 * fov / 2 - float(rng.uniform(0.0, 6.0))
    return _Body(
        fov=fov, n_px=n_px, zlen=zlen, a=a, b=b, yc=yc,
        fat=float(rng.uniform(0.04, 0.10)), fat_hu=float(rng.uniform(-115, -85)), muscle_hu=float(rng.uniform(35, 50)),
        t_top=float(rng.uniform(1.02, 1.12)), dome=(float(rng.uniform(0.30, 0.38)), float(rng.uniform(0.22, 0.30))),
        lung_hu=float(rng.uniform(-875, -835)), lung_grad=float(rng.uniform(20, 60)),
        heart_c=(0.30 * zlen, 0.12 * a, yc - 0.28 * b), heart_r=heart_r,
        trachea_r=float(rng.uniform(7.5, 10.0)), carina_t=float(rng.uniform(0.60, 0.66)),
        rib_rho=0.0, rib_z0=float(rng.uniform(0.0, 24.0)), rib_gap=float(rng.uniform(22.0, 28.0)),
        rib_drop=float(rng.uniform(35.0, 55.0)), disc_phase=float(rng.uniform(0.0, 28.0)),
        aorta_r=(float(rng.uniform(12.0, 15.0)), float(rng.uniform(9.0, 12.0))), arch_t=float(rng.uniform(0.76, 0.84)),
    )


def _finish_body(body: _Body) -> _Body:
    body.rib_rho = 1.0 - body.fat - 0.05
    return body


# --------------------------------------------------------------------------------------------------- canvas


class _Canvas:
    """HU volume ``[D, H, W]`` = (S, L, P) with mm coordinates per axis and a lung mask; shapes are painted in
    their bounding boxes only."""

    def __init__(self, nd: int, n: int, sz: float, s: float, zlen: float):
        self.z = (zlen / 2 + (np.arange(nd) - (nd - 1) / 2) * sz).astype(np.float32)
        self.x = ((np.arange(n) - (n - 1) / 2) * s).astype(np.float32)
        self.y = self.x.copy()
        self.step = (sz, s, s)
        self.hu = np.full((nd, n, n), -1000.0, dtype=np.float32)
        self.lung = np.zeros((nd, n, n), dtype=bool)

    def origin(self) -> tuple[float, float, float]:
        return float(self.z[0]), float(self.x[0]), float(self.y[0])

    def _range(self, axis: int, lo: float, hi: float) -> slice:
        c, st = (self.z, self.x, self.y)[axis], self.step[axis]
        i0 = max(0, math.ceil((lo - float(c[0])) / st - 1e-9))
        i1 = min(len(c), math.floor((hi - float(c[0])) / st + 1e-9) + 1)
        return slice(i0, max(i0, i1))

    def _grids(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.z[sl[0], None, None], self.x[None, sl[1], None], self.y[None, None, sl[2]]

    def _paint(self, sl, mask, value, within, carve, add) -> None:
        if within is not None:
            mask = mask & within[sl]
        view = self.hu[sl]
        if add:
            view[mask] += value
        else:
            view[mask] = value
        if carve:
            self.lung[sl][mask] = False

    def ellipsoid(self, center, radii, value: float, *, within: np.ndarray | None = None, carve: bool = False,
                  add: bool = False) -> None:
        # at least 0.87 voxel per axis, so the voxel nearest the centre is always painted
        r = [max(float(ri), 0.87 * st) for ri, st in zip(radii, self.step)]
        sl = tuple(self._range(i, center[i] - r[i], center[i] + r[i]) for i in range(3))
        if any(s.start >= s.stop for s in sl):
            return
        z, x, y = self._grids(sl)
        mask = ((z - center[0]) / r[0]) ** 2 + ((x - center[1]) / r[1]) ** 2 + ((y - center[2]) / r[2]) ** 2 <= 1.0
        self._paint(sl, mask, value, within, carve, add)

    def capsule(self, p0, p1, radius: float, value: float, *, within: np.ndarray | None = None,
                carve: bool = False, add: bool = False) -> None:
        """Segment p0-p1 (z, x, y mm) thickened by ``radius`` (at least 0.6 voxel per axis)."""
        r = [max(float(radius), 0.6 * st) for st in self.step]
        sl = tuple(self._range(i, min(p0[i], p1[i]) - r[i], max(p0[i], p1[i]) + r[i]) for i in range(3))
        if any(s.start >= s.stop for s in sl):
            return
        grids = self._grids(sl)
        # distance in a space scaled by the per-axis radius, where the capsule has radius 1
        a = [float(p0[i]) / r[i] for i in range(3)]
        d = [(float(p1[i]) - float(p0[i])) / r[i] for i in range(3)]
        dd = sum(v * v for v in d) or 1.0
        rel = [grids[i] / r[i] - a[i] for i in range(3)]
        t = np.clip((rel[0] * d[0] + rel[1] * d[1] + rel[2] * d[2]) / dd, 0.0, 1.0)
        dist2 = (rel[0] - t * d[0]) ** 2 + (rel[1] - t * d[1]) ** 2 + (rel[2] - t * d[2]) ** 2
        self._paint(sl, dist2 <= 1.0, value, within, carve, add)


def _blur3(a: np.ndarray, weights: tuple[float, float, float]) -> np.ndarray:
    """Separable 3-tap blur [w, 1 - 2w, w] per axis, edges replicated."""
    out = a
    for axis, w in enumerate(weights):
        if w <= 0 or out.shape[axis] < 2:
            continue
        pad = [(0, 0)] * 3
        pad[axis] = (1, 1)
        p = np.pad(out, pad, mode="edge")
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -2), slice(2, None)
        out = (1.0 - 2.0 * w) * out + w * (p[tuple(lo)] + p[tuple(hi)])
    return out.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------------- findings


def _r(v: float, nd: int = 1) -> float:
    return round(float(v), nd)


def _pt(p) -> list[float]:
    return [_r(v) for v in p]


def _sample_lung_point(rng: np.random.Generator, body: _Body, heart_r, lobe: str, margin: float,
                       avoid: Callable[[float, float, float], bool] | None = None) -> tuple[float, float, float]:
    """A point (z, x, y) inside ``lobe`` at least ``margin`` mm inside the lung and outside the heart."""
    side, (t0, t1), zone = LOBES[lobe]
    cx, cy = body.lung_center(side)
    hz, hx, hy = body.heart_c
    for _ in range(400):
        z = float(rng.uniform(t0, t1)) * body.zlen
        rx, ry = body.lung_axes(z)
        x = cx + float(rng.uniform(-0.85, 0.85)) * float(rx)
        lo, hi = (-0.85, 0.0) if zone < 0 else (0.0, 0.85) if zone > 0 else (-0.85, 0.85)
        y = cy + float(rng.uniform(lo, hi)) * float(ry)
        if not bool(body.in_lung(side, z, x, y, margin)):
            continue
        if ((z - hz) / (heart_r[0] + margin + 6)) ** 2 + ((x - hx) / (heart_r[1] + margin + 6)) ** 2 + (
                (y - hy) / (heart_r[2] + margin + 6)) ** 2 <= 1.0:
            continue
        if avoid is not None and avoid(z, x, y):
            continue
        return z, x, y
    # a tiny lung (extreme user sizes): fall back to the lung centre at mid height
    return 0.6 * body.zlen, cx, cy


def _effusion_depth(body: _Body, z, depth: float):
    t = np.asarray(z) / body.zlen
    return depth * np.clip(1.0 - t / 0.75, 0.0, 1.0) ** 0.7


def _in_effusion(body: _Body, eff: Mapping[str, Any] | None, z: float, x: float, y: float, margin: float) -> bool:
    if not eff:
        return False
    for side in _effusion_sides(eff["side"]):
        _, cy = body.lung_center(side)
        if x * side <= 0:
            continue
        _, ry = body.lung_axes(z)
        if y + margin >= cy + float(ry) - float(_effusion_depth(body, z, eff["depth_mm"])):
            return True
    return False


def _effusion_sides(side: str) -> tuple[int, ...]:
    return {"right": (-1,), "left": (1,), "bilateral": (-1, 1)}[side]


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _choose_present(rng: np.random.Generator, prevalence: Mapping[str, float], normal_fraction: float) -> list[str]:
    """Which abnormalities a scan has: none with ``normal_fraction``, else each with its prevalence."""
    normal = float(rng.uniform()) < normal_fraction
    draws = rng.uniform(size=len(ABNORMALITIES))  # always drawn, so later draws do not depend on ``normal``
    return [] if normal else [name for name, u in zip(ABNORMALITIES, draws) if u < prevalence[name]]


def _stream(key: tuple[int, ...], name: str) -> np.random.Generator:
    """The random stream of one abnormality of one scan: its details do not depend on which others are present."""
    return np.random.default_rng(np.random.SeedSequence([*key, 3_000 + ABNORMALITIES.index(name)]))


def _draw_findings(key: tuple[int, ...], body: _Body, present: list[str]) -> dict[str, Any]:
    """Details (mm, HU; JSON-ready) of each present abnormality, each from its own stream. Cardiomegaly (heart
    size) and pleural effusion (fluid region) are drawn first because lung findings keep clear of them."""
    f: dict[str, Any] = {}
    lobes = list(LOBES)
    heart_r = body.heart_r
    if "Cardiomegaly" in present:
        rng = _stream(key, "Cardiomegaly")
        s = float(rng.uniform(1.25, 1.4))
        f["Cardiomegaly"] = {"scale": _r(s, 2)}
        heart_r = (heart_r[0] * (1 + (s - 1) / 2), heart_r[1] * s, heart_r[2] * s)
    if "Pericardial effusion" in present:
        rng = _stream(key, "Pericardial effusion")
        f["Pericardial effusion"] = {"thickness_mm": _r(rng.uniform(6, 14)), "hu": _r(rng.uniform(5, 18))}
    if "Pleural effusion" in present:
        rng = _stream(key, "Pleural effusion")
        f["Pleural effusion"] = {"side": _pick(rng, ["right", "left", "bilateral"]),
                                 "depth_mm": _r(rng.uniform(15, 45)), "hu": _r(rng.uniform(5, 18))}
    eff = f.get("Pleural effusion")

    def avoid(z, x, y, m=4.0):
        return _in_effusion(body, eff, z, x, y, m)

    if "Emphysema" in present:
        rng = _stream(key, "Emphysema")
        kind = _pick(rng, ["centrilobular", "paraseptal", "bullous"])
        spots = []
        for _ in range(int(rng.integers(15, 40)) if kind != "bullous" else int(rng.integers(3, 7))):
            lobe = _pick(rng, ["right upper lobe", "left upper lobe", "right upper lobe", "left upper lobe",
                               "right lower lobe", "left lower lobe"])
            r = float(rng.uniform(3, 9)) if kind != "bullous" else float(rng.uniform(10, 20))
            spots.append([*_pt(_sample_lung_point(rng, body, heart_r, lobe, r if kind != "paraseptal" else 2)),
                          _r(r)])
        f["Emphysema"] = {"type": kind, "hu": _r(rng.uniform(-990, -965)), "spots": spots}
    if "Mosaic attenuation pattern" in present:
        rng = _stream(key, "Mosaic attenuation pattern")
        blobs = []
        for _ in range(int(rng.integers(8, 15))):
            r = float(rng.uniform(15, 30))
            blobs.append([*_pt(_sample_lung_point(rng, body, heart_r, _pick(rng, lobes), 5)), _r(r)])
        f["Mosaic attenuation pattern"] = {"blobs": blobs, "low_hu": _r(rng.uniform(-935, -915)),
                                           "high_hu": _r(rng.uniform(-800, -770))}
    if "Interlobular septal thickening" in present:
        rng = _stream(key, "Interlobular septal thickening")
        f["Interlobular septal thickening"] = {"zone": _pick(rng, ["lower", "both"]),
                                               "spacing_mm": _r(rng.uniform(11, 16)), "hu_add": 450.0}
    if "Lung opacity" in present:
        rng = _stream(key, "Lung opacity")
        patches = []
        for _ in range(int(rng.integers(1, 4))):
            lobe = _pick(rng, lobes)
            c = _sample_lung_point(rng, body, heart_r, lobe, 8, avoid)
            patches.append({"lobe": lobe, "center_mm": _pt(c), "radii_mm": _pt(rng.uniform(10, 28, size=3)),
                            "hu": _r(rng.uniform(-650, -520))})
        f["Lung opacity"] = {"patches": patches}
    if "Consolidation" in present:
        rng = _stream(key, "Consolidation")
        lobe = _pick(rng, lobes)
        c = _sample_lung_point(rng, body, heart_r, lobe, 12, avoid)
        radii = rng.uniform(12, 26, size=3)
        f["Consolidation"] = {"lobe": lobe, "center_mm": _pt(c), "radii_mm": _pt(radii),
                              "hu": _r(rng.uniform(-40, 35)), "air_bronchogram": bool(rng.uniform() < 0.6)}
    if "Atelectasis" in present:
        rng = _stream(key, "Atelectasis")
        lobe = _pick(rng, ["right lower lobe", "left lower lobe", "right middle lobe"])
        c = _sample_lung_point(rng, body, heart_r, lobe, 6, avoid)
        f["Atelectasis"] = {"lobe": lobe, "kind": _pick(rng, ["subsegmental", "linear", "plate-like"]),
                            "center_mm": _pt(c), "radii_mm": [_r(rng.uniform(5, 9)), _r(rng.uniform(18, 30)),
                                                              _r(rng.uniform(3, 5))], "hu": _r(rng.uniform(-60, 25))}
    if "Pulmonary fibrotic sequela" in present:
        rng = _stream(key, "Pulmonary fibrotic sequela")
        lobe = _pick(rng, lobes)
        bands = []
        side = LOBES[lobe][0]
        for _ in range(int(rng.integers(1, 4))):
            p0 = _sample_lung_point(rng, body, heart_r, lobe, 6, avoid)
            cx, cy = body.lung_center(side)
            v = np.array([0.0, p0[1] - cx, p0[2] - cy]) + rng.normal(0, 5, size=3)
            v /= max(np.linalg.norm(v), 1e-6)
            p1 = np.array(p0) + v * float(rng.uniform(20, 40))
            bands.append({"from_mm": _pt(p0), "to_mm": _pt(p1), "radius_mm": _r(rng.uniform(1.5, 2.5))})
        f["Pulmonary fibrotic sequela"] = {"lobe": lobe, "bands": bands, "hu": _r(rng.uniform(-250, -60))}
    if "Peribronchial thickening" in present:
        rng = _stream(key, "Peribronchial thickening")
        f["Peribronchial thickening"] = {"wall_mm": _r(rng.uniform(2.8, 4.0)), "extra_bronchi": [
            [*_pt(_sample_lung_point(rng, body, heart_r, _pick(rng, ["right lower lobe", "left lower lobe"]), 6,
                                     avoid))] for _ in range(int(rng.integers(4, 8)))]}
    if "Bronchiectasis" in present:
        rng = _stream(key, "Bronchiectasis")
        lobe = _pick(rng, ["right lower lobe", "left lower lobe", "right middle lobe", "left upper lobe"])
        airways = []
        for _ in range(int(rng.integers(3, 6))):
            p1 = _sample_lung_point(rng, body, heart_r, lobe, 8, avoid)
            h = body.hilum(LOBES[lobe][0])
            p0 = tuple(h[i] + 0.45 * (p1[i] - h[i]) for i in range(3))
            airways.append({"from_mm": _pt(p0), "to_mm": _pt(p1), "radius_mm": _r(rng.uniform(5.0, 8.0))})
        f["Bronchiectasis"] = {"lobe": lobe, "type": _pick(rng, ["cylindrical", "varicose"]), "airways": airways}
    if "Lung nodule" in present:
        rng = _stream(key, "Lung nodule")
        nodules = []
        for _ in range(1 if rng.uniform() < 0.65 else int(rng.integers(2, 4))):
            lobe = _pick(rng, lobes)
            d = float(rng.uniform(6, 20))
            c = _sample_lung_point(rng, body, heart_r, lobe, d / 2 + 3, lambda z, x, y, m=d / 2 + 6: avoid(z, x, y, m))
            nodules.append({"lobe": lobe, "center_mm": _pt(c), "diameter_mm": _r(d, 0),
                            "hu": _r(rng.uniform(20, 60))})
        nodules.sort(key=lambda nd: -nd["diameter_mm"])
        f["Lung nodule"] = {"nodules": nodules}
    if "Arterial wall calcification" in present:
        rng = _stream(key, "Arterial wall calcification")
        asc, desc, za = body.aorta_path()
        spots = []
        for _ in range(int(rng.integers(3, 10))):
            seg = _pick(rng, ["desc", "desc", "arch", "asc"])
            phi = float(rng.uniform(0, 2 * math.pi))
            if seg == "arch":
                u = float(rng.uniform(0, 1))
                c = [za, asc[1] + u * (desc[1] - asc[1]), asc[2] + u * (desc[2] - asc[2])]
                rr = 0.5 * (body.aorta_r[0] + body.aorta_r[1])
                spots.append(_pt([c[0] + rr * math.sin(phi), c[1], c[2] + rr * math.cos(phi)]))
            else:
                top = asc if seg == "asc" else desc
                rr = body.aorta_r[0] if seg == "asc" else body.aorta_r[1]
                z = float(rng.uniform(0.35 if seg == "asc" else 0.05, 0.95)) * za
                spots.append(_pt([z, top[1] + rr * math.cos(phi), top[2] + rr * math.sin(phi)]))
        f["Arterial wall calcification"] = {"spots": spots, "radius_mm": _r(rng.uniform(2.0, 3.0)),
                                            "hu": _r(rng.uniform(900, 1500))}
    if "Coronary artery wall calcification" in present:
        rng = _stream(key, "Coronary artery wall calcification")
        spots = []
        for _ in range(int(rng.integers(2, 6))):
            th = float(rng.uniform(-0.5, 0.9)) * math.pi / 2  # around the anterior surface, mostly to the left
            ez = float(rng.uniform(0.1, 0.7))
            ex, ey = math.sin(th), -math.cos(th)
            k = math.sqrt(max(1.0 - ez * ez, 0.0))
            hz, hx, hy = body.heart_c
            spots.append(_pt([hz + ez * heart_r[0], hx + k * ex * heart_r[1], hy + k * ey * heart_r[2]]))
        f["Coronary artery wall calcification"] = {"spots": spots, "radius_mm": _r(rng.uniform(2.0, 3.0)),
                                                   "hu": _r(rng.uniform(900, 1500))}
    if "Lymphadenopathy" in present:
        rng = _stream(key, "Lymphadenopathy")
        za = body.zlen
        stations = {
            "right paratracheal": (0.72 * za, -0.08 * body.a, body.yc - 0.12 * body.b),
            "subcarinal": (body.carina[0] - 12, 0.0, body.yc + 0.06 * body.b),
            "prevascular": (0.70 * za, 0.02 * body.a, body.yc - 0.45 * body.b),
            "right hilar": (0.50 * za, -0.2 * body.a, body.yc + 0.04 * body.b),
            "left hilar": (0.50 * za, 0.2 * body.a, body.yc + 0.04 * body.b),
        }
        names = list(stations)
        chosen = sorted({_pick(rng, names) for _ in range(int(rng.integers(1, 3)))}, key=names.index)
        nodes = []
        for st in chosen:
            sa = float(rng.uniform(12, 22))
            c = np.array(stations[st]) + rng.normal(0, 2, size=3)
            nodes.append({"station": st, "center_mm": _pt(c), "short_axis_mm": _r(sa, 0),
                          "hu": _r(rng.uniform(30, 50))})
        f["Lymphadenopathy"] = {"nodes": nodes}
    if "Hiatal hernia" in present:
        rng = _stream(key, "Hiatal hernia")
        ys, rv = body.spine
        c = (float(rng.uniform(0.15, 0.28)) * body.zlen, 0.06 * body.a, ys - rv - float(rng.uniform(22, 30)))
        f["Hiatal hernia"] = {"center_mm": _pt(c), "radii_mm": _pt(rng.uniform(18, 28, size=3)), "hu": 35.0}
    if "Medical material" in present:
        rng = _stream(key, "Medical material")
        kind = _pick(rng, ["sternotomy", "port", "pacemaker"])
        f["Medical material"] = {"kind": kind, "hu": _r(rng.uniform(2000, 3000), 0)}
    assert set(f) == set(present)
    return {name: f[name] for name in ABNORMALITIES if name in f}


def _heart_radii(body: _Body, findings: Mapping[str, Any]) -> tuple[float, float, float]:
    s = findings.get("Cardiomegaly", {}).get("scale", 1.0)
    r = body.heart_r
    return r[0] * (1 + (s - 1) / 2), r[1] * s, r[2] * s


# --------------------------------------------------------------------------------------------------- rendering


@dataclass
class _Scan:
    body: _Body
    findings: dict[str, Any]
    vessels: list[tuple[tuple, tuple, float]]
    table: bool
    manufacturer: str
    model: str
    report: dict[str, str]
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Recon:
    sz: float
    nd: int
    noise: float
    blur: tuple[float, float, float]
    kernel: str
    intercept: int
    seed: tuple[int, ...]


def _draw_vessels(rng: np.random.Generator, body: _Body, heart_r) -> list[tuple[tuple, tuple, float]]:
    out = []
    for side in (-1, 1):
        h = body.hilum(side)
        for lobe in [name for name, (s, _, _) in LOBES.items() if s == side] * 3:
            p1 = _sample_lung_point(rng, body, heart_r, lobe, 6)
            mid = tuple(h[i] + 0.5 * (p1[i] - h[i]) + float(rng.normal(0, 4)) for i in range(3))
            out.append((h, mid, float(rng.uniform(2.8, 4.0))))
            out.append((mid, p1, float(rng.uniform(1.5, 2.4))))
    return out


def _render(scan: _Scan, recon: _Recon) -> tuple[np.ndarray, _Canvas]:
    """HU volume ``[D, H, W]`` (S, L, P) float32 of one reconstruction of a scan."""
    body, fnd = scan.body, scan.findings
    s = body.fov / body.n_px
    cv = _Canvas(recon.nd, body.n_px, recon.sz, s, body.zlen)
    hu = cv.hu
    z3 = cv.z[:, None, None]
    x2, y2 = cv.x[:, None], cv.y[None, :]
    rho = np.sqrt((x2 / body.a) ** 2 + ((y2 - body.yc) / body.b) ** 2)
    inner = rho <= 1.0 - body.fat

    # body, table
    hu[:, rho <= 1.0] = body.fat_hu
    hu[:, inner] = body.muscle_hu
    if scan.table:
        yt = body.yc + body.b + 4.0 + 0.0006 * x2 ** 2
        slab = (y2 >= yt) & (y2 <= yt + 8.0) & (np.abs(x2) <= 0.42 * body.fov) & (rho > 1.0)
        hu[:, slab] = 150.0
    # mediastinal fat
    med = ((x2 / (0.2 * body.a)) ** 2 + ((y2 - (body.yc - 0.1 * body.b)) / (0.8 * body.b)) ** 2 <= 1.0) & (
        rho <= body.rib_rho - 0.03)
    hu[:, med] = -90.0
    # upper abdomen below the domes: liver on the right, stomach with a gas bubble on the left
    below = np.zeros(hu.shape, dtype=bool)
    for side in (-1, 1):
        half = (x2 < 0) if side < 0 else (x2 >= 0)
        below |= (z3 < body.dome_z(side, x2, y2)[None]) & (half & (rho <= body.rib_rho - 0.03))[None]
    hu[below & (x2 < 0)[None]] = 62.0
    hu[below & (x2 >= 0)[None]] = 32.0
    dl = body.dome[1] * body.zlen - 0.06 * body.zlen
    cv.ellipsoid((dl - 14.0, 0.30 * body.a, body.yc - 0.25 * body.b), (10.0, 22.0, 16.0), -1000.0, within=below)
    # lungs, denser posteriorly
    lungs = {}
    for side in (-1, 1):
        m = body.in_lung(side, z3, x2[None], y2[None])
        cx, cy = body.lung_center(side)
        grad = body.lung_hu + body.lung_grad * np.clip((y2 - cy) / (0.74 * body.b) * 0.5 + 0.5, 0, 1)
        np.copyto(hu, np.broadcast_to(grad[None], hu.shape).astype(np.float32), where=m)
        lungs[side] = m
        cv.lung |= m
    if "Mosaic attenuation pattern" in fnd:
        mo = fnd["Mosaic attenuation pattern"]
        hu[cv.lung] = mo["high_hu"]
        for z, x, y, r in mo["blobs"]:
            cv.ellipsoid((z, x, y), (r, r, r), mo["low_hu"], within=cv.lung)
    if "Emphysema" in fnd:
        em = fnd["Emphysema"]
        upper = cv.lung & (z3 > 0.5 * body.zlen)
        hu[upper] -= 45.0
        for z, x, y, r in em["spots"]:
            cv.ellipsoid((z, x, y), (r, r, r), em["hu"], within=cv.lung)
    if "Interlobular septal thickening" in fnd:
        _septa(cv, body, fnd["Interlobular septal thickening"])

    # airways: trachea, main bronchi, lobar bronchi (walls thicker with peribronchial thickening)
    pbt = fnd.get("Peribronchial thickening")
    wall = pbt["wall_mm"] if pbt else 1.3
    ctop = (body.zlen + 20.0, 0.0, body.yc - 0.08 * body.b)
    car = body.carina
    cv.capsule(ctop, car, body.trachea_r + 2.0, 40.0, carve=True)
    cv.capsule(ctop, car, body.trachea_r, -1000.0)
    for side in (-1, 1):
        h = body.hilum(side)
        cv.capsule(car, h, 6.0 + 1.8, 40.0)
        cv.capsule(car, h, 6.0, -1000.0)
        cx, cy = body.lung_center(side)
        targets = [(0.82 * body.zlen, cx, cy - 0.1 * body.b), (0.18 * body.zlen, cx + side * 0.05 * body.a,
                                                              cy + 0.35 * body.b)]
        targets.append((0.38 * body.zlen, cx - side * 0.02 * body.a, cy - 0.45 * body.b))
        for t in targets:
            cv.capsule(h, t, 3.5 + wall, 45.0, within=cv.lung)
            cv.capsule(h, t, 3.5, -1000.0, within=cv.lung)
    if pbt:
        for p1 in pbt["extra_bronchi"]:
            side = 1 if p1[1] > 0 else -1
            h = body.hilum(side)
            p0 = tuple(h[i] + 0.4 * (p1[i] - h[i]) for i in range(3))
            cv.capsule(p0, p1, 2.0 + wall, 50.0, within=cv.lung)
            cv.capsule(p0, p1, 2.0, -1000.0, within=cv.lung)
    # pulmonary vessels (non-contrast blood ~40 HU); pulmonary trunk
    for p0, p1, r in scan.vessels:
        cv.capsule(p0, p1, r, 38.0, within=cv.lung)
    pt = (0.56 * body.zlen, 0.06 * body.a, body.yc - 0.22 * body.b)
    cv.ellipsoid(pt, (14.0, 14.0, 14.0), 40.0, carve=True)
    for side in (-1, 1):
        cv.capsule(pt, body.hilum(side), 8.0, 40.0, carve=True)

    # hiatal hernia (behind the heart, above the diaphragm), heart with pericardium
    if "Hiatal hernia" in fnd:
        hh = fnd["Hiatal hernia"]
        c, r = hh["center_mm"], hh["radii_mm"]
        cv.ellipsoid(c, r, hh["hu"], carve=True)
        cv.ellipsoid((c[0] + 0.45 * r[0], c[1], c[2] - 0.2 * r[2]), (0.4 * r[0], 0.6 * r[1], 0.5 * r[2]), -1000.0)
    hr = _heart_radii(body, fnd)
    hc = body.heart_c
    if "Pericardial effusion" in fnd:
        pe = fnd["Pericardial effusion"]
        t = 3.0 + pe["thickness_mm"]
        cv.ellipsoid(hc, tuple(r + t for r in hr), pe["hu"], carve=True)
        cv.ellipsoid(hc, tuple(r + 3.0 for r in hr), -90.0, carve=True)
    else:
        cv.ellipsoid(hc, tuple(r + 3.0 for r in hr), -90.0, carve=True)
    cv.ellipsoid(hc, hr, 40.0, carve=True)
    # aorta: ascending from the heart, arch, descending to the bottom
    asc, desc, za = body.aorta_path()
    cv.capsule((hc[0], asc[1], asc[2]), asc, body.aorta_r[0], 40.0, carve=True)
    cv.capsule(asc, desc, 0.5 * sum(body.aorta_r), 40.0, carve=True)
    cv.capsule((-10.0, desc[1], desc[2]), desc, body.aorta_r[1], 40.0, carve=True)
    # esophagus
    ys, rv = body.spine
    cv.capsule((-10.0, 0.08 * body.a, ys - rv - 10.0), (body.zlen + 10, 0.02 * body.a, ys - rv - 8.0), 7.0, 40.0,
               carve=True)
    # spine: vertebral bodies (cortex, cancellous bone, discs), canal, arch, spinous process
    _spine(cv, body)
    _ribs(cv, body, x2, y2)
    st_y = body.yc - (body.rib_rho - 0.01) * body.b
    cv.capsule((0.15 * body.zlen, 0.0, st_y), (body.zlen + 10.0, 0.0, st_y), 6.0, 550.0)

    _render_findings(cv, body, fnd, hr, lungs)

    # scanner look: partial-volume blur, correlated noise
    rng = np.random.default_rng(np.random.SeedSequence(recon.seed))
    out = _blur3(hu, recon.blur)
    noise = rng.standard_normal(out.shape, dtype=np.float32)
    noise = _blur3(noise, recon.blur)
    gain = math.prod(math.sqrt(2 * w * w + (1 - 2 * w) ** 2) for w in recon.blur)
    out += noise * np.float32(recon.noise / gain)
    return out, cv


def _septa(cv: _Canvas, body: _Body, st: Mapping[str, Any]) -> None:
    """Interlobular septa as a mesh of planes ``spacing`` mm apart in the peripheral lung, drawn with their
    partial-volume fraction (a 1 mm septum in a 3 mm voxel adds a third of ``hu_add``)."""
    p = st["spacing_mm"]
    z3, x3, y3 = cv.z[:, None, None], cv.x[None, :, None], cv.y[None, None, :]
    region = cv.lung.copy()
    for side in (-1, 1):
        core = body.in_lung(side, z3, x3, y3, margin=14.0)
        region &= ~core
    if st["zone"] == "lower":
        region &= z3 < 0.55 * body.zlen
    frac = np.zeros(cv.hu.shape, dtype=np.float32)
    for c, stp in ((z3, cv.step[0]), (x3, cv.step[1]), (y3, cv.step[2])):
        dist = np.abs(((c + 0.37 * p) % p) - p / 2)  # distance to the nearest plane
        frac = np.maximum(frac, np.clip(1.0 - dist / stp, 0, 1) * min(1.0, 1.5 / stp))
    cv.hu[region] += st["hu_add"] * frac[region]


def _spine(cv: _Canvas, body: _Body) -> None:
    ys, rv = body.spine
    x2, y2 = cv.x[:, None], cv.y[None, :]
    r2 = np.sqrt(x2 ** 2 + (y2 - ys) ** 2)
    vb, cortex = r2 <= rv, (r2 <= rv) & (r2 > rv - 2.5)
    canal_y = body.yc + 0.72 * body.b
    rc = np.sqrt(x2 ** 2 + (y2 - canal_y) ** 2)
    arch = (rc <= 0.11 * body.b) & ~vb
    canal = rc <= 0.065 * body.b
    disc = np.abs(((cv.z - body.disc_phase) % 28.0) - 14.0) > 11.0  # [D]: 6 mm discs every 28 mm
    cv.hu[:, vb] = 330.0
    cv.hu[:, cortex] = 720.0
    if disc.any():
        sub = cv.hu[disc]
        sub[:, vb & ~cortex] = 85.0
        cv.hu[disc] = sub
    cv.hu[:, arch] = 700.0
    cv.hu[:, canal] = 20.0
    for zc in np.arange(body.disc_phase - 28.0 + 14.0, body.zlen + 28.0, 28.0):
        cv.capsule((zc, 0.0, canal_y + 0.07 * body.b), (zc - 10.0, 0.0, body.yc + 0.93 * body.b),
                   0.035 * body.b, 700.0)
    cv.lung[:, vb | arch] = False


def _ribs(cv: _Canvas, body: _Body, x2: np.ndarray, y2: np.ndarray) -> None:
    """Ribs: a band of the body ellipse at ``rib_rho``; rib k sits at height z_k posteriorly and descends by
    ``rib_drop`` towards the front; the front (costal cartilage) and the spine are left out."""
    rho = np.sqrt((x2 / body.a) ** 2 + ((y2 - body.yc) / body.b) ** 2)
    theta = np.arctan2((y2 - body.yc) / body.b, x2 / body.a)  # 0 left, pi/2 posterior, -pi/2 anterior
    phi = np.abs(np.angle(np.exp(1j * (theta - np.pi / 2))))  # angle from posterior, 0..pi
    ring = (np.abs(rho - body.rib_rho) <= 0.022) & (phi > 0.25) & (phi < np.pi - 0.45)
    hh, ww = np.nonzero(ring)
    if hh.size == 0:
        return
    zk = np.arange(body.rib_z0 - 2 * body.rib_gap, body.zlen + body.rib_drop + body.rib_gap, body.rib_gap)
    zrib = zk[:, None] - body.rib_drop * (phi[hh, ww][None, :] / np.pi) ** 1.3  # [K, P]
    hit = (np.abs(cv.z[:, None, None] - zrib[None]) <= 5.0).any(axis=1)  # [D, P]
    dd, pp = np.nonzero(hit)
    cv.hu[dd, hh[pp], ww[pp]] = 680.0
    cv.lung[dd, hh[pp], ww[pp]] = False


def _render_findings(cv: _Canvas, body: _Body, fnd: Mapping[str, Any], hr, lungs: Mapping[int, np.ndarray]) -> None:
    lung = cv.lung
    if "Lung opacity" in fnd:
        for p in fnd["Lung opacity"]["patches"]:
            cv.ellipsoid(p["center_mm"], p["radii_mm"], p["hu"], within=lung)
    if "Consolidation" in fnd:
        c = fnd["Consolidation"]
        cv.ellipsoid(c["center_mm"], c["radii_mm"], c["hu"], within=lung)
        if c["air_bronchogram"]:
            z, x, y = c["center_mm"]
            r = c["radii_mm"]
            cv.capsule((z - 0.3 * r[0], x - 0.7 * r[1], y), (z + 0.3 * r[0], x + 0.7 * r[1], y), 1.6, -950.0,
                       within=lung)
    if "Atelectasis" in fnd:
        a = fnd["Atelectasis"]
        cv.ellipsoid(a["center_mm"], a["radii_mm"], a["hu"], within=lung)
    if "Pulmonary fibrotic sequela" in fnd:
        fs = fnd["Pulmonary fibrotic sequela"]
        for band in fs["bands"]:
            cv.capsule(band["from_mm"], band["to_mm"], band["radius_mm"], fs["hu"], within=lung)
    if "Bronchiectasis" in fnd:
        for aw in fnd["Bronchiectasis"]["airways"]:
            cv.capsule(aw["from_mm"], aw["to_mm"], aw["radius_mm"] + 1.5, 40.0, within=lung)
            cv.capsule(aw["from_mm"], aw["to_mm"], aw["radius_mm"], -1000.0, within=lung)
    if "Pleural effusion" in fnd:
        pe = fnd["Pleural effusion"]
        z3, y3 = cv.z[:, None, None], cv.y[None, None, :]
        for side in _effusion_sides(pe["side"]):
            _, cy = body.lung_center(side)
            _, ry = body.lung_axes(z3)
            level = cy + ry - _effusion_depth(body, z3, pe["depth_mm"])
            m = lungs[side] & lung & (y3 >= level)
            cv.hu[m] = pe["hu"]
    if "Lung nodule" in fnd:
        for nd in fnd["Lung nodule"]["nodules"]:
            r = nd["diameter_mm"] / 2
            cv.ellipsoid(nd["center_mm"], (r, r, r), nd["hu"], carve=True)
    if "Lymphadenopathy" in fnd:
        for nd in fnd["Lymphadenopathy"]["nodes"]:
            r = nd["short_axis_mm"] / 2
            cv.ellipsoid(nd["center_mm"], (r * 1.4, r, r * 1.2), nd["hu"], carve=True)
    for key in ("Arterial wall calcification", "Coronary artery wall calcification"):
        if key in fnd:
            for p in fnd[key]["spots"]:
                r = fnd[key]["radius_mm"]  # dense calcium, partial-volumed to a few hundred HU
                cv.ellipsoid(p, (r, r, r), fnd[key]["hu"], carve=True)
    if "Medical material" in fnd:
        _material(cv, body, fnd["Medical material"], hr)


def _material(cv: _Canvas, body: _Body, mm: Mapping[str, Any], hr) -> None:
    v = mm["hu"]
    st_y = body.yc - (body.rib_rho - 0.01) * body.b
    def wall_y(x: float) -> float:  # anterior subcutaneous fat at lateral position x
        return body.yc - body.b * math.sqrt(max((1.0 - body.fat / 2) ** 2 - (x / body.a) ** 2, 0.0))

    hz, hx, hy = body.heart_c
    if mm["kind"] == "sternotomy":
        for k in range(5):
            z = (0.3 + 0.14 * k) * body.zlen
            cv.capsule((z, -9.0, st_y + 1.0), (z, 9.0, st_y + 1.0), 1.0, v)
    elif mm["kind"] == "port":
        port = (0.85 * body.zlen, -0.45 * body.a, wall_y(-0.45 * body.a))
        cv.ellipsoid(port, (8.0, 12.0, 5.0), v)
        svc = (0.7 * body.zlen, -0.12 * body.a, body.yc - 0.22 * body.b)
        cv.capsule(port, svc, 1.2, v * 0.6)
        cv.capsule(svc, (hz + 0.6 * hr[0], -0.08 * body.a, body.yc - 0.22 * body.b), 1.2, v * 0.6)
    else:  # pacemaker generator in the left chest wall, lead into the right ventricle
        gen = (0.85 * body.zlen, 0.45 * body.a, wall_y(0.45 * body.a))
        cv.ellipsoid(gen, (18.0, 20.0, 5.0), v)
        vein = (0.75 * body.zlen, 0.05 * body.a, body.yc - 0.25 * body.b)
        cv.capsule(gen, vein, 1.2, v)
        cv.capsule(vein, (hz - 0.3 * hr[0], hx - 0.3 * hr[1], hy - 0.4 * hr[2]), 1.2, v)


# --------------------------------------------------------------------------------------------------- reports

_LOBE_CAP = {k: k[0].upper() + k[1:] for k in LOBES}


def _cap(s: str) -> str:
    return s[0].upper() + s[1:] if s else s


def _lobe_list(lobes: list[str]) -> str:
    """["right upper lobe"] -> "the right upper lobe"; right and left upper -> "both upper lobes"; else a list."""
    lobes = sorted(set(lobes), key=list(LOBES).index)
    if len(lobes) == 1:
        return "the " + lobes[0]
    words = [lb.split() for lb in lobes]
    if len(lobes) == 2 and words[0][1] == words[1][1]:
        return f"both {words[0][1]} lobes"
    return "the " + ", ".join(lobes[:-1]) + " and " + lobes[-1]


def _size_word(v: float, small: float, large: float) -> str:
    return "small" if v < small else "moderate" if v < large else "large"


# Normal statements: each reads as a negation the labeler must honour (tests/medical/test_labeler.py).
_NEGATIVE: dict[str, tuple[str, ...]] = {
    "Medical material": (),
    "Arterial wall calcification": ("No calcification was observed in the aortic wall.",
                                    "The thoracic aorta is free of calcification."),
    "Cardiomegaly": ("Heart size is normal.", "Heart contour and size are normal.", "No cardiomegaly.",
                     "The heart is not enlarged."),
    "Pericardial effusion": ("No pericardial effusion.", "Pericardial effusion was not detected.",
                             "There is no pericardial fluid."),
    "Coronary artery wall calcification": ("No coronary artery calcification.",
                                           "Coronary arteries are free of calcification."),
    "Hiatal hernia": ("No hiatal hernia.", "No hiatal hernia was detected."),
    "Lymphadenopathy": ("No lymph node was detected in mediastinal and bilateral hilar regions in pathological "
                        "size and appearance.", "No pathologically enlarged lymph nodes.",
                        "Mediastinal lymph nodes are not enlarged.", "No mediastinal or hilar lymphadenopathy."),
    "Emphysema": ("No emphysema.", "No emphysematous change was observed."),
    "Atelectasis": ("No atelectasis.", "Atelectasis is not seen."),
    "Lung nodule": ("No pulmonary nodule was detected.", "No nodule or mass was detected in both lungs.",
                    "There is no suspicious pulmonary nodule."),
    "Lung opacity": ("No ground-glass opacity.", "No infiltrative lesion was detected in both lungs.",
                     "There are no opacities in the lung parenchyma."),
    "Pulmonary fibrotic sequela": ("No fibrotic sequelae.", "No fibrotic changes are seen."),
    "Pleural effusion": ("No pleural effusion.", "No pleural effusion was detected.",
                         "Pleural effusion is not observed.", "There is no effusion in the pleural spaces."),
    "Mosaic attenuation pattern": ("No mosaic attenuation.", "Mosaic attenuation pattern is not observed."),
    "Peribronchial thickening": ("No peribronchial thickening.", "Bronchial walls are not thickened."),
    "Consolidation": ("No consolidation.", "No consolidation was observed in both lungs.",
                      "There is no evidence of consolidation."),
    "Bronchiectasis": ("No bronchiectasis.", "Bronchiectasis is not observed."),
    "Interlobular septal thickening": ("No interlobular septal thickening.",),
}

_FILLER = {
    "airway": ("Trachea and both main bronchi are in normal position and their lumens are open.",
               "Trachea and main bronchi are patent.", "The trachea and both main bronchi are open."),
    "vessels": ("Calibration of thoracic main vascular structures is natural.",
                "The mediastinal vascular structures are of normal calibre.",
                "Mediastinal structures were evaluated as suboptimal because no contrast material was given."),
    "esophagus": ("Thoracic esophagus calibration was normal.", "The esophagus is unremarkable."),
    "lungs": ("Both lungs are normally aerated.", "Lung parenchyma is otherwise unremarkable.",
              "Both lungs are otherwise clear."),
    "abdomen": ("Upper abdominal organs included in the sections are unremarkable.",
                "No abnormality was detected in the upper abdominal sections.",
                "The liver and spleen within the sections are of normal size."),
    "bones": ("No lytic or destructive lesions were detected in the bone structures.",
              "Degenerative changes are observed in the thoracic spine.", "Bone structures are natural."),
}
_NORMAL_IMPRESSION = ("No significant pathology.", "Normal chest CT.", "No acute cardiopulmonary finding.",
                      "Chest CT findings within normal limits.")
_CLINICAL = ("Cough.", "Dyspnea.", "Fever and cough for five days.", "Chest pain.", "COVID-19 suspicion.",
             "Shortness of breath.", "Routine control.", "Malignancy screening.", "Smoker, cough.",
             "Weight loss.", "Hemoptysis.")


def _positive(rng: np.random.Generator, name: str, d: Mapping[str, Any]) -> tuple[str, str]:
    """(findings sentence, impression sentence) for one present abnormality."""
    P = lambda opts: _pick(rng, opts)  # noqa: E731
    if name == "Medical material":
        k = d["kind"]
        if k == "sternotomy":
            return P(["Sternotomy wires are observed.", "Median sternotomy with sternal wires.",
                      "Status post median sternotomy; sternal wires are present."]), "Post-sternotomy changes."
        if k == "port":
            return P(["Port catheter in the right hemithorax with its tip in the superior vena cava.",
                      "A port-a-cath is observed in the right anterior chest wall."]), "Port catheter."
        return P(["Pacemaker generator in the left anterior chest wall with its lead in the right ventricle.",
                  "A cardiac pacemaker is observed."]), "Pacemaker."
    if name == "Arterial wall calcification":
        return P(["Atherosclerotic calcifications in the aortic wall.", "Calcific plaques in the thoracic aorta.",
                  "Aortic wall calcification is observed.",
                  "Calcified atheroma plaques in the aortic arch and the descending aorta."]), P(
            ["Aortic atherosclerosis.", "Atherosclerotic calcification of the aorta."])
    if name == "Cardiomegaly":
        return P(["Cardiomegaly is present.", "The heart is enlarged.", "Heart size is increased.",
                  "The cardiac silhouette is enlarged."]), P(["Cardiomegaly.", "Enlarged heart."])
    if name == "Pericardial effusion":
        t = d["thickness_mm"]
        return P([f"Pericardial effusion measuring {t:.0f} mm in thickness.",
                  f"{_cap(_size_word(t, 8, 12))} pericardial effusion.",
                  f"Pericardial fluid up to {t:.0f} mm is noted."]), "Pericardial effusion."
    if name == "Coronary artery wall calcification":
        return P(["Calcifications in the coronary arteries.", "Coronary artery calcifications are present.",
                  "Calcific plaques in the left anterior descending coronary artery."]), P(
            ["Coronary artery calcification.", "Coronary atherosclerosis."])
    if name == "Hiatal hernia":
        return P(["Hiatal hernia is observed.", "A small sliding hiatal hernia.",
                  "Herniation of the stomach through the esophageal hiatus."]), "Hiatal hernia."
    if name == "Lymphadenopathy":
        nodes = d["nodes"]
        where = " and ".join(nd["station"] for nd in nodes)
        big = max(nd["short_axis_mm"] for nd in nodes)
        imp = P(["Mediastinal lymphadenopathy.", "Lymphadenopathy."])
        return P([f"Enlarged lymph nodes in the {where} region, the largest measuring {big:.0f} mm in short axis.",
                  f"Lymphadenopathy in the {where} region ({big:.0f} mm).",
                  f"Pathologically enlarged lymph node in the {where} region measuring {big:.0f} mm."]), imp
    if name == "Emphysema":
        k = d["type"]
        if k == "bullous":
            return P(["Bullous emphysematous areas in both upper lobes.", "Bullae in both upper lobes."]), P(
                ["Bullous emphysema.", "Emphysema."])
        return P([f"{_cap(k)} emphysema in both upper lobes.",
                  "Emphysematous changes in both lungs, more prominent in the upper lobes.",
                  f"{_cap(k)} emphysematous changes are observed in both lungs."]), "Emphysema."
    if name == "Atelectasis":
        return P([f"{_cap(d['kind'])} atelectasis in the {d['lobe']}.",
                  f"Atelectatic changes in the {d['lobe']}.",
                  f"{_cap(d['kind'])} atelectasis is observed in the {d['lobe']}."]), P(
            ["Atelectasis.", f"Atelectasis in the {d['lobe']}."])
    if name == "Lung nodule":
        nods = d["nodules"]
        big = nods[0]
        if len(nods) == 1:
            return P([f"A {big['diameter_mm']:.0f} mm nodule in the {big['lobe']}.",
                      f"Solid nodule measuring {big['diameter_mm']:.0f} mm in the {big['lobe']}.",
                      f"Pulmonary nodule of {big['diameter_mm']:.0f} mm in the {big['lobe']}."]), P(
                [f"Pulmonary nodule in the {big['lobe']}.", f"{_LOBE_CAP[big['lobe']]} nodule."])
        where = _lobe_list([nd["lobe"] for nd in nods])
        return P([f"{len(nods)} nodules in {where}, the largest {big['diameter_mm']:.0f} mm.",
                  f"Multiple solid nodules in {where}, the largest measuring {big['diameter_mm']:.0f} mm."]), P(
            ["Multiple pulmonary nodules.", "Pulmonary nodules."])
    if name == "Lung opacity":
        where = _lobe_list([p["lobe"] for p in d["patches"]])
        return P([f"Ground-glass opacities in {where}.", f"Patchy ground glass densities in {where}.",
                  f"Areas of ground-glass opacity in {where}."]), P(["Ground-glass opacities.",
                                                                      "Ground glass opacity in the lungs."])
    if name == "Pulmonary fibrotic sequela":
        return P([f"Fibrotic bands in the {d['lobe']}.", f"Sequelae fibrotic changes in the {d['lobe']}.",
                  f"Parenchymal bands consistent with fibrotic sequelae in the {d['lobe']}."]), P(
            [f"Fibrotic sequelae in the {d['lobe']}.", "Sequelae changes."])
    if name == "Pleural effusion":
        side, depth = d["side"], d["depth_mm"]
        side_word = {"right": "right", "left": "left", "bilateral": "both sides"}[side]
        amount = _size_word(depth, 22, 35)
        return P([f"{_cap(side)} pleural effusion measuring {depth:.0f} mm in its thickest part.",
                  f"{_cap(amount)} pleural effusion on the {side_word}.",
                  f"Pleural effusion is observed on the {side_word}, {depth:.0f} mm thick.",
                  f"Fluid in the pleural space on the {side_word}."]), f"{_cap(side)} pleural effusion."
    if name == "Mosaic attenuation pattern":
        return P(["Mosaic attenuation pattern in both lungs.", "Mosaic perfusion areas are observed in both lungs.",
                  "Both lungs show a mosaic attenuation pattern."]), "Mosaic attenuation pattern."
    if name == "Peribronchial thickening":
        return P(["Peribronchial thickening in both lower lobes.", "Bronchial wall thickening is observed.",
                  "Thickened bronchial walls in both lower lobes."]), "Peribronchial thickening."
    if name == "Consolidation":
        lobe = d["lobe"]
        ab = " with air bronchograms" if d["air_bronchogram"] else ""
        return P([f"Consolidation{ab} in the {lobe}.", f"Consolidation area in the {lobe}.",
                  f"Pneumonic consolidation in the {lobe}."]), P(
            [f"Consolidation in the {lobe}.", "Pneumonic consolidation."])
    if name == "Bronchiectasis":
        return P([f"{_cap(d['type'])} bronchiectasis in the {d['lobe']}.",
                  f"Bronchiectatic changes in the {d['lobe']}.", f"Dilated bronchi in the {d['lobe']}."]), \
            "Bronchiectasis."
    if name == "Interlobular septal thickening":
        where = "the lower lobes" if d["zone"] == "lower" else "both lungs"
        return P([f"Interlobular septal thickening in {where}.",
                  f"Thickening of the interlobular septa in {where}.",
                  "Smooth septal thickening in the peripheral lung zones."]), "Interlobular septal thickening."
    raise KeyError(name)


def _write_report(rng: np.random.Generator, findings: Mapping[str, Any]) -> dict[str, str]:
    """Findings_EN / Impressions_EN / ClinicalInformation_EN in CT-RATE's section order, varied wording."""
    pos: dict[str, tuple[str, str]] = {name: _positive(rng, name, d) for name, d in findings.items()}

    def neg(name: str, p: float = 0.6) -> list[str]:
        if name in findings or not _NEGATIVE[name] or rng.uniform() >= p:
            return []
        return [_pick(rng, _NEGATIVE[name])]

    def part(*names: str) -> list[str]:
        out = []
        for name in names:
            out += [pos[name][0]] if name in pos else neg(name)
        return out

    s: list[str] = [_pick(rng, _FILLER["airway"]), _pick(rng, _FILLER["vessels"])]
    s += part("Arterial wall calcification", "Cardiomegaly")
    both_eff = "Pericardial effusion" not in findings and "Pleural effusion" not in findings
    joint_eff = both_eff and rng.uniform() < 0.35
    if joint_eff:
        s.append(_pick(rng, ["No pleural or pericardial effusion was detected.",
                             "Pleural and pericardial effusion are not observed."]))
    else:
        s += part("Pericardial effusion")
    s += part("Coronary artery wall calcification", "Medical material", "Lymphadenopathy")
    s.append(_pick(rng, _FILLER["esophagus"]))
    s += part("Hiatal hernia")
    lung_names = ["Lung nodule", "Emphysema", "Mosaic attenuation pattern", "Lung opacity", "Consolidation",
                  "Atelectasis", "Pulmonary fibrotic sequela", "Bronchiectasis", "Peribronchial thickening",
                  "Interlobular septal thickening"]
    lung = part(*lung_names)
    if not any(n in findings for n in lung_names) and rng.uniform() < 0.7:
        lung.append(_pick(rng, _FILLER["lungs"][:1] + _FILLER["lungs"][2:]))
    s += lung
    if not joint_eff:
        s += part("Pleural effusion")
    s += [_pick(rng, _FILLER["abdomen"]), _pick(rng, _FILLER["bones"])]
    impressions = [pos[name][1] for name in findings] or [_pick(rng, _NORMAL_IMPRESSION)]
    clinical = _pick(rng, _CLINICAL)
    return {"ClinicalInformation_EN": clinical, "Findings_EN": " ".join(s), "Impressions_EN": " ".join(impressions)}


# --------------------------------------------------------------------------------------------------- writing


def _nifti_gz(raw: np.ndarray, affine: np.ndarray) -> bytes:
    """NIfTI-1 bytes of ``raw`` (int16, [X, Y, Z]) gzip-compressed with mtime 0, so equal input -> equal bytes."""
    img = nib.Nifti1Image(raw, affine, dtype=np.int16)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _affine(body: _Body, recon: _Recon, cv: _Canvas) -> np.ndarray:
    """RAS affine of the stored [X, Y, Z] = (L, P, S) array: columns -s, -s, +sz (CT-RATE's axis codes)."""
    s = body.fov / body.n_px
    z0, x0, y0 = cv.origin()
    aff = np.zeros((4, 4))
    aff[0, 0], aff[1, 1], aff[2, 2], aff[3, 3] = -s, -s, recon.sz, 1.0
    aff[:3, 3] = (-x0, -y0, z0 - 250.0)  # R = -x, A = -y; the table puts the scan's bottom 250 mm below 0
    return aff


def _csv_text(header: tuple[str, ...] | list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(header), lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow(row)
    return buf.getvalue()


def _metadata_row(name: str, scan: _Scan, recon: _Recon, cv: _Canvas, rng: np.random.Generator,
                  extras: Mapping[str, Any]) -> dict[str, Any]:
    body = scan.body
    s = body.fov / body.n_px
    z0, x0, y0 = cv.origin()
    ipp = f"[{x0:.3f}, {y0:.3f}, {z0 - 250.0:.3f}]"  # DICOM LPS: L = x, P = y
    ma = int(rng.integers(80, 300))
    return {
        "VolumeName": f"{name}.nii.gz", "Manufacturer": scan.manufacturer,
        "SeriesDescription": f"THORAX {recon.sz:.1f} {recon.kernel}", "ManufacturerModelName": scan.model,
        "PatientSex": extras["sex"], "PatientAge": f"{extras['age']:03d}Y",
        "ReconstructionDiameter": f"{body.fov:.1f}", "DistanceSourceToDetector": "1085.6",
        "DistanceSourceToPatient": "595.0", "GantryDetectorTilt": "0", "TableHeight": f"{extras['table_h']:.1f}",
        "RotationDirection": "CW", "ExposureTime": "500", "XRayTubeCurrent": str(ma),
        "Exposure": str(ma // 2), "FilterType": "BODY FILTER", "GeneratorPower": str(ma * 120 // 1000),
        "FocalSpots": "1.2", "ConvolutionKernel": recon.kernel, "PatientPosition": "HFS",
        "RevolutionTime": "0.5", "SingleCollimationWidth": "0.625", "TotalCollimationWidth": "40.0",
        "TableSpeed": "79.0", "TableFeedPerRotation": "39.5", "SpiralPitchFactor": "0.984",
        "DataCollectionCenterPatient": "[0.0, 0.0, 0.0]", "ReconstructionTargetCenterPatient": "[0.0, 0.0, 0.0]",
        "ExposureModulationType": "XYZ_EC", "CTDIvol": f"{ma / 30:.2f}", "ImagePositionPatient": ipp,
        "ImageOrientationPatient": "[1, 0, 0, 0, 1, 0]", "SliceLocation": f"{z0 - 250.0:.3f}",
        "SamplesPerPixel": "1", "PhotometricInterpretation": "MONOCHROME2", "Rows": str(body.n_px),
        "Columns": str(body.n_px), "XYSpacing": f"[{s:.6g}, {s:.6g}]", "RescaleIntercept": str(recon.intercept),
        "RescaleSlope": "1", "RescaleType": "HU", "NumberofSlices": str(recon.nd), "ZSpacing": f"{recon.sz:.6g}",
        "StudyDate": extras["date"],
    }


def _plan_split(seed: int, split_id: int, count: int, kw: Mapping[str, Any]) -> list[tuple[int, int, int]]:
    """(patient, scan index, recon) of the ``count`` volumes of one split; each patient depends only on its own
    random stream, so the plan for a smaller count is a prefix."""
    plan: list[tuple[int, int, int]] = []
    patient = 0
    while len(plan) < count:
        patient += 1
        rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, patient]))
        n_scans = 2 if rng.uniform() < 0.1 else 1
        for scan in range(n_scans):
            n_recons = 2 if rng.uniform() < 0.25 else 1
            for recon in range(1, n_recons + 1):
                if len(plan) < count:
                    plan.append((patient, scan, recon))
    return plan


def _build_patient(seed: int, split_id: int, patient: int, kw: Mapping[str, Any]) -> _Body:
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, patient, 1_000]))
    return _finish_body(_draw_body(rng, kw["pixels"], kw["pixel_mm"], kw["slices"], kw["slice_mm"]))


def _build_scan(seed: int, split_id: int, patient: int, scan: int, body: _Body, kw: Mapping[str, Any],
                forced: list[str] | None = None) -> _Scan:
    key = (seed, split_id, patient, 2_000 + scan)
    rng = np.random.default_rng(np.random.SeedSequence(key))
    present = _choose_present(rng, kw["prevalence"], kw["normal_fraction"]) if forced is None else forced
    findings = _draw_findings(key, body, present)
    vessels = _draw_vessels(np.random.default_rng(np.random.SeedSequence([*key, 1])), body, body.heart_r)
    siemens = rng.uniform() < kw["siemens_fraction"]
    manufacturer = "SIEMENS" if siemens else _pick(rng, [m for m in _SCANNERS if m != "SIEMENS"])
    model = _pick(rng, _SCANNERS[manufacturer][0])
    report = _write_report(np.random.default_rng(np.random.SeedSequence([*key, 2])), findings)
    extras = {"sex": _pick(rng, ["M", "F"]), "age": int(rng.integers(25, 90)), "table_h": float(rng.uniform(140, 190)),
              "date": f"20{int(rng.integers(18, 22))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"}
    return _Scan(body=body, findings=findings, vessels=vessels, table=bool(rng.uniform() < 0.75),
                 manufacturer=manufacturer, model=model, report=report, extras=extras)


def _build_recon(seed: int, split_id: int, patient: int, scan: int, recon: int, sc: _Scan,
                 kw: Mapping[str, Any]) -> _Recon:
    key = (seed, split_id, patient, 2_000 + scan, recon)
    rng = np.random.default_rng(np.random.SeedSequence(key))
    lo, hi = kw["slice_mm"]
    sz = round(float(rng.uniform(lo, hi)), 3)
    nd = int(np.clip(round(sc.body.zlen / sz), kw["slices"][0], kw["slices"][1]))
    sharp = recon == 2
    noise = float(rng.uniform(*kw["noise_hu"])) * (1.25 if sharp else 1.0)
    blur = (0.08, 0.08, 0.08) if sharp else (0.15, 0.18, 0.18)
    kernel = _SCANNERS[sc.manufacturer][1][1 if sharp else 0]
    return _Recon(sz=sz, nd=nd, noise=noise, blur=blur, kernel=kernel, intercept=_SCANNERS[sc.manufacturer][2],
                  seed=(*key, 99))


def _phantom_volume(seed: int, split_id: int, patient: int, scan: int, recon: int, kw: Mapping[str, Any],
                    forced: list[str] | None = None) -> tuple[_Scan, _Recon, np.ndarray, _Canvas]:
    """One volume: (scan, reconstruction, HU [D, H, W] rounded and clipped as stored, canvas)."""
    body = _build_patient(seed, split_id, patient, kw)
    sc = _build_scan(seed, split_id, patient, scan, body, kw, forced)
    rc = _build_recon(seed, split_id, patient, scan, recon, sc, kw)
    hu, cv = _render(sc, rc)
    return sc, rc, np.clip(np.rint(hu), _HU_MIN, _HU_MAX), cv


def _landmarks(body: _Body) -> dict[str, list[float]]:
    """Points (z, x, y mm) inside named structures of a phantom without findings there (for orientation checks)."""
    ys, _ = body.spine
    cxr, cyr = body.lung_center(-1)
    cxl, cyl = body.lung_center(1)
    _, desc, _ = body.aorta_path()
    return {
        "heart": _pt(body.heart_c),
        "trachea": _pt((0.95 * body.zlen, 0.0, body.yc - 0.08 * body.b)),
        "liver": _pt((0.5 * float(body.dome_z(-1, cxr, cyr)), cxr, cyr)),
        "vertebra": _pt((0.5 * body.zlen, 0.0, ys)),
        "descending_aorta": _pt((0.5 * body.zlen, desc[1], desc[2])),
        "right_lung": _pt((0.7 * body.zlen, cxr - 0.15 * body.a, cyr - 0.3 * body.b)),
        "left_lung": _pt((0.7 * body.zlen, cxl + 0.15 * body.a, cyl - 0.3 * body.b)),
    }


def _volume_info(sc: _Scan, rc: _Recon, cv: _Canvas, hu: np.ndarray) -> dict[str, Any]:
    s = _r(sc.body.fov / sc.body.n_px, 6)
    return {"shape": list(hu.shape), "spacing": [rc.sz, s, s], "origin_mm": [_r(v, 4) for v in cv.origin()],
            "intercept": rc.intercept, "labels": [a for a in ABNORMALITIES if a in sc.findings],
            "findings": sc.findings, "landmarks_mm": _landmarks(sc.body)}


def _check_args(slices, slice_mm, pixels, pixel_mm, noise_hu, siemens_fraction, prevalence,
                normal_fraction) -> dict[str, Any]:
    """Validated size/draw arguments as the dict the builders read."""
    for arg, rng_, integer in (("slices", slices, True), ("pixels", pixels, True), ("slice_mm", slice_mm, False),
                               ("pixel_mm", pixel_mm, False), ("noise_hu", noise_hu, False)):
        try:
            lo, hi = rng_
            ok = 0 < lo <= hi and (not integer or (int(lo) == lo and int(hi) == hi))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{arg} must be a range (lo, hi) with 0 < lo <= hi{' of integers' if integer else ''}, "
                             f"got {rng_!r}")
    if slices[0] < 8 or pixels[0] < 32:
        raise ValueError(f"phantoms need at least 8 slices and 32 px, got slices={slices}, pixels={pixels}")
    for arg, v in (("siemens_fraction", siemens_fraction), ("normal_fraction", normal_fraction)):
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{arg} must be in [0, 1], got {v!r}")
    prev = dict(PREVALENCE)
    for name, p in (prevalence or {}).items():
        if name not in prev:
            raise ValueError(f"prevalence key {name!r} is not one of the 18 abnormalities: {', '.join(ABNORMALITIES)}")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"prevalence[{name!r}] must be in [0, 1], got {p!r}")
        prev[name] = float(p)
    return {"slices": tuple(int(v) for v in slices), "slice_mm": tuple(float(v) for v in slice_mm),
            "pixels": tuple(int(v) for v in pixels), "pixel_mm": tuple(float(v) for v in pixel_mm),
            "noise_hu": tuple(float(v) for v in noise_hu), "siemens_fraction": float(siemens_fraction),
            "normal_fraction": float(normal_fraction), "prevalence": prev}


def _check_seed(seed: int) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return seed


def render_phantom(
    seed: int = 0,
    findings: Iterable[str] | None = None,
    *,
    recon: int = 1,
    slices: tuple[int, int] = (40, 56),
    slice_mm: tuple[float, float] = (2.5, 3.5),
    pixels: tuple[int, int] = (96, 128),
    pixel_mm: tuple[float, float] = (2.8, 3.6),
    noise_hu: tuple[float, float] = (10.0, 20.0),
    siemens_fraction: float = 0.3,
    prevalence: Mapping[str, float] | None = None,
    normal_fraction: float = NORMAL_FRACTION,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One phantom in memory, without writing files.

    With ``findings=None`` (and the same size arguments) this is volume ``train_1_a_<recon>`` of
    ``make_ct_phantoms(out, seed=seed)``, value for value. ``findings`` (names from ``ABNORMALITIES``) forces
    exactly those abnormalities instead; each one's details come from its own random stream, so
    ``render_phantom(s, ["Lung nodule"]) - render_phantom(s, [])`` is the nodule alone.

    Returns:
        hu: ``[D, H, W]`` float32 HU in the canonical (S, L, P) layout of ``mmseq.medical.io.load_ct``, rounded
            and clipped to [-1024, 3071] as stored.
        info: shape, spacing ``[sz, sx, sy]`` mm, origin_mm, intercept, labels (present names), findings
            (details in mm), landmarks_mm (points inside heart, trachea, liver, vertebra, descending aorta and
            each lung), report (ClinicalInformation_EN, Findings_EN, Impressions_EN).
            Points are (z, x, y) mm; their voxel index is ``(point - origin_mm) / spacing``.
    """
    kw = _check_args(slices, slice_mm, pixels, pixel_mm, noise_hu, siemens_fraction, prevalence, normal_fraction)
    forced = None
    if findings is not None:
        forced = [str(f) for f in findings]
        unknown = [f for f in forced if f not in ABNORMALITIES]
        if unknown:
            raise ValueError(f"findings {unknown} are not among the 18 abnormalities: {', '.join(ABNORMALITIES)}")
    if recon not in (1, 2):
        raise ValueError(f"recon must be 1 (soft kernel) or 2 (sharp kernel), got {recon!r}")
    sc, rc, hu, cv = _phantom_volume(_check_seed(seed), 0, 1, 0, recon, kw, forced)
    return hu.astype(np.float32), {**_volume_info(sc, rc, cv, hu), "report": dict(sc.report)}


def _readme(summary: Mapping[str, Any], kw: Mapping[str, Any]) -> str:
    lines = [
        "# Synthetic chest-CT phantoms in the CT-RATE layout",
        "",
        "Written by `mmseq.medical.phantoms.make_ct_phantoms`; deterministic for its arguments "
        f"(seed {summary['seed']}, n {summary['volumes']}, valid_fraction {kw['valid_fraction']}).",
        "Not patient data: every volume, report and label is drawn from simple geometric rules.",
        "",
        "## Layout (as CT-RATE, `ibrahimhamamci/CT-RATE`)",
        "",
        "```",
        "dataset/train/train_<patient>/train_<patient>_<scan>/train_<patient>_<scan>_<recon>.nii.gz",
        "dataset/valid/valid_<patient>/valid_<patient>_<scan>/valid_<patient>_<scan>_<recon>.nii.gz",
        "dataset/radiology_text_reports/train_reports.csv, validation_reports.csv",
        "    VolumeName, ClinicalInformation_EN, Technique_EN, Findings_EN, Impressions_EN",
        "dataset/multi_abnormality_labels/train_predicted_labels.csv, valid_predicted_labels.csv",
        "    VolumeName + the 18 abnormality columns (0/1), CT-RATE's order",
        "dataset/metadata/train_metadata.csv, validation_metadata.csv",
        "    CT-RATE's 44 columns; XYSpacing \"[sx, sy]\", ZSpacing, RescaleIntercept, RescaleSlope",
        "phantoms.json   per volume: shape, spacing, origin, landmarks and the drawn findings in mm",
        "```",
        "",
        "Read it with `mmseq.medical.ctrate.CTRate(\"<this folder>\", \"train\")` and load a volume with",
        "`mmseq.medical.io.load_ct(item[\"path\"], slope=item[\"slope\"], intercept=item[\"intercept\"])`.",
        "",
        "## Volumes",
        "",
        "- int16 raw values: HU = raw * RescaleSlope + RescaleIntercept (slope 1; intercept -1024, or -8192 for the "
        "scans drawn as Siemens ones). HU are clipped to [-1024, 3071].",
        "- NIfTI axes (L, P, S) like CT-RATE; `load_ct` returns [D, H, W] = (S, L, P): superior slices at high D.",
        f"- {kw['slices'][0]}-{kw['slices'][1]} slices of {kw['slice_mm'][0]}-{kw['slice_mm'][1]} mm, "
        f"{kw['pixels'][0]}-{kw['pixels'][1]} px in-plane at {kw['pixel_mm'][0]}-{kw['pixel_mm'][1]} mm.",
        "- Anatomy: fat, muscle, lungs with domes, liver/stomach below, mediastinal fat, heart, aorta, trachea and",
        "  bronchi, vessels, esophagus, spine, ribs, sternum, table. Noise: blurred Gaussian, "
        f"{kw['noise_hu'][0]}-{kw['noise_hu'][1]} HU.",
        "- Reconstructions of one scan share anatomy, findings, report and labels; they differ in slice spacing,",
        "  kernel (blur, noise) and noise.",
        "",
        "## phantoms.json frame",
        "",
        "Points are (z, x, y) mm: z superior from the bottom of the covered extent, x to the patient's left and y",
        "posterior from the image centre. Voxel index in the `load_ct` array = (point - origin_mm) / spacing.",
        "",
        "## Counts",
        "",
        "| split | volumes | patients | scans |",
        "|---|---|---|---|",
    ]
    for split, c in summary["splits"].items():
        lines.append(f"| {split} | {c['volumes']} | {c['patients']} | {c['scans']} |")
    lines += ["", "| abnormality | volumes |", "|---|---|"]
    lines += [f"| {name} | {k} |" for name, k in summary["findings"].items()]
    return "\n".join(lines) + "\n"


def make_ct_phantoms(
    out_dir: str | Path,
    n: int = 200,
    seed: int = 0,
    *,
    valid_fraction: float = 0.25,
    progress: bool = True,
    slices: tuple[int, int] = (40, 56),
    slice_mm: tuple[float, float] = (2.5, 3.5),
    pixels: tuple[int, int] = (96, 128),
    pixel_mm: tuple[float, float] = (2.8, 3.6),
    noise_hu: tuple[float, float] = (10.0, 20.0),
    siemens_fraction: float = 0.3,
    prevalence: Mapping[str, float] | None = None,
    normal_fraction: float = NORMAL_FRACTION,
) -> dict[str, Any]:
    """Write ``n`` chest-CT phantoms with reports, labels and metadata in the CT-RATE layout under ``out_dir``.

    Args:
        out_dir: a new or empty folder; ``CTRate(out_dir, "train")`` / ``CTRate(out_dir, "valid")`` read it.
        n: number of volumes in all (patients have one or two scans, scans one or two reconstructions).
        seed: output is a pure function of the seed and the other arguments, byte for byte.
        valid_fraction: share of the volumes in the valid split (at least one each when ``n >= 2``).
        progress: show a progress bar on stderr.
        slices, slice_mm: ranges of the slice count and slice spacing (mm). The defaults (40-56 slices of
            2.5-3.5 mm, 96-128 px of 2.8-3.6 mm) give about 40 x 100 x 100 voxels at 3 mm; raise them for
            larger volumes (e.g. ``slices=(200, 300), slice_mm=(1.0, 1.5), pixels=(512, 512),
            pixel_mm=(0.6, 0.8)``).
        pixels, pixel_mm: ranges of the square in-plane matrix and pixel spacing (mm).
        noise_hu: range of the noise standard deviation (HU) of the soft-kernel reconstruction.
        siemens_fraction: share of scans from "Siemens" scanners, stored with RescaleIntercept -8192.
        prevalence: per-abnormality probabilities replacing entries of :data:`PREVALENCE`.
        normal_fraction: share of scans drawn without any abnormality (before the prevalences apply).
    Returns:
        summary dict: out_dir, dataset_dir, seed, volumes, splits {split: {volumes, patients, scans}},
        findings {abnormality: volumes with it}, files (paths written, relative to out_dir), seconds.
    """
    t0 = time.perf_counter()
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0.0 <= float(valid_fraction) < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"out_dir {out} must be a new or empty folder; it already holds files")
    kw = _check_args(slices, slice_mm, pixels, pixel_mm, noise_hu, siemens_fraction, prevalence, normal_fraction)
    kw["valid_fraction"] = float(valid_fraction)
    _check_seed(seed)

    n_valid = int(round(n * valid_fraction))
    if valid_fraction > 0 and n >= 2:
        n_valid = min(max(n_valid, 1), n - 1)
    counts = {"train": n - n_valid, "valid": n_valid}
    plans = {split: _plan_split(seed, sid, counts[split], kw) for sid, split in enumerate(("train", "valid"))}

    ds = out / "dataset"
    files: list[str] = []
    volumes_json: dict[str, Any] = {}
    finding_counts = dict.fromkeys(ABNORMALITIES, 0)
    split_counts: dict[str, dict[str, int]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="CT phantoms", unit="vol", leave=False)
    try:
        for sid, split in enumerate(("train", "valid")):
            folder, reports_csv, labels_csv, metadata_csv = SPLITS[split]
            (ds / folder).mkdir(parents=True, exist_ok=True)
            reports, labels, metas = [], [], []
            for patient, scan, recon in plans[split]:
                sc, rc, hu, cv = _phantom_volume(seed, sid, patient, scan, recon, kw)
                name = f"{folder}_{patient}_{chr(ord('a') + scan)}_{recon}"
                raw = (hu - rc.intercept).astype(np.int16)
                data = np.asfortranarray(raw.transpose(1, 2, 0))  # [D, H, W] (S, L, P) -> [X, Y, Z] (L, P, S)
                rel = Path(folder, f"{folder}_{patient}", f"{folder}_{patient}_{chr(ord('a') + scan)}",
                           f"{name}.nii.gz")
                path = ds / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(_nifti_gz(data, _affine(sc.body, rc, cv)))
                files.append(str(Path("dataset") / rel))
                technique = _pick(np.random.default_rng(np.random.SeedSequence((*rc.seed, 5))), [
                    f"Non-contrast chest CT; axial sections of {rc.sz:.1f} mm were obtained.",
                    f"Thorax CT without contrast, {rc.sz:.1f} mm slice thickness, {rc.kernel} kernel.",
                    f"Axial non-contrast images of the thorax were obtained with {rc.sz:.1f} mm sections."])
                reports.append({"VolumeName": f"{name}.nii.gz", "Technique_EN": technique, **sc.report})
                labels.append({"VolumeName": f"{name}.nii.gz",
                               **{a: int(a in sc.findings) for a in ABNORMALITIES}})
                metas.append(_metadata_row(name, sc, rc, cv,
                                           np.random.default_rng(np.random.SeedSequence((*rc.seed, 7))), sc.extras))
                volumes_json[name] = {"split": split, "patient": patient, "scan": chr(ord("a") + scan),
                                      "recon": recon, **_volume_info(sc, rc, cv, hu)}
                for a in sc.findings:
                    finding_counts[a] += 1
                if bar is not None:
                    bar.update(1)
            for sub, fname, header, rows in (
                    (REPORTS_DIR, reports_csv, REPORT_COLUMNS, reports),
                    (LABELS_DIR, labels_csv, ("VolumeName", *ABNORMALITIES), labels),
                    (METADATA_DIR, metadata_csv, METADATA_CSV_COLUMNS, metas)):
                (ds / sub).mkdir(parents=True, exist_ok=True)
                (ds / sub / fname).write_text(_csv_text(header, rows), encoding="utf-8")
                files.append(str(Path("dataset", sub, fname)))
            split_counts[split] = {"volumes": len(plans[split]), "patients": len({p for p, _, _ in plans[split]}),
                                   "scans": len({(p, s) for p, s, _ in plans[split]})}
    finally:
        if bar is not None:
            bar.close()
    summary: dict[str, Any] = {"out_dir": str(out), "dataset_dir": str(ds), "seed": seed, "volumes": n,
                               "splits": split_counts, "findings": finding_counts}
    (out / "phantoms.json").write_text(json.dumps({"seed": seed, "arguments": {k: v for k, v in kw.items()},
                                                   "volumes": volumes_json}, indent=1), encoding="utf-8")
    (out / "README.md").write_text(_readme(summary, kw), encoding="utf-8")
    files += ["phantoms.json", "README.md"]
    summary["files"] = files
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary
