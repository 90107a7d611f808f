import math

import numpy as np
import pytest
import torch
from PIL import Image

from mmseq.vision.evaluate import (
    SegmentationIoU,
    format_iou_table,
    legend_png,
    overlay,
    pixel_shares,
    save_prediction,
    slide_boxes,
    sliding_window_logits,
)
from mmseq.vision.labels import CLASSES, IGNORE, NUM_CLASSES, colorize

# ------------------------------------------------------------------------------------------------ metric

# Hand-computed example, 4 classes, one image of 2 x 4 pixels:
#   target  0 0 0   1        pred  0 0 1 1
#           1 1 255 0              1 2 3 0
# The ignore pixel (predicted 3) counts nowhere. The 7 counted (target, pred) pairs:
#   (0,0) (0,0) (0,1) (1,1) | (1,1) (1,2) (0,0)
# class 0: label 4, pred 3, intersection 3 -> union 4 + 3 - 3 = 4 -> IoU 3/4, class acc 3/4
# class 1: label 3, pred 3, intersection 2 -> union 3 + 3 - 2 = 4 -> IoU 2/4, class acc 2/3
# class 2: label 0, pred 1, intersection 0 -> union 1             -> IoU 0,   class acc undefined (NaN)
# class 3: label 0, pred 0 (its only prediction is on the ignore pixel) -> union 0 -> IoU NaN, excluded
# mIoU = (3/4 + 2/4 + 0) / 3 = 5/12; pixel acc = (3 + 2) / 7; mean class acc = (3/4 + 2/3) / 2 = 17/24
HAND_TARGET = torch.tensor([[[0, 0, 0, 1], [1, 1, IGNORE, 0]]])
HAND_PRED = torch.tensor([[[0, 0, 1, 1], [1, 2, 3, 0]]])


def test_miou_hand_computed():
    metric = SegmentationIoU(num_classes=4)
    metric.update(HAND_PRED, HAND_TARGET)
    out = metric.compute()
    assert set(out) == {"miou", "iou", "acc", "macc"}
    iou = out["iou"].tolist()
    assert iou[:3] == pytest.approx([0.75, 0.5, 0.0])
    assert math.isnan(iou[3])
    assert float(out["miou"]) == pytest.approx(5 / 12)
    assert float(out["acc"]) == pytest.approx(5 / 7)
    assert float(out["macc"]) == pytest.approx(17 / 24)


def test_miou_accepts_scores_and_rejects_bad_ids():
    scores = torch.nn.functional.one_hot(HAND_PRED, 4).permute(0, 3, 1, 2).float()
    metric = SegmentationIoU(num_classes=4)
    metric.update(scores, HAND_TARGET)
    assert float(metric.compute()["miou"]) == pytest.approx(5 / 12)
    with pytest.raises(ValueError, match="target"):
        metric.update(HAND_PRED, torch.full_like(HAND_TARGET, 7))
    with pytest.raises(ValueError, match="preds"):
        metric.update(torch.full_like(HAND_PRED, 4), HAND_TARGET)


def _reference(preds: np.ndarray, target: np.ndarray, num_classes: int) -> tuple[np.ndarray, float]:
    """mmseg's intersect_and_union with numpy histograms."""
    keep = target != IGNORE
    p, t = preds[keep], target[keep]
    inter = np.bincount(t[p == t], minlength=num_classes).astype(float)
    area_p = np.bincount(p, minlength=num_classes).astype(float)
    area_t = np.bincount(t, minlength=num_classes).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (area_p + area_t - inter)
    return iou, (p == t).mean()


def test_metric_accumulates_like_one_update():
    g = torch.Generator().manual_seed(0)
    c = 6
    preds = torch.randint(0, c - 1, (5, 9, 11), generator=g)  # class 5 never predicted ...
    target = torch.randint(0, c - 1, (5, 9, 11), generator=g)  # ... nor labelled -> NaN
    target[torch.rand(target.shape, generator=g) < 0.2] = IGNORE
    target[1, 0, 0] = 4
    many, one = SegmentationIoU(num_classes=c), SegmentationIoU(num_classes=c)
    for i in range(0, 5, 2):
        many.update(preds[i:i + 2], target[i:i + 2])
    one.update(preds, target)
    a, b = many.compute(), one.compute()
    torch.testing.assert_close(a["iou"], b["iou"], equal_nan=True)
    for k in ("miou", "acc", "macc"):
        assert float(a[k]) == pytest.approx(float(b[k]))
    ref_iou, ref_acc = _reference(preds.numpy(), target.numpy(), c)
    np.testing.assert_allclose(a["iou"].numpy(), ref_iou, rtol=1e-6)
    assert math.isnan(float(a["iou"][5]))
    assert float(a["miou"]) == pytest.approx(np.nanmean(ref_iou))
    assert float(a["acc"]) == pytest.approx(ref_acc)
    many.reset()
    with pytest.warns(UserWarning, match="called before"):
        assert math.isnan(float(many.compute()["miou"]))


# ---------------------------------------------------------------------------------------- sliding window


def _pixelwise(num_classes: int):
    """A 1x1 conv with integer weights: on integer images its outputs (and their averages) are exact."""
    conv = torch.nn.Conv2d(3, num_classes, 1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        conv.weight.copy_(torch.randint(-3, 4, conv.weight.shape, generator=g).float())
        conv.bias.copy_(torch.randint(-3, 4, conv.bias.shape, generator=g).float())
    return conv


@pytest.mark.parametrize("size", [(10, 12), (16, 16), (10, 40), (40, 9), (16, 27), (37, 50), (28, 61)])
def test_sliding_window_equals_whole_image(size):
    c, window, stride = 5, 16, 11
    conv = _pixelwise(c)
    image = torch.randint(0, 10, (2, 3, *size), generator=torch.Generator().manual_seed(2)).float()
    shapes = []

    def predict(x):
        shapes.append(tuple(x.shape[-2:]))
        return conv(x)

    with torch.no_grad():
        out = sliding_window_logits(predict, image, c, window=window, stride=stride)
        whole = conv(image)
    assert out.shape == (2, c, *size)
    assert torch.equal(out, whole)
    if size[0] <= window and size[1] <= window:
        assert shapes == [size]  # predicted whole
    else:
        assert set(shapes) == {(window, window)}  # padded to the window, every window full size


def test_sliding_window_default_setting_and_tuples():
    # The MFuser test setting (512 windows, stride 341) on a non-multiple size, and (h, w) tuples.
    conv = _pixelwise(3)
    image = torch.randint(0, 10, (1, 3, 530, 700), generator=torch.Generator().manual_seed(3)).float()
    calls = []

    def predict(x):
        calls.append(tuple(x.shape[-2:]))
        return conv(x)

    with torch.no_grad():
        assert torch.equal(sliding_window_logits(predict, image, 3), conv(image))
        assert len(calls) == 2 * 2
        out = sliding_window_logits(conv, image, 3, window=(64, 96), stride=(40, 50))
        assert torch.equal(out, conv(image))


def test_sliding_window_averages_overlaps():
    # Each window predicts a constant (its call index): the result at a pixel is the mean over its windows.
    image = torch.zeros(1, 3, 30, 30)
    calls = []

    def predict(x):
        calls.append(None)
        return torch.full((1, 1, *x.shape[-2:]), float(len(calls)))

    out = sliding_window_logits(predict, image, 1, window=16, stride=7)
    boxes = slide_boxes(30, 30, 16, 7)
    total = torch.zeros(30, 30)
    count = torch.zeros(30, 30)
    for i, (y1, y2, x1, x2) in enumerate(boxes, start=1):
        total[y1:y2, x1:x2] += i
        count[y1:y2, x1:x2] += 1
    assert len(calls) == len(boxes)
    torch.testing.assert_close(out[0, 0], total / count)


@pytest.mark.parametrize("size", [(16, 16), (17, 16), (27, 38), (1024, 2048), (512, 1000), (600, 513)])
def test_slide_boxes_cover_every_pixel(size):
    h, w = size
    window, stride = (16, 11) if max(size) < 100 else (512, 341)
    boxes = slide_boxes(h, w, window, stride)
    count = np.zeros(size, dtype=int)
    for y1, y2, x1, x2 in boxes:
        assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w
        assert (y2 - y1, x2 - x1) == (window, window)
        count[y1:y2, x1:x2] += 1
    assert (count > 0).all()
    assert max(b[1] for b in boxes) == h and max(b[3] for b in boxes) == w  # last windows at the border
    if size == (1024, 2048):  # mmseg: ceil((1024-512)/341)+1 = 3 rows, ceil((2048-512)/341)+1 = 6 columns
        assert len(boxes) == 3 * 6


def test_sliding_window_rejects_bad_arguments():
    conv = _pixelwise(2)
    with pytest.raises(ValueError, match="stride"):
        sliding_window_logits(conv, torch.zeros(1, 3, 40, 40), 2, window=8, stride=9)
    with pytest.raises(ValueError, match="expected"):
        sliding_window_logits(conv, torch.zeros(1, 3, 40, 40), 3, window=8, stride=8)


# ----------------------------------------------------------------------------------------------- outputs


def _sample(h=12, w=17, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ids = rng.integers(0, NUM_CLASSES, (h, w)).astype(np.uint8)
    ids[rng.random((h, w)) < 0.25] = IGNORE
    return image, ids


def test_save_prediction_round_trip(tmp_path):
    image, ids = _sample()
    paths = save_prediction(tmp_path / "out", "frankfurt_000000", image, ids, opacity=0.4)
    assert set(paths) == {"label", "color", "overlay"}
    assert paths["label"].name == "frankfurt_000000_labelTrainIds.png"
    assert paths["color"].name == "frankfurt_000000_color.png"
    assert paths["overlay"].name == "frankfurt_000000_overlay.png"
    with Image.open(paths["label"]) as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), ids)
    with Image.open(paths["color"]) as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), colorize(ids))
    with Image.open(paths["overlay"]) as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), overlay(image, ids, 0.4))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths.values())


def test_overlay_opacity():
    image, ids = _sample()
    np.testing.assert_array_equal(overlay(image, ids, 0.0), image)
    full = overlay(image, ids, 1.0)
    labelled = ids != IGNORE
    np.testing.assert_array_equal(full[labelled], colorize(ids)[labelled])
    np.testing.assert_array_equal(full[~labelled], image[~labelled])
    half = overlay(image, ids, 0.5).astype(int)
    expect = (image.astype(int) + colorize(ids).astype(int)) / 2
    assert np.abs(half[labelled] - expect[labelled]).max() <= 0.5
    with pytest.raises(ValueError):
        overlay(image, ids, 1.5)


def test_pixel_shares():
    ids = np.array([[0, 0, 0, 13], [13, 10, IGNORE, IGNORE]], dtype=np.uint8)
    shares = pixel_shares(ids)
    assert list(shares) == ["road", "car", "sky"]
    assert shares == pytest.approx({"road": 0.5, "car": 2 / 6, "sky": 1 / 6})
    _, many = _sample(seed=4)
    assert sum(pixel_shares(many).values()) == pytest.approx(1.0)
    values = list(pixel_shares(many).values())
    assert values == sorted(values, reverse=True)
    assert pixel_shares(np.full((3, 3), IGNORE, dtype=np.uint8)) == {}
    with pytest.raises(ValueError):
        pixel_shares(np.array([[0, 19]], dtype=np.uint8))


def test_legend_png(tmp_path):
    path = legend_png(tmp_path / "legend.png")
    with Image.open(path) as im:
        assert im.mode == "RGB"
        assert im.height > 19 * 10 and im.width > 50
        pixels = {tuple(p) for p in np.asarray(im).reshape(-1, 3).tolist()}
    assert tuple(int(v) for v in colorize(np.array([[13]]))[0, 0]) in pixels  # the car colour is drawn


def test_format_iou_table():
    metric = SegmentationIoU(num_classes=NUM_CLASSES)
    metric.update(HAND_PRED, HAND_TARGET)  # road 75 %, sidewalk 50 %, building 0 %, the rest undefined
    iou = torch.full((NUM_CLASSES,), float("nan"))
    iou[0], iou[13] = 0.98765, 0.5
    other = {"miou": torch.tensor(0.743825), "iou": iou, "acc": torch.tensor(0.9), "macc": torch.tensor(0.8)}
    table = format_iou_table({"cityscapes": metric.compute(), "bdd100k": other})
    lines = table.strip().splitlines()
    assert lines[0] == "| Class | cityscapes | bdd100k |"
    assert len(lines) == 2 + NUM_CLASSES + 1
    assert "| road | 75.0 | 98.8 |" in lines
    assert "| sidewalk | 50.0 | - |" in lines
    assert "| building | 0.0 | - |" in lines
    assert "| wall | - | - |" in lines
    assert "| car | - | 50.0 |" in lines
    assert lines[-1] == "| mIoU | 41.7 | 74.4 |"
    assert [line.split("|")[1].strip() for line in lines[2:]] == [*CLASSES, "mIoU"]
