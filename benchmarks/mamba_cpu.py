"""The keyword Mamba block on the CPU: its scan alone and the whole block, fwd+bwd, in every version of the torch
path, timed interleaved in one run.

    python benchmarks/mamba_cpu.py --threads 1
    python benchmarks/mamba_cpu.py --threads 2 --against 606a22c --reps 9

Versions: ``compiled`` (the torch path as it runs by default on the CPU: the compiled core of kernels/csrc),
``vectorized`` (the same path with MMSEQ_CPU_KERNELS=0: its PyTorch code alone) and ``torch@REV`` (the torch path
of kernels/selective_scan.py at git revision REV; 606a22c is the one the keyword configs were first measured
with). The shape is the keyword Mamba block at expand 2, d_state 16 (d_model 64, batch 64, 98 log-mel frames):
the scan sees B 64, D 128, N 16, L 98, with D skip, z gate, delta_bias and softplus. Each time is the median
of ``--reps`` runs after one warm-up; ``speedup`` is the REV time over each version's time, measured in the same
run. Run it with the machine otherwise idle: other jobs on the cores change the ratios, not only the times.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import _selective_scan_torch_at  # noqa: E402


def _versions(against: str | None) -> dict:
    """name -> (the torch path's function, the setting it runs under)."""
    from mmseq.kernels._cpu_build import cpu_kernels_off

    ss = importlib.import_module("mmseq.kernels.selective_scan")
    head = ss.selective_scan_torch
    out = {"compiled": (head, contextlib.nullcontext), "vectorized": (head, cpu_kernels_off)}
    if against:
        out[f"torch@{against}"] = (_selective_scan_torch_at(against), contextlib.nullcontext)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--against", default="606a22c", metavar="REV", help="git revision of the 'before' (606a22c)")
    p.add_argument("--reps", type=int, default=7, help="timed runs per version and measurement (default 7)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from mmseq.mixers.mamba import MambaMixer

    ss = importlib.import_module("mmseq.kernels.selective_scan")
    versions = _versions(args.against)
    Bs, D, N, L = 64, 128, 16, 98
    u, dt, z = (torch.randn(Bs, D, L, requires_grad=True) for _ in range(3))
    A = (-torch.rand(D, N) - 0.5).requires_grad_(True)
    B, C = (torch.randn(Bs, N, L, requires_grad=True) for _ in range(2))
    Dp, bias = torch.ones(D, requires_grad=True), torch.zeros(D, requires_grad=True)
    block, x = MambaMixer(64, d_state=16, expand=2), torch.randn(Bs, L, 64, requires_grad=True)
    real = ss.selective_scan_torch

    def scan(fn):
        fn(u, dt, A, B, C, Dp, z=z, delta_bias=bias, delta_softplus=True).sum().backward()

    def whole_block(fn):
        ss.selective_scan_torch = fn  # what the block's impl=None calls on the CPU
        try:
            block(x).sum().backward()
        finally:
            ss.selective_scan_torch = real

    times = {(what, name): [] for what in ("scan", "block") for name in versions}
    for rep in range(args.reps + 1):
        for what, run in (("scan", scan), ("block", whole_block)):
            for name, (fn, setting) in versions.items():
                with setting():
                    t0 = time.perf_counter()
                    run(fn)
                    if rep:
                        times[what, name].append(time.perf_counter() - t0)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    base = f"torch@{args.against}" if args.against else "vectorized"
    print(f"keyword Mamba block (B {Bs}, D {D}, N {N}, L {L}), fwd+bwd, {args.threads} torch thread(s), "
          f"median of {args.reps}")
    print("| version | scan ms | scan speedup | block ms | block speedup |\n|---|---:|---:|---:|---:|")
    for name in versions:
        print(f"| {name} | {ms['scan', name]:.1f} | {ms['scan', base] / ms['scan', name]:.2f} | "
              f"{ms['block', name]:.1f} | {ms['block', base] / ms['block', name]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
