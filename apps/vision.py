"""The vision tab: segment an image into the 19 Cityscapes classes; overlay, colour legend, pixel shares."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmseq.errors import UserError

from .common import LazyModel, Settings, check_upload, error_status, examples_dir, guarded, ok_status

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_SIDE = 1024  # larger images are scaled down for the demo (the CLI segments at full size)
EXAMPLES = ("street_scene.png",)


@dataclass
class Segmentation:
    """One image's answer: the (possibly scaled) image, its train ids and the classes' pixel shares."""

    name: str
    image: np.ndarray  # [H, W, 3] uint8
    ids: np.ndarray  # [H, W] uint8 train ids
    shares: dict[str, float]
    original_size: tuple[int, int]
    seconds: float


def _fit(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= MAX_SIDE:
        return image
    from PIL import Image

    scale = MAX_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.array(Image.fromarray(image).resize(size, Image.BILINEAR))


def legend_html() -> str:
    """Every class with its colour swatch."""
    from mmseq.vision.labels import CLASSES, PALETTE

    items = "".join(
        f'<span class="mmseq-legend-item"><span class="mmseq-swatch" style="background:rgb{PALETTE[i]}"></span>'
        f"{html.escape(name)}</span>" for i, name in enumerate(CLASSES))
    return f'<div class="mmseq-legend">{items}</div>'


def shares_html(shares: dict[str, float]) -> str:
    """The classes found, largest first: swatch, name and share of the labelled pixels."""
    from mmseq.vision.labels import CLASSES, PALETTE

    if not shares:
        return "<p>No labelled pixels.</p>"
    rows = "".join(
        f'<tr><td><span class="mmseq-swatch" style="background:rgb{PALETTE[CLASSES.index(name)]}"></span></td>'
        f'<td>{html.escape(name)}</td><td class="mmseq-num">{100 * share:.1f}%</td></tr>'
        for name, share in shares.items())
    return f'<table class="mmseq-shares"><tr><th></th><th>class</th><th>pixels</th></tr>{rows}</table>'


class VisionDemo:
    """The tab's work, callable without a browser: ``on_upload(path, opacity)`` and ``on_opacity(state, opacity)``."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        checkpoint = self.settings.checkpoints.get("vision")
        self.model = LazyModel(lambda: self._load(checkpoint))

    @staticmethod
    def _load(checkpoint: str | None):
        from mmseq.vision.cli import load_segmenter

        return load_segmenter(checkpoint).eval()

    def segment(self, path: str | Path) -> Segmentation:
        from mmseq.vision.cli import segment_image
        from mmseq.vision.datasets import read_image
        from mmseq.vision.evaluate import pixel_shares

        p = check_upload(path, IMAGE_SUFFIXES, "an image", self.settings)
        image = read_image(p)
        original = (int(image.shape[0]), int(image.shape[1]))
        image = _fit(image)
        model = self.model.get()
        start = time.perf_counter()
        ids = segment_image(model, image)
        return Segmentation(p.name, image, ids, pixel_shares(ids), original, time.perf_counter() - start)

    @staticmethod
    def render(seg: Segmentation, opacity: float) -> np.ndarray:
        from mmseq.vision.evaluate import overlay

        return overlay(seg.image, seg.ids, float(np.clip(opacity, 0.0, 1.0)))

    @staticmethod
    def summary(seg: Segmentation) -> str:
        h, w = seg.original_size
        scaled = "" if seg.image.shape[:2] == seg.original_size else \
            f", shown at {seg.image.shape[0]} x {seg.image.shape[1]}"
        top = max(seg.shares, key=seg.shares.get) if seg.shares else "nothing"
        return (f"Segmented {seg.name} ({h} x {w} pixels{scaled}) in {seg.seconds:.1f} s: "
                f"{len(seg.shares)} classes, mostly {top}.")

    # outputs: input image, overlay, shares table, status, state
    @guarded(5, 3, path_arg=1)
    def on_upload(self, path: str | None, opacity: float = 0.5) -> tuple:
        if path is None:
            return None, None, "", "", None
        seg = self.segment(path)
        return seg.image, self.render(seg, opacity), shares_html(seg.shares), ok_status(self.summary(seg)), seg

    def on_opacity(self, seg: Segmentation | None, opacity: float) -> np.ndarray | None:
        return None if seg is None else self.render(seg, opacity)


def build_tab(settings: Settings) -> VisionDemo:
    """Lay the tab out inside the current ``gr.Blocks``/``gr.Tab`` context and wire its events."""
    import gradio as gr

    demo = VisionDemo(settings)
    try:  # a missing model is said on the page at once, not after the first upload
        demo.model.get()
        first_status = ""
    except UserError as e:
        first_status = error_status(str(e))
    gr.Markdown("Segment a street image into the 19 Cityscapes classes. Upload an image "
                f"({', '.join(IMAGE_SUFFIXES)}) or pick the example, a built-in scene.")
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Image", file_types=list(IMAGE_SUFFIXES), type="filepath",
                             elem_id="vision-input")
            gr.Examples([[str(examples_dir() / name)] for name in EXAMPLES], inputs=[upload], label="Example")
            opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity", elem_id="vision-opacity")
            status = gr.HTML(first_status, elem_id="vision-status")
            shares = gr.HTML(elem_id="vision-shares")
        with gr.Column(scale=2):
            image = gr.Image(label="Input", interactive=False, elem_id="vision-image")
            over = gr.Image(label="Segmentation overlay", interactive=False, elem_id="vision-overlay")
            gr.HTML(legend_html(), label="Class colours", elem_id="vision-legend")
    state = gr.State(None)
    upload.change(demo.on_upload, [upload, opacity], [image, over, shares, status, state])
    opacity.change(demo.on_opacity, [state, opacity], [over])
    return demo

