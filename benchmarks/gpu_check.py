"""GPU check: one command that says whether mmseq works, and how fast, on the CUDA GPU in front of you.

    make gpu-check                                   # = python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --out DIR         # write gpu_check.md / gpu_check.json into DIR
    python benchmarks/gpu_check.py --dry-run         # rehearse every part on the CPU (tiny shapes, interpreter)
    python benchmarks/gpu_check.py --parts kernels mixers --kernels-cap 200

Four parts, in this order, each under its own time cap (``--<part>-cap`` seconds; the defaults sum to 400 s,
so the whole check, start-up and Triton compilation included, ends within 8 minutes on one GPU):

tests    every test marked ``triton`` or ``gpu``, run by pytest in a subprocess with TRITON_INTERPRET unset, so
         the Triton kernels are compiled for this GPU; the pytest summary line, failures by name, the full log
         in ``gpu_check_tests.log``.
kernels  selective_scan, causal_conv1d, fft_conv and attention at the GPU shapes of ``benchmarks/kernels.py
         --device cuda``, forward and forward+backward, fp32 and bf16: the Triton and torch paths, then the
         peers importable here (SDPA flash / efficient and flex attention; mamba_ssm's selective scan and the
         causal_conv1d package's CUDA op). ms, speedup against the torch path, GB/s (minimum bytes moved /
         time) and %BW, the fraction of the memory bandwidth (``--peak-gbps``, by default computed from the
         device's memory clock and bus width).
tasks    one short training run per registered task (a config from configs/, bf16-mixed, a GPU-sized batch)
         through the runner: samples/s over the last steps and peak memory. A keyword set that is not there is
         replaced by a small folder of synthetic tones; other tasks whose data is missing are skipped with a note.
mixers   the time-vs-L and memory-vs-L tables of ``benchmarks/mixers.py --device cuda`` (every mixer,
         forward+backward, d_model 64, batch 1, fp32) for L = 256 ... 65,536, as far as memory and the cap allow.

A part that reaches its cap stops (the unit in flight is interrupted) and says so; a part that cannot run says
why. The markdown and the JSON are rewritten after every part, so an interrupted check still leaves what it
measured. ``--dry-run`` runs the same code on the CPU: tiny shapes, Triton in its interpreter
(TRITON_INTERPRET=1), a few tests, caps of seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
PARTS = ("tests", "kernels", "tasks", "mixers")
OPS = ("selective_scan", "causal_conv1d", "fft_conv", "attention")

# Seconds per part. GPU: 400 s in all, leaving 80 s of the 8 minutes for start-up and a unit that overruns.
CAPS = {"tests": 140.0, "kernels": 110.0, "tasks": 70.0, "mixers": 80.0}
DRY_CAPS = {"tests": 40.0, "kernels": 30.0, "tasks": 20.0, "mixers": 20.0}
# The tests a dry run selects (marked triton, quick under the interpreter).
DRY_TESTS_K = "test_fallback or test_delta_kernel_shifts_the_input"
MIXER_LENGTHS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
DRY_MIXER_LENGTHS = (32, 64)

# A config per task, relative to configs/ (tasks not listed: configs/*/<name>*.yaml, else any config naming the
# task), and the batch a GPU trains it with (tasks not listed: 4x the config's batch).
TASK_CONFIGS = {
    "mqar": "synthetic/mqar_attention.yaml",
    "passkey": "synthetic/passkey_attention.yaml",
    "keywords": "audio/keywords_mamba.yaml",
    "ct-tokenizer": "medical/tokenizer_stage1.yaml",
    "ct-report": "medical/report.yaml",
}
GPU_BATCH = {"mqar": 512, "passkey": 256, "keywords": 256, "ct-tokenizer": 8, "ct-report": 64}
DRY_BATCH = 4

STATUS_TEXT = {"ran": "ran", "partial": "stopped at its cap", "skipped": "skipped", "error": "failed to run",
               "pending": "not reached"}


def _load(name: str, path: Path):
    """Import a benchmark script by path under its own module name (``kernels`` would clash with kernels/)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _one_line(e: BaseException, n: int = 160) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:n]}"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------
# caps
# ----------------------------------------------------------------------------------------------------------


class CapReached(BaseException):
    """Raised in the main thread when a part's time cap is over. A BaseException, so that the benchmarks'
    ``except Exception`` (a failing row is a row) does not swallow it."""


class Cap:
    """A part's time budget: ``left()`` seconds remain. Loops check ``over()`` between units of work; a unit
    run under ``with cap.unit():`` (one timed row, one training run) is interrupted by CapReached when the
    time runs out during it. Outside a unit the timer only marks the cap as reached, so bookkeeping and the
    part's tables are never cut short."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()
        self.hit = False
        self._armed = False

    @contextlib.contextmanager
    def unit(self, limit: float | None = None):
        """Run a unit of work, interrupted by CapReached at the cap or after ``limit`` seconds if sooner."""
        if self.over():
            raise CapReached(f"cap of {self.seconds:g} s reached")
        if limit is not None and limit < self.left():
            signal.setitimer(signal.ITIMER_REAL, max(limit, 0.01))
        self._armed = True
        try:
            yield
        finally:
            self._armed = False
            if limit is not None:  # back to the part's own end
                signal.setitimer(signal.ITIMER_REAL, max(self.left(), 0.01))

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def over(self) -> bool:
        self.hit = self.hit or self.left() <= 0
        return self.hit

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __enter__(self) -> Cap:
        self._old = signal.signal(signal.SIGALRM, self._fire)
        signal.setitimer(signal.ITIMER_REAL, max(self.seconds, 0.01))
        return self

    def _fire(self, signum, frame) -> None:
        self.hit = self.left() <= 0.01
        if self._armed:
            self._armed = False
            raise CapReached(f"cap of {self.seconds:g} s reached")

    def __exit__(self, *exc) -> bool:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._old)
        return False


# ----------------------------------------------------------------------------------------------------------
# the report: JSON + markdown, rewritten after each part
# ----------------------------------------------------------------------------------------------------------


class Report:
    def __init__(self, out: Path, header: dict, parts: list[str], selected: list[str]) -> None:
        self.out = out
        self.header = header
        self.parts: dict[str, dict] = {}
        for name in parts:
            if name in selected:
                self.parts[name] = {"status": "pending", "note": "not reached: the check stopped before this part"}
            else:
                self.parts[name] = {"status": "skipped", "note": f"not selected (--parts {' '.join(selected)})"}

    def set(self, name: str, result: dict) -> None:
        self.parts[name] = result
        self.write()

    def data(self) -> dict:
        from mmseq.kernels._dispatch import fallbacks

        return {**self.header, "kernel_fallbacks": fallbacks(), "parts": self.parts}

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name, text in (("gpu_check.json", json.dumps(self.data(), indent=2, default=str) + "\n"),
                           ("gpu_check.md", self.markdown())):
            tmp = self.out / (name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.out / name)

    def head_markdown(self) -> str:
        h = self.header
        lines = [
            f"# GPU check{' (dry run on the CPU)' if h['dry_run'] else ''}",
            "",
            f"- device: {h['device']}",
            f"- torch {h['torch']}, triton {h['triton']}, CUDA {h['cuda']}, Python {h['python']}",
            f"- date: {h['date']}",
            f"- memory bandwidth for %BW: {h['peak_gbps_text']}",
            f"- Triton: {h['triton_mode']}",
            f"- command: `{h['command']}`",
            "- caps: " + ", ".join(f"{p} {c:g} s" for p, c in h["caps_s"].items()),
        ]
        return "\n".join(lines) + "\n"

    def part_markdown(self, name: str) -> str:
        r = self.parts[name]
        took = f" in {r['seconds']:.0f} s" if "seconds" in r else ""
        cap = f" (cap {r['cap_s']:g} s)" if "cap_s" in r else ""
        text = f"## {name}: {STATUS_TEXT.get(r['status'], r['status'])}{took}{cap}\n\n"
        if r.get("note"):
            text += f"{r['note']}\n\n"
        if r.get("markdown"):
            text += r["markdown"].rstrip() + "\n\n"
        return text

    def markdown(self) -> str:
        from mmseq.kernels._dispatch import fallbacks

        text = self.head_markdown() + "\n"
        for name in self.parts:
            text += self.part_markdown(name)
        fell = fallbacks()
        text += "## kernel fallbacks\n\n"
        if fell:
            text += "Ops whose default Triton path failed here and fell back to torch:\n\n"
            text += "\n".join(f"- {op}: {err}" for op, err in fell.items()) + "\n"
        else:
            text += "none: no default Triton path failed during the check\n"
        return text


def run_part(name: str, fn: Callable[[Cap], dict], cap_s: float, report: Report) -> dict:
    """Run one part under its cap; whatever happens, record a result with a status and write the report."""
    _log(f"== {name} (cap {cap_s:g} s)")
    cap = Cap(cap_s)
    try:
        with cap:
            result = fn(cap)
    except CapReached:  # reached outside the part's own handling (it records what it has as it goes)
        result = {"status": "partial", "note": f"stopped: its cap of {cap_s:g} s was reached"}
    except Exception as e:  # the part itself broke: say so, and go on with the next part
        traceback.print_exc()
        result = {"status": "error", "note": f"the part failed: {_one_line(e, 300)}"}
    result["seconds"] = round(cap.elapsed(), 1)
    result["cap_s"] = cap_s
    report.set(name, result)
    print(report.part_markdown(name), flush=True)
    return result


def _capped(result: dict, cap: Cap, done: int, total: int, unit: str) -> dict:
    """Mark a part that stopped at its cap after ``done`` of ``total`` units."""
    if cap.hit and done < total:
        result["status"] = "partial"
        result["note"] = (f"stopped at its cap of {cap.seconds:g} s after {done} of {total} {unit} (each of the others "
                          f"says why). Raise --{result['part']}-cap to measure them. " + result.get("note", ""))
    return result


# ----------------------------------------------------------------------------------------------------------
# part 1: the Triton / GPU tests, compiled
# ----------------------------------------------------------------------------------------------------------

_OUTCOME = re.compile(r"^(\S+::\S.*?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
_SUMMARY = re.compile(r"^=+ (.*(?:passed|failed|error|skipped|deselected|no tests ran).*?) =+$")


def part_tests(cap: Cap, args: argparse.Namespace) -> dict:
    log_path = args.out / "gpu_check_tests.log"
    paths = ["tests/kernels"] if args.dry_run else []  # [] = pytest's testpaths (all of tests/)
    cmd = [sys.executable, "-m", "pytest", "-v", "-rfEs", "-m", "triton or gpu", "-p", "no:cacheprovider",
           "--color=no", *paths]
    if args.tests_k:
        cmd += ["-k", args.tests_k]
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if args.dry_run:
        env["TRITON_INTERPRET"] = "1"
    timeout = max(cap.left() - 2.0, 1.0)
    _log("   " + shlex.join(cmd))
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        timed_out = False
        try:
            with cap.unit():
                rc = proc.wait(timeout=timeout)
        except (subprocess.TimeoutExpired, CapReached):  # kill pytest and everything it started
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    text = log_path.read_text(errors="replace")
    outcomes: dict[str, int] = {}
    failed = []
    for line in text.splitlines():
        m = _OUTCOME.match(line)
        if m:
            outcomes[m.group(2).lower()] = outcomes.get(m.group(2).lower(), 0) + 1
            if m.group(2) in ("FAILED", "ERROR"):
                failed.append(m.group(1))
    summaries = [m.group(1) for line in text.splitlines() if (m := _SUMMARY.match(line.strip()))]
    summary = summaries[-1] if summaries else ""
    selection = ("-m 'triton or gpu'" + (f" -k {shlex.quote(args.tests_k)}" if args.tests_k else "")
                 + (" in tests/kernels" if paths else ""))
    result = {"part": "tests", "command": shlex.join(cmd), "returncode": rc, "summary": summary,
              "outcomes": outcomes, "failed": failed, "log": str(log_path),
              "interpreter": bool(args.dry_run)}
    counted = ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())) or "none"
    if timed_out:
        result.update(status="partial", note=f"stopped at its cap of {cap.seconds:g} s; tests finished by then: "
                                             f"{counted}. Raise --tests-cap to run them all. Log: {log_path}")
    elif rc in (0, 1, 5):  # all passed / some failed / none collected
        mode = "the Triton interpreter (dry run)" if args.dry_run else "compiled for this GPU"
        result.update(status="ran", note=f"pytest {selection}, {mode}: **{summary or counted}** (log: {log_path})")
    else:
        tail = " ".join(text.strip().splitlines()[-3:])[-400:]
        result.update(status="error", note=f"pytest exited with code {rc}: {tail} (log: {log_path})")
    lines = []
    if failed:
        lines.append("Failed:\n\n" + "\n".join(f"- `{t}`" for t in failed))
    result["markdown"] = "\n\n".join(lines)
    return result


# ----------------------------------------------------------------------------------------------------------
# part 2: kernels against the torch path and their peers
# ----------------------------------------------------------------------------------------------------------

GPU_SHAPES = {  # the GPU shapes of benchmarks/kernels.py --device cuda
    "selective_scan": (8, 2048, 16, 8192),  # B, D, N, L
    "causal_conv1d": (8, 1536, 2048, 4),  # B, D, L, K
    "fft_conv": {"fwd": (1, 16, 65536), "fwd+bwd": (1, 16, 4096)},  # B, D, L (Lk = L)
    "attention": [("causal", (4, 16, 8192, 64), {}), ("window=128", (2, 4, 8192, 64), {"window": 128}),
                  ("chunk=256", (2, 4, 8192, 64), {"chunk": 256})],  # B, H, L, P
}
DRY_SHAPES = {
    "selective_scan": (1, 8, 4, 32),
    "causal_conv1d": (1, 8, 32, 4),
    "fft_conv": {"fwd": (1, 4, 64), "fwd+bwd": (1, 4, 32)},
    "attention": [("causal", (1, 1, 32, 16), {}), ("window=8", (1, 1, 32, 16), {"window": 8}),
                  ("chunk=16", (1, 1, 32, 16), {"chunk": 16})],
}


def peak_bandwidth(device, override: float | None) -> tuple[float | None, str]:
    """GB/s the %BW column divides by, and where it came from."""
    import torch

    if override is not None:
        return override, f"{override:.0f} GB/s (--peak-gbps)"
    if device.type != "cuda":
        return None, "unknown on the CPU (pass --peak-gbps for a %BW column)"
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        gbps = 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9  # double data rate
        return gbps, f"{gbps:.0f} GB/s (2 x memory clock {clock_khz / 1e6:.3f} GHz x {bus_bits}-bit bus)"
    return None, "unknown (the device reports no memory clock; pass --peak-gbps)"


def kernel_cases(kb, device, dry: bool) -> tuple[list, list]:
    """(core cases: the Triton and torch paths; peer cases) for every op, fp32 and bf16, fwd and fwd+bwd."""
    import torch

    shapes = DRY_SHAPES if dry else GPU_SHAPES
    dtypes = (torch.float32, torch.bfloat16)
    modes = ("fwd", "fwd+bwd")
    core, peers = [], []

    def case(op, shape, dtype, mode, impl, build, note=""):
        return kb.Case(op, shape, dtype, mode, impl, build, baseline="torch", note=note)

    # selective_scan: u, delta, z, B, C in the dtype; A, D, delta_bias in fp32 as in Mamba
    Bb, D, N, L = shapes["selective_scan"]
    scan_shape = f"B={Bb} D={D} N={N} L={L}"

    def scan(dtype, fn_of):
        def build():
            kw = dict(device=device)
            u, delta, z = (kb._randn(Bb, D, L, dtype=dtype, **kw) for _ in range(3))
            B, C = (kb._randn(Bb, N, L, dtype=dtype, **kw) for _ in range(2))
            A = (-torch.rand(D, N, device=device) - 0.5).requires_grad_()
            skip = kb._randn(D, dtype=torch.float32, **kw)
            delta_bias = kb._randn(D, dtype=torch.float32, scale=0.1, shift=-2.0, **kw)
            return fn_of(), [u, delta, A, B, C, skip, z, delta_bias]

        return build

    def ours_scan(impl):
        from mmseq.kernels.selective_scan import selective_scan

        return lambda *t: selective_scan(*t, delta_softplus=True, impl=impl)

    def mamba_scan():
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return lambda *t: selective_scan_fn(*t, delta_softplus=True)

    for dtype in dtypes:
        for mode in modes:
            for impl in ("triton", "torch"):
                build = scan(dtype, partial(ours_scan, impl))
                core.append(case("selective_scan", scan_shape, dtype, mode, impl, build))
            peers.append(case("selective_scan", scan_shape, dtype, mode, "mamba_ssm", scan(dtype, mamba_scan)))

    # causal_conv1d: bias + silu
    Bb, D, L, K = shapes["causal_conv1d"]
    conv_shape = f"B={Bb} D={D} L={L} K={K}"

    def conv(dtype, fn_of):
        def build():
            x = kb._randn(Bb, D, L, dtype=dtype, device=device)
            weight = kb._randn(D, K, dtype=dtype, device=device, scale=K**-0.5)
            bias = kb._randn(D, dtype=dtype, device=device)
            return fn_of(), [x, weight, bias]

        return build

    def ours_conv(impl):
        from mmseq.kernels.causal_conv1d import causal_conv1d

        return lambda x, w, b: causal_conv1d(x, w, b, activation="silu", impl=impl)

    def dao_conv():
        from causal_conv1d import causal_conv1d_fn

        return lambda x, w, b: causal_conv1d_fn(x, w, b, activation="silu")

    for dtype in dtypes:
        for mode in modes:
            for impl in ("triton", "torch"):
                core.append(case("causal_conv1d", conv_shape, dtype, mode, impl, conv(dtype, partial(ours_conv, impl)),
                                 "bias + silu" if impl == "triton" else ""))
            peers.append(case("causal_conv1d", conv_shape, dtype, mode, "causal-conv1d", conv(dtype, dao_conv)))

    # fft_conv: Lk = L, the forward at the long length and fwd+bwd at the short one, as kernels.py does
    def fft(Bb, D, L, dtype, impl):
        def build():
            from mmseq.kernels.fft_conv import fft_conv

            u = kb._randn(Bb, D, L, dtype=dtype, device=device)
            k = kb._randn(D, L, dtype=dtype, device=device, scale=L**-0.5)
            skip = kb._randn(D, dtype=dtype, device=device)
            return (lambda u, k, s: fft_conv(u, k, s, causal=True, impl=impl)), [u, k, skip]

        return build

    for dtype in dtypes:
        for mode in modes:
            Bb, D, L = shapes["fft_conv"][mode]
            for impl in ("triton", "torch"):
                note = "triton = tiled direct conv" if impl == "triton" else "torch = rFFT (the torch FFT path)"
                core.append(case("fft_conv", f"B={Bb} D={D} L={L} Lk={L}", dtype, mode, impl,
                                 fft(Bb, D, L, dtype, impl), note))

    # attention: causal, sliding window, chunked; the peers are SDPA's flash and efficient kernels and flex
    def attn(name, dims, pattern, dtype, impl):
        Bb, H, L, P = dims

        def build():
            from mmseq.kernels.attention import attention

            q, k, v = (kb._randn(Bb, H, L, P, dtype=dtype, device=device) for _ in range(3))
            if impl == "flex":
                return kb._flex(pattern, L, device), [q, k, v]
            if impl.startswith("sdpa-"):
                return _sdpa(impl, pattern, L, device), [q, k, v]
            return (lambda q, k, v: attention(q, k, v, causal=True, impl=impl, **pattern)), [q, k, v]

        return build

    for name, dims, pattern in shapes["attention"]:
        shape = "B={} H={} L={} P={}".format(*dims)
        for dtype in dtypes:
            for mode in modes:
                for impl in ("triton", "torch"):
                    note = "torch = SDPA" if impl == "torch" and not pattern else ""
                    core.append(case(f"attention ({name})", shape, dtype, mode, impl,
                                     attn(name, dims, pattern, dtype, impl), note))
                for impl in ("sdpa-flash", "sdpa-efficient", "flex"):
                    peers.append(case(f"attention ({name})", shape, dtype, mode, impl,
                                      attn(name, dims, pattern, dtype, impl)))
    # flex compiles (tens of seconds each): after every other peer, bf16 first, so a cap cuts the fp32 ones
    peers.sort(key=lambda c: (c.impl == "flex", c.impl == "flex" and c.dtype != torch.bfloat16))
    return core, peers


def _sdpa(impl: str, pattern: dict, L: int, device) -> Callable:
    """SDPA restricted to one backend: causal through is_causal, window / chunk through a boolean mask."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION}[impl]
    if not pattern:
        def fn(q, k, v):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        return fn
    i = torch.arange(L, device=device)
    allowed = i[None, :] <= i[:, None]
    if "window" in pattern:
        allowed &= (i[:, None] - i[None, :]) < pattern["window"]
    if "chunk" in pattern:
        allowed &= (i[:, None] // pattern["chunk"]) == (i[None, :] // pattern["chunk"])

    def masked(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)

    return masked


def peer_skip_reason(case, device, dry: bool) -> str | None:
    """Why a peer row cannot run here (None: run it)."""
    import torch

    impl = case.impl
    if impl == "mamba_ssm":
        if importlib.util.find_spec("mamba_ssm") is None:
            return "skipped: mamba_ssm is not installed (pip install mamba-ssm)"
        return None if device.type == "cuda" else "skipped: mamba_ssm's selective scan is CUDA only"
    if impl == "causal-conv1d":
        if importlib.util.find_spec("causal_conv1d") is None:
            return "skipped: the causal-conv1d package is not installed (pip install causal-conv1d)"
        return None if device.type == "cuda" else "skipped: causal-conv1d's op is CUDA only"
    masked = not case.op.endswith("(causal)")
    if impl == "sdpa-flash":
        if masked:
            return "skipped: SDPA's flash kernel takes no mask (window / chunk)"
        if case.dtype == torch.float32 and device.type == "cuda":
            return "skipped: SDPA's flash kernel needs fp16 / bf16"
    if impl == "sdpa-efficient" and device.type != "cuda":
        return "skipped: SDPA's efficient kernel is CUDA only"
    if impl == "flex":
        if dry:
            return "skipped in --dry-run: flex_attention needs torch.compile (minutes on a CPU)"
        try:
            import torch.nn.attention.flex_attention  # noqa: F401
        except ImportError as e:
            return f"skipped: flex_attention does not import ({_one_line(e, 80)})"
    return None


def part_kernels(cap: Cap, args: argparse.Namespace, device) -> dict:
    kb = _load("mmseq_bench_kernels", BENCH / "kernels.py")
    if args.dry_run:
        timing = argparse.Namespace(warmup=1, min_reps=1, reps=1, budget=0.0, min_sample=0.0)
    else:
        timing = argparse.Namespace(warmup=2, min_reps=3, reps=10, budget=0.2, min_sample=0.01)
    core, peers = kernel_cases(kb, device, args.dry_run)
    cases = core + peers  # every op's own paths first, so that a cap cuts peers before them
    rank = {id(c): i for i, c in enumerate(cases)}
    rows: list = []
    done = 0
    for case in cases:
        if cap.over():
            rows.append(kb.Row(case, case.op, error=f"skipped: the part's cap of {cap.seconds:g} s was reached"))
            continue
        reason = peer_skip_reason(case, device, args.dry_run) if rank[id(case)] >= len(core) else None
        if reason:
            rows.append(kb.Row(case, case.op, error=reason))
            done += 1
            continue
        try:
            with cap.unit():
                row = kb.run_case(case, device, timing)
            done += 1
        except CapReached:
            row = kb.Row(case, case.op, error=f"interrupted: the part's cap of {cap.seconds:g} s was reached")
            cap.hit = True
        rows.append(row)
        shown = f"{row.ms:.3f} ms" if row.ms is not None else row.error
        _log(f"   [{case.op}] {case.shape} {kb.DTYPES[case.dtype]} {case.mode} {case.impl}: {shown}")
    # the table keeps each group (op, shape, dtype, pass) together: Triton, torch, then the peers
    first = {}
    for c in cases:
        first.setdefault(c.group, rank[id(c)])
    rows.sort(key=lambda r: (first[r.case.group], rank[id(r.case)]))
    peak, _ = peak_bandwidth(device, args.peak_gbps)
    json_rows, table = kernel_rows(kb, rows, peak)
    result = {"part": "kernels", "rows": json_rows, "markdown": table, "status": "ran",
              "note": ("ms: median per call after warm-up (the first call compiles). speedup: the torch path's time "
                       "/ the row's, in the same group. GB/s: every input read and output written once (fwd+bwd: "
                       "also the output gradient read and the input gradients written) per second; %BW: of the "
                       "memory bandwidth in the header.")}
    if args.dry_run:
        result["note"] += " Dry run: tiny shapes, Triton in the interpreter, one timed call: the times mean nothing."
    return _capped(result, cap, done, len(cases), "rows")


def kernel_rows(kb, rows: list, peak: float | None) -> tuple[list[dict], str]:
    """JSON rows and the markdown table: the torch path is each group's baseline."""
    base = {(r.case.group, r.case.impl): r.ms for r in rows if r.ms is not None}
    header = ["op", "shape", "dtype", "pass", "impl", "ms", "speedup", "GB/s", "%BW", "note"]
    body, out = [], []
    for r in rows:
        c = r.case
        ref = base.get((c.group, "torch"))
        gbps = r.nbytes / (r.ms * 1e-3) / 1e9 if r.ms else None
        pct = 100 * gbps / peak if gbps is not None and peak else None
        speedup = ref / r.ms if r.ms and ref else None
        note = r.error or c.note
        out.append({"op": c.op, "shape": c.shape, "dtype": kb.DTYPES[c.dtype], "pass": c.mode, "impl": c.impl,
                    "ms": r.ms, "speedup_vs_torch": speedup, "gbps": gbps, "pct_bw": pct, "note": note})
        body.append([c.op, c.shape, kb.DTYPES[c.dtype], c.mode, c.impl, _fmt(r.ms, ".3f"), _fmt(speedup, ".2f"),
                     _fmt(gbps, ".1f"), _fmt(pct, ".1f"), note])
    return out, kb.render(header, body, {"ms", "speedup", "GB/s", "%BW"})


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


# ----------------------------------------------------------------------------------------------------------
# part 3: one short training run per task
# ----------------------------------------------------------------------------------------------------------


def task_config(name: str) -> Path | None:
    """configs/ file for ``name``: the table, else configs/*/<name>*.yaml, else the first config naming it."""
    if name in TASK_CONFIGS and (REPO / "configs" / TASK_CONFIGS[name]).is_file():
        return REPO / "configs" / TASK_CONFIGS[name]
    for stem in dict.fromkeys((name, name.replace("-", "_"), name.split("-")[-1])):
        found = sorted((REPO / "configs").glob(f"*/{stem}*.yaml"))
        if found:
            return found[0]
    import yaml

    for path in sorted((REPO / "configs").glob("*/*.yaml")):
        with contextlib.suppress(Exception):
            if (yaml.safe_load(path.read_text()) or {}).get("task") == name:
                return path
    return None


def tone_folder(root: Path, classes: int = 3, speakers: int = 40, seconds: float = 1.0) -> Path:
    """root/<class>/<speaker>_nohash_0.wav: noisy sine tones, a stand-in for a missing keyword set."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(16000 * seconds)) / 16000
    for c in range(classes):
        folder = root / f"tone{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for s in range(speakers):
            wave = 0.3 * np.sin(2 * math.pi * 300.0 * 2.5**c * t) + 0.01 * rng.standard_normal(t.size)
            sf.write(folder / f"spk{c}x{s}_nohash_0.wav", wave.astype(np.float32), 16000)
    return root


def task_overrides(name: str, raw: dict, fields: set[str], args: argparse.Namespace, device) -> list[str]:
    steps = args.task_steps
    batch = DRY_BATCH if args.dry_run else GPU_BATCH.get(name, 4 * int(raw.get("data", {}).get("batch_size", 8)))
    out = [f"trainer.max_steps={steps}", f"trainer.log_every_n_steps={max(1, steps // 2)}",
           f"trainer.val_check_interval={steps}", f"trainer.checkpoint_every_n_steps={steps}",
           "trainer.precision=bf16-mixed", f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
           "trainer.devices=1", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=1"]
    data = {"batch_size": batch, "eval_batch_size": batch, "num_train": batch * steps, "num_val": batch,
            "num_test": batch}
    out += [f"data.{k}={v}" for k, v in data.items() if k in fields]
    return out


def missing_paths(raw: dict) -> list[str]:
    """The data.* values that name files or folders (a '/' in them) which are not there."""
    out = []
    for key, value in (raw.get("data") or {}).items():
        if isinstance(value, str) and "/" in value and not Path(value).exists():
            out.append(f"data.{key}={value}")
    return out


def plan_task(name: str, args: argparse.Namespace, device, work: Path) -> dict:
    """What to run for task ``name``: its config and overrides, or why it is skipped."""
    from mmseq.runner.config import load_config_file
    from mmseq.runner.task import get_task

    config = task_config(name)
    if config is None:
        return {"skip": f"skipped: no config for task {name!r} under configs/"}
    shown = str(config.relative_to(REPO))
    raw = load_config_file(config)
    fields = {f.name for f in dataclasses.fields(get_task(name).data_config)}
    plan = {"config": config, "shown": shown, "overrides": task_overrides(name, raw, fields, args, device),
            "tones": None, "note": ""}
    missing = missing_paths(raw)
    if missing and name != "keywords":
        plan["skip"] = (f"skipped: its data is not here ({', '.join(missing)}); see the header of {shown} for "
                        "how to make it")
    elif missing:  # keywords without a keyword set: a folder of tones instead
        plan["tones"] = work / "tones"
        plan["overrides"] += [f"data.root={plan['tones']}", "data.format=folder"]
        if args.dry_run:
            plan["overrides"].append("data.clip_seconds=0.25")
        plan["note"] = f"no {raw['data'].get('root')}: trained on synthetic tones (3 classes). "
    return plan


def part_tasks(cap: Cap, args: argparse.Namespace, device) -> dict:
    import torch

    from mmseq.runner.task import task_names
    from mmseq.runner.train import train

    registered = task_names()
    # the tasks of the table first (cheap ones first), then any other registered task
    names = [n for n in TASK_CONFIGS if n in registered] + [n for n in registered if n not in TASK_CONFIGS]
    rows = {n: {"task": n, "config": "-", "batch": None, "samples_per_s": None, "tokens_per_s": None,
                "peak_mem_mb": None, "seconds": None, "note": ""} for n in names}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-tasks-"))
    cwd = os.getcwd()
    os.chdir(REPO)  # configs name data folders relative to the repository
    done = 0
    try:
        plans = {}
        for name in names:
            try:
                plans[name] = plan_task(name, args, device, work)
            except Exception as e:  # a config that does not load is that task's row
                plans[name] = {"skip": f"error: {_one_line(e)}"}
        runnable = [n for n in names if "skip" not in plans[n]]
        for name in names:
            row, plan = rows[name], plans[name]
            row["config"] = plan.get("shown", "-")
            if "skip" in plan:
                row["note"] = plan["skip"]
                done += 1
                continue
            if cap.over():
                row["note"] = f"skipped: the part's cap of {cap.seconds:g} s was reached"
                continue
            share = cap.left() / (len(runnable) - runnable.index(name))  # an even share of what is left
            row["note"] = plan["note"]
            t0 = time.perf_counter()
            try:
                with cap.unit(share), contextlib.redirect_stdout(sys.stderr):
                    if plan["tones"] is not None:
                        tone_folder(plan["tones"], speakers=12 if args.dry_run else 120,
                                    seconds=0.25 if args.dry_run else 1.0)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    metrics = train(plan["config"], plan["overrides"], run_dir=work / f"run-{name}")
                perf = metrics.get("throughput") or {}
                batch = [o.split("=", 1)[1] for o in plan["overrides"] if o.startswith("data.batch_size=")]
                row.update(batch=int(batch[0]) if batch else None, samples_per_s=perf.get("perf/samples_per_sec"),
                           tokens_per_s=perf.get("perf/tokens_per_sec"), peak_mem_mb=perf.get("perf/peak_mem_mb"))
                timed = args.task_steps - max(1, args.task_steps // 2)
                row["note"] += f"{args.task_steps} steps; samples/s over the last {timed} (the first compiles)"
                done += 1
            except CapReached:
                row["note"] += (f"interrupted: the part's cap of {cap.seconds:g} s was reached" if cap.over() else
                                f"interrupted after its share of the part's cap ({share:.0f} s); raise --tasks-cap")
            except Exception as e:  # one task failing is its row; the others still run
                traceback.print_exc()
                row["note"] += f"error: {_one_line(e)}"
                done += 1
            finally:
                row["seconds"] = round(time.perf_counter() - t0, 1)
                shutil.rmtree(work / f"run-{name}", ignore_errors=True)
                rate, mem = _fmt(row["samples_per_s"], ".1f"), _fmt(row["peak_mem_mb"], ".0f")
                _log(f"   [{name}] {rate} samples/s, {mem} MB; {row['note']}")
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    rows = list(rows.values())
    mem = "peak GPU memory allocated" if device.type == "cuda" else "peak resident memory of the process (CPU)"
    header = ["task", "config", "batch", "samples/s", "tokens/s", "peak MB", "s", "note"]
    body = [[r["task"], r["config"], _fmt(r["batch"], "d"), _fmt(r["samples_per_s"], ".1f"),
             _fmt(r["tokens_per_s"], ".0f"), _fmt(r["peak_mem_mb"], ".0f"), _fmt(r["seconds"], ".1f"), r["note"]]
            for r in rows]
    kb = _load("mmseq_bench_kernels", BENCH / "kernels.py")
    result = {"part": "tasks", "rows": rows, "status": "ran",
              "markdown": kb.render(header, body, {"batch", "samples/s", "tokens/s", "peak MB", "s"}),
              "note": (f"Each task trains {args.task_steps} steps through `mmseq.runner.train` (bf16-mixed, "
                       f"validation limited to one batch). peak MB: {mem}; s: wall time of the whole run "
                       "(start-up, steps, validation, test, export).")}
    cap.hit = cap.hit or done < len(names)  # a task cut short by its share also stopped at the cap
    return _capped(result, cap, done, len(names), "tasks")


# ----------------------------------------------------------------------------------------------------------
# part 4: mixers, time and memory versus L
# ----------------------------------------------------------------------------------------------------------


def part_mixers(cap: Cap, args: argparse.Namespace, device) -> dict:
    mb = _load("mmseq_bench_mixers", BENCH / "mixers.py")
    import mmseq.mixers  # noqa: F401  (registers the mixers)
    from mmseq.mixers.base import list_mixers

    names = list_mixers()
    lengths = [L for L in (DRY_MIXER_LENGTHS if args.dry_run else MIXER_LENGTHS) if L <= args.max_length]
    if args.dry_run:
        opts = argparse.Namespace(warmup=1, min_reps=1, reps=1, budget=0.0, skip_after=5.0, verbose=False)
    else:
        opts = argparse.Namespace(warmup=1, min_reps=3, reps=10, budget=0.2, skip_after=15.0, verbose=False)
    d_model, batch = 64, 1
    cells = {}
    stopped: dict[str, str] = {}  # mixer -> why its longer lengths are skipped
    done = 0
    for L in lengths:  # every mixer at one length before the next, so a cap cuts the longest lengths
        for name in names:
            case = mb.Case(name, L, d_model, batch)
            if cap.over():
                cells[(name, L)] = mb.Cell(case, note=f"skipped: the part's cap of {cap.seconds:g} s was reached")
                continue
            if name in stopped:
                cells[(name, L)] = mb.Cell(case, note=stopped[name])
                done += 1
                continue
            try:
                with cap.unit():
                    cell = mb.run_cell(case, device, opts)
            except CapReached:
                cell = mb.Cell(case, note=f"interrupted: the part's cap of {cap.seconds:g} s was reached")
                cap.hit = True
            else:
                done += 1
                if cell.ms is None:
                    stopped[name] = f"skipped: L={L} failed"
                elif cell.wall_s > opts.skip_after:
                    stopped[name] = f"skipped: L={L} took {cell.wall_s:.0f} s > {opts.skip_after:g} s"
            cells[(name, L)] = cell
            shown = f"{cell.ms:.2f} ms, {cell.peak_mb:.1f} MB" if cell.ms is not None else cell.note
            _log(f"   [{name}] L={L}: {shown}")
    ordered = [cells[(n, L)] for n in names for L in lengths]
    setup = f"d_model={d_model}, batch {batch}, fp32, causal, forward+backward, default kernel paths"
    result = {
        "part": "mixers", "status": "ran", "lengths": lengths,
        "cells": [{"mixer": c.case.mixer, "L": c.case.L, "ms": c.ms, "peak_mb": c.peak_mb, "note": c.note}
                  for c in ordered],
        "slopes": [dataclasses.asdict(s) for s in mb.slopes(ordered, names)],
        "markdown": mb.speed_table(ordered) + "\n\n" + mb.slope_table(mb.slopes(ordered, names)),
        "note": (f"benchmarks/mixers.py's speed part ({setup}). peak MB: "
                 + ("torch.cuda.max_memory_allocated beyond what was allocated before the pass."
                    if device.type == "cuda" else "the tensors the pass allocates (exact, on the CPU).")),
    }
    return _capped(result, cap, done, len(ordered), "cells")


# ----------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run", action="store_true",
                   help="rehearse on the CPU: tiny shapes, Triton interpreter, a few tests, caps of seconds")
    p.add_argument("--out", type=Path, default=BENCH / "gpu_check_out", metavar="DIR",
                   help="where gpu_check.md, gpu_check.json and gpu_check_tests.log go\n"
                        "(default benchmarks/gpu_check_out)")
    p.add_argument("--parts", nargs="+", default=list(PARTS), metavar="PART",
                   help=f"parts to run (default all: {' '.join(PARTS)})")
    for part in PARTS:
        p.add_argument(f"--{part}-cap", type=float, default=None, metavar="S",
                       help=f"seconds for the {part} part (default {CAPS[part]:g}; {DRY_CAPS[part]:g} with --dry-run)")
    p.add_argument("--tests-k", default=None, metavar="EXPR",
                   help=f"pytest -k selection for the tests part (default: all; with --dry-run {DRY_TESTS_K!r})")
    p.add_argument("--peak-gbps", type=float, default=None,
                   help="memory bandwidth for %%BW (default: from the GPU's memory clock and bus width)")
    p.add_argument("--max-length", type=int, default=None, metavar="L",
                   help="longest L of the mixers part (default 65536; 64 with --dry-run)")
    p.add_argument("--task-steps", type=int, default=None, metavar="N",
                   help="training steps per task (default 6; 2 with --dry-run); samples/s is over the last half")
    args = p.parse_args(argv)
    args.parts = [x for item in args.parts for x in item.split(",") if x]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    caps = DRY_CAPS if args.dry_run else CAPS
    args.caps = {part: getattr(args, f"{part}_cap") or caps[part] for part in PARTS}
    if args.tests_k is None and args.dry_run:
        args.tests_k = DRY_TESTS_K
    if args.max_length is None:
        args.max_length = max(DRY_MIXER_LENGTHS) if args.dry_run else max(MIXER_LENGTHS)
    if args.task_steps is None:
        args.task_steps = 2 if args.dry_run else 6
    if args.task_steps < 2:
        p.error(f"--task-steps must be at least 2 (the first step compiles), got {args.task_steps}")
    args.out = args.out.resolve()
    return args


def device_text(report, device) -> str:
    """The device's name; on CUDA also its memory, compute capability and SM count."""
    import torch

    if device.type != "cuda":
        return report.device_name(device)
    p = torch.cuda.get_device_properties(device)
    return (f"{p.name} ({p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
            f"{p.multi_processor_count} SMs; {torch.cuda.device_count()} CUDA device(s) visible, using cuda:0)")


def header(args: argparse.Namespace, device) -> dict:
    import torch

    report = _load("mmseq_bench_report", BENCH / "report.py")
    try:
        import triton

        triton_version = triton.__version__
    except Exception as e:  # noqa: BLE001  (the check still runs the torch paths)
        triton_version = f"not importable ({_one_line(e, 60)})"
    _, peak_text = peak_bandwidth(device, args.peak_gbps)
    return {
        "dry_run": bool(args.dry_run),
        "device": device_text(report, device),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda or "none",
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "peak_gbps_text": peak_text,
        "triton_mode": ("interpreter (TRITON_INTERPRET=1, dry run)" if args.dry_run
                        else "compiled (TRITON_INTERPRET unset)"),
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "caps_s": {p: args.caps[p] for p in args.parts},
        "out": str(args.out),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Kernel modules read TRITON_INTERPRET when first imported: settle it before anything imports them.
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    elif os.environ.pop("TRITON_INTERPRET", "0") not in ("", "0"):
        _log("note: TRITON_INTERPRET was set; it is unset for the check, which compiles the kernels")
    import torch

    if args.dry_run:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # tiny shapes: threads only add stalls when other work shares the cores
    elif not torch.cuda.is_available():
        _log("error: torch sees no CUDA device; run `make gpu-check` on a machine with one, or rehearse it on the "
             "CPU with --dry-run")
        return 2
    else:
        device = torch.device("cuda")
    report = Report(args.out, header(args, device), list(PARTS), args.parts)
    report.write()
    print(report.head_markdown(), flush=True)
    parts = {
        "tests": lambda cap: part_tests(cap, args),
        "kernels": lambda cap: part_kernels(cap, args, device),
        "tasks": lambda cap: part_tasks(cap, args, device),
        "mixers": lambda cap: part_mixers(cap, args, device),
    }
    results = {}
    for name in PARTS:
        if name in args.parts:
            results[name] = run_part(name, parts[name], args.caps[name], report)
    report.write()
    _log(f"written: {args.out / 'gpu_check.md'} and {args.out / 'gpu_check.json'}")
    tests = results.get("tests", {})
    failed = bool(tests.get("failed")) or tests.get("returncode") not in (None, 0, 5)
    return 1 if failed or any(r["status"] == "error" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
