"""CT tokenizer figures: compression ratio of each config and the time to tokenize a large volume.

    .venv/bin/python benchmarks/medical.py                       # ratios + a 256 x 512 x 512 volume, shipped tokenizer
    .venv/bin/python benchmarks/medical.py --depth 64 --size 128 # a smaller volume
    .venv/bin/python benchmarks/medical_memory.py --threads 1    # time and peak memory against depth

Compression ratio = bits in / bits out: a CT volume stored as 16-bit voxels against its tokens of K bits each.
The large-volume time covers ``tokenize_volume`` as ``mmseq tokenize-ct`` runs it (windowed encoding; the
volume is already on the tokenizer's grid, so no resampling is timed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "medical"


def compression_rows() -> list[dict]:
    from mmseq.runner.task import load_task_file

    rows = []
    for path in sorted(CONFIGS.glob("tokenizer_*.yaml")):
        task = load_task_file(path, ["model.init_from=null"])
        model = task._build()
        d, h, w = task.cfg.data.size
        d = model.valid_depth(d)
        ld, lh, lw = model.latent_shape(d, h, w)
        bits_in, bits_out = d * h * w * 16, ld * lh * lw * model.token_bits
        rows.append({"config": path.name, "grid": f"{d}x{h}x{w}", "tokens": f"{ld}x{lh}x{lw}",
                     "token_bits": model.token_bits, "voxels_per_token": d * h * w / (ld * lh * lw),
                     "ratio": bits_in / bits_out})
    return rows


def time_large_volume(checkpoint: str | None, depth: int, size: int, window: int) -> dict:
    from mmseq.medical.cli import load_tokenizer
    from mmseq.medical.io import CTVolume
    from mmseq.medical.tokens import tokenize_volume

    tokenizer = load_tokenizer(checkpoint).eval()
    spacing = (tokenizer.init_args.get("preprocess") or {}).get("spacing") or [1.5, 0.75, 0.75]
    # (S, L, P) axes: depth runs superior, rows to the left (-x), columns to the back (-y)
    affine = np.array([[0, -spacing[1], 0, 0], [0, 0, -spacing[2], 0], [spacing[0], 0, 0, 0], [0, 0, 0, 1.0]])
    hu = torch.full((depth, size, size), -1000.0)
    hu[:, size // 8: -size // 8, size // 8: -size // 8] = 40.0
    volume = CTVolume(hu + 10 * torch.randn_like(hu), affine)
    start = time.perf_counter()
    tokens = tokenize_volume(tokenizer, volume, window=window, progress=True)
    seconds = time.perf_counter() - start
    return {"volume": f"{depth}x{size}x{size}", "tokens": "x".join(map(str, tokens.ids.shape)),
            "seconds": seconds, "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="tokenizer run or model folder (default: the shipped tokenizer)")
    p.add_argument("--depth", type=int, default=256)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--window", type=int, default=16, help="slices encoded at a time")
    p.add_argument("--skip-volume", action="store_true", help="print the compression table only")
    args = p.parse_args()
    print("| config | grid (D x H x W) | tokens | bits/token | voxels/token | compression (16-bit voxels) |")
    print("|---|---|---|---|---|---|")
    for r in compression_rows():
        print(f"| {r['config']} | {r['grid']} | {r['tokens']} | {r['token_bits']} | {r['voxels_per_token']:.0f} | "
              f"{r['ratio']:.0f}x |")
    if not args.skip_volume:
        t = time_large_volume(args.checkpoint, args.depth, args.size, args.window)
        print(f"\ntokenize {t['volume']} -> {t['tokens']} tokens: {t['seconds']:.1f} s "
              f"({t['threads']} torch threads)")


if __name__ == "__main__":
    main()
