"""CT tokenizer: time and peak memory of encoding versus depth, windowed against one piece and MONAI.

    python benchmarks/medical_memory.py                             # ct_small_4x4x4, 64x64, D = 33 ... 513
    python benchmarks/medical_memory.py --quick                     # D = 33, 65, 129 at 32x32, a smoke run
    python benchmarks/medical_memory.py --depths 65 257 --size 128 --window 16 --threads 1
    python benchmarks/medical_memory.py --markdown benchmarks/RESULTS.md

Three ways to encode a volume [1, 1, D, size, size] (values in [-1, 1], a smooth phantom) with the same
randomly initialised tokenizer (``--preset``, float32, no gradient):

- ``windowed``: ``CTTokenizer.encode_windowed(x, window)``, ``--window`` slices at a time, each causal conv
  carrying its pending frames across chunks. Exact: the table's ``max |dz|`` column is the largest difference
  of its pre-quantization latent from the one-piece latent (float32 rounding), ``ids !=`` the number of tokens
  whose id differs (a latent within rounding of 0 can flip its sign bit).
- ``one piece``: ``CTTokenizer.encode(x)``.
- ``monai``: ``monai.inferers.sliding_window_inference`` over the same encoder (Haar + encoder), windows of
  ``--monai-roi`` slices (a valid depth) by the full plane, ``--overlap`` along depth, constant blending,
  then the quantizer. Each window starts from fresh zero causal padding, and MONAI places window outputs by
  scaling positions by latent/slice counts, which for a causal encoder (d = 1 + (D - 1) / t) gives a latent
  grid of a different depth: its tokens are not comparable with the others (the note says so).

Every (method, depth) cell runs in a fresh Python process, so one cell's allocator state cannot hide
another's peak. A cell warms up on a short volume, builds the input, hands freed heap memory back to the OS
(glibc malloc_trim), resets the process's peak RSS (/proc/self/clear_refs), encodes once, timed (``ms``),
and reports ``RSS MB``: peak RSS minus RSS before the encode, which is what the OS saw, allocator caching and
kernel scratch buffers included. It then encodes again under a TorchDispatchMode that sees every tensor an op
returns and records the largest total of tensor bytes alive at once (``tensor MB``). The model and the input
volume, allocated before, are not counted. The returned tokens are, and ``tokens MB`` gives their size (int64
ids plus float32 codes). Scratch memory that kernels allocate internally is invisible to it. Times are one run
each, on a possibly shared machine.

Nothing is written unless ``--markdown FILE`` is given; the table is then appended to FILE under a line with
the date, the device, the torch version and the command.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.multiprocessing.reductions import StorageWeakRef

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or loaded by path
from mixers import PeakMemory  # noqa: E402
from report import device_name, render, write_markdown  # noqa: E402

METHODS = ("windowed", "one piece", "monai")
DEPTHS = (33, 65, 129, 257, 513)
QUICK_DEPTHS = (33, 65, 129)


def phantom(depth: int, size: int) -> torch.Tensor:
    """A smooth volume [1, 1, depth, size, size] in [-1, 1]: two blobs and a slow wave."""
    d, h, w = torch.meshgrid(*(torch.linspace(-1, 1, n) for n in (depth, size, size)), indexing="ij")
    x = (0.6 * torch.exp(-((h - 0.2) ** 2 + (w + 0.1) ** 2 + (0.5 * d) ** 2) / 0.3)
         - 0.5 * torch.exp(-((h + 0.4) ** 2 + (w - 0.4) ** 2) / 0.1) + 0.2 * torch.sin(3 * d + 2 * w))
    return x.clamp(-1, 1)[None, None]


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _encoder(model, method: str, args: argparse.Namespace):
    """The encode call of ``method``: volume -> token ids."""
    from mmseq.medical.haar import haar_dwt3d

    if method == "windowed":
        return lambda x: model.encode_windowed(x, args.window)[0]
    if method == "one piece":
        return lambda x: model.encode(x)[0]
    from monai.inferers import sliding_window_inference

    def monai_latent(x):
        roi = (min(args.monai_roi, x.shape[2]), x.shape[3], x.shape[4])
        return sliding_window_inference(x, roi, 1, lambda v: model.encoder(haar_dwt3d(v)), overlap=args.overlap)

    model.monai_latent = monai_latent  # for the comparison after the measurements
    return lambda x: model.quantizer(monai_latent(x), compute_loss=False)[1]


def run_cell(method: str, depth: int, args: argparse.Namespace) -> dict:
    """Measure one (method, depth) cell in this process; returns plain numbers."""
    from mmseq.medical.haar import haar_dwt3d
    from mmseq.medical.tokenizer import CTTokenizer

    torch.manual_seed(0)
    model = CTTokenizer.from_preset(args.preset).eval()
    encode = _encoder(model, method, args)
    with torch.no_grad():
        encode(phantom(1 + 2 * model.depth_factor, args.size))  # warm-up: kernels, thread pool
        x = phantom(depth, args.size)
        _malloc_trim()  # hand freed heap memory (the phantom's temporaries) back, so the encode cannot reuse it
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM)
            rss_ok = True
        except OSError:
            rss_ok = False
        before = _rss_kb("VmRSS")
        start = time.perf_counter()
        ids = encode(x)
        ms = (time.perf_counter() - start) * 1e3
        rss_mb = (_rss_kb("VmHWM") - before) / 1024 if rss_ok else None
        del ids
        with PeakMemory() as mode:
            # The input was allocated before: mark its storage as seen with 0 bytes, so that a view of it
            # (a chunk) does not count the whole volume.
            storage = x.untyped_storage()
            mode.live[storage.data_ptr()] = (StorageWeakRef(storage), 0)
            ids = encode(x)
        out = {"ms": ms, "rss_mb": rss_mb, "tensor_mb": mode.peak / 2**20, "latent": list(ids.shape[1:]),
               "tokens_mb": ids.numel() * (8 + 4 * model.token_bits) / 2**20}
        if method != "one piece":  # compare with the one-piece latent (not measured)
            z_ref = model.encoder(haar_dwt3d(x))
            z = model.encode_latent_windowed(x, args.window) if method == "windowed" else model.monai_latent(x)
            if z.shape == z_ref.shape:
                out["max_dz"] = (z - z_ref).abs().max().item()
                out["ids_diff"] = int((ids != model.quantizer(z_ref, compute_loss=False)[1]).sum())
            else:
                out["note"] = f"latent depth {z.shape[2]}, not {z_ref.shape[2]}: not comparable"
    return out


def spawn_cell(method: str, depth: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cell", method, str(depth), "--preset", args.preset,
           "--size", str(args.size), "--window", str(args.window), "--monai-roi", str(args.monai_roi),
           "--overlap", str(args.overlap)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.cell_timeout)
    if proc.returncode != 0:
        return {"note": "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:80]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(rows: list[tuple[str, int, dict]], args: argparse.Namespace) -> str:
    header = ["method", "D", "latent d", "ms", "tensor MB", "RSS MB", "tokens MB", "max |dz|", "ids !=", "note"]
    body = []
    for method, depth, r in rows:
        label = {"windowed": f"windowed ({args.window} slices)",
                 "monai": f"monai swi (roi {args.monai_roi}, overlap {args.overlap})"}.get(method, method)
        latent = r.get("latent")
        body.append([label, str(depth), str(latent[0]) if latent else "-", _f(r.get("ms"), ".0f"),
                     _f(r.get("tensor_mb"), ".1f"), _f(r.get("rss_mb"), ".1f"), _f(r.get("tokens_mb"), ".2f"),
                     _f(r.get("max_dz"), ".1e"),
                     _f(r.get("ids_diff"), "d"), r.get("note", "")])
    return render(header, body, {"D", "latent d", "ms", "tensor MB", "RSS MB", "tokens MB", "max |dz|", "ids !="})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="ct_small_4x4x4", help="tokenizer preset (default: ct_small_4x4x4)")
    p.add_argument("--size", type=int, default=64, help="in-plane size H = W (default: 64)")
    p.add_argument("--depths", type=int, nargs="+", help=f"slice counts, each 1 + k t (default: {DEPTHS})")
    p.add_argument("--window", type=int, default=32, help="slices per windowed chunk (default: 32)")
    p.add_argument("--monai-roi", type=int, default=33, help="slices per MONAI window, 1 + k t (default: 33)")
    p.add_argument("--overlap", type=float, default=0.25, help="MONAI window overlap (default: 0.25)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--threads", type=int, help="torch threads in each cell (default: torch's)")
    p.add_argument("--quick", action="store_true", help="D = 33, 65, 129 at 32x32")
    p.add_argument("--cell-timeout", type=float, default=900, help="seconds per cell before it is abandoned")
    p.add_argument("--markdown", type=Path, help="append the table to this markdown file")
    p.add_argument("--cell", nargs=2, metavar=("METHOD", "DEPTH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.size = 32 if args.size == 64 else args.size
        args.depths = args.depths or list(QUICK_DEPTHS)
    args.depths = args.depths or list(DEPTHS)
    if args.window < 1 or args.size < 1 or any(d < 1 for d in args.depths):
        p.error("--window, --size and --depths must be positive")
    if not 0 <= args.overlap < 1:
        p.error(f"--overlap must be in [0, 1), got {args.overlap}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.cell:
        print(json.dumps(run_cell(args.cell[0], int(args.cell[1]), args)))
        return 0
    from mmseq.medical.tokenizer import CTTokenizer

    with torch.device("meta"):
        model = CTTokenizer.from_preset(args.preset)
    try:
        for depth in args.depths:
            model.latent_shape(depth, args.size, args.size)
        model.latent_shape(args.monai_roi, args.size, args.size)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"# {args.preset}, {args.size}x{args.size} in-plane, float32, batch 1, no gradient; "
          f"{device_name(torch.device('cpu'))}", flush=True)
    rows = []
    for depth in args.depths:
        for method in args.methods:
            rows.append((method, depth, spawn_cell(method, depth, args)))
            print(f"  {method:9s} D={depth}: {rows[-1][2]}", file=sys.stderr, flush=True)
    text = table(rows, args)
    print(text)
    if args.markdown:
        title = f"CT tokenizer encoding vs depth ({args.preset}, {args.size}x{args.size}, fp32, no grad)"
        write_markdown(args.markdown, text, torch.device("cpu"), title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
