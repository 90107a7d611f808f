"""MFuser: the Mamba fuser against an attention fuser of the same width as tokens grow, and `mmseq segment` speed.

    python benchmarks/vision.py                          # width 1024 (the paper's), 256 .. 16,384 tokens, CPU
    python benchmarks/vision.py --quick                  # width 128, 256 .. 4,096 tokens, a smoke run
    python benchmarks/vision.py --device cuda --markdown benchmarks/RESULTS.md

Fuser table. Both fusers are ``MVFuser(width)`` (split projection, conv + SiLU, gated RMSNorm, output scale);
"mamba" runs the official selective scan in the x branch, "attention" puts ``mmseq.mixers`` full attention
(noncausal, 8 heads, torch SDPA) in its place, so the only difference is the sequence mixer. Token counts are
those of two towers at patch 14: 2 * (1 + (side / 14)^2) for image sides 154 .. 1260 (256 .. 16k tokens), batch 1.
Each cell: forward + backward, the median of ``--repeats`` runs after a warm-up (``ms``), and the peak of live
tensor bytes during one forward + backward (``MB``, counted by ``PeakMemory``, which sees every tensor an op
returns; kernels' internal scratch is invisible to it). ``ratio`` = attention / mamba. A cell that runs out of
memory or past ``--max-seconds`` prints "-".

Segment row: images per second of the shipped model (``mmseq segment``'s own code path: sliding window at the
training crop) on built-in street scenes of 256 x 512, one process, the given threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or loaded by path
from mixers import PeakMemory  # noqa: E402
from report import device_name, render, setup_device, write_markdown  # noqa: E402

SIDES = (154, 224, 322, 448, 630, 896, 1260)  # patch-14 grids 11, 16, 23, 32, 45, 64, 90
QUICK_SIDES = (154, 224, 322, 448)


def tokens_for(side: int, patch: int = 14) -> int:
    return 2 * (1 + (side // patch) ** 2)


def make_fuser(kind: str, width: int, device: torch.device) -> torch.nn.Module:
    from mmseq.vision.fuser import MVFuser

    mixer = None if kind == "mamba" else {"name": "attention", "n_heads": 8}
    return MVFuser(width, dropout=0.0, scale_init=1.0, mixer=mixer, causal=kind == "mamba").to(device)


def run_cell(fuser, tokens: int, width: int, device, repeats: int, max_seconds: float) -> tuple[float, float] | None:
    x = torch.randn(1, tokens, width, device=device, requires_grad=True)

    def once():
        fuser(x).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    try:
        start = time.perf_counter()
        once()  # warm-up
        if time.perf_counter() - start > max_seconds:
            return None
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            once()
            times.append(time.perf_counter() - t0)
        with PeakMemory() as peak:
            once()
        return statistics.median(times) * 1e3, peak.peak / 2**20
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if "memory" not in str(e).lower():
            raise
        return None


def fuser_table(width: int, sides, device, repeats: int, max_seconds: float) -> str:
    rows = []
    skip = {"mamba": False, "attention": False}
    for side in sides:
        n = tokens_for(side)
        cells = {}
        for kind in ("mamba", "attention"):
            torch.manual_seed(0)
            result = None if skip[kind] else run_cell(make_fuser(kind, width, device), n, width, device, repeats,
                                                      max_seconds)
            skip[kind] = skip[kind] or result is None  # larger inputs would only take longer
            cells[kind] = result
        m, a = cells["mamba"], cells["attention"]
        fmt = (lambda v: f"{v:.1f}")
        rows.append([f"{side}x{side}", str(n),
                     fmt(m[0]) if m else "-", fmt(m[1]) if m else "-",
                     fmt(a[0]) if a else "-", fmt(a[1]) if a else "-",
                     f"{a[0] / m[0]:.2f}" if m and a else "-", f"{a[1] / m[1]:.2f}" if m and a else "-"])
        print(rows[-1], flush=True)
    header = ["image", "tokens", "mamba ms", "mamba MB", "attention ms", "attention MB", "time ratio", "mem ratio"]
    return render(header, rows, set(header[1:]))


def segment_speed(n_images: int, checkpoint: str | None) -> str:
    from mmseq.vision.cli import load_segmenter, segment_image
    from mmseq.vision.scenes import render_scene

    model = load_segmenter(checkpoint).eval()
    images = [render_scene(7, i, "realistic")[0] for i in range(n_images)]
    segment_image(model, images[0])  # warm-up
    start = time.perf_counter()
    for image in images:
        segment_image(model, image)
    elapsed = time.perf_counter() - start
    return (f"`mmseq segment` ({'shipped model' if checkpoint is None else checkpoint}, 256x512 scenes, sliding "
            f"window {model.img_size}): {n_images / elapsed:.2f} images/s ({1e3 * elapsed / n_images:.0f} ms an "
            f"image) over {n_images} images")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, help="fuser width (default 1024; 128 with --quick)")
    p.add_argument("--quick", action="store_true", help="small width and sizes: a smoke run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=60.0, help="skip larger sizes once a pass takes longer")
    p.add_argument("--segment-images", type=int, default=8, help="images for the segment row (0: skip it)")
    p.add_argument("--checkpoint", help="segmentation model for the segment row (default: the shipped one)")
    p.add_argument("--markdown", type=Path, help="append the tables to this file")
    args = p.parse_args(argv)
    device = setup_device(args.device, args.threads)
    if device is None:
        return 2
    width = args.width or (128 if args.quick else 1024)
    sides = QUICK_SIDES if args.quick else SIDES
    print(f"# {device_name(device)}, fuser width {width}", flush=True)
    table = fuser_table(width, sides, device, args.repeats, args.max_seconds)
    print(table)
    text = f"MVFuser forward + backward, width {width}, batch 1:\n\n{table}\n"
    if args.segment_images:
        line = segment_speed(args.segment_images, args.checkpoint)
        print(line)
        text += f"\n{line}\n"
    if args.markdown:
        write_markdown(args.markdown, text, device, title="vision: fuser scaling")
    return 0


if __name__ == "__main__":
    sys.exit(main())
