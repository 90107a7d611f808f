"""The training augmentations of the reference recipe (refs/mfuser.md section 7), in torch, and eval resizing.

``SegAugment`` follows the mmseg 0.x train pipeline step by step: ``Resize(ratio_range=(0.5, 2.0),
keep_ratio=True)`` (of the image's own size when no ``img_scale``/``base_size`` is set), ``RandomCrop(512,
cat_max_ratio=0.75)``, ``RandomFlip(0.5)``, ``PhotoMetricDistortion`` and ``Pad(512, seg_pad_val=255)``.
Every random draw comes from the ``torch.Generator`` passed in, in a fixed order, so the same generator state
gives the same augmentation (a resumed run redraws what the interrupted one drew).

Differences from mmseg, on purpose: colour conversions are in float (mmcv rounds HSV to uint8 with hue in
0..179), and padding happens on the uint8 image with 0 (mmseg pads after normalisation, i.e. with the mean
colour); padded pixels are ignored (label 255) either way, and at scale >= 0.5 a GTA5 or Cityscapes image is
never smaller than a 512 crop.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "SegAugment",
    "hsv_to_rgb",
    "photometric_distortion",
    "random_crop",
    "rescale_size",
    "nearest_indices",
    "resize",
    "resize_keep_ratio",
    "resize_label",
    "resize_region",
    "rgb_to_hsv",
]


def _rand(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g, dtype=torch.float64))


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * _rand(g)


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """An integer in [lo, hi) (numpy's randint convention)."""
    return int(torch.randint(lo, hi, (), generator=g))


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def rescale_size(height: int, width: int, scale: tuple[float, float]) -> tuple[int, int]:
    """mmcv's keep-ratio target size: the largest (h, w) with the long edge <= max(scale) and the short edge
    <= min(scale) (it upscales too). Returns (new_h, new_w)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def resize(image: torch.Tensor | None, label: torch.Tensor | None, size: tuple[int, int]
           ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Resize image uint8 [3, H, W] (bilinear) and label uint8 [H, W] (nearest) to ``size`` = (h, w)."""
    size = (int(size[0]), int(size[1]))
    if image is not None and tuple(image.shape[-2:]) != size:
        x = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        image = x.round_().clamp_(0, 255).to(torch.uint8)
    if label is not None and tuple(label.shape[-2:]) != size:
        label = resize_label(label, size)
    return image, label


def nearest_indices(in_size: int, out_size: int) -> torch.Tensor:
    """Source index of each output pixel of a nearest resize, computed as torch's "nearest" mode does
    (floor(dst * in / out) in float32), so gathering with it equals ``F.interpolate(mode="nearest")``."""
    if in_size == out_size:
        return torch.arange(out_size)
    scale = torch.tensor(float(in_size), dtype=torch.float32) / out_size
    idx = torch.floor(torch.arange(out_size, dtype=torch.float32) * scale).long()
    return idx.clamp_(max=in_size - 1)


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resize of a uint8 label [H, W] to ``size`` (h, w) by index gathering (no float copy)."""
    h, w = label.shape[-2:]
    rows, cols = nearest_indices(h, int(size[0])), nearest_indices(w, int(size[1]))
    return label[rows][:, cols]


def _linear_taps(in_size: int, out_size: int, start: int, stop: int):
    """Bilinear (align_corners=False) source taps of output pixels start..stop-1, as torch computes them."""
    scale = torch.tensor(float(in_size), dtype=torch.float32) / out_size
    src = (scale * (torch.arange(start, stop, dtype=torch.float32) + 0.5) - 0.5).clamp_(min=0)
    i0 = src.long().clamp_(max=in_size - 1)
    i1 = (i0 + 1).clamp_(max=in_size - 1)
    frac = (src - i0.float()).clamp_(0, 1)
    return i0, i1, frac


def resize_region(image: torch.Tensor, size: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    """``resize(image, None, size)`` cropped to ``box`` (top, bottom, left, right), computed for the box only.

    The bilinear taps are those of the full resize, so this equals resizing the whole image and cropping
    (up to float rounding: at most 1 grey level), at the cost of the crop rather than of the full image.
    """
    h, w = image.shape[-2:]
    top, bottom, left, right = box
    if (h, w) == (int(size[0]), int(size[1])):
        return image[:, top:bottom, left:right]
    y0, y1, fy = _linear_taps(h, int(size[0]), top, bottom)
    x0, x1, fx = _linear_taps(w, int(size[1]), left, right)
    img = image.float()
    rows = img[:, y0] * (1 - fy)[:, None] + img[:, y1] * fy[:, None]  # [3, crop_h, W]
    out = rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx
    return out.round_().clamp_(0, 255).to(torch.uint8)


def resize_keep_ratio(image: torch.Tensor, label: torch.Tensor | None = None,
                      max_size: tuple[int, int] = (2048, 1024)) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eval resizing as mmseg's ``Resize(img_scale=max_size, keep_ratio=True)``: long edge <= max(max_size),
    short edge <= min(max_size), as large as that allows (so it upscales small images; for a landscape image
    and max_size (W, H) this is "fit within W x H"). Cityscapes/Mapillary use (2048, 1024), BDD100K (1280, 720).

    mmseg scores predictions at the label's original size: resize the label only to inspect it at the
    network's resolution.
    """
    image, label = _as_tensor(image), None if label is None else _as_tensor(label)
    size = rescale_size(image.shape[-2], image.shape[-1], max_size)
    return resize(image, label, size)


def random_crop(label: torch.Tensor, crop_size: tuple[int, int], generator: torch.Generator,
                cat_max_ratio: float = 1.0, ignore_index: int = 255) -> tuple[int, int, int, int]:
    """mmseg's RandomCrop box (top, bottom, left, right) for a label [H, W] and crop_size (h, w).

    With ``cat_max_ratio`` < 1 a box is redrawn up to 10 times while one class covers ``cat_max_ratio`` or
    more of the non-ignored pixels of the crop (checked only when the crop holds two classes or more).
    """
    h, w = label.shape[-2:]
    ch, cw = crop_size

    def draw() -> tuple[int, int, int, int]:
        top = _randint(generator, 0, max(h - ch, 0) + 1)
        left = _randint(generator, 0, max(w - cw, 0) + 1)
        return top, min(top + ch, h), left, min(left + cw, w)

    box = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            crop = label[box[0]:box[1], box[2]:box[3]]
            counts = torch.bincount(crop.reshape(-1).long(), minlength=256)
            if 0 <= ignore_index < counts.numel():
                counts[ignore_index] = 0
            counts = counts[counts > 0]
            if counts.numel() > 1 and float(counts.max()) / float(counts.sum()) < cat_max_ratio:
                break
            box = draw()
    return box


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """float [3, H, W] RGB in 0..255 -> HSV: hue in degrees [0, 360), saturation 0..1, value 0..255."""
    r, g, b = rgb.unbind(0)
    maxc, _ = rgb.max(0)
    minc, _ = rgb.min(0)
    delta = maxc - minc
    sat = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    d = delta.clamp_min(1e-12)
    hue = torch.where(maxc == r, torch.remainder((g - b) / d, 6.0),
                      torch.where(maxc == g, (b - r) / d + 2.0, (r - g) / d + 4.0))
    hue = torch.where(delta > 0, hue * 60.0, torch.zeros_like(hue))
    return torch.stack([hue, sat, maxc])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb_to_hsv`` (hue in degrees, any value; wrapped)."""
    hue, sat, val = hsv.unbind(0)
    out = []
    for n in (5.0, 3.0, 1.0):  # R, G, B
        k = torch.remainder(n + hue / 60.0, 6.0)
        out.append(val - val * sat * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out)


def photometric_distortion(image: torch.Tensor, generator: torch.Generator, brightness: float = 32.0,
                           contrast: tuple[float, float] = (0.5, 1.5), saturation: tuple[float, float] = (0.5, 1.5),
                           hue: int = 18) -> torch.Tensor:
    """mmseg's PhotoMetricDistortion on uint8 [3, H, W]: each step applied with probability 1/2.

    Brightness +-``brightness``; contrast first or last (a coin decides); saturation x U(0.5, 1.5); hue
    shifted by an integer in [-hue, hue) in OpenCV's 8-bit hue units (2 degrees each). Like mmseg, the result
    of brightness and contrast is clipped to 0..255 and truncated to integers.
    """
    img = image.float()

    def convert(x: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
        return (x * alpha + beta).clamp_(0, 255).floor_()

    if _randint(generator, 0, 2):
        img = convert(img, beta=_uniform(generator, -brightness, brightness))
    mode = _randint(generator, 0, 2)
    if mode == 1 and _randint(generator, 0, 2):
        img = convert(img, alpha=_uniform(generator, *contrast))
    if _randint(generator, 0, 2):
        hsv = rgb_to_hsv(img)
        hsv[1] = (hsv[1] * _uniform(generator, *saturation)).clamp_(0, 1)
        img = hsv_to_rgb(hsv).round_().clamp_(0, 255)
    if _randint(generator, 0, 2):
        hsv = rgb_to_hsv(img)
        hsv[0] = torch.remainder(hsv[0] + 2.0 * _randint(generator, -hue, hue), 360.0)
        img = hsv_to_rgb(hsv).round_().clamp_(0, 255)
    if mode == 0 and _randint(generator, 0, 2):
        img = convert(img, alpha=_uniform(generator, *contrast))
    return img.to(torch.uint8)


class SegAugment:
    """The train-time pipeline: rescale, crop (cat_max_ratio), flip, photometric distortion, pad.

    ``crop_size`` is (h, w). ``scale_range`` draws a ratio r ~ U(lo, hi); the target scale is r x the image's
    own (w, h), or r x ``base_size`` (w, h, mmseg's ``img_scale``) when given, fitted keeping the aspect ratio
    (mmcv's long/short-edge rule). Image bilinear, label nearest. ``flip`` is the horizontal flip probability;
    ``photometric`` toggles PhotoMetricDistortion; padding is image 0, label ``ignore_index``.

    ``aug(image uint8 [3, H, W], label uint8 [H, W], generator) -> (image [3, ch, cw], label [ch, cw])``.
    """

    def __init__(self, crop_size: tuple[int, int] = (512, 512), scale_range: tuple[float, float] | None = (0.5, 2.0),
                 base_size: tuple[int, int] | None = None, cat_max_ratio: float = 0.75, flip: float = 0.5,
                 photometric: bool = True, ignore_index: int = 255):
        if isinstance(crop_size, int):
            crop_size = (crop_size, crop_size)
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        if min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        self.scale_range = None if scale_range is None else (float(scale_range[0]), float(scale_range[1]))
        if self.scale_range is not None and not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be 0 < lo <= hi, got {scale_range}")
        self.base_size = None if base_size is None else (int(base_size[0]), int(base_size[1]))
        self.cat_max_ratio = float(cat_max_ratio)
        self.flip = float(flip)
        self.photometric = bool(photometric)
        self.ignore_index = int(ignore_index)

    def __repr__(self) -> str:
        return (f"SegAugment(crop_size={self.crop_size}, scale_range={self.scale_range}, base_size={self.base_size}, "
                f"cat_max_ratio={self.cat_max_ratio}, flip={self.flip}, photometric={self.photometric}, "
                f"ignore_index={self.ignore_index})")

    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = _as_tensor(image), _as_tensor(label)
        if image.dim() != 3 or image.shape[0] != 3 or label.shape != image.shape[1:]:
            raise ValueError(f"expected image [3, H, W] and label [H, W], got {tuple(image.shape)} and "
                             f"{tuple(label.shape)}")
        image, label = image.to(torch.uint8), label.to(torch.uint8)
        h, w = label.shape
        # 1. random rescale (mmseg Resize, ratio_range, keep_ratio); the image is resized for the crop only
        size = (h, w)
        if self.scale_range is not None:
            ratio = _uniform(generator, *self.scale_range)
            base_w, base_h = self.base_size if self.base_size is not None else (w, h)
            size = rescale_size(h, w, (int(base_w * ratio), int(base_h * ratio)))
            label = resize_label(label, size)
        # 2. random crop, redrawn while one class dominates
        box = random_crop(label, self.crop_size, generator, self.cat_max_ratio, self.ignore_index)
        image, label = resize_region(image, size, box), label[box[0]:box[1], box[2]:box[3]]
        # 3. horizontal flip
        if _rand(generator) < self.flip:
            image, label = image.flip(-1), label.flip(-1)
        # 4. photometric distortion
        if self.photometric:
            image = photometric_distortion(image, generator)
        # 5. pad bottom/right to the crop size
        ch, cw = self.crop_size
        ph, pw = ch - label.shape[0], cw - label.shape[1]
        if ph > 0 or pw > 0:
            image = F.pad(image, (0, pw, 0, ph), value=0)
            label = F.pad(label, (0, pw, 0, ph), value=self.ignore_index)
        return image.contiguous(), label.contiguous()
