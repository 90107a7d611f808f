"""Output shared by the benchmark scripts: aligned markdown tables and appending them to RESULTS.md."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch


def render(header: list[str], body: list[list[str]], numeric: set[str]) -> str:
    """An aligned pipe table (valid markdown); columns in ``numeric`` are right-aligned."""
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(len(header))]

    def line(cells):
        out = [str(x).rjust(w) if h in numeric else str(x).ljust(w) for x, w, h in zip(cells, widths, header)]
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if h in numeric else "-" * (w + 2) for w, h in zip(widths, header))
    return "\n".join([line(header), sep + "|", *(line(b) for b in body)])


def setup_device(name: str, threads: int | None) -> torch.device | None:
    """The device to benchmark on (None, after printing why, when CUDA is asked for but absent)."""
    if name == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return None
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def write_markdown(path: Path, text: str, device: torch.device, title: str | None = None) -> None:
    """Append ``text`` under a header giving the date, device, torch version and the exact command."""
    date = time.strftime("%a %b %e %H:%M:%S UTC %Y", time.gmtime())
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    lead = f"{title} · " if title else ""
    head = f"### {lead}{date} · {device_name(device)} · torch {torch.__version__}\n\n`{command}`\n\n"
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a") as f:
        if new:
            f.write("# Benchmark results\n\nTables appended by the scripts in `benchmarks/`, newest last.\n\n")
        f.write(head + text + "\n\n")
