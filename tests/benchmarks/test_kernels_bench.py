"""benchmarks/kernels.py: a --quick run prints one table with a timed row per op and positive speedups.

No timing is asserted; the run only has to work end to end (a few seconds on one CPU thread).
"""

import importlib.util
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "kernels.py"
OPS = ("selective_scan", "causal_conv1d", "fft_conv", "attention")


def _table(stdout: str) -> list[dict[str, str]]:
    """The printed pipe table as a list of {column: cell} dicts (header and separator lines dropped)."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for ln in lines[1:]:
        if ln.startswith("|-"):
            continue
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert len(cells) == len(header), ln
        rows.append(dict(zip(header, cells)))
    return rows


def test_quick_run_prints_a_row_per_op_with_positive_speedups(tmp_path):
    md = tmp_path / "results.md"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--markdown", str(md)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _table(proc.stdout)
    assert {"op", "shape", "dtype", "pass", "impl", "ms", "baseline", "speedup"} <= set(rows[0])
    for op in OPS:
        timed = [r for r in rows if r["op"].split(" ")[0] == op and r["ms"] != "-"]
        assert timed, f"no timed row for {op}:\n{proc.stdout}"
        assert any(r["impl"] == "ref" for r in timed), f"{op}: the reference was not timed"
    for r in rows:
        assert r["ms"] != "-", f"row without a time: {r}"
        assert float(r["ms"]) > 0, r
        assert float(r["speedup"]) > 0, r
        if r["impl"] == r["baseline"]:
            assert float(r["speedup"]) == 1.0, r
    text = md.read_text()
    assert f"torch {torch.__version__}" in text and "--quick" in text
    assert _table(text) == rows


def test_a_missing_op_module_gives_a_not_available_row(monkeypatch):
    spec = importlib.util.spec_from_file_location("kernels_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "kernels_bench", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)

    def broken(op):
        raise ImportError(f"No module named 'mmseq.kernels.{op}'")

    monkeypatch.setattr(bench, "load_op", broken)
    rows = bench.collect_rows(["fft_conv"], torch.device("cpu"), Namespace(quick=True))
    assert len(rows) == 1 and rows[0].case is None and rows[0].error.startswith("not available")
    table = bench.table(rows, torch.device("cpu"), 3350.0)
    assert "fft_conv" in table and "not available" in table
