"""Evaluation and outputs for semantic segmentation: the mIoU metric, sliding-window inference and colorized
prediction files.

``SegmentationIoU`` accumulates a confusion matrix (summed across processes under DDP) and reports mmseg's
numbers: per-class IoU = intersection / union, NaN where a class is in neither the labels nor the predictions
(union 0), mIoU = the mean over the classes that are not NaN, pixel accuracy and mean class accuracy. Label
pixels equal to ``ignore_index`` (255) count nowhere.

``sliding_window_logits`` is mmseg's ``slide_inference``: windows of ``window`` every ``stride`` pixels, the
last one in each direction aligned to the border, scores averaged where windows overlap (the MFuser test
setting is 512 x 512 windows with stride 341).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import multiclass_confusion_matrix

from mmseq.runner.pretrained import atomic_write
from mmseq.vision.labels import CLASSES, IGNORE, NUM_CLASSES, colorize, palette_array

__all__ = [
    "SegmentationIoU",
    "format_iou_table",
    "legend_png",
    "overlay",
    "pixel_shares",
    "save_prediction",
    "slide_boxes",
    "sliding_window_logits",
]


# --------------------------------------------------------------------------------------------------- metric


class SegmentationIoU(Metric):
    """Confusion-matrix IoU over ``num_classes`` classes; target pixels equal to ``ignore_index`` are skipped.

    ``update(preds, target)``: ``preds`` [B, H, W] class ids (or [B, C, H, W] scores, arg-maxed over C),
    ``target`` [B, H, W] ids in ``0..num_classes-1`` or ``ignore_index``.
    ``compute()`` -> ``{"miou", "iou", "acc", "macc"}``: ``iou`` [C] with NaN where a class has union 0 (in
    neither the labels nor the predictions), ``miou`` the mean of the non-NaN entries, ``acc`` the pixel
    accuracy, ``macc`` the mean over classes present in the labels of their accuracy (recall). All are float
    tensors (fractions, not %); NaN when nothing was counted.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    confmat: Tensor

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        # confmat[t, p]: pixels labelled t and predicted p.
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(dim=1)
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape")
        if preds.is_floating_point() or target.is_floating_point():
            raise ValueError("preds and target must hold integer class ids")
        keep = target != self.ignore_index
        if not bool(keep.any()):
            return
        p, t = preds[keep], target[keep]
        for name, ids in (("target", t), ("preds", p)):
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(f"{name} holds ids outside 0..{self.num_classes - 1} (min {lo}, max {hi}) "
                                 f"other than the ignore index {self.ignore_index}")
        self.confmat += multiclass_confusion_matrix(p, t, self.num_classes, validate_args=False).to(self.confmat)

    def compute(self) -> dict[str, Tensor]:
        return iou_from_confmat(self.confmat)


def iou_from_confmat(confmat: Tensor) -> dict[str, Tensor]:
    """mmseg's metrics from a confusion matrix ``confmat[target, pred]`` (see ``SegmentationIoU``)."""
    cm = confmat.double()
    intersect = cm.diag()
    area_label = cm.sum(dim=1)
    area_pred = cm.sum(dim=0)
    union = area_label + area_pred - intersect
    nan = torch.tensor(float("nan"), dtype=cm.dtype, device=cm.device)
    iou = torch.where(union > 0, intersect / union.clamp_min(1), nan)
    class_acc = torch.where(area_label > 0, intersect / area_label.clamp_min(1), nan)
    total = cm.sum()
    acc = intersect.sum() / total if total > 0 else nan
    return {
        "miou": iou.nanmean().float(),
        "iou": iou.float(),
        "acc": acc.float(),
        "macc": class_acc.nanmean().float(),
    }


# ------------------------------------------------------------------------------------------ sliding window


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(int(v) for v in value)
        if len(pair) != 2:
            raise ValueError(f"{name} must be an int or an (h, w) pair, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair  # type: ignore[return-value]


def _starts(size: int, crop: int, stride: int) -> list[int]:
    # mmseg slide_inference: grids = ceil((size - crop) / stride) + 1, the last window moved back to the border.
    grids = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride + crop, size) - crop, 0) for i in range(grids)]


def slide_boxes(height: int, width: int, window: int | Sequence[int] = 512,
                stride: int | Sequence[int] = 341) -> list[tuple[int, int, int, int]]:
    """The windows ``(y1, y2, x1, x2)`` that ``sliding_window_logits`` predicts on an image of at least
    ``window`` in both dims (it pads smaller ones): a grid every ``stride`` pixels, the last row and column of
    windows aligned to the bottom and right borders, so every pixel is covered."""
    (wh, ww), (sh, sw) = _pair(window, "window"), _pair(stride, "stride")
    if sh > wh or sw > ww:
        raise ValueError(f"stride {stride!r} larger than window {window!r} would leave pixels uncovered")
    return [(y, min(y + wh, height), x, min(x + ww, width))
            for y in _starts(height, wh, sh) for x in _starts(width, ww, sw)]


def sliding_window_logits(predict: Callable[[Tensor], Tensor], image: Tensor, num_classes: int,
                          window: int | tuple[int, int] = 512, stride: int | tuple[int, int] = 341,
                          progress: bool = False) -> Tensor:
    """image [B, 3, H, W] -> scores [B, C, H, W], C = ``num_classes``.

    ``predict`` maps a window [B, 3, h, w] to scores [B, C, h, w]. The windows (``slide_boxes``) cover the
    image and the scores are averaged where they overlap. An image no larger than the window in both dims is
    predicted whole; one smaller in a single dim is zero-padded at the bottom / right to the window size and
    the padding cropped from the result. Scores come back in float32 (float64 if ``predict`` returns that).
    Gradients are not switched off here: call it under ``torch.no_grad()`` / ``torch.inference_mode()``.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be [B, 3, H, W], got {tuple(image.shape)}")
    (wh, ww), (sh, sw) = _pair(window, "window"), _pair(stride, "stride")
    batch, _, height, width = image.shape

    def run(crop: Tensor) -> Tensor:
        out = predict(crop)
        expected = (batch, num_classes, crop.shape[-2], crop.shape[-1])
        if tuple(out.shape) != expected:
            raise ValueError(f"predict returned {tuple(out.shape)} for a {tuple(crop.shape)} window, "
                             f"expected {expected}")
        return out

    if height <= wh and width <= ww:
        out = run(image)
        return out.to(torch.promote_types(out.dtype, torch.float32))

    pad_h, pad_w = max(wh - height, 0), max(ww - width, 0)
    padded = F.pad(image, (0, pad_w, 0, pad_h)) if pad_h or pad_w else image
    full_h, full_w = height + pad_h, width + pad_w
    boxes = slide_boxes(full_h, full_w, (wh, ww), (sh, sw))

    count = torch.zeros(full_h, full_w, dtype=torch.int32)
    for y1, y2, x1, x2 in boxes:
        count[y1:y2, x1:x2] += 1
    if int(count.min()) < 1:  # cannot happen with stride <= window; kept as a guard against a bad grid
        raise RuntimeError("sliding windows left pixels uncovered")

    from tqdm.auto import tqdm

    scores: Tensor | None = None
    for y1, y2, x1, x2 in tqdm(boxes, desc="windows", unit="win", leave=False, disable=not progress):
        out = run(padded[:, :, y1:y2, x1:x2])
        if scores is None:
            dtype = torch.promote_types(out.dtype, torch.float32)
            scores = torch.zeros(batch, num_classes, full_h, full_w, dtype=dtype, device=out.device)
        scores[:, :, y1:y2, x1:x2] += out.to(scores.dtype)
    assert scores is not None
    scores /= count.to(device=scores.device, dtype=scores.dtype)
    return scores[:, :, :height, :width]


# ----------------------------------------------------------------------------------------------- outputs


def _check_ids(train_ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(train_ids)
    if ids.ndim != 2:
        raise ValueError(f"train ids must be [H, W], got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() > IGNORE):
        raise ValueError(f"train ids must lie in 0..{NUM_CLASSES - 1} or be {IGNORE}")
    ids = ids.astype(np.uint8, copy=False)
    bad = (ids >= NUM_CLASSES) & (ids != IGNORE)
    if bad.any():
        raise ValueError(f"train ids hold values {sorted(set(np.unique(ids[bad]).tolist()))[:8]} that are "
                         f"neither a class (0..{NUM_CLASSES - 1}) nor ignore ({IGNORE})")
    return ids


def pixel_shares(train_ids: np.ndarray) -> dict[str, float]:
    """``{class name: fraction of the labelled pixels}`` for the classes present, largest share first; ignore
    pixels (255) count nowhere. Empty when every pixel is ignore."""
    ids = _check_ids(train_ids)
    counts = np.bincount(ids[ids != IGNORE].ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
    total = int(counts.sum())
    if total == 0:
        return {}
    order = sorted((c for c in range(NUM_CLASSES) if counts[c]), key=lambda c: (-counts[c], c))
    return {CLASSES[c]: float(counts[c]) / total for c in order}


def overlay(image: np.ndarray, train_ids: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """RGB image [H, W, 3] uint8 blended with ``colorize(train_ids)``: ``(1 - opacity) * image + opacity *
    colour`` on labelled pixels, ignore pixels (255) left as the image."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must lie in [0, 1], got {opacity}")
    img = np.asarray(image)
    ids = _check_ids(train_ids)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[:2] != ids.shape:
        raise ValueError(f"image {img.shape} must be [H, W, 3] matching train ids {ids.shape}")
    img = img.astype(np.uint8, copy=False)
    blended = (1.0 - opacity) * img.astype(np.float32) + opacity * colorize(ids).astype(np.float32)
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return np.where((ids != IGNORE)[..., None], blended, img)


def _save_png(path: Path, array: np.ndarray) -> None:
    # uint8 [H, W] -> mode L, uint8 [H, W, 3] -> mode RGB
    atomic_write(path, lambda tmp: Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(tmp, format="PNG"))


def save_prediction(out_dir: str | Path, stem: str, image: np.ndarray, train_ids: np.ndarray,
                    opacity: float = 0.5) -> dict[str, Path]:
    """Write ``<stem>_labelTrainIds.png`` (single-channel uint8 train ids, 255 ignore), ``<stem>_color.png``
    (the palette colours, RGB) and ``<stem>_overlay.png`` (``overlay``) into ``out_dir`` (created if needed),
    each atomically. Returns the paths by kind: ``{"label", "color", "overlay"}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = _check_ids(train_ids)
    blended = overlay(image, ids, opacity)
    paths = {
        "label": out_dir / f"{stem}_labelTrainIds.png",
        "color": out_dir / f"{stem}_color.png",
        "overlay": out_dir / f"{stem}_overlay.png",
    }
    _save_png(paths["label"], ids)
    _save_png(paths["color"], colorize(ids))
    _save_png(paths["overlay"], blended)
    return paths


def legend_png(path: str | Path, classes: Sequence[str] = CLASSES) -> Path:
    """Write a small legend image: one row per class, its palette colour swatch and ``id name``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(classes) > NUM_CLASSES:
        raise ValueError(f"the palette has {NUM_CLASSES} colours, got {len(classes)} classes")
    pal = palette_array()
    font = ImageFont.load_default()
    row, swatch, pad = 20, 28, 6
    labels = [f"{i:2d} {name}" for i, name in enumerate(classes)]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((int(math.ceil(probe.textlength(t, font=font))) for t in labels), default=0)
    canvas = Image.new("RGB", (pad * 3 + swatch + text_w, pad * 2 + row * len(labels)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(labels):
        top = pad + i * row
        draw.rectangle([pad, top + 2, pad + swatch, top + row - 3], fill=tuple(int(v) for v in pal[i]),
                       outline=(0, 0, 0))
        draw.text((pad * 2 + swatch, top + 4), text, fill=(0, 0, 0), font=font)
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))
    return path


def _values(x) -> list[float]:
    if isinstance(x, Tensor):
        return [float(v) for v in x.detach().cpu().reshape(-1).tolist()]
    return [float(v) for v in np.asarray(x, dtype=np.float64).reshape(-1)]


def _pct(v: float) -> str:
    return "-" if math.isnan(v) else f"{100.0 * v:.1f}"


def format_iou_table(results: Mapping[str, Mapping], classes: Sequence[str] = CLASSES) -> str:
    """``{domain: SegmentationIoU.compute() output}`` -> a Markdown table: one row per class and a last
    ``mIoU`` row, one column per domain, IoU in % with one decimal, ``-`` where undefined (NaN)."""
    domains = list(results)
    columns = []
    for d in domains:
        iou = _values(results[d]["iou"])
        if len(iou) != len(classes):
            raise ValueError(f"{d}: {len(iou)} IoU values for {len(classes)} classes")
        columns.append([_pct(v) for v in iou] + [_pct(_values(results[d]["miou"])[0])])
    names = [*classes, "mIoU"]
    lines = ["| Class | " + " | ".join(domains) + " |", "|---|" + "---:|" * len(domains)]
    for r, name in enumerate(names):
        lines.append(f"| {name} | " + " | ".join(col[r] for col in columns) + " |")
    return "\n".join(lines) + "\n"
