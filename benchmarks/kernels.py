"""Kernel benchmarks: every path of every op in ``mmseq.kernels``, timed against a baseline in the same run.

    python benchmarks/kernels.py                      # CPU shapes
    python benchmarks/kernels.py --device cuda        # GPU shapes (adds Triton, GB/s and % of the bandwidth floor)
    python benchmarks/kernels.py --quick              # small shapes, a smoke run in seconds
    python benchmarks/kernels.py --ops fft_conv attention --threads 2 --markdown benchmarks/RESULTS.md
    python benchmarks/kernels.py --ops selective_scan --against 606a22c   # also the torch path as of a commit
    python benchmarks/kernels.py --ops selective_scan --impls torch mambapy   # skip the (slow) reference rows

One table is printed. Each row is one (op, shape, dtype, pass, impl); rows with the same op, shape, dtype and
pass form a group, and ``speedup`` is the time of the group's baseline (named in the ``baseline`` column,
normally ``ref``) divided by the row's time, both measured in this run. ``ms`` is the median of several timed
runs after warm-up. On CUDA, ``GB/s`` counts the minimum bytes an implementation must move (every input read
once and every output written once; for fwd+bwd also grad_out read once and every input gradient written
once) divided by the time, and ``%BW`` is that rate as a fraction of ``--peak-gbps``.

Peers: on CPU the selective scan is also timed in mambapy (its parallel scan ``pscan``, as its Mamba block
calls it), an optional dependency (``pip install mambapy``, or the ``bench`` extra). ``vs mambapy`` is that
row's time divided by each row's time in the same group; without the package there is no such row or column,
and the group's note says so.

Nothing is written unless ``--markdown FILE`` is given; the table is then appended to FILE under a line
with the date, the device, the torch version and the command.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or loaded by path
from report import render, setup_device, write_markdown  # noqa: E402

OPS = ("selective_scan", "causal_conv1d", "fft_conv", "attention")
PEERS = {"mambapy": "mambapy"}  # impl of a peer row -> the optional package it needs
DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


@dataclass
class Case:
    """One timed row. ``make`` builds the inputs and returns ``(fn, inputs)``; ``fn(*inputs)`` runs the op."""

    op: str
    shape: str
    dtype: torch.dtype
    mode: str  # "fwd" or "fwd+bwd"
    impl: str
    make: Callable[[], tuple[Callable, list[torch.Tensor]]]
    baseline: str | None = "ref"  # impl of the row in the same group the speedup is taken against
    note: str = ""

    @property
    def group(self) -> tuple:
        return (self.op, self.shape, self.dtype, self.mode)


@dataclass
class Row:
    case: Case | None
    op: str
    ms: float | None = None
    nbytes: int | None = None
    error: str = ""


# ----------------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def time_ms(step: Callable[[], object], device: torch.device, *, warmup: int, min_reps: int, max_reps: int,
            budget_s: float, min_sample_s: float) -> float:
    """Median milliseconds per ``step()`` after ``warmup`` calls.

    A sample runs ``step`` enough times back to back to last about ``min_sample_s`` (so microsecond kernels are
    not lost in timer and launch noise) and is divided by that count. Sampling stops after ``max_reps``
    samples, or once there are ``min_reps`` and ``budget_s`` seconds have gone by. A call slower than the
    budget ends the warm-up after the first call.
    """
    sync = _sync(device)

    def once() -> float:
        t0 = time.perf_counter()
        step()
        sync()
        return time.perf_counter() - t0

    last = once()  # the first call pays for allocation, lazy init and Triton compilation
    for _ in range(warmup - 1):
        if last > budget_s:
            break
        last = once()
    inner = max(1, min(1000, int(min_sample_s / max(last, 1e-7))))
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_reps and (len(samples) < min_reps or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        for _ in range(inner):
            step()
        sync()
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples) * 1e3


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def run_case(case: Case, device: torch.device, args: argparse.Namespace) -> Row:
    """Build the inputs, count the minimum bytes, time the case; any failure becomes the row's error."""
    try:
        torch.manual_seed(0)
        fn, inputs = case.make()
        out = fn(*inputs)
        outs = list(out) if isinstance(out, tuple | list) else [out]
        nbytes = _nbytes(inputs) + _nbytes(outs)
        if case.mode == "fwd":
            def step():
                with torch.no_grad():
                    return fn(*inputs)
        else:
            wrt = [t for t in inputs if t.requires_grad]
            grads = [torch.randn_like(o) for o in outs]
            nbytes += _nbytes(grads) + _nbytes(wrt)

            def step():
                res = fn(*inputs)
                res = list(res) if isinstance(res, tuple | list) else [res]
                return torch.autograd.grad(res, wrt, grads)
        del out, outs
        ms = time_ms(step, device, warmup=args.warmup, min_reps=args.min_reps, max_reps=args.reps,
                     budget_s=args.budget, min_sample_s=args.min_sample)
        return Row(case, case.op, ms=ms, nbytes=nbytes)
    except Exception as e:  # a failing path is reported in its row; the other rows still run
        msg = " ".join(str(e).split())
        return Row(case, case.op, error=f"error: {type(e).__name__}: {msg[:120]}")
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------------
# cases, one function per op
# ----------------------------------------------------------------------------------------------------------


def _impls(device: torch.device, *, ref: bool = True) -> list[str]:
    """ref (optional), torch, and triton on CUDA when it imports (never the CPU interpreter)."""
    from mmseq.kernels import triton_importable

    out = (["ref"] if ref else []) + ["torch"]
    if device.type == "cuda" and triton_importable():
        out.append("triton")
    return out


def _randn(*shape, dtype, device, grad=True, scale=1.0, shift=0.0):
    t = torch.randn(*shape, device=device, dtype=torch.float32) * scale + shift
    return t.to(dtype).requires_grad_(grad)


def _mambapy_scan(u, delta, A, B, C, D, z, delta_bias):
    """The same scan (softplus step size with bias, D skip, z gate) through mambapy's parallel scan, as its
    Mamba block runs it: [B, D, L] inputs laid out as its (B, L, D), every [B, L, D, N] tensor materialised."""
    import torch.nn.functional as F
    from mambapy.pscan import pscan

    x = u.transpose(1, 2)  # (B, L, D)
    dt = F.softplus(delta + delta_bias[:, None]).transpose(1, 2)
    deltaA = torch.exp(dt.unsqueeze(-1) * A)  # (B, L, D, N)
    BX = (dt * x).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2)
    hs = pscan(deltaA, BX)
    y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(3) + D * x
    return (y * F.silu(z.transpose(1, 2))).transpose(1, 2)


def _peers() -> tuple[list[str], str]:
    """The peer impls whose package imports, and a note naming the ones skipped."""
    missing = [name for name, package in PEERS.items() if importlib.util.find_spec(package) is None]
    note = f"no {', '.join(missing)} column: pip install {' '.join(PEERS[m] for m in missing)} (the bench extra)"
    return [name for name in PEERS if name not in missing], note if missing else ""


def _selective_scan_torch_at(rev: str) -> Callable:
    """``selective_scan_torch`` of kernels/selective_scan.py as of git revision ``rev``, for before/after timings
    in one run. The file is written to a temporary folder (Triton's decorators read their source from a file)
    and loaded as a module of mmseq.kernels, so its relative imports resolve."""
    root = Path(__file__).resolve().parent.parent
    src = subprocess.run(["git", "show", f"{rev}:kernels/selective_scan.py"], cwd=root, check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="kernels_at_")) / "selective_scan.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"mmseq.kernels._selective_scan_at_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.selective_scan_torch


def selective_scan_cases(device: torch.device, quick: bool, against: str | None = None) -> list[Case]:
    from mmseq.kernels._cpu_build import cpu_kernels_off
    from mmseq.kernels.selective_scan import selective_scan

    old = _selective_scan_torch_at(against) if against else None

    def make(Bb, D, N, L, dtype, impl):
        def build():
            kw = dict(device=device)
            u, delta, z = (_randn(Bb, D, L, dtype=dtype, **kw) for _ in range(3))
            B, C = (_randn(Bb, N, L, dtype=dtype, **kw) for _ in range(2))
            # A, D and delta_bias stay fp32, as in Mamba; A < 0 for a decaying state
            A = (-torch.rand(D, N, device=device) - 0.5).requires_grad_()
            Dskip = _randn(D, dtype=torch.float32, **kw)
            delta_bias = _randn(D, dtype=torch.float32, scale=0.1, shift=-2.0, **kw)

            def fn(u, delta, A, B, C, Dskip, z, delta_bias):
                if impl == "mambapy":
                    return _mambapy_scan(u, delta, A, B, C, Dskip, z, delta_bias)
                if impl == f"torch@{against}":
                    return old(u, delta, A, B, C, Dskip, z, delta_bias, delta_softplus=True)
                if impl == "torch-vectorized":  # the torch path without its compiled core
                    with cpu_kernels_off():
                        return selective_scan(u, delta, A, B, C, Dskip, z, delta_bias, delta_softplus=True,
                                              impl="torch")
                return selective_scan(u, delta, A, B, C, Dskip, z, delta_bias, delta_softplus=True, impl=impl)

            return fn, [u, delta, A, B, C, Dskip, z, delta_bias]

        return build

    def group(Bb, D, N, L, dtype, impls, baseline, note=""):
        shape = f"B={Bb} D={D} N={N} L={L}"
        return [Case("selective_scan", shape, dtype, "fwd+bwd", impl, make(Bb, D, N, L, dtype, impl), baseline,
                     note if i == 0 else "") for i, impl in enumerate(impls)]

    if device.type == "cuda":
        if quick:
            return group(2, 64, 16, 256, torch.bfloat16, _impls(device), "ref")
        return (group(1, 256, 16, 2048, torch.bfloat16, _impls(device), "ref")
                + group(8, 2048, 16, 8192, torch.bfloat16, _impls(device, ref=False), "torch",
                        "ref too slow at this shape: baseline is the torch path; ref compared at B=1 D=256 L=2048"))
    peers, skipped = _peers()
    impls = _impls(device) + ["torch-vectorized"] + [f"torch@{against}"] * bool(against) + peers
    if quick:
        return group(1, 32, 8, 256, torch.float32, impls, "ref", skipped)
    keyword = "the keyword Mamba block's scan (d_model 64, expand 2, d_state 16; batch 64, 98 frames)"
    return (group(2, 256, 16, 4096, torch.float32, _impls(device) + ["torch-vectorized"], "ref")
            + group(2, 256, 16, 2048, torch.float32, impls, "ref", skipped)
            + group(64, 128, 16, 98, torch.float32, impls, "ref", "; ".join(filter(None, (keyword, skipped)))))


def causal_conv1d_cases(device: torch.device, quick: bool) -> list[Case]:
    from mmseq.kernels.causal_conv1d import causal_conv1d

    def make(Bb, D, L, K, dtype, impl):
        def build():
            x = _randn(Bb, D, L, dtype=dtype, device=device)
            weight = _randn(D, K, dtype=dtype, device=device, scale=K**-0.5)
            bias = _randn(D, dtype=dtype, device=device)
            return (lambda x, w, b: causal_conv1d(x, w, b, activation="silu", impl=impl)), [x, weight, bias]

        return build

    Bb, D, L, K = (2, 64, 512, 4) if quick else (8, 1536, 2048, 4)
    dtypes = [torch.float32, torch.bfloat16] if device.type == "cuda" and not quick else [torch.float32]
    return [Case("causal_conv1d", f"B={Bb} D={D} L={L} K={K}", dtype, "fwd+bwd", impl,
                 make(Bb, D, L, K, dtype, impl), note="bias + silu" if impl == "ref" else "")
            for dtype in dtypes for impl in _impls(device)]


def fft_conv_cases(device: torch.device, quick: bool) -> list[Case]:
    from mmseq.kernels.fft_conv import fft_conv

    def make(Bb, D, L, impl, grad):
        def build():
            u = _randn(Bb, D, L, dtype=torch.float32, device=device, grad=grad)
            k = _randn(D, L, dtype=torch.float32, device=device, grad=grad, scale=L**-0.5)
            skip = _randn(D, dtype=torch.float32, device=device, grad=grad)
            return (lambda u, k, s: fft_conv(u, k, s, causal=True, impl=impl)), [u, k, skip]

        return build

    long_L, short_L = (4096, 512) if quick else (65536, 4096)
    cases = []
    for L, mode in ((long_L, "fwd"), (short_L, "fwd+bwd")):
        for impl in _impls(device):
            note = ("ref = direct O(L*Lk) conv1d; torch = rFFT" if impl == "ref" else
                    "triton = tiled direct conv" if impl == "triton" else "")
            cases.append(Case("fft_conv", f"B=1 D=16 L={L} Lk={L}", torch.float32, mode, impl,
                              make(1, 16, L, impl, mode != "fwd"), note=note))
    return cases


def attention_cases(device: torch.device, quick: bool) -> list[Case]:
    from mmseq.kernels.attention import attention

    def make(Bb, H, L, P, dtype, impl, pattern):
        def build():
            q, k, v = (_randn(Bb, H, L, P, dtype=dtype, device=device) for _ in range(3))
            if impl == "flex":
                return _flex(pattern, L, device), [q, k, v]
            return (lambda q, k, v: attention(q, k, v, causal=True, impl=impl, **pattern)), [q, k, v]

        return build

    def group(name, Bb, H, L, P, dtype, impls, baseline, pattern, note="", mode="fwd+bwd"):
        shape = f"B={Bb} H={H} L={L} P={P}"
        return [Case(f"attention ({name})", shape, dtype, mode, impl, make(Bb, H, L, P, dtype, impl, pattern),
                     baseline, note if i == 0 else "") for i, impl in enumerate(impls)]

    win, chk = {"window": 128}, {"chunk": 256}
    if device.type == "cuda":
        half, fp = torch.bfloat16, torch.float32
        if quick:
            return (group("causal", 1, 2, 256, 64, half, _impls(device), "ref", {})
                    + group("window=64", 1, 2, 512, 64, half, _impls(device), "ref", {"window": 64}))
        flash = _impls(device, ref=False) + ["flex"]
        return (group("causal", 2, 4, 2048, 64, fp, _impls(device), "ref", {}, "torch = SDPA")
                + group("causal", 4, 16, 8192, 64, half, flash, "torch", {}, "torch = SDPA (flash); no ref", "fwd")
                + group("causal", 4, 16, 8192, 64, half, flash, "torch", {}, "torch = SDPA (flash); no ref")
                + group("window=128", 2, 4, 8192, 64, half, _impls(device) + ["flex"], "ref", win)
                + group("chunk=256", 2, 4, 8192, 64, half, _impls(device) + ["flex"], "ref", chk))
    if quick:
        return (group("causal", 1, 2, 256, 32, torch.float32, _impls(device), "ref", {})
                + group("window=32", 1, 2, 512, 32, torch.float32, _impls(device), "ref", {"window": 32})
                + group("chunk=64", 1, 2, 512, 32, torch.float32, _impls(device), "ref", {"chunk": 64}))
    mask_note = "ref builds an L x L mask: compared with ref at L=2048"
    cpu = torch.float32
    return (group("causal", 2, 4, 2048, 64, cpu, _impls(device), "ref", {}, "torch = SDPA")
            + group("window=128", 2, 4, 2048, 64, cpu, _impls(device), "ref", win)
            + group("window=128", 2, 4, 8192, 64, cpu, ["torch"], None, win, mask_note)
            + group("chunk=256", 2, 4, 2048, 64, cpu, _impls(device), "ref", chk)
            + group("chunk=256", 2, 4, 8192, 64, cpu, ["torch"], None, chk, mask_note))


def _flex(pattern: dict, L: int, device: torch.device) -> Callable:
    """torch's flex_attention (compiled) with the block mask of a causal / sliding-window / chunked pattern."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    window, chunk = pattern.get("window"), pattern.get("chunk")

    def allowed(b, h, i, j):
        ok = j <= i
        if window is not None:
            ok = ok & (i - j < window)
        if chunk is not None:
            ok = ok & (i // chunk == j // chunk)
        return ok

    block_mask = create_block_mask(allowed, None, None, L, L, device=device)
    compiled = torch.compile(flex_attention)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


BUILDERS = {
    "selective_scan": selective_scan_cases,
    "causal_conv1d": causal_conv1d_cases,
    "fft_conv": fft_conv_cases,
    "attention": attention_cases,
}


def load_op(op: str):
    """Import ``mmseq.kernels.<op>``; raises whatever the import raises."""
    return importlib.import_module(f"mmseq.kernels.{op}")


def collect_rows(ops: list[str], device: torch.device, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    for op in ops:
        try:
            load_op(op)
            against = getattr(args, "against", None)
            cases = BUILDERS[op](device, args.quick, **({"against": against} if against and
                                                        op == "selective_scan" else {}))
        except Exception as e:  # a missing or broken op module gets one row and the run goes on
            rows.append(Row(None, op, error=f"not available: {type(e).__name__}: {' '.join(str(e).split())[:100]}"))
            print(f"[{op}] not available", file=sys.stderr, flush=True)
            continue
        impls = getattr(args, "impls", None)
        for case in cases:
            if impls and case.impl.split("@")[0] not in impls and case.impl not in impls:
                continue
            row = run_case(case, device, args)
            shown = f"{row.ms:.3f} ms" if row.ms is not None else row.error
            print(f"[{op}] {case.shape} {DTYPES[case.dtype]} {case.mode} {case.impl}: {shown}",
                  file=sys.stderr, flush=True)
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------
# table
# ----------------------------------------------------------------------------------------------------------


def table(rows: list[Row], device: torch.device, peak_gbps: float) -> str:
    """The rows as an aligned pipe table (valid markdown)."""
    base_ms = {(r.case.group, r.case.impl): r.ms for r in rows if r.case is not None and r.ms is not None}
    cuda = device.type == "cuda"
    peers = sorted({r.case.impl for r in rows if r.case is not None and r.case.impl in PEERS})
    header = ["op", "shape", "dtype", "pass", "impl", "ms", "baseline", "speedup"]
    header += [f"vs {p}" for p in peers]
    header += ["GB/s", "%BW"] if cuda else []
    header += ["note"]
    body = []
    for r in rows:
        c = r.case
        if c is None:
            cells = [r.op] + ["-"] * (7 + len(peers)) + (["-", "-"] if cuda else []) + [r.error]
            body.append(cells)
            continue
        ref_ms = base_ms.get((c.group, c.baseline)) if c.baseline else None
        ms = f"{r.ms:.3f}" if r.ms is not None else "-"
        speedup = f"{ref_ms / r.ms:.2f}" if r.ms and ref_ms else "-"
        cells = [c.op, c.shape, DTYPES[c.dtype], c.mode, c.impl, ms, c.baseline or "-", speedup]
        for p in peers:
            peer_ms = base_ms.get((c.group, p))
            cells.append(f"{peer_ms / r.ms:.2f}" if r.ms and peer_ms else "-")
        if cuda:
            gbps = r.nbytes / (r.ms * 1e-3) / 1e9 if r.ms else None
            cells += [f"{gbps:.0f}", f"{100 * gbps / peak_gbps:.1f}"] if gbps else ["-", "-"]
        cells.append(r.error or c.note)
        body.append(cells)
    return render(header, body, {"ms", "speedup", "GB/s", "%BW", *(f"vs {p}" for p in peers)})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (default) or cuda shapes")
    p.add_argument("--quick", action="store_true", help="small shapes: a smoke run in seconds")
    p.add_argument("--ops", nargs="+", default=list(OPS), metavar="OP",
                   help=f"ops to run, space or comma separated (default: all of {', '.join(OPS)})")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--markdown", type=Path, default=None, metavar="FILE", help="append the table to FILE")
    p.add_argument("--impls", nargs="+", default=None, metavar="IMPL",
                   help="time only these impls (e.g. torch mambapy; torch also selects torch@REV; default: all)")
    p.add_argument("--against", default=None, metavar="REV",
                   help="selective_scan on CPU: also time the torch path as of git revision REV (row torch@REV)")
    p.add_argument("--peak-gbps", type=float, default=3350.0, help="peak memory bandwidth, GB/s (H100 SXM: 3350)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up calls per row (default 2)")
    p.add_argument("--min-reps", type=int, default=3, help="fewest timed samples per row (default 3)")
    p.add_argument("--reps", type=int, default=20, help="most timed samples per row (default 20)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of sampling per row once --min-reps are in (default 2; 0.05 with --quick)")
    args = p.parse_args(argv)
    args.ops = [o for item in args.ops for o in item.split(",") if o]
    unknown = sorted(set(args.ops) - set(OPS))
    if unknown:
        p.error(f"unknown op(s) {', '.join(unknown)}; choose from {', '.join(OPS)}")
    if args.budget is None:
        args.budget = 0.05 if args.quick else 2.0
    args.min_sample = 0.002 if args.quick else 0.02
    if args.quick:
        args.reps = min(args.reps, 5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup_device(args.device, args.threads)
    if device is None:
        return 2
    rows = collect_rows(args.ops, device, args)
    text = table(rows, device, args.peak_gbps)
    print(text)
    if args.markdown is not None:
        write_markdown(args.markdown, text, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
