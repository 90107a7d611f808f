"""The CT-RATE data set layout (refs/btb3d.md sections 6-7) and a map-style index over it.

Layout (the Hugging Face repository ``ibrahimhamamci/CT-RATE``; ``root`` may be the repository folder or its
``dataset/`` folder)::

    dataset/
      train/train_1/train_1_a/train_1_a_1.nii.gz        <split>/<patient>/<patient_scan>/<patient_scan_recon>
      valid/valid_1/valid_1_a/valid_1_a_1.nii.gz        (v2 ships corrected volumes in train_fixed/, valid_fixed/)
      radiology_text_reports/train_reports.csv          VolumeName, ClinicalInformation_EN, Technique_EN,
      radiology_text_reports/validation_reports.csv     Findings_EN, Impressions_EN ("Not given." when missing)
      multi_abnormality_labels/train_predicted_labels.csv   VolumeName + the 18 ABNORMALITIES, 0/1
      multi_abnormality_labels/valid_predicted_labels.csv
      metadata/train_metadata.csv                       VolumeName, ..., XYSpacing ("[sx, sy]"),
      metadata/validation_metadata.csv                  RescaleIntercept, RescaleSlope, ..., ZSpacing, ...

A volume name is ``<split>_<patient>_<scan letter>_<reconstruction>`` (``valid_12_b_2.nii.gz``); all
reconstructions of one scan share one report and one label row. Stored values are raw scanner integers:
HU = RescaleSlope * raw + RescaleIntercept with the metadata row of the volume (intercept -1024, or -8192 on
many Siemens scans). The v2 ``*_fixed`` volumes are already in HU (refs/btb3d.md section 7): ``CTRate`` marks
their items ``in_hu=True`` and ``to_hu`` leaves them alone.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch.utils.data import Dataset

from mmseq.errors import UserError

__all__ = [
    "ABNORMALITIES",
    "CTRate",
    "CTRateError",
    "METADATA_COLUMNS",
    "NOT_GIVEN",
    "REPORT_COLUMNS",
    "SPLITS",
    "parse_volume_name",
    "parse_xy_spacing",
    "report_text",
    "to_hu",
    "volume_relpath",
]

# The 18 multi-abnormality label columns of CT-RATE, in the order of its label CSVs.
ABNORMALITIES: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)

REPORT_COLUMNS: tuple[str, ...] = (
    "VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")
# The metadata columns an HU conversion and resampling need (the real CSV has about 45; extra ones are kept).
METADATA_COLUMNS: tuple[str, ...] = ("VolumeName", "XYSpacing", "RescaleIntercept", "RescaleSlope", "ZSpacing")
NOT_GIVEN = "Not given."

# split name -> (volume folder, reports CSV, labels CSV, metadata CSV); CT-RATE spells "valid"/"validation"
# differently per file.
SPLITS: dict[str, tuple[str, str, str, str]] = {
    "train": ("train", "train_reports.csv", "train_predicted_labels.csv", "train_metadata.csv"),
    "valid": ("valid", "validation_reports.csv", "valid_predicted_labels.csv", "validation_metadata.csv"),
}
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid"}
REPORTS_DIR = "radiology_text_reports"
LABELS_DIR = "multi_abnormality_labels"
METADATA_DIR = "metadata"

_NAME = re.compile(r"^(?P<split>[a-z]+)_(?P<patient>\d+)_(?P<scan>[a-z]+)_(?P<recon>\d+)(?P<ext>\.nii(?:\.gz)?)?$")


class CTRateError(UserError):
    """A CT-RATE folder or CSV that does not have the expected layout."""


def parse_volume_name(name: str) -> dict[str, Any]:
    """Split ``train_12_a_2(.nii.gz)`` into {"split": "train", "patient": 12, "scan": "a", "recon": 2}.

    Raises CTRateError for a name that is not ``<split>_<patient>_<scan letter>_<reconstruction>``.
    """
    m = _NAME.match(Path(str(name)).name)
    if m is None:
        raise CTRateError(f"volume name {name!r} is not <split>_<patient>_<scan>_<recon>.nii.gz "
                          f"(for example train_1_a_1.nii.gz)")
    return {"split": m["split"], "patient": int(m["patient"]), "scan": m["scan"], "recon": int(m["recon"])}


def volume_relpath(name: str) -> PurePosixPath:
    """Where a volume lives below the ``dataset/`` folder: train_1_a_1 -> train/train_1/train_1_a/train_1_a_1.nii.gz."""
    p = parse_volume_name(name)
    patient = f"{p['split']}_{p['patient']}"
    scan = f"{patient}_{p['scan']}"
    return PurePosixPath(p["split"], patient, scan, f"{scan}_{p['recon']}.nii.gz")


def parse_xy_spacing(text: str) -> tuple[float, float]:
    """CT-RATE's XYSpacing string "[0.68, 0.68]" (also "0.68, 0.68" or one number) -> (sx, sy) in mm."""
    parts = [s for s in re.split(r"[\s,;\[\]()]+", str(text).strip()) if s]
    try:
        values = [float(s) for s in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(v > 0 for v in values):
        raise CTRateError(f"XYSpacing must look like \"[0.75, 0.75]\" with two positive numbers, got {text!r}")
    return values[0], values[1]


def to_hu(raw: torch.Tensor, slope: float, intercept: float, *, in_hu: bool = False) -> torch.Tensor:
    """HU = slope * raw + intercept, as float32; ``in_hu=True`` (CT-RATE v2 ``*_fixed`` volumes) returns the input."""
    x = raw.to(torch.float32)
    return x if in_hu else x * float(slope) + float(intercept)


def _read_csv(path: Path, required: Iterable[str]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Rows keyed by VolumeName (the .nii.gz suffix is normalised away); checks the header for ``required``."""
    if not path.is_file():
        raise CTRateError(f"missing CSV {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise CTRateError(f"{path} lacks column(s) {', '.join(missing)}; "
                              f"its header is {', '.join(header) or '(empty)'}")
        reader.fieldnames = header
        rows: dict[str, dict[str, str]] = {}
        for line, row in enumerate(reader, start=2):
            name = (row.get("VolumeName") or "").strip()
            if not name:
                raise CTRateError(f"{path} line {line}: empty VolumeName")
            rows[_stem(name)] = row
    return header, rows


def _stem(name: str) -> str:
    name = Path(name.strip()).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _find_dataset_dir(root: Path) -> Path:
    if not root.is_dir():
        raise CTRateError(f"CT-RATE folder {root} does not exist")
    if (root / "dataset").is_dir() and not (root / REPORTS_DIR).is_dir():
        return root / "dataset"
    return root


class CTRate(Dataset):
    """Map-style index over one split of a CT-RATE folder: one item per volume listed in the reports CSV.

    ``root``: the repository folder (with ``dataset/``) or the ``dataset/`` folder itself; ``split``: "train"
    or "valid" (also "validation", "val"). ``fixed``: read volumes from ``<split>_fixed/`` (CT-RATE v2, already
    in HU); None takes ``<split>/`` when it exists, else ``<split>_fixed/``. ``labels`` / ``metadata``: whether
    the label / metadata CSVs are required (False skips them and the items carry None). ``missing``: "error"
    (a listed volume absent on disk raises) or "skip" (drop it, e.g. for a partial download; ``skipped`` lists
    them). ``exclude``: volume names to drop, or the path of a text file with one per line (CT-RATE's
    ``no_chest_valid.txt``).

    Item i is a dict: name, path (Path of the .nii.gz), split, patient, scan, recon, clinical_information,
    technique, findings, impressions (report text, "Not given." when absent), labels (bool tensor [18] in
    ABNORMALITIES order, or None), slope, intercept, xy_spacing (sx, sy) mm, z_spacing mm (None without
    metadata), in_hu (True for v2 ``*_fixed`` volumes), metadata (the whole metadata row as strings).
    The index does not read volumes; ``mmseq.medical.io.load_ct`` does.
    """

    def __init__(self, root: str | Path, split: str = "train", *, fixed: bool | None = None, labels: bool = True,
                 metadata: bool = True, missing: str = "error", exclude: Iterable[str] | str | Path | None = None):
        if split not in _SPLIT_ALIASES:
            raise CTRateError(f"split must be one of train, valid (or validation, val), got {split!r}")
        if missing not in ("error", "skip"):
            raise CTRateError(f"missing must be 'error' or 'skip', got {missing!r}")
        self.split = _SPLIT_ALIASES[split]
        self.dataset_dir = _find_dataset_dir(Path(root))
        folder, reports_csv, labels_csv, metadata_csv = SPLITS[self.split]
        plain, fixed_dir = self.dataset_dir / folder, self.dataset_dir / f"{folder}_fixed"
        if fixed is None:
            fixed = not plain.is_dir() and fixed_dir.is_dir()
        self.volume_dir = fixed_dir if fixed else plain
        self.in_hu = bool(fixed)
        if not self.volume_dir.is_dir():
            raise CTRateError(f"missing volume folder {self.volume_dir} (expected {self.dataset_dir}/"
                              f"{folder}/<patient>/<patient_scan>/<volume>.nii.gz)")
        self.reports_csv = self.dataset_dir / REPORTS_DIR / reports_csv
        self.labels_csv = self.dataset_dir / LABELS_DIR / labels_csv if labels else None
        self.metadata_csv = self.dataset_dir / METADATA_DIR / metadata_csv if metadata else None

        _, reports = _read_csv(self.reports_csv, REPORT_COLUMNS)
        label_rows = _read_csv(self.labels_csv, ("VolumeName", *ABNORMALITIES))[1] if labels else None
        meta_rows = _read_csv(self.metadata_csv, METADATA_COLUMNS)[1] if metadata else None

        excluded = _read_exclude(exclude)
        self.names: list[str] = []
        self.skipped: list[str] = []
        absent: list[str] = []
        for name in reports:
            if name in excluded:
                continue
            if parse_volume_name(name)["split"] != folder:  # a malformed name fails here, naming it
                raise CTRateError(f"volume {name} in {self.reports_csv} does not belong to split {folder!r}")
            if label_rows is not None and name not in label_rows:
                raise CTRateError(f"volume {name} is in {self.reports_csv} but has no row in {self.labels_csv}")
            if meta_rows is not None and name not in meta_rows:
                raise CTRateError(f"volume {name} is in {self.reports_csv} but has no row in {self.metadata_csv}")
            if not self.volume_path(name).is_file():
                absent.append(name)
                continue
            self.names.append(name)
        if absent and missing == "error":
            raise CTRateError(f"{len(absent)} volume(s) listed in {self.reports_csv} are missing, first "
                              f"{self.volume_path(absent[0])}; pass missing='skip' to index only those present")
        self.skipped = absent
        self._reports = reports
        self._labels = label_rows
        self._meta = meta_rows

    def volume_path(self, name: str) -> Path:
        """The .nii.gz path of a volume name (with or without extension) in this split's volume folder."""
        rel = volume_relpath(name)
        return self.volume_dir.joinpath(*rel.parts[1:])

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} volumes")
        name = self.names[index]
        rep = self._reports[name]
        item: dict[str, Any] = {"name": name, "path": self.volume_path(name), **parse_volume_name(name)}
        item.update(clinical_information=_text(rep["ClinicalInformation_EN"]), technique=_text(rep["Technique_EN"]),
                    findings=_text(rep["Findings_EN"]), impressions=_text(rep["Impressions_EN"]))
        item["labels"] = None
        if self._labels is not None:
            row = self._labels[name]
            item["labels"] = torch.tensor([_flag(row[c], c, name, self.labels_csv) for c in ABNORMALITIES],
                                          dtype=torch.bool)
        item.update(slope=1.0, intercept=0.0, xy_spacing=None, z_spacing=None, metadata=None, in_hu=self.in_hu)
        if self._meta is not None:
            row = self._meta[name]
            item["slope"] = _number(row["RescaleSlope"], "RescaleSlope", name, self.metadata_csv)
            item["intercept"] = _number(row["RescaleIntercept"], "RescaleIntercept", name, self.metadata_csv)
            item["xy_spacing"] = parse_xy_spacing(row["XYSpacing"])
            item["z_spacing"] = _number(row["ZSpacing"], "ZSpacing", name, self.metadata_csv)
            item["metadata"] = dict(row)
        return item

    def report(self, index: int) -> str:
        """Findings and impressions of item ``index`` as one text (what report generation targets)."""
        rep = self._reports[self.names[index]]
        return report_text(rep["Findings_EN"], rep["Impressions_EN"])

    def label_matrix(self) -> torch.Tensor:
        """All labels as a bool tensor [N, 18] in item order."""
        if self._labels is None:
            raise CTRateError("this index was built with labels=False")
        return torch.stack([self[i]["labels"] for i in range(len(self))]) if len(self) else (
            torch.zeros(0, len(ABNORMALITIES), dtype=torch.bool))

    def __repr__(self) -> str:
        return f"CTRate({str(self.dataset_dir)!r}, split={self.split!r}, volumes={len(self)})"


def report_text(findings: str, impressions: str) -> str:
    """Findings then impressions, leaving out sections that are "Not given." or empty."""
    parts = [t.strip() for t in (findings, impressions) if _text(t) != NOT_GIVEN]
    return " ".join(parts)


def _text(value: str | None) -> str:
    value = (value or "").strip()
    return value if value else NOT_GIVEN


def _flag(value: str, column: str, name: str, path: Path | None) -> bool:
    v = str(value).strip()
    if v in ("1", "1.0", "True", "true"):
        return True
    if v in ("0", "0.0", "False", "false", ""):
        return False
    raise CTRateError(f"{path}: {column} of {name} must be 0 or 1, got {value!r}")


def _number(value: str, column: str, name: str, path: Path | None) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CTRateError(f"{path}: {column} of {name} must be a number, got {value!r}") from None


def _read_exclude(exclude: Iterable[str] | str | Path | None) -> set[str]:
    if exclude is None:
        return set()
    if isinstance(exclude, (str, Path)):
        path = Path(exclude)
        if not path.is_file():
            raise CTRateError(f"exclude list {path} does not exist")
        exclude = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {_stem(n) for n in exclude}
