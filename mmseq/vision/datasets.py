"""Readers for the street-scene data sets in their released layouts (refs/mfuser.md section 13).

Every data set yields ``(image, label)``: image uint8 [3, H, W] RGB, label uint8 [H, W] train ids (0..18,
255 = ignore; ``mmseq.vision.labels``). Layouts (``root`` may also be the folder above, e.g. ``data/``)::

    cityscapes/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png
    cityscapes/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png     (else _gtFine_labelIds.png, 34 ids)
    gta/images/NNNNN.png                                                   (flat; or images/<split>/)
    gta/labels/NNNNN_labelTrainIds.png                                     (else NNNNN.png: palette PNG whose
                                                                            index is a Cityscapes label id)
    gta/{train,val,test}.txt or gtav_split_{train,val,test}.txt           (optional lists, one name a line)
    RAND_CITYSCAPES/RGB/NNNNNNN.png, RAND_CITYSCAPES/GT/LABELS/NNNNNNN.png (16-bit, class in the R channel)
    bdd100k/images/10k/<split>/<stem>.jpg
    bdd100k/labels/sem_seg/masks/<split>/<stem>.png                       (or colormaps/: train ids, palette)
    mapillary/<split>/images/<stem>.jpg                                    (split training/validation)
    mapillary/<split>/labels/<stem>_labelTrainIds.png                     (else v1.2/labels/<stem>.png or
                                                                            labels/<stem>.png: 66 v1.2 ids)

Label PNGs are read as raw index values: a palette ("P") PNG gives its indices, never its colours.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from mmseq.errors import ConfigError, UserError
from mmseq.vision.labels import (
    CITYSCAPES_TO_TRAIN,
    IGNORE,
    MAPILLARY_TO_TRAIN,
    NUM_CLASSES,
    SYNTHIA_TO_TRAIN,
    lut,
)

__all__ = [
    "BDD100K",
    "DATASET_FORMATS",
    "GTA5",
    "Cityscapes",
    "Mapillary",
    "SegmentationFolder",
    "Synthia",
    "class_pixel_counts",
    "map_ids",
    "open_dataset",
    "read_image",
    "read_label",
    "read_png_channel",
]

_IMAGE_KINDS = "PNG/JPEG/BMP/TIFF/WebP"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _open(path: Path, expected: str) -> Image.Image:
    """Open and fully decode an image file with PIL; every failure becomes a one-line UserError."""
    if not path.exists():
        raise UserError(f"{path}: no such file (expected {expected})")
    if path.is_dir():
        raise UserError(f"{path} is a folder (expected {expected})")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is not an image PIL can read (expected {expected}): the file is empty")
    im = None
    try:
        im = Image.open(path)
        im.load()
        return im
    except Image.DecompressionBombError as exc:
        message = f"{path} is too large to read safely: {_one_line(exc)}"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = _one_line(exc)
        reason = "" if reason.startswith("cannot identify image file") else f": {reason}"
        message = f"{path} is not an image PIL can read (expected {expected}){reason}"
    if im is not None:
        im.close()
    raise UserError(message)


def read_image(path: str | Path) -> np.ndarray:
    """Any PIL-readable image -> [H, W, 3] uint8 RGB, with its EXIF orientation applied.

    Alpha is dropped (as OpenCV's colour read, which the reference pipeline uses, does); grayscale is
    repeated to three channels; 16-bit, 32-bit and float grayscale ("I;16", "I", "F") is scaled to 0..255 by
    its own min..max range (a constant image keeps its value, clipped to 0..255); CMYK, YCbCr, palette and
    the rest go through PIL's RGB conversion. A missing, empty, truncated or non-image file raises UserError.
    """
    path = Path(path)
    with _open(path, _IMAGE_KINDS) as opened:
        try:
            im = ImageOps.exif_transpose(opened)
        except Exception:  # noqa: BLE001 - a broken EXIF block must not make a readable image unreadable
            im = opened
        try:
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                a = np.nan_to_num(np.asarray(im).astype(np.float64))
                lo, hi = float(a.min()), float(a.max())
                if hi > lo:
                    a = (a - lo) * (255.0 / (hi - lo))
                g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
                return np.repeat(g[..., None], 3, axis=2)
            out = np.array(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: cannot convert its {im.mode} pixels to RGB: {_one_line(exc)}") from None
    if out.ndim != 3 or out.shape[2] != 3:
        raise UserError(f"{path}: decoded to shape {out.shape}, expected [H, W, 3]")
    return np.ascontiguousarray(out)


def map_ids(ids: np.ndarray, table: dict[int, int] | np.ndarray | None, where: str | Path = "label") -> np.ndarray:
    """Raw ids [H, W] (any integer dtype) -> uint8 train ids through ``table`` (dict or lookup array).

    Ids outside the table (negative, or past the end of a lookup array) become 255. Without a table the ids
    must already be train ids, i.e. fit in 0..255.
    """
    ids = np.asarray(ids)
    if table is None:
        if ids.dtype == np.uint8:
            return ids
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise UserError(f"{where}: label values {int(ids.min())}..{int(ids.max())} are not train ids "
                            f"(0..255); is this a raw-id label that needs an id table?")
        return ids.astype(np.uint8)
    table_arr = lut(table, 65536 if ids.dtype.itemsize > 1 else 256) if isinstance(table, dict) else table
    table_arr = np.asarray(table_arr, dtype=np.uint8)
    if ids.dtype == np.uint8 and len(table_arr) >= 256:
        return table_arr[ids]
    ids = ids.astype(np.int64)
    out = np.full(ids.shape, IGNORE, dtype=np.uint8)
    ok = (ids >= 0) & (ids < len(table_arr))
    out[ok] = table_arr[ids[ok]]
    return out


def read_label(path: str | Path, table: dict[int, int] | np.ndarray | None = None) -> np.ndarray:
    """A single-channel label image -> [H, W] uint8, optionally mapped through ``table`` to train ids.

    Reads the stored index values: palette ("P") PNGs give their indices, not colours; 8-bit, 16-bit
    ("I;16") and 32-bit ("I") grayscale are read as is. A colour (RGB) label is refused: it has no ids.
    """
    path = Path(path)
    with _open(path, "a single-channel PNG of label ids") as im:
        if im.mode in ("P", "L", "I", "F") or im.mode.startswith("I;16"):
            ids = np.array(im)
        elif im.mode in ("PA", "LA"):
            ids = np.array(im.getchannel(0))
        elif im.mode == "1":
            ids = np.array(im).astype(np.uint8)
        else:
            raise UserError(f"{path}: a {im.mode} label image; expected one channel of ids (a palette or "
                            f"grayscale PNG), not colours")
    if ids.dtype.kind == "f":
        ids = np.rint(ids).astype(np.int64)
    return map_ids(ids, table, path)


def read_png_channel(path: str | Path, channel: int = 0) -> np.ndarray:
    """One channel [H, W] of a PNG at its stored depth (uint8 or uint16), for 16-bit multi-channel files.

    PIL reduces 16-bit RGB PNGs to 8 bits, so these are decoded with torchvision's libpng instead.
    ``channel`` counts in the file's own order (R, G, B, A).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected a PNG label)")
    from torchvision.io import ImageReadMode, decode_png

    try:
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        t = decode_png(data, mode=ImageReadMode.UNCHANGED)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{path} is not a PNG torchvision can read (expected a 8/16-bit PNG label): "
                        f"{_one_line(exc)}") from None
    n = t.shape[0]
    if not -n <= channel < n:
        raise UserError(f"{path} has {n} channel(s); channel {channel} does not exist")
    c = t[channel % n]
    if c.dtype == torch.uint16:
        return c.to(torch.int32).numpy().astype(np.uint16)
    return c.numpy().copy()


# ------------------------------------------------------------------------------------------------- data sets


class SegmentationFolder(Dataset):
    """(image, label) pairs on disk -> (uint8 [3, H, W], uint8 [H, W]); subclasses find the pairs.

    ``files``: list of (image_path, label_path); ``tables``: per pair, the id table that maps its label file
    to train ids (None when the file already holds train ids).
    """

    name = "segmentation"

    def __init__(self, files: Sequence[tuple[Path, Path]], tables: Sequence[np.ndarray | None] | None = None):
        self.files: list[tuple[Path, Path]] = [(Path(i), Path(t)) for i, t in files]
        self.tables: list[np.ndarray | None] = list(tables) if tables is not None else [None] * len(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def read_label(self, index: int) -> np.ndarray:
        """The train-id label [H, W] uint8 of pair ``index`` (without reading its image)."""
        return read_label(self.files[index][1], self.tables[index])

    def read_image(self, index: int) -> np.ndarray:
        return read_image(self.files[index][0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.read_image(index)
        label = self.read_label(index)
        if image.shape[:2] != label.shape:
            img_path, lbl_path = self.files[index]
            raise UserError(f"{img_path} is {image.shape[1]}x{image.shape[0]} but its label {lbl_path} is "
                            f"{label.shape[1]}x{label.shape[0]}")
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(np.ascontiguousarray(label))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} pairs)"


def _locate(root: str | Path, marker: str, nested: Sequence[str], layout: str) -> Path:
    """The data set folder: ``root`` if it holds ``marker``, else ``root/<n>`` for a known nested name."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist (expected {layout})")
    if (root / marker).exists():
        return root
    for name in nested:
        if (root / name / marker).exists():
            return root / name
    raise UserError(f"{root} has no {marker}/ folder (expected {layout})")


def _need_dir(path: Path, layout: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{path} does not exist (expected {layout})")
    return path


def _pair_labels(images, candidates, table: np.ndarray):
    """(files, tables, missing) for ``images``: each image's label is the first existing path of
    ``candidates(img)`` = (train-id file, raw-id file, ...): the first needs no table, the others ``table``."""
    files, tables, missing = [], [], []
    for img in images:
        paths = candidates(img)
        found = next((i for i, p in enumerate(paths) if p.is_file()), None)
        if found is None:
            missing.append(img)
        else:
            files.append((img, paths[found]))
            tables.append(None if found == 0 else table)
    return files, tables, missing


def _no_pairs(folder: Path, layout: str, missing: list[Path] | None = None) -> UserError:
    if missing:
        return UserError(f"no label for {len(missing)} image(s) under {folder}, e.g. {missing[0]} "
                         f"(expected {layout})")
    return UserError(f"no image/label pairs under {folder} (expected {layout})")


class Cityscapes(SegmentationFolder):
    """Cityscapes ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` + its gtFine label.

    The label is ``gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png`` when present (train ids, as the
    conversion script writes), else the official ``<stem>_gtFine_labelIds.png`` mapped by CITYSCAPES_TO_TRAIN.
    """

    name = "cityscapes"
    LAYOUT = ("cityscapes/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png with "
              "cityscapes/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png or _gtFine_labelIds.png")

    def __init__(self, root: str | Path, split: str = "train"):
        split = {"validation": "val", "training": "train"}.get(split, split)
        self.root = _locate(root, "leftImg8bit", ("cityscapes", "Cityscapes"), self.LAYOUT)
        image_dir = _need_dir(self.root / "leftImg8bit" / split, self.LAYOUT)
        label_dir = self.root / "gtFine" / split
        table = lut(CITYSCAPES_TO_TRAIN)

        def candidates(img: Path) -> tuple[Path, Path]:
            stem = img.name[: -len("_leftImg8bit.png")]
            folder = label_dir / img.parent.name
            return folder / f"{stem}_gtFine_labelTrainIds.png", folder / f"{stem}_gtFine_labelIds.png"

        files, tables, missing = _pair_labels(sorted(image_dir.glob("*/*_leftImg8bit.png")), candidates, table)
        if missing or not files:
            raise _no_pairs(image_dir, self.LAYOUT, missing)
        super().__init__(files, tables)
        self.split = split


def _read_list(path: Path) -> list[str]:
    """Stems from a split list: one name a line ("00001.png", "images/00001.png" or "00001")."""
    stems = []
    for line in path.read_text().splitlines():
        line = line.strip().split()[0] if line.strip() else ""
        if line and not line.startswith("#"):
            stems.append(Path(line).stem)
    return stems


class GTA5(SegmentationFolder):
    """GTA5 ``images/NNNNN.png`` + ``labels/NNNNN_labelTrainIds.png`` (train ids) or ``labels/NNNNN.png``.

    The released labels are palette PNGs whose index is a Cityscapes label id (mapped by
    CITYSCAPES_TO_TRAIN). ``split`` selects ``images/<split>/`` (and ``labels/<split>/``) when those folders
    exist, else the stems listed in ``<split>.txt`` or RobustNet's ``gtav_split_<split>.txt`` (in the root or
    its ``split_data/``); without either, every image of the flat folders is used (a warning says so for a
    split other than "train").
    """

    name = "gta5"
    LAYOUT = "gta/images/NNNNN.png with gta/labels/NNNNN_labelTrainIds.png or gta/labels/NNNNN.png"

    def __init__(self, root: str | Path, split: str | None = None):
        self.root = _locate(root, "images", ("gta", "gta5", "GTA5", "GTA", "gtav", "GTAV"), self.LAYOUT)
        image_dir, label_dir = self.root / "images", self.root / "labels"
        stems: set[str] | None = None
        if split is not None:
            if (image_dir / split).is_dir():
                image_dir, label_dir = image_dir / split, label_dir / split
            else:
                lists = [self.root / f"{split}.txt", self.root / f"gtav_split_{split}.txt",
                         self.root / "split_data" / f"gtav_split_{split}.txt"]
                found = next((p for p in lists if p.is_file()), None)
                if found is not None:
                    stems = set(_read_list(found))
                elif split != "train":
                    warnings.warn(f"GTA5: no {split} list ({lists[0].name} or {lists[1].name}) in {self.root}; "
                                  f"using every image", stacklevel=2)
        _need_dir(label_dir, self.LAYOUT)
        table = lut(CITYSCAPES_TO_TRAIN)
        images = [p for p in sorted(image_dir.rglob("*")) if p.suffix.lower() in (".png", ".jpg", ".jpeg")
                  and (stems is None or p.stem in stems)]

        def candidates(img: Path) -> tuple[Path, Path]:
            folder = label_dir / img.parent.relative_to(image_dir)
            return folder / f"{img.stem}_labelTrainIds.png", folder / f"{img.stem}.png"

        files, tables, missing = _pair_labels(images, candidates, table)
        if missing or not files:
            raise _no_pairs(image_dir, self.LAYOUT, missing)
        super().__init__(files, tables)
        self.split = split


class Synthia(SegmentationFolder):
    """SYNTHIA-RAND-CITYSCAPES ``RGB/NNNNNNN.png`` + ``GT/LABELS/NNNNNNN.png`` (16-bit, multi-channel).

    The class id is "the last channel as OpenCV reads it" (``cv2.imread(f, IMREAD_UNCHANGED)[..., -1]`` in the
    reference converters). OpenCV returns channels in B, G, R order, so for these 3-channel files that is
    the R channel: channel 0 in the file's (and PIL/numpy's) R, G, B order - the same channel other
    converters read as ``imageio.imread(f, format="PNG-FI")[..., 0]``. SYNTHIA_TO_TRAIN maps it to train ids.
    A ``GT/LABELS/NNNNNNN_labelTrainIds.png`` next to it (8-bit train ids) is preferred when present.
    ``split`` selects ``RGB/<split>/`` when that folder exists, or the stems of ``synthia_split_<split>.txt``.
    """

    name = "synthia"
    LAYOUT = "RAND_CITYSCAPES/RGB/NNNNNNN.png with RAND_CITYSCAPES/GT/LABELS/NNNNNNN.png (16-bit)"
    LABEL_CHANNEL = 0

    def __init__(self, root: str | Path, split: str | None = None):
        self.root = _locate(root, "RGB", ("RAND_CITYSCAPES", "synthia/RAND_CITYSCAPES", "synthia"), self.LAYOUT)
        image_dir, label_dir = self.root / "RGB", self.root / "GT" / "LABELS"
        stems: set[str] | None = None
        if split is not None:
            if (image_dir / split).is_dir():
                image_dir = image_dir / split
                if (label_dir / split).is_dir():
                    label_dir = label_dir / split
            else:
                lists = [self.root / f"synthia_split_{split}.txt", self.root / f"{split}.txt",
                         self.root / "split_data" / f"synthia_split_{split}.txt"]
                found = next((p for p in lists if p.is_file()), None)
                if found is not None:
                    stems = set(_read_list(found))
        _need_dir(label_dir, self.LAYOUT)
        table = lut(SYNTHIA_TO_TRAIN, 65536)
        images = [img for img in sorted(image_dir.glob("*.png")) if stems is None or img.stem in stems]
        files, tables, missing = _pair_labels(
            images, lambda img: (label_dir / f"{img.stem}_labelTrainIds.png", label_dir / img.name), table)
        if missing or not files:
            raise _no_pairs(image_dir, self.LAYOUT, missing)
        super().__init__(files, tables)
        self.split = split

    def read_label(self, index: int) -> np.ndarray:
        path, table = self.files[index][1], self.tables[index]
        if table is None:
            return read_label(path)
        return map_ids(read_png_channel(path, self.LABEL_CHANNEL), table, path)


class BDD100K(SegmentationFolder):
    """BDD100K 10K segmentation: ``images/10k/<split>/<stem>.jpg`` + a train-id PNG per image.

    Labels from ``labels/sem_seg/masks/<split>/<stem>.png`` (train ids, grayscale) or, when absent,
    ``labels/sem_seg/colormaps/<split>/<stem>.png`` (the same ids with a palette; read as indices). The older
    ``seg/images/<split>/`` + ``seg/labels/<split>/<stem>_train_id.png`` release is read too.
    """

    name = "bdd100k"
    LAYOUT = ("bdd100k/images/10k/<split>/<stem>.jpg with bdd100k/labels/sem_seg/masks/<split>/<stem>.png "
              "or bdd100k/labels/sem_seg/colormaps/<split>/<stem>.png")

    def __init__(self, root: str | Path, split: str = "train"):
        split = {"validation": "val", "training": "train"}.get(split, split)
        self.root = _locate(root, "images", ("bdd100k", "BDD100K", "seg", "bdd100k/seg"), self.LAYOUT)
        if not (self.root / "images" / "10k").is_dir() and (self.root / "labels" / split).is_dir():
            # the older seg/ release: seg/images/<split>/<stem>.jpg + seg/labels/<split>/<stem>_train_id.png
            image_dir = _need_dir(self.root / "images" / split, self.LAYOUT)
            label_dirs, suffixes = [self.root / "labels" / split], ("_train_id.png", ".png")
        else:
            image_dir = _need_dir(self.root / "images" / "10k" / split, self.LAYOUT)
            sem = self.root / "labels" / "sem_seg"
            label_dirs = [d for d in (sem / "masks" / split, sem / "colormaps" / split) if d.is_dir()]
            if not label_dirs:
                raise UserError(f"{sem} has no masks/{split}/ or colormaps/{split}/ folder (expected {self.LAYOUT})")
            suffixes = (".png",)
        files, missing = [], []
        for img in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
            label = next((d / f"{img.stem}{s}" for d in label_dirs for s in suffixes
                          if (d / f"{img.stem}{s}").is_file()), None)
            if label is None:
                missing.append(img)
            else:
                files.append((img, label))
        if missing or not files:
            raise _no_pairs(image_dir, self.LAYOUT, missing)
        super().__init__(files)
        self.split = split


class Mapillary(SegmentationFolder):
    """Mapillary Vistas ``<split>/images/<stem>.jpg`` (split ``training``/``validation``; train/val accepted).

    Label ``<split>/labels/<stem>_labelTrainIds.png`` (train ids) when present, else the v1.2 index PNG
    ``<split>/v1.2/labels/<stem>.png`` or ``<split>/labels/<stem>.png`` (66 ids, 65 = unlabeled) mapped by
    MAPILLARY_TO_TRAIN. The v2.0 labels (124 ids) have no table here and are refused.
    """

    name = "mapillary"
    LAYOUT = ("mapillary/<training|validation>/images/<stem>.jpg with "
              "mapillary/<split>/labels/<stem>_labelTrainIds.png or mapillary/<split>/v1.2/labels/<stem>.png")
    SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation",
              "test": "testing", "testing": "testing"}

    def __init__(self, root: str | Path, split: str = "training"):
        split = self.SPLITS.get(split, split)
        self.root = _locate(root, split, ("mapillary", "Mapillary", "mapillary_vistas", "vistas"), self.LAYOUT)
        image_dir = _need_dir(self.root / split / "images", self.LAYOUT)
        labels, v12 = self.root / split / "labels", self.root / split / "v1.2" / "labels"
        table = lut(MAPILLARY_TO_TRAIN)
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        files, tables, missing = _pair_labels(
            images, lambda img: (labels / f"{img.stem}_labelTrainIds.png", v12 / f"{img.stem}.png",
                                 labels / f"{img.stem}.png"), table)
        if not files and (self.root / split / "v2.0" / "labels").is_dir():
            raise UserError(f"{self.root / split} has only v2.0 labels (124 ids); the Mapillary table maps the "
                            f"v1.2 ids (expected {self.LAYOUT})")
        if missing or not files:
            raise _no_pairs(image_dir, self.LAYOUT, missing)
        super().__init__(files, tables)
        self.split = split


DATASET_FORMATS: dict[str, Callable[..., SegmentationFolder]] = {
    "cityscapes": Cityscapes,
    "gta5": GTA5,
    "synthia": Synthia,
    "bdd100k": BDD100K,
    "mapillary": Mapillary,
}
_ALIASES = {"gta": "gta5", "gtav": "gta5", "bdd": "bdd100k", "vistas": "mapillary", "city": "cityscapes"}


def open_dataset(format: str, root: str | Path, split: str | None = None) -> SegmentationFolder:
    """The data set of ``format`` (a DATASET_FORMATS key) under ``root``; ``split`` None = the format's default."""
    key = str(format).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASET_FORMATS:
        raise ConfigError(f"data.format: unknown data set format {format!r}; expected one of "
                          f"{', '.join(DATASET_FORMATS)}")
    cls = DATASET_FORMATS[key]
    return cls(root) if split is None else cls(root, split)


def class_pixel_counts(dataset: SegmentationFolder | Dataset) -> np.ndarray:
    """Pixels of each train id over the whole data set: int64 [19] (ignore not counted); reads labels only."""
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    reader = getattr(dataset, "read_label", None)
    for i in range(len(dataset)):
        label = reader(i) if reader is not None else np.asarray(dataset[i][1])
        counts += np.bincount(np.asarray(label, dtype=np.uint8).ravel(), minlength=256)[:NUM_CLASSES]
    return counts
