"""Readers for the street-scene layouts, on miniature trees with known label values."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmseq.errors import ConfigError, UserError
from mmseq.vision.datasets import (
    BDD100K,
    DATASET_FORMATS,
    GTA5,
    Cityscapes,
    Mapillary,
    Synthia,
    class_pixel_counts,
    open_dataset,
    read_image,
    read_label,
    read_png_channel,
)
from mmseq.vision.labels import CITYSCAPES_TO_TRAIN, PALETTE

H, W = 4, 6


def _rgb(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _save_rgb(path: Path, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = _rgb(seed)
    Image.fromarray(arr).save(path)
    return arr


def _save_ids(path: Path, ids: np.ndarray, palette: bool = False) -> None:
    """An 8-bit index PNG; with ``palette`` a "P" image whose colours differ from the indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8))
    if palette:  # putpalette turns the "L" image into "P" with the same indices
        pal = np.zeros((256, 3), np.uint8)
        pal[: len(PALETTE)] = PALETTE
        pal[26] = (0, 0, 142)
        im.putpalette(pal.ravel().tolist())
    im.save(path)


def _png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit PNG (gray, gray+alpha, RGB or RGBA) written by hand: PIL cannot write 16-bit colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = arr if arr.ndim == 3 else arr[..., None]
    h, w, c = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _ids_with(values: dict[tuple[int, int], int], fill: int = 0) -> np.ndarray:
    ids = np.full((H, W), fill, dtype=np.int64)
    for (y, x), v in values.items():
        ids[y, x] = v
    return ids


# ------------------------------------------------------------------------------------------------ read_image


def test_read_image_rgb_and_jpeg(tmp_path):
    arr = _save_rgb(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, arr)
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(tmp_path / "b.jpg", quality=95)
    out = read_image(str(tmp_path / "b.jpg"))
    assert out.shape == (8, 8, 3) and abs(int(out.mean()) - 120) <= 2


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA", "P", "CMYK", "1", "YCbCr"])
def test_read_image_pil_modes(tmp_path, mode):
    gray = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))
    base = Image.fromarray(np.stack([gray] * 3, -1))
    im = base.convert(mode)
    ext = "tif" if mode in ("CMYK", "YCbCr") else "png"
    path = tmp_path / f"x.{ext}"
    if mode == "YCbCr":
        ext, path = "jpg", tmp_path / "x.jpg"
    im.save(path)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    if mode in ("RGBA", "L", "LA", "P"):
        np.testing.assert_allclose(out[..., 0].astype(int), gray, atol=2)
    else:  # lossy modes: still dark on the left, bright on the right
        assert out[:, 0].mean() < 60 and out[:, -1].mean() > 190


def test_read_image_rgba_drops_alpha(tmp_path):
    arr = np.zeros((H, W, 4), np.uint8)
    arr[..., 0] = 200
    arr[..., 3] = 0  # fully transparent: the colour is kept, as OpenCV's colour read keeps it
    Image.fromarray(arr, "RGBA").save(tmp_path / "t.png")
    out = read_image(tmp_path / "t.png")
    assert (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_read_image_high_bit_depth_scaled_by_range(tmp_path):
    a16 = np.tile(np.linspace(1000, 60000, W).astype(np.uint16), (H, 1))
    Image.fromarray(a16).save(tmp_path / "g16.png")  # I;16 (or I) PNG
    out = read_image(tmp_path / "g16.png")
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255 and (np.diff(out[0, :, 0].astype(int)) > 0).all()
    Image.fromarray(a16.astype(np.int32)).save(tmp_path / "i32.tif")
    assert read_image(tmp_path / "i32.tif")[0, -1, 2] == 255
    Image.fromarray(a16.astype(np.float32) / 7.0).save(tmp_path / "f.tif")
    out = read_image(tmp_path / "f.tif")
    assert out[0, 0, 1] == 0 and out[0, -1, 1] == 255
    _png16(tmp_path / "c16.png", np.stack([a16] * 3, -1))  # 16-bit RGB: PIL reads it as 8-bit RGB
    out = read_image(tmp_path / "c16.png")
    assert out.shape == (H, W, 3) and out[0, -1, 0] > out[0, 0, 0]


def test_read_image_applies_exif_orientation(tmp_path):
    arr = np.zeros((4, 8, 3), np.uint8)
    arr[:, :4] = 255  # left half white
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (8, 4, 3)
    assert out[:4].mean() > 200 and out[4:].mean() < 50  # the white left half is now on top


@pytest.mark.parametrize("kind", ["text", "truncated", "empty", "missing", "folder"])
def test_read_image_bad_files_raise_one_line(tmp_path, kind):
    path = tmp_path / "bad.png"
    if kind == "text":
        path.write_text("not an image\nsecond line\n")
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    with pytest.raises(UserError) as info:
        read_image(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    if kind in ("text", "truncated", "empty"):
        assert "is not an image PIL can read (expected PNG/JPEG" in msg
    if kind == "missing":
        assert "no such file" in msg


# ------------------------------------------------------------------------------------------------ read_label


def test_read_label_keeps_palette_indices_and_maps(tmp_path):
    ids = _ids_with({(0, 0): 26, (1, 1): 7}, fill=0)
    _save_ids(tmp_path / "p.png", ids, palette=True)
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P"
    raw = read_label(tmp_path / "p.png")
    np.testing.assert_array_equal(raw, ids)
    mapped = read_label(tmp_path / "p.png", CITYSCAPES_TO_TRAIN)
    assert mapped[0, 0] == 13 and mapped[1, 1] == 0 and mapped[2, 2] == 255


def test_read_label_16bit_and_refusals(tmp_path):
    ids = _ids_with({(0, 0): 300, (0, 1): 8}, fill=2)
    Image.fromarray(ids.astype(np.uint16)).save(tmp_path / "l16.png")
    assert read_label(tmp_path / "l16.png", {8: 13, 300: 5, 2: 1})[0, :3].tolist() == [5, 13, 1]
    with pytest.raises(UserError, match="not train ids"):
        read_label(tmp_path / "l16.png")
    Image.fromarray(_rgb()).save(tmp_path / "colour.png")
    with pytest.raises(UserError, match="one channel"):
        read_label(tmp_path / "colour.png")
    Image.fromarray(np.eye(4, dtype=bool)).save(tmp_path / "bits.png")
    assert read_label(tmp_path / "bits.png").tolist() == np.eye(4, dtype=np.uint8).tolist()
    (tmp_path / "t.png").write_text("x")
    with pytest.raises(UserError, match="is not an image"):
        read_label(tmp_path / "t.png")


def test_read_png_channel_16bit(tmp_path):
    arr = np.zeros((H, W, 3), np.uint16)
    arr[..., 0], arr[..., 1], arr[..., 2] = 8, 1234, 65535
    _png16(tmp_path / "s.png", arr)
    assert read_png_channel(tmp_path / "s.png", 0).dtype == np.uint16
    assert read_png_channel(tmp_path / "s.png", 0)[0, 0] == 8
    assert read_png_channel(tmp_path / "s.png", 1)[0, 0] == 1234
    assert read_png_channel(tmp_path / "s.png", -1)[0, 0] == 65535
    with pytest.raises(UserError, match="channel"):
        read_png_channel(tmp_path / "s.png", 3)


# ---------------------------------------------------------------------------------------------------- layouts


def _check_item(ds, index: int, image: np.ndarray | None = None):
    img, lbl = ds[index]
    assert img.dtype == torch.uint8 and img.shape == (3, H, W)
    assert lbl.dtype == torch.uint8 and lbl.shape == (H, W)
    if image is not None:
        np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), image)
    return lbl.numpy()


def test_cityscapes(tmp_path):
    root = tmp_path / "cityscapes"
    img_a = _save_rgb(root / "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png", 1)
    _save_ids(root / "gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png",
              _ids_with({(0, 0): 7, (0, 1): 26, (0, 2): 33}, fill=0))
    _save_rgb(root / "leftImg8bit/val/bonn/bonn_000001_000019_leftImg8bit.png", 2)
    _save_ids(root / "gtFine/val/bonn/bonn_000001_000019_gtFine_labelIds.png", _ids_with({}, fill=7))
    _save_ids(root / "gtFine/val/bonn/bonn_000001_000019_gtFine_labelTrainIds.png", _ids_with({(3, 5): 18}, fill=10))
    ds = Cityscapes(tmp_path, "val")  # the folder above cityscapes/ works too
    assert len(ds) == 2 and ds.files[0][1].name.endswith("_labelIds.png")
    assert ds.files[1][1].name.endswith("_labelTrainIds.png")  # preferred when present
    lbl = _check_item(ds, 0, img_a)
    assert lbl[0, :3].tolist() == [0, 13, 18] and lbl[1, 0] == 255
    lbl = _check_item(ds, 1)
    assert lbl[0, 0] == 10 and lbl[3, 5] == 18
    with pytest.raises(UserError, match=r"leftImg8bit/<split>/<city>"):
        Cityscapes(root, "train")


def test_gta5_palette_labels_and_splits(tmp_path):
    root = tmp_path / "gta"
    for i in (1, 2, 3):
        _save_rgb(root / f"images/{i:05d}.png", i)
        _save_ids(root / f"labels/{i:05d}.png", _ids_with({(0, 0): 26, (1, 0): 7}, fill=0), palette=True)
    _save_ids(root / "labels/00003_labelTrainIds.png", _ids_with({}, fill=4))
    ds = GTA5(root)
    assert len(ds) == 3 and [p.name for p, _ in ds.files] == ["00001.png", "00002.png", "00003.png"]
    lbl = _check_item(ds, 0)
    assert lbl[0, 0] == 13 and lbl[1, 0] == 0 and lbl[2, 2] == 255
    assert (_check_item(ds, 2) == 4).all()
    (root / "gtav_split_val.txt").write_text("00002.png\n")
    (root / "train.txt").write_text("00001\n00003\n")
    assert [p.name for p, _ in GTA5(root, "val").files] == ["00002.png"]
    assert [p.name for p, _ in GTA5(root, "train").files] == ["00001.png", "00003.png"]
    with pytest.warns(UserWarning, match="using every image"):
        assert len(GTA5(root, "test")) == 3
    (root / "labels/00002.png").unlink()
    with pytest.raises(UserError, match="no label for 1 image"):
        GTA5(root)


def test_gta5_split_folders(tmp_path):
    root = tmp_path / "data" / "gta"
    for split, i in (("train", 1), ("train", 2), ("val", 3)):
        _save_rgb(root / f"images/{split}/folder/{i:05d}.png", i)
        _save_ids(root / f"labels/{split}/folder/{i:05d}.png", _ids_with({(0, 0): 26}, fill=7), palette=True)
    ds = open_dataset("gta5", tmp_path / "data", "val")  # the folder above gta/ works too
    assert [p.name for p, _ in ds.files] == ["00003.png"]
    assert _check_item(ds, 0)[0, :2].tolist() == [13, 0]
    assert len(GTA5(root, "train")) == 2 and len(GTA5(root)) == 3


def test_synthia_16bit_labels(tmp_path):
    root = tmp_path / "RAND_CITYSCAPES"
    img = _save_rgb(root / "RGB/0000000.png", 5)
    lab = np.zeros((H, W, 3), np.uint16)
    lab[..., 0] = 8  # class (R): car
    lab[0, 0, 0] = 3  # road
    lab[0, 1, 0] = 0  # void
    lab[..., 1] = 513  # instance id in G, must not leak into the class
    _png16(root / "GT/LABELS/0000000.png", lab)
    ds = Synthia(tmp_path)
    lbl = _check_item(ds, 0, img)
    assert lbl[0, 0] == 0 and lbl[0, 1] == 255 and lbl[2, 3] == 13
    assert open_dataset("synthia", root).files == ds.files
    (root / "synthia_split_val.txt").write_text("0000001.png\n")
    _save_rgb(root / "RGB/0000001.png", 6)
    _png16(root / "GT/LABELS/0000001.png", lab)
    assert [p.name for p, _ in Synthia(root, "val").files] == ["0000001.png"]
    assert len(Synthia(root)) == 2


def test_bdd100k_masks_and_colormaps(tmp_path):
    root = tmp_path / "bdd100k"
    img = np.full((H, W, 3), 90, np.uint8)
    for stem in ("a", "b"):
        (root / "images/10k/val").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"images/10k/val/{stem}.jpg", quality=95)
    _save_ids(root / "labels/sem_seg/masks/val/a.png", _ids_with({(0, 0): 13}, fill=255))
    _save_ids(root / "labels/sem_seg/colormaps/val/b.png", _ids_with({(1, 1): 13}, fill=0), palette=True)
    ds = BDD100K(root, "val")
    assert [lbl.parent.parent.name for _, lbl in ds.files] == ["masks", "colormaps"]
    assert _check_item(ds, 0)[0, 0] == 13 and _check_item(ds, 0)[1, 1] == 255
    b = _check_item(ds, 1)
    assert b[1, 1] == 13 and b[0, 0] == 0  # palette indices, not colours
    with pytest.raises(UserError, match="images/10k/<split>"):
        BDD100K(root, "train")


def test_bdd100k_older_seg_release(tmp_path):
    root = tmp_path / "bdd100k" / "seg"
    _save_rgb(root / "images/train/c.png", 3)
    _save_ids(root / "labels/train/c_train_id.png", _ids_with({(2, 2): 18}, fill=255))
    ds = BDD100K(tmp_path / "bdd100k", "train")
    assert _check_item(ds, 0)[2, 2] == 18


def test_mapillary_v12_and_train_ids(tmp_path):
    root = tmp_path / "mapillary"
    _save_rgb(root / "validation/images/x1.png", 1)
    Image.fromarray(_rgb(2)).save(root / "validation/images/x2.jpg", quality=95)
    _save_ids(root / "validation/v1.2/labels/x1.png", _ids_with({(0, 0): 55, (0, 1): 13}, fill=65), palette=True)
    _save_ids(root / "validation/labels/x2_labelTrainIds.png", _ids_with({}, fill=11))
    ds = Mapillary(tmp_path, "val")
    assert ds.split == "validation" and len(ds) == 2
    lbl = _check_item(ds, 0)
    assert lbl[0, :3].tolist() == [13, 0, 255]
    assert (_check_item(ds, 1) == 11).all()
    assert len(open_dataset("mapillary", root, "validation")) == 2
    with pytest.raises(UserError, match="training"):
        Mapillary(root, "train")


@pytest.mark.parametrize("fmt", sorted(DATASET_FORMATS))
def test_missing_root_names_layout(tmp_path, fmt):
    with pytest.raises(UserError) as info:
        open_dataset(fmt, tmp_path / "nowhere", None)
    msg = str(info.value)
    assert "\n" not in msg and "nowhere" in msg and "expected" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="expected"):
        open_dataset(fmt, tmp_path / "empty", None)


def test_empty_split_folder(tmp_path):
    (tmp_path / "leftImg8bit/train").mkdir(parents=True)
    (tmp_path / "gtFine/train").mkdir(parents=True)
    with pytest.raises(UserError, match=r"no image/label pairs under .*leftImg8bit"):
        Cityscapes(tmp_path, "train")


def test_open_dataset_unknown_format(tmp_path):
    with pytest.raises(ConfigError) as info:
        open_dataset("kitti", tmp_path, "train")
    assert "cityscapes" in str(info.value) and "mapillary" in str(info.value)


def test_class_pixel_counts(tmp_path):
    root = tmp_path / "gta"
    for i in (1, 2):
        _save_rgb(root / f"images/{i:05d}.png", i)
        _save_ids(root / f"labels/{i:05d}.png", _ids_with({(0, 0): 26, (0, 1): 26}, fill=7))
    counts = class_pixel_counts(GTA5(root))
    assert counts.shape == (19,) and counts[13] == 4 and counts[0] == 2 * (H * W - 2) and counts.sum() == 2 * H * W


def test_size_mismatch(tmp_path):
    root = tmp_path / "gta"
    _save_rgb(root / "images/00001.png")
    _save_ids(root / "labels/00001.png", np.zeros((H + 1, W), np.int64))
    with pytest.raises(UserError, match="but its label"):
        GTA5(root)[0]
