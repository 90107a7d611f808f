"""mmseq.medical.ctrate: CTRate over a generated phantom set, name/spacing parsing, and one-line CTRateError for
a damaged layout (missing folder, CSV, column, row or volume; missing="skip"; v2 *_fixed folders; exclusions)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path, PurePosixPath

import pytest
import torch

from mmseq.errors import UserError
from mmseq.medical.ctrate import (
    ABNORMALITIES,
    NOT_GIVEN,
    CTRate,
    CTRateError,
    parse_volume_name,
    parse_xy_spacing,
    report_text,
    to_hu,
    volume_relpath,
)
from mmseq.medical.io import load_ct
from mmseq.medical.phantoms import make_ct_phantoms

from .conftest import TINY_PHANTOMS


@pytest.fixture
def tiny_set(tmp_path) -> Path:
    """A fresh 4-volume phantom set (3 train, 1 valid) of tiny volumes, free to damage."""
    root = tmp_path / "ctrate"
    make_ct_phantoms(root, n=4, seed=3, progress=False, **TINY_PHANTOMS)
    return root


def _ds(root: Path) -> Path:
    return root / "dataset"


def _rewrite_csv(path: Path, drop_column: str | None = None, drop_row: int | None = None, set_cell=None) -> None:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    header = [c for c in rows[0] if c != drop_column]
    if drop_row is not None:
        del rows[drop_row]
    if set_cell is not None:
        row, column, value = set_cell
        rows[row][column] = value
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _error(fn) -> str:
    with pytest.raises(CTRateError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, UserError)
    return msg


# --------------------------------------------------------------------------------------------------- reading


def test_reads_a_phantom_set(ct_phantoms):
    root, summary = ct_phantoms
    train, valid = CTRate(root, "train"), CTRate(root / "dataset", "validation")
    assert len(train) + len(valid) == 10 and len(valid) == summary["splits"]["valid"]["volumes"]
    assert repr(train) == f"CTRate({str(root / 'dataset')!r}, split='train', volumes={len(train)})"
    item = train[0]
    assert item["name"] == "train_1_a_1" and (item["split"], item["patient"], item["scan"], item["recon"]) == (
        "train", 1, "a", 1)
    assert item["path"] == root / "dataset/train/train_1/train_1_a/train_1_a_1.nii.gz"
    assert item["labels"].dtype == torch.bool and item["labels"].shape == (18,)
    assert not item["in_hu"] and item["slope"] == 1.0
    assert train.report(0) == report_text(item["findings"], item["impressions"])
    assert train.label_matrix().shape == (len(train), 18)
    assert train[-1]["name"] == train.names[-1]
    with pytest.raises(IndexError):
        train[len(train)]
    vol = load_ct(item["path"], slope=item["slope"], intercept=item["intercept"])
    assert vol.spacing[0] == pytest.approx(item["z_spacing"], rel=1e-5)
    assert vol.spacing[1:] == pytest.approx(item["xy_spacing"], rel=1e-5)
    assert float(vol.array.min()) >= -1024 and float(vol.array.max()) > 300  # HU: air to bone


def test_names_spacing_and_hu():
    assert parse_volume_name("valid_12_b_2.nii.gz") == {"split": "valid", "patient": 12, "scan": "b", "recon": 2}
    assert parse_volume_name("/x/train_1_a_1") == {"split": "train", "patient": 1, "scan": "a", "recon": 1}
    assert volume_relpath("train_1_a_1") == PurePosixPath("train/train_1/train_1_a/train_1_a_1.nii.gz")
    for bad in ("train_1_1", "train_a_a_1.nii.gz", "train-1-a-1.nii.gz", ""):
        assert "is not <split>_<patient>_<scan>_<recon>" in _error(lambda b=bad: parse_volume_name(b))
    assert parse_xy_spacing("[0.68, 0.68]") == (0.68, 0.68)
    assert parse_xy_spacing("0.7,0.8") == (0.7, 0.8) and parse_xy_spacing("0.75") == (0.75, 0.75)
    for bad in ("[]", "[0.7, 0.7, 0.7]", "[a, b]", "[-1, 1]"):
        assert "XYSpacing must look like" in _error(lambda b=bad: parse_xy_spacing(b))
    raw = torch.tensor([0, 1024, 2000], dtype=torch.int16)
    assert to_hu(raw, 1, -1024).tolist() == [-1024.0, 0.0, 976.0]
    assert to_hu(raw, 1, -8192, in_hu=True).tolist() == [0.0, 1024.0, 2000.0]
    assert report_text("Cardiomegaly.", NOT_GIVEN) == "Cardiomegaly." and report_text("", " ") == ""


def test_v2_fixed_folder_is_in_hu(tiny_set):
    ds = _ds(tiny_set)
    (ds / "train").rename(ds / "train_fixed")
    index = CTRate(tiny_set, "train")
    assert index.in_hu and index[0]["in_hu"] and index[0]["path"].parent.parent.parent.name == "train_fixed"
    assert "missing volume folder" in _error(lambda: CTRate(tiny_set, "train", fixed=False))


def test_labels_and_metadata_optional(tiny_set):
    (_ds(tiny_set) / "multi_abnormality_labels" / "train_predicted_labels.csv").unlink()
    (_ds(tiny_set) / "metadata" / "train_metadata.csv").unlink()
    index = CTRate(tiny_set, "train", labels=False, metadata=False)
    item = index[0]
    assert item["labels"] is None and item["metadata"] is None and item["z_spacing"] is None
    assert "labels=False" in _error(index.label_matrix)


def test_exclude_names_and_file(tiny_set):
    names = CTRate(tiny_set, "train").names
    assert CTRate(tiny_set, "train", exclude=[names[0] + ".nii.gz"]).names == names[1:]
    listing = tiny_set / "no_chest_train.txt"
    listing.write_text(f"{names[1]}.nii.gz\n\n")
    assert CTRate(tiny_set, "train", exclude=listing).names == [names[0], *names[2:]]
    assert "exclude list" in _error(lambda: CTRate(tiny_set, "train", exclude=tiny_set / "absent.txt"))


# --------------------------------------------------------------------------------------------------- errors


def test_missing_root_and_bad_arguments(tmp_path, tiny_set):
    assert "does not exist" in _error(lambda: CTRate(tmp_path / "nowhere", "train"))
    assert "split must be one of train, valid" in _error(lambda: CTRate(tiny_set, "test"))
    assert "missing must be 'error' or 'skip'" in _error(lambda: CTRate(tiny_set, "train", missing="ignore"))


def test_missing_volume_folder(tiny_set):
    shutil.rmtree(_ds(tiny_set) / "valid")
    msg = _error(lambda: CTRate(tiny_set, "valid"))
    assert msg.startswith(f"missing volume folder {_ds(tiny_set) / 'valid'}") and "<patient>" in msg
    assert len(CTRate(tiny_set, "train")) == 3  # the other split is unaffected


@pytest.mark.parametrize("folder, name", [
    ("radiology_text_reports", "train_reports.csv"),
    ("multi_abnormality_labels", "train_predicted_labels.csv"),
    ("metadata", "train_metadata.csv"),
], ids=["reports", "labels", "metadata"])
def test_missing_csv(tiny_set, folder, name):
    path = _ds(tiny_set) / folder / name
    path.unlink()
    assert _error(lambda: CTRate(tiny_set, "train")) == f"missing CSV {path}"


@pytest.mark.parametrize("folder, name, column", [
    ("radiology_text_reports", "validation_reports.csv", "Impressions_EN"),
    ("multi_abnormality_labels", "valid_predicted_labels.csv", "Lung nodule"),
    ("metadata", "validation_metadata.csv", "RescaleIntercept"),
], ids=["reports", "labels", "metadata"])
def test_missing_column(tiny_set, folder, name, column):
    path = _ds(tiny_set) / folder / name
    _rewrite_csv(path, drop_column=column)
    msg = _error(lambda: CTRate(tiny_set, "valid"))
    assert msg.startswith(f"{path} lacks column(s) {column}; its header is VolumeName,")


def test_listed_volume_absent_and_skip(tiny_set):
    full = CTRate(tiny_set, "train")
    gone = full.volume_path(full.names[1])
    gone.unlink()
    msg = _error(lambda: CTRate(tiny_set, "train"))
    assert msg.startswith("1 volume(s) listed in") and str(gone) in msg and "missing='skip'" in msg
    index = CTRate(tiny_set, "train", missing="skip")
    assert index.skipped == [full.names[1]] and index.names == [full.names[0], *full.names[2:]]
    assert [index[i]["name"] for i in range(len(index))] == index.names
    assert torch.equal(index.label_matrix(), full.label_matrix()[[0, *range(2, len(full))]])


def test_row_missing_from_labels_and_bad_cells(tiny_set):
    labels = _ds(tiny_set) / "multi_abnormality_labels" / "train_predicted_labels.csv"
    _rewrite_csv(labels, drop_row=0)
    assert "has no row in" in _error(lambda: CTRate(tiny_set, "train"))
    make_ct_phantoms(tiny_set.parent / "b", n=2, seed=3, progress=False, **TINY_PHANTOMS)
    labels = tiny_set.parent / "b" / "dataset" / "multi_abnormality_labels" / "train_predicted_labels.csv"
    _rewrite_csv(labels, set_cell=(0, ABNORMALITIES[0], "maybe"))
    index = CTRate(tiny_set.parent / "b", "train")
    assert f"{ABNORMALITIES[0]} of train_1_a_1 must be 0 or 1, got 'maybe'" in _error(lambda: index[0])
    meta = tiny_set.parent / "b" / "dataset" / "metadata" / "train_metadata.csv"
    _rewrite_csv(meta, set_cell=(0, "ZSpacing", "thin"))
    index = CTRate(tiny_set.parent / "b", "train", labels=False)
    assert "ZSpacing of train_1_a_1 must be a number, got 'thin'" in _error(lambda: index[0])
    reports = tiny_set.parent / "b" / "dataset" / "radiology_text_reports" / "train_reports.csv"
    _rewrite_csv(reports, set_cell=(0, "VolumeName", "valid_1_a_1.nii.gz"))
    assert "does not belong to split 'train'" in _error(lambda: CTRate(tiny_set.parent / "b", "train", labels=False,
                                                                       metadata=False))
