"""The training augmentations (rescale, cat_max_ratio crop, flip, photometric distortion, pad) and eval resize."""

import colorsys

import pytest
import torch

from mmseq.vision.augment import (
    SegAugment,
    hsv_to_rgb,
    photometric_distortion,
    random_crop,
    rescale_size,
    resize,
    resize_keep_ratio,
    resize_label,
    resize_region,
    rgb_to_hsv,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sample(h: int = 60, w: int = 80, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    label = torch.randint(0, 4, (h, w), dtype=torch.uint8, generator=g) * 3  # {0, 3, 6, 9}
    label[:5] = 255
    return image, label


def test_shapes_and_label_values():
    image, label = _sample()
    aug = SegAugment(crop_size=(32, 48))
    g = _gen(1)
    for _ in range(8):
        img, lbl = aug(image, label, g)
        assert img.shape == (3, 32, 48) and img.dtype == torch.uint8
        assert lbl.shape == (32, 48) and lbl.dtype == torch.uint8
        assert set(lbl.unique().tolist()) <= {0, 3, 6, 9, 255}


def test_deterministic_under_same_seed():
    image, label = _sample()
    aug = SegAugment(crop_size=(40, 40))
    a = [aug(image, label, g) for g in [_gen(7)] for _ in range(4)]
    b = [aug(image, label, g) for g in [_gen(7)] for _ in range(4)]
    for (ia, la), (ib, lb) in zip(a, b, strict=True):
        assert torch.equal(ia, ib) and torch.equal(la, lb)
    c = aug(image, label, _gen(8))
    assert not torch.equal(c[0], a[0][0])


def test_flip_moves_image_and_label_together():
    h, w = 16, 20
    label = torch.zeros(h, w, dtype=torch.uint8)
    label[:, : w // 4] = 1  # asymmetric: class 1 on the left quarter only
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[0] = label * 200
    plain = SegAugment(crop_size=(h, w), scale_range=None, cat_max_ratio=1.0, flip=0.0, photometric=False)
    flipped = SegAugment(crop_size=(h, w), scale_range=None, cat_max_ratio=1.0, flip=1.0, photometric=False)
    img0, lbl0 = plain(image, label, _gen())
    img1, lbl1 = flipped(image, label, _gen())
    assert torch.equal(lbl0, label) and torch.equal(img0, image)
    assert (lbl1[:, -(w // 4):] == 1).all() and (lbl1[:, : -(w // 4)] == 0).all()
    assert torch.equal(img1[0], lbl1 * 200)  # the image follows its label


def test_padding_uses_ignore_and_zero():
    image = torch.full((3, 10, 12), 77, dtype=torch.uint8)
    label = torch.full((10, 12), 2, dtype=torch.uint8)
    aug = SegAugment(crop_size=(16, 20), scale_range=None, flip=0.0, photometric=False)
    img, lbl = aug(image, label, _gen())
    assert img.shape == (3, 16, 20) and lbl.shape == (16, 20)
    assert (lbl[:10, :12] == 2).all() and (lbl[10:] == 255).all() and (lbl[:, 12:] == 255).all()
    assert (img[:, :10, :12] == 77).all() and (img[:, 10:] == 0).all() and (img[:, :, 12:] == 0).all()


def test_cat_max_ratio_respected_when_possible():
    h, w = 64, 64
    label = torch.zeros(h, w, dtype=torch.uint8)
    label[:, 48:] = 5  # a crop of 16x16 is one class unless it straddles column 48
    hits_free, hits_ratio = 0, 0
    for seed in range(40):
        box = random_crop(label, (16, 16), _gen(seed), cat_max_ratio=1.0)
        crop = label[box[0]:box[1], box[2]:box[3]]
        hits_free += int(crop.unique().numel() > 1)
        box = random_crop(label, (16, 16), _gen(seed), cat_max_ratio=0.9)
        crop = label[box[0]:box[1], box[2]:box[3]]
        counts = torch.bincount(crop.reshape(-1).long())
        hits_ratio += int(counts.max() < 0.9 * crop.numel())
    assert hits_free < 20 and hits_ratio >= 30  # redrawing finds mixed crops far more often than chance


def test_cat_max_ratio_ignores_ignore_pixels():
    label = torch.full((8, 8), 255, dtype=torch.uint8)
    label[0, 0], label[0, 1] = 1, 2
    # 62 ignored pixels must not count as a dominant class: the first box is kept
    box = random_crop(label, (8, 8), _gen(), cat_max_ratio=0.75)
    assert box == (0, 8, 0, 8)


def test_rescale_ratio_and_base_size():
    image, label = _sample(40, 60)
    big = SegAugment(crop_size=(400, 400), scale_range=(2.0, 2.0), cat_max_ratio=1.0, flip=0.0, photometric=False)
    img, lbl = big(image, label, _gen())
    assert (lbl[:80, :120] != 255).any() and (lbl[80:] == 255).all() and (lbl[:, 120:] == 255).all()
    based = SegAugment(crop_size=(400, 400), scale_range=(1.0, 1.0), base_size=(30, 20), cat_max_ratio=1.0,
                       flip=0.0, photometric=False)
    _, lbl = based(image, label, _gen())
    assert (lbl[:20, :30] != 255).any() and (lbl[20:] == 255).all() and (lbl[:, 30:] == 255).all()


def test_rescale_size_and_resize_keep_ratio():
    assert rescale_size(1052, 1914, (2048, 1024)) == (1024, 1863)
    assert rescale_size(720, 1280, (1280, 720)) == (720, 1280)
    assert rescale_size(100, 50, (200, 100)) == (200, 100)  # portrait: long edge <= 200, short <= 100
    image, label = _sample(30, 40)
    img, lbl = resize_keep_ratio(image, label, (20, 10))
    assert img.shape == (3, 10, 13) and lbl.shape == (10, 13)
    assert set(lbl.unique().tolist()) <= {0, 3, 6, 9, 255}
    img, none = resize_keep_ratio(image, None, (40, 30))
    assert none is None and torch.equal(img, image)


def test_resize_nearest_keeps_ids():
    label = torch.tensor([[1, 2], [3, 4]], dtype=torch.uint8)
    _, up = resize(None, label, (4, 4))
    assert up.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]


@pytest.mark.parametrize("size", [(3, 5), (121, 161), (90, 31), (60, 80), (14, 18)])
def test_region_and_label_resize_match_full_resize(size):
    image, label = _sample(30, 40, seed=2)
    full_img, _ = resize(image, None, size)
    ref = torch.nn.functional.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0]
    assert torch.equal(resize_label(label, size), ref.to(torch.uint8))
    box = (size[0] // 4, size[0] // 4 + max(1, size[0] // 2), size[1] // 3, size[1] // 3 + max(1, size[1] // 2))
    region = resize_region(image, size, box)
    crop = full_img[:, box[0]:box[1], box[2]:box[3]]
    assert region.shape == crop.shape and (region.int() - crop.int()).abs().max() <= 1


def test_hsv_round_trip_matches_colorsys():
    rgb = torch.tensor([[200.0, 10.0, 0.0, 255.0, 30.0], [100.0, 200.0, 0.0, 255.0, 30.0],
                        [50.0, 90.0, 0.0, 255.0, 240.0]])[:, :, None]
    hsv = rgb_to_hsv(rgb)
    for i in range(rgb.shape[1]):
        h, s, v = colorsys.rgb_to_hsv(*(rgb[:, i, 0] / 255).tolist())
        assert hsv[0, i, 0].item() == pytest.approx(h * 360, abs=1e-3)
        assert hsv[1, i, 0].item() == pytest.approx(s, abs=1e-5)
        assert hsv[2, i, 0].item() == pytest.approx(v * 255, abs=1e-3)
    assert torch.allclose(hsv_to_rgb(hsv), rgb, atol=1e-3)


def test_photometric_distortion_changes_colours_within_range():
    image = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8, generator=_gen(3))
    outs = [photometric_distortion(image, _gen(s)) for s in range(12)]
    assert all(o.dtype == torch.uint8 and o.shape == image.shape for o in outs)
    assert sum(not torch.equal(o, image) for o in outs) >= 8
    assert torch.equal(photometric_distortion(image, _gen(5)), outs[5])
    gray = torch.full((3, 4, 4), 128, dtype=torch.uint8)
    out = photometric_distortion(gray, _gen(0))
    assert (out[0] == out[1]).all() and (out[1] == out[2]).all()  # no hue or saturation for gray
