"""Vision verbs: ``mmseq segment`` and the built-in data set ``mmseq data make street-scenes``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from mmseq.commands import DatasetMaker, load_model, positive_int, register_dataset, shipped_model_dir
from mmseq.errors import UserError

SHIPPED_SEGMENTER = "street_segmenter"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")


def _size(text: str) -> tuple[int, int]:
    """argparse type: HxW, e.g. 256x512."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 256x512, got {text!r}") from None
    if min(h, w) < 64:
        raise argparse.ArgumentTypeError(f"each side must be >= 64 pixels, got {text!r}")
    return h, w


@register_dataset("street-scenes")
class StreetScenes(DatasetMaker):
    help = "procedural street scenes in a synthetic, realistic or adverse visual domain (Cityscapes layout)"
    description = ("Render deterministic street scenes (road, sidewalks, buildings, sky, vegetation, poles, lights, "
                   "signs, vehicles, people in perspective, layout from --seed and the scene index) in one visual "
                   "domain: 'synthetic' (flat-shaded, the training source), 'realistic' (textured and lit) or "
                   "'adverse' (realistic plus fog, night, rain or noise). Labels are Cityscapes train ids, files in "
                   "the Cityscapes layout (leftImg8bit/, gtFine/), so the cityscapes reader loads them. The same "
                   "--seed gives the same layouts in every domain.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--domain", choices=("synthetic", "realistic", "adverse"), default="synthetic",
                            help="visual domain (default synthetic)")
        parser.add_argument("--n", type=positive_int, default=200, help="number of scenes (default 200)")
        parser.add_argument("--seed", type=int, default=0, help="layout seed (default 0)")
        parser.add_argument("--size", type=_size, default=(256, 512), help="HEIGHTxWIDTH (default 256x512)")
        parser.add_argument("--val-fraction", type=float, default=0.2,
                            help="share of scenes in the val split (default 0.2)")

    def make(self, args: argparse.Namespace, out_dir: Path) -> int:
        from .scenes import make_street_scenes

        if not 0 <= args.val_fraction < 1:
            raise UserError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
        summary = make_street_scenes(out_dir, domain=args.domain, n=args.n, seed=args.seed, size=args.size,
                                     val_fraction=args.val_fraction)
        print(json.dumps(summary, indent=2, default=str))
        return 0


def load_segmenter(checkpoint: str | None):
    from .model import MFuser

    return load_model(MFuser, checkpoint, SHIPPED_SEGMENTER, "segmentation model")


def _image_inputs(paths: list[str]) -> list[Path]:
    """The image files named (folders expand to the images inside them, sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"{p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif not p.exists():
            raise UserError(f"no such file: {p}")
        else:
            out.append(p)
    return out


def segment_image(model, image, window: int | None = None, stride: int | None = None):
    """image [H, W, 3] uint8 -> train ids [H, W] uint8; sliding ``window`` (default: the model's crop size)."""
    import numpy as np
    import torch

    from .evaluate import sliding_window_logits

    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    window = window or model.img_size
    stride = stride or max(1, (window * 2) // 3)
    with torch.no_grad():
        scores = sliding_window_logits(model.predict_scores, x, model.num_classes, window=window, stride=stride)
    return scores[0].argmax(0).to(torch.uint8).numpy()


def _cmd_segment(args: argparse.Namespace) -> int:
    from .datasets import read_image
    from .evaluate import pixel_shares, save_prediction

    inputs = _image_inputs(args.images)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"-o {out_dir} is a file; give a folder for the outputs")
    images = [(p, read_image(p)) for p in inputs]  # every input checked before any work or output
    stems = [p.stem for p in inputs]
    if len(set(stems)) != len(stems):
        stems = [f"{i:04d}_{s}" for i, s in enumerate(stems)]  # same names from different folders stay apart
    clashes = [s for s in stems if (out_dir / f"{s}_labelTrainIds.png").exists()]
    if clashes and not args.overwrite:
        raise UserError(f"{out_dir} already holds results for {clashes[0]}; pass --overwrite or choose another -o")
    with contextlib.redirect_stdout(sys.stderr):
        model = load_segmenter(args.checkpoint).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    start = time.perf_counter()
    from tqdm.auto import tqdm

    for (path, image), stem in tqdm(list(zip(images, stems, strict=True)), desc="segmenting", unit="image",
                                    disable=len(images) < 2 or args.json, file=sys.stderr):
        ids = segment_image(model, image, window=args.window)
        files = save_prediction(out_dir, stem, image, ids, opacity=args.opacity)
        shares = pixel_shares(ids)
        results.append({"input": str(path), "size": [int(image.shape[0]), int(image.shape[1])],
                        "outputs": {k: str(v) for k, v in files.items()},
                        "pixel_share": {k: round(v, 4) for k, v in shares.items()}})
    elapsed = time.perf_counter() - start
    summary = {"images": results, "seconds": round(elapsed, 3),
               "images_per_second": round(len(results) / elapsed, 3) if elapsed > 0 else None}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for r in results:
            top = ", ".join(f"{k} {100 * v:.1f}%" for k, v in list(r["pixel_share"].items())[:4])
            print(f"{r['input']}: {top}")
        print(f"wrote {len(results)} label, colour and overlay PNGs to {out_dir}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser(
        "segment", help="semantic segmentation of images (19 Cityscapes classes)",
        description="Segment images into the 19 Cityscapes classes. For each image writes <stem>_labelTrainIds.png "
                    "(train ids 0-18), <stem>_color.png and <stem>_overlay.png, plus summary.json with each image's "
                    "per-class pixel share. Images of any size and mode (RGBA, grayscale, 16-bit) are read as RGB. "
                    "Without --checkpoint the shipped model (trained on the built-in street scenes) is used.")
    s.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("--checkpoint", help="segmentation run or model folder (default: the shipped model)")
    s.add_argument("--window", type=positive_int, help="sliding-window side (default: the model's training crop)")
    s.add_argument("--opacity", type=float, default=0.5, help="overlay opacity (default 0.5)")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("--overwrite", action="store_true", help="replace earlier results in the output folder")
    s.set_defaults(func=_cmd_segment)


def info() -> dict:
    """Whether a segmentation model ships with this installation."""
    return {"shipped_segmenter": shipped_model_dir(SHIPPED_SEGMENTER).is_dir()}
