"""Mixer benchmarks: speed and memory versus sequence length, and MQAR accuracy at a fixed training budget.

    python benchmarks/mixers.py --part speed                       # every mixer, L = 256 ... 16384, CPU
    python benchmarks/mixers.py --part speed --mixers mamba attention --plot speed.png
    python benchmarks/mixers.py --part mqar --lengths 256 512 --steps 600
    python benchmarks/mixers.py --part mqar --lengths 1024 4096 --tokens-per-step 16384 --num-test 250
    python benchmarks/mixers.py --quick                            # both parts on tiny shapes, a smoke run
    python benchmarks/mixers.py --part all --markdown benchmarks/RESULTS.md
    python benchmarks/mixers.py --part ssd --ssd-lengths 1024 4096       # Mamba-2's chunked scan vs its loop

speed: for each registered mixer (its constructor defaults, ``d_model=64``, causal, batch 1, fp32; mixers
with an ``l_max`` get ``l_max=L``) one forward+backward is timed at each L (``ms``: median of several runs
after warm-up) and its peak memory measured (``peak MB``). On CPU the peak is exact: a TorchDispatchMode
sees every tensor the forward and backward allocate, keeps the bytes of the storages still alive, and
records the largest total; the parameters and the input, allocated before, are not counted. On CUDA it is
``torch.cuda.max_memory_allocated`` minus the memory allocated before the pass. A (mixer, L) cell is
skipped once the previous L of that mixer took longer than ``--skip-after`` seconds to measure. A second
table gives, per mixer, the least-squares slope of log(ms) and log(peak MB) against log(L): over all
measured L, and over the three largest (where fixed per-call overheads matter least). Quadratic mixers
approach 2, linear and L log L ones 1.

mqar: each mixer is trained on multi-query associative recall through the runner
(``mmseq.runner.train.train``) from ``configs/synthetic/mqar_<name>.yaml`` (``mqar_attention.yaml`` with the
mixer swapped in when a mixer has none) for ``--steps`` steps at each length of ``--lengths``, with 8
key-value pairs and a 256-token vocabulary at every length, so only the distance to recall changes. With
``--tokens-per-step N`` the batch is N // L sequences, so every length trains on the same number of tokens
(and, by default, each training sequence is seen once). The table gives the test accuracy of each (mixer, L).
Run folders go to a temporary folder (``--keep-runs DIR`` to keep them). ``--max-minutes`` stops starting
new runs once the next would likely end past the budget; runs not started are listed as such.

ssd: the SSD scan of Mamba-2 (``mmseq.kernels.ssd``), its chunked torch path against the sequential float loop
``ssd_ref`` on the same inputs, forward+backward (B 1, H 4, P 16, N 16, chunk 64, fp32), with the ratio; then
the ``mamba2`` mixer beside ``mamba`` at the same width (``--d-model``, default 64, their default expand 2),
forward+backward, with the ratio.

Nothing is written unless ``--markdown FILE`` is given; each table is then appended to FILE under a line
with the date, the device, the torch version and the command.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or loaded by path
from report import render, setup_device, write_markdown  # noqa: E402
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

REPO = Path(__file__).resolve().parents[1]
LENGTHS = (256, 512, 1024, 2048, 4096, 8192, 16384)
QUICK_LENGTHS = (64, 128, 256)

# How the cost of each mixer's forward grows with L (at fixed hyperparameters), and the log-log slope
# that implies. Windowed / chunked attention is linear because the window or chunk is fixed.
EXPECTED = {
    "attention": ("quadratic", 2.0),
    "hybrid": ("quadratic (has full attention)", 2.0),
    "chunked": ("linear (fixed chunk)", 1.0),
    "swa": ("linear (fixed window)", 1.0),
    "tcnca": ("linear (TCN + chunked attn)", 1.0),
    "longvq": ("linear (codebook attn)", 1.0),
    "mamba": ("linear (scan)", 1.0),
    "s4d": ("L log L (FFT conv)", 1.0),
    "hyena": ("L log L (FFT conv)", 1.0),
    "longconv": ("L log L (FFT conv)", 1.0),
    "sgconv": ("L log L (FFT conv)", 1.0),
    "s4": ("L log L (FFT conv, Cauchy kernel)", 1.0),
    "mamba2": ("linear (chunked SSD scan)", 1.0),
    "scout": ("L^2 / segment (checkpoint attn)", 2.0),
    "seqboat": ("linear (local attn on active tokens)", 1.0),
    "memmamba": ("linear (scan + fixed note pools)", 1.0),
    "hax": ("L^2 / n_buckets (LSH + selected keys)", 2.0),
    "sambay": ("quadratic (one full attn layer)", 2.0),
}


def expected_class(name: str) -> str:
    return EXPECTED.get(name, ("?", float("nan")))[0]


# ----------------------------------------------------------------------------------------------------------
# peak memory on CPU
# ----------------------------------------------------------------------------------------------------------


class PeakMemory(TorchDispatchMode):
    """Tracks the bytes of live tensor storages allocated by ops run under it and records the peak.

    Every op's outputs are looked at; a storage not seen before is counted until it dies (a C-level weak
    reference says when). Dead storages are dropped before the outputs of each op are added, so ``peak``
    is the largest total of storages alive at once at the end of any op. In-place ops and views add nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _purge(self) -> None:
        dead = [k for k, (ref, _) in self.live.items() if ref.expired()]
        for k in dead:
            self.current -= self.live.pop(k)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._purge()
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            try:
                storage = t.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            nbytes = storage.nbytes()
            ptr = storage.data_ptr()
            if nbytes == 0:
                continue
            old = self.live.get(ptr)
            if old is not None and not old[0].expired():
                continue
            if old is not None:
                self.current -= old[1]
            self.live[ptr] = (StorageWeakRef(storage), nbytes)
            self.current += nbytes
        self.peak = max(self.peak, self.current)
        return out


def peak_bytes(step: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated by one ``step()`` beyond what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - before
    with PeakMemory() as mode:
        step()
    return mode.peak


# ----------------------------------------------------------------------------------------------------------
# speed
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One (mixer, L) cell of the speed part."""

    mixer: str
    L: int
    d_model: int
    batch: int


@dataclass
class Cell:
    case: Case
    ms: float | None = None
    peak_mb: float | None = None
    wall_s: float = 0.0
    note: str = ""


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def time_ms(step: Callable[[], object], device: torch.device, *, warmup: int, min_reps: int, max_reps: int,
            budget_s: float) -> float:
    """Median milliseconds per ``step()`` after ``warmup`` calls.

    Sampling stops after ``max_reps`` samples, or once there are ``min_reps`` and ``budget_s`` seconds have
    gone by. A call slower than the budget ends the warm-up after the first call and is timed only
    ``min_reps`` times (at least once, at most three times).
    """
    sync = _sync(device)

    def once() -> float:
        t0 = time.perf_counter()
        step()
        sync()
        return time.perf_counter() - t0

    last = once()
    for _ in range(warmup - 1):
        if last > budget_s:
            break
        last = once()
    if last > budget_s:
        min_reps = max(1, min(min_reps, 3 if last < 4 * budget_s else 1))
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_reps and (len(samples) < min_reps or time.perf_counter() - start < budget_s):
        samples.append(once())
    return statistics.median(samples) * 1e3


def mixer_kwargs(name: str, L: int) -> dict:
    """Constructor arguments beyond the defaults: ``l_max=L`` for mixers that take it."""
    from mmseq.mixers.base import mixer_hparams

    return {"l_max": L} if "l_max" in mixer_hparams(name) else {}


def run_cell(case: Case, device: torch.device, args: argparse.Namespace) -> Cell:
    from mmseq.mixers.base import create_mixer

    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        mixer = create_mixer(case.mixer, case.d_model, causal=True, **mixer_kwargs(case.mixer, case.L))
        mixer = mixer.to(device).train()
        x = torch.randn(case.batch, case.L, case.d_model, device=device, requires_grad=True)
        grad = torch.randn(case.batch, case.L, case.d_model, device=device)
        params = [p for p in mixer.parameters() if p.requires_grad]

        def step():
            y = mixer(x)
            return torch.autograd.grad(y, [x, *params], grad, allow_unused=True)

        peak = peak_bytes(step, device)
        ms = time_ms(step, device, warmup=args.warmup, min_reps=args.min_reps, max_reps=args.reps,
                     budget_s=args.budget)
        return Cell(case, ms=ms, peak_mb=peak / 2**20, wall_s=time.perf_counter() - start)
    except Exception as e:  # a failing cell is reported in its row; the other cells still run
        msg = " ".join(str(e).split())
        if args.verbose:
            traceback.print_exc()
        return Cell(case, wall_s=time.perf_counter() - start, note=f"error: {type(e).__name__}: {msg[:100]}")
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def run_speed(mixers: list[str], lengths: list[int], device: torch.device, args: argparse.Namespace) -> list[Cell]:
    cells: list[Cell] = []
    for name in mixers:
        skip_from: float | None = None
        for L in lengths:
            case = Case(name, L, args.d_model, args.batch)
            if skip_from is not None:
                cell = Cell(case, note=f"skipped: the previous L took {skip_from:.1f} s > {args.skip_after:g} s")
                print(f"[{name}] L={L}: skipped", file=sys.stderr, flush=True)
                cells.append(cell)
                continue
            cell = run_cell(case, device, args)
            shown = f"{cell.ms:.2f} ms, {cell.peak_mb:.1f} MB" if cell.ms is not None else cell.note
            print(f"[{name}] L={L}: {shown} ({cell.wall_s:.1f} s)", file=sys.stderr, flush=True)
            cells.append(cell)
            if cell.wall_s > args.skip_after or cell.ms is None:
                skip_from = cell.wall_s
    return cells


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) against log(x); None with fewer than two points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y is not None and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


@dataclass
class Slopes:
    mixer: str
    n: int
    time_all: float | None
    mem_all: float | None
    time_top: float | None
    mem_top: float | None
    max_L: int | None = None
    notes: list[str] = field(default_factory=list)


def slopes(cells: list[Cell], mixers: list[str], top: int = 3) -> list[Slopes]:
    out = []
    for name in mixers:
        done = [c for c in cells if c.case.mixer == name and c.ms is not None]
        Ls = [c.case.L for c in done]
        ms = [c.ms for c in done]
        mb = [c.peak_mb for c in done]
        out.append(Slopes(name, len(done), loglog_slope(Ls, ms), loglog_slope(Ls, mb),
                          loglog_slope(Ls[-top:], ms[-top:]), loglog_slope(Ls[-top:], mb[-top:]),
                          max(Ls) if Ls else None))
    return out


# ----------------------------------------------------------------------------------------------------------
# mqar
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    mixer: str
    L: int
    config: str = ""
    acc: float | None = None
    val_acc: float | None = None
    steps: int | None = None
    batch: int | None = None
    train_s: float | None = None
    note: str = ""


def mqar_config(name: str, tmp: Path) -> tuple[Path, str]:
    """The MQAR config of ``name``: its own file, or ``mqar_attention.yaml`` with the mixer swapped (written to tmp)."""
    own = REPO / "configs" / "synthetic" / f"mqar_{name}.yaml"
    if own.is_file():
        return own, own.name
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "configs" / "synthetic" / "mqar_attention.yaml")
    cfg.model.mixer = {"name": name}
    path = tmp / f"mqar_{name}_from_attention.yaml"
    OmegaConf.save(cfg, path)
    return path, "mqar_attention.yaml (mixer swapped)"


def mqar_batch(L: int, args: argparse.Namespace) -> int | None:
    """Sequences per step: ``--tokens-per-step // L`` (at least 1), or None to keep the config's batch."""
    if args.tokens_per_step is None:
        return None
    return max(1, args.tokens_per_step // L)


def mqar_overrides(name: str, L: int, args: argparse.Namespace) -> list[str]:
    from mmseq.mixers.base import mixer_hparams

    out = [
        f"data.seq_len={L}",
        f"data.vocab_size={args.vocab_size}",
        f"data.num_kv_pairs={args.num_kv_pairs}",
        f"trainer.max_steps={args.steps}",
        f"trainer.val_check_interval={args.steps}",
        f"trainer.checkpoint_every_n_steps={args.steps}",
        "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu" if args.device == "cpu" else "trainer.accelerator=gpu",
    ]
    batch = mqar_batch(L, args)
    if batch is not None:
        out.append(f"data.batch_size={batch}")
    num_train = args.num_train
    if num_train is None and batch is not None:
        num_train = args.steps * batch  # every training sequence is fresh
    if num_train is not None:
        out.append(f"data.num_train={num_train}")
    if args.num_val is not None:
        out.append(f"data.num_val={args.num_val}")
    if args.num_test is not None:
        out.append(f"data.num_test={args.num_test}")
    if "l_max" in mixer_hparams(name):
        out.append(f"model.mixer.l_max={L}")
    return out


def run_mqar(mixers: list[str], lengths: list[int], args: argparse.Namespace) -> list[Run]:
    import logging
    import warnings

    from mmseq.runner.train import train

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", module="pytorch_lightning")

    runs: list[Run] = []
    start = time.perf_counter()
    longest = 0.0
    with tempfile.TemporaryDirectory(prefix="mqar-bench-") as tmpdir:
        tmp = Path(tmpdir)
        root = Path(args.keep_runs) if args.keep_runs else tmp / "runs"
        for L in lengths:
            for name in mixers:
                run = Run(name, L)
                runs.append(run)
                elapsed = time.perf_counter() - start
                if args.max_minutes is not None and elapsed + longest > 60 * args.max_minutes:
                    run.note = f"not run: time budget of {args.max_minutes:g} min"
                    print(f"[mqar {name} L={L}] not run (budget)", file=sys.stderr, flush=True)
                    continue
                t0 = time.perf_counter()
                try:
                    config, run.config = mqar_config(name, tmp)
                    run.batch = mqar_batch(L, args)
                    if run.batch is None:
                        from omegaconf import OmegaConf

                        run.batch = int(OmegaConf.load(config).data.batch_size)
                    metrics = train(config, mqar_overrides(name, L, args), run_dir=root / f"{name}-L{L}")
                    run.acc = metrics["test"].get("test/acc")
                    run.val_acc = metrics["val"].get("val/acc")
                    run.steps = metrics.get("global_step")
                    run.train_s = metrics.get("train_time_s")
                except Exception as e:  # a failing run is reported in its row; the others still run
                    msg = " ".join(str(e).split())
                    if args.verbose:
                        traceback.print_exc()
                    run.note = f"error: {type(e).__name__}: {msg[:100]}"
                took = time.perf_counter() - t0
                longest = max(longest, took)
                shown = f"test/acc {run.acc:.3f}" if run.acc is not None else run.note
                print(f"[mqar {name} L={L}] {shown} ({took:.0f} s)", file=sys.stderr, flush=True)
                gc.collect()
    return runs


# ----------------------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------------------


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def speed_table(cells: list[Cell]) -> str:
    header = ["mixer", "class", "L", "ms", "peak MB", "note"]
    body = [[c.case.mixer, expected_class(c.case.mixer), str(c.case.L), _f(c.ms, ".2f"), _f(c.peak_mb, ".2f"),
             c.note] for c in cells]
    return render(header, body, {"L", "ms", "peak MB"})


def slope_table(rows: list[Slopes]) -> str:
    header = ["mixer", "class", "expected slope", "points", "max L", "time slope", "mem slope",
              "time slope (top 3)", "mem slope (top 3)"]
    body = []
    for s in rows:
        exp = EXPECTED.get(s.mixer, ("?", float("nan")))[1]
        body.append([s.mixer, expected_class(s.mixer), "?" if math.isnan(exp) else f"{exp:.0f}", str(s.n),
                     str(s.max_L or "-"), _f(s.time_all, ".2f"), _f(s.mem_all, ".2f"), _f(s.time_top, ".2f"),
                     _f(s.mem_top, ".2f")])
    return render(header, body, {"expected slope", "points", "max L", "time slope", "mem slope",
                                 "time slope (top 3)", "mem slope (top 3)"})


def mqar_table(runs: list[Run]) -> str:
    header = ["mixer", "L", "config", "batch", "steps", "test/acc", "val/acc", "train s", "note"]
    body = [[r.mixer, str(r.L), r.config or "-", str(r.batch) if r.batch is not None else "-",
             str(r.steps) if r.steps is not None else "-", _f(r.acc, ".3f"), _f(r.val_acc, ".3f"),
             _f(r.train_s, ".0f"), r.note] for r in runs]
    return render(header, body, {"L", "batch", "steps", "test/acc", "val/acc", "train s"})


def plot(cells: list[Cell], path: Path) -> None:
    """Two log-log panels, time and peak memory against L, one line per mixer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    names = list(dict.fromkeys(c.case.mixer for c in cells))
    for name in names:
        done = [c for c in cells if c.case.mixer == name and c.ms is not None]
        if not done:
            continue
        style = "--" if EXPECTED.get(name, ("", 0))[1] == 2.0 else "-"
        Ls = [c.case.L for c in done]
        axes[0].plot(Ls, [c.ms for c in done], style, marker="o", label=name)
        axes[1].plot(Ls, [max(c.peak_mb, 1e-3) for c in done], style, marker="o", label=name)
    for ax, title, unit in ((axes[0], "forward+backward time", "ms"), (axes[1], "peak memory", "MB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8, ncol=2)
    fig.suptitle("mixers, d_model=64, batch 1, fp32, causal (dashed: quadratic class)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------------------


def _fwd_bwd_ms(fn: Callable[[], torch.Tensor], inputs: list[torch.Tensor], device: torch.device,
               args: argparse.Namespace) -> float:
    """Median ms of fn() then the gradient of its output (a fixed random cotangent) w.r.t. ``inputs``."""
    grad = torch.randn_like(fn())

    def step():
        return torch.autograd.grad(fn(), inputs, grad, allow_unused=True)

    return time_ms(step, device, warmup=args.warmup, min_reps=args.min_reps, max_reps=args.reps,
                   budget_s=args.budget)


def run_ssd(lengths: list[int], device: torch.device, args: argparse.Namespace) -> str:
    """The ssd part: a table of chunked-vs-loop scan times and one of mamba2-vs-mamba mixer times."""
    from mmseq.kernels.ssd import ssd

    from mmseq.mixers.base import create_mixer

    H, P, N, chunk = 4, 16, 16, 64
    scan_rows, mixer_rows = [], []
    for L in lengths:
        torch.manual_seed(0)
        x = torch.randn(1, L, H, P, device=device, requires_grad=True)
        dt = (torch.rand(1, L, H, device=device) * 0.1).requires_grad_(True)
        A = (-torch.rand(H, device=device) - 0.5).requires_grad_(True)
        B = torch.randn(1, L, 1, N, device=device, requires_grad=True)
        C = torch.randn(1, L, 1, N, device=device, requires_grad=True)
        D = torch.ones(H, device=device, requires_grad=True)
        inputs = [x, dt, A, B, C, D]
        ms = {impl: _fwd_bwd_ms(lambda impl=impl, a=inputs: ssd(*a, chunk_size=chunk, impl=impl), inputs,
                                device, args) for impl in ("torch", "ref")}
        scan_rows.append(f"| {L} | {ms['torch']:.1f} | {ms['ref']:.1f} | {ms['ref'] / ms['torch']:.1f}x |")

        times = {}
        for name in ("mamba2", "mamba"):
            torch.manual_seed(0)
            mixer = create_mixer(name, args.d_model).to(device)
            u = torch.randn(args.batch, L, args.d_model, device=device, requires_grad=True)
            times[name] = _fwd_bwd_ms(lambda m=mixer, u=u: m(u), [u, *mixer.parameters()], device, args)
        mixer_rows.append(f"| {L} | {times['mamba2']:.1f} | {times['mamba']:.1f} | "
                          f"{times['mamba'] / times['mamba2']:.2f}x |")
    return "\n".join([
        f"SSD scan, forward+backward (B 1, H {H}, P {P}, N {N}, chunk {chunk}, fp32):", "",
        "| L | chunked ms | sequential ref ms | ref / chunked |", "|---|---|---|---|", *scan_rows, "",
        f"mamba2 beside mamba (d_model {args.d_model}, batch {args.batch}, defaults, forward+backward):", "",
        "| L | mamba2 ms | mamba ms | mamba / mamba2 |", "|---|---|---|---|", *mixer_rows,
    ])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--part", choices=("speed", "mqar", "ssd", "all"), default="all",
                   help="what to run (default: all = speed and mqar)")
    p.add_argument("--mixers", nargs="+", default=None, metavar="NAME",
                   help="mixers to run, space or comma separated (default: every registered mixer)")
    p.add_argument("--quick", action="store_true", help="tiny shapes and a few training steps: a smoke run")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--markdown", type=Path, default=None, metavar="FILE", help="append the tables to FILE")
    p.add_argument("--verbose", action="store_true", help="print the traceback of a failing cell or run")
    s = p.add_argument_group("speed")
    s.add_argument("--speed-lengths", type=int, nargs="+", default=None, metavar="L",
                   help=f"sequence lengths (default {' '.join(map(str, LENGTHS))})")
    s.add_argument("--d-model", type=int, default=64, help="model width (default 64)")
    s.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    s.add_argument("--skip-after", type=float, default=20.0,
                   help="skip the longer L of a mixer once one L took this many seconds (default 20)")
    s.add_argument("--warmup", type=int, default=2, help="warm-up calls per cell (default 2)")
    s.add_argument("--min-reps", type=int, default=3, help="fewest timed runs per cell (default 3)")
    s.add_argument("--reps", type=int, default=10, help="most timed runs per cell (default 10)")
    s.add_argument("--budget", type=float, default=None,
                   help="seconds of timing per cell once --min-reps are in (default 1; 0.02 with --quick)")
    s.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="write time and memory plots")
    s.add_argument("--ssd-lengths", type=int, nargs="+", default=None, metavar="L",
                   help="lengths of the ssd part (default 4096; 128 with --quick)")
    m = p.add_argument_group("mqar")
    m.add_argument("--lengths", type=int, nargs="+", default=None, metavar="L",
                   help="MQAR sequence lengths (default 256; 32 with --quick)")
    m.add_argument("--steps", type=int, default=None, help="training steps per run (default 600; 4 with --quick)")
    m.add_argument("--vocab-size", type=int, default=256, help="MQAR vocabulary (default 256)")
    m.add_argument("--num-kv-pairs", type=int, default=8, help="key-value pairs per sequence (default 8)")
    m.add_argument("--tokens-per-step", type=int, default=None, metavar="N",
                   help="batch = N // L sequences per step, so every length trains on the same number of tokens\n"
                        "(default: the config's batch at every length)")
    m.add_argument("--num-train", type=int, default=None,
                   help="training sequences (default: steps x batch with --tokens-per-step, else the config's)")
    m.add_argument("--num-val", type=int, default=None, help="validation sequences (default: the config's)")
    m.add_argument("--num-test", type=int, default=None, help="test sequences (default: the config's)")
    m.add_argument("--max-minutes", type=float, default=None,
                   help="start no run that would likely end past this many minutes of the MQAR part")
    m.add_argument("--keep-runs", type=Path, default=None, metavar="DIR", help="write run folders under DIR")
    args = p.parse_args(argv)

    import mmseq.mixers  # noqa: F401  (registers the mixers)
    from mmseq.mixers.base import list_mixers

    known = list_mixers()
    if args.mixers is None:
        args.mixers = known
    else:
        args.mixers = [x for item in args.mixers for x in item.split(",") if x]
        unknown = sorted(set(args.mixers) - set(known))
        if unknown:
            p.error(f"unknown mixer(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    for flag, unit in (("tokens_per_step", "tokens"), ("num_train", "sequences"), ("num_val", "sequences"),
                       ("num_test", "sequences")):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be a positive number of {unit}, got {value}")
    if args.speed_lengths is None:
        args.speed_lengths = list(QUICK_LENGTHS if args.quick else LENGTHS)
    if args.lengths is None:
        args.lengths = [32] if args.quick else [256]
    if args.ssd_lengths is None:
        args.ssd_lengths = [128] if args.quick else [4096]
    if args.steps is None:
        args.steps = 4 if args.quick else 600
    if args.budget is None:
        args.budget = 0.02 if args.quick else 1.0
    if args.quick:
        args.warmup, args.min_reps, args.reps = 1, 1, min(args.reps, 3)
        args.num_kv_pairs = min(args.num_kv_pairs, 4)
        args.vocab_size = min(args.vocab_size, 64)
        if args.num_train is None:
            args.num_train = 64
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup_device(args.device, args.threads)
    if device is None:
        return 2
    setup = f"d_model={args.d_model}, batch {args.batch}, fp32, causal, forward+backward"

    if args.part in ("speed", "all"):
        cells = run_speed(args.mixers, args.speed_lengths, device, args)
        text = speed_table(cells) + "\n\n" + slope_table(slopes(cells, args.mixers))
        print(text, flush=True)
        if args.markdown is not None:
            write_markdown(args.markdown, text, device, title=f"Mixer speed and peak memory vs L ({setup})")
        if args.plot is not None:
            try:
                plot(cells, args.plot)
                print(f"plot written to {args.plot}", file=sys.stderr)
            except ImportError as e:
                print(f"no plot: {e}", file=sys.stderr)

    if args.part == "ssd":
        text = run_ssd(args.ssd_lengths, device, args)
        print(text, flush=True)
        if args.markdown is not None:
            write_markdown(args.markdown, text, device, title="Mamba-2: chunked SSD scan vs its loop, mamba2 vs mamba")

    if args.part in ("mqar", "all"):
        runs = run_mqar(args.mixers, args.lengths, args)
        text = mqar_table(runs)
        print(text, flush=True)
        if args.markdown is not None:
            per_step = (f", {args.tokens_per_step} tokens per step" if args.tokens_per_step is not None else "")
            title = (f"MQAR test accuracy after {args.steps} steps ({args.num_kv_pairs} key-value pairs, "
                     f"vocabulary {args.vocab_size}{per_step})")
            write_markdown(args.markdown, text, device, title=title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
