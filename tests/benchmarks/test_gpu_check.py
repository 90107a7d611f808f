"""benchmarks/gpu_check.py: the dry run writes every part (ran, or stopped with its reason) to JSON and markdown.

The dry run is the GPU check on the CPU (tiny shapes, Triton interpreter, a few tests), run in a subprocess as
`make gpu-check ARGS="--dry-run --out DIR"` would. No timing is asserted; each part has to be there, and each
row that has no time has to say why.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
PARTS = ("tests", "kernels", "tasks", "mixers")
OPS = ("selective_scan", "causal_conv1d", "fft_conv", "attention")


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run(out: Path, *flags: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _check_reason(part: str, result: dict) -> None:
    assert result["status"] in ("ran", "partial"), f"{part}: {result}"
    if result["status"] == "partial":
        assert "cap" in result["note"], f"{part}: stopped without saying why: {result['note']}"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = _run(out, "--tasks-cap", "12")  # bounds the tasks whose data happens to be here (CT phantoms: slow on CPU)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text(), out


def test_header_names_device_versions_and_date(dry_run):
    proc, data, md, _ = dry_run
    for key in ("device", "torch", "triton", "date"):
        assert data[key], key
    assert data["dry_run"] is True
    assert proc.stdout.startswith("# GPU check (dry run on the CPU)")
    head = md.split("## ")[0]
    for text in ("- device: ", f"torch {data['torch']}", f"triton {data['triton']}", f"- date: {data['date']}"):
        assert text in head, text


def test_every_part_ran_or_says_why_not(dry_run):
    proc, data, md, _ = dry_run
    assert list(data["parts"]) == list(PARTS)
    for part, result in data["parts"].items():
        _check_reason(part, result)
        assert f"## {part}: " in md and f"## {part}: " in proc.stdout, part


def test_tests_part_ran_the_selected_triton_tests(dry_run):
    _, data, md, out = dry_run
    tests = data["parts"]["tests"]
    assert tests["interpreter"] is True
    assert "-m 'triton or gpu'" in tests["note"] or tests["status"] == "partial"
    if tests["status"] == "ran":
        assert tests["returncode"] == 0 and tests["failed"] == [], tests
        assert "passed" in tests["summary"] and tests["summary"] in md
    assert (out / "gpu_check_tests.log").is_file()


def test_kernels_part_has_every_op_dtype_pass_and_path(dry_run):
    _, data, md, _ = dry_run
    rows = data["parts"]["kernels"]["rows"]
    for row in rows:
        assert row["ms"] is not None or row["note"], f"a row without a time must say why: {row}"
    for op in OPS:
        for dtype in ("fp32", "bf16"):
            for mode in ("fwd", "fwd+bwd"):
                impls = {r["impl"] for r in rows if r["op"].split(" ")[0] == op and r["dtype"] == dtype
                         and r["pass"] == mode}
                assert {"triton", "torch"} <= impls, (op, dtype, mode, impls)
    peers = {r["impl"] for r in rows} - {"triton", "torch"}
    assert {"sdpa-flash", "sdpa-efficient", "flex", "mamba_ssm", "causal-conv1d"} <= peers
    assert "| op " in md and "GB/s" in md and "%BW" in md


def test_tasks_part_has_a_row_per_registered_task(dry_run):
    from mmseq.runner.task import task_names

    _, data, _, _ = dry_run
    rows = {r["task"]: r for r in data["parts"]["tasks"]["rows"]}
    assert set(rows) == set(task_names())
    for name, row in rows.items():
        assert row["samples_per_s"] is not None or row["note"], f"{name}: no throughput and no reason"
    if data["parts"]["tasks"]["status"] == "ran":
        assert rows["mqar"]["samples_per_s"] > 0 and rows["mqar"]["peak_mem_mb"] > 0


def test_mixers_part_has_a_cell_per_mixer_and_length(dry_run):
    import mmseq.mixers  # noqa: F401
    from mmseq.mixers.base import list_mixers

    _, data, md, _ = dry_run
    mixers = data["parts"]["mixers"]
    cells = {(c["mixer"], c["L"]) for c in mixers["cells"]}
    assert cells == {(m, L) for m in list_mixers() for L in mixers["lengths"]}
    for c in mixers["cells"]:
        assert c["ms"] is not None or c["note"], c
    assert {s["mixer"] for s in mixers["slopes"]} == set(list_mixers())
    assert "peak MB" in md and "time slope" in md


def test_a_part_stops_at_its_cap_and_says_so(tmp_path):
    proc = _run(tmp_path, "--parts", "mixers", "--mixers-cap", "0.5", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    mixers = data["parts"]["mixers"]
    assert mixers["status"] == "partial" and "cap of 0.5 s" in mixers["note"], mixers
    if "cells" in mixers:  # absent only when the cap came before the first cell (a slow import)
        assert any("cap" in c["note"] for c in mixers["cells"])
    for part in ("tests", "kernels", "tasks"):
        assert data["parts"][part]["status"] == "skipped" and "not selected" in data["parts"][part]["note"]
    assert "## mixers: stopped at its cap" in (tmp_path / "gpu_check.md").read_text()


def test_defaults_fit_in_eight_minutes_and_every_task_has_a_config():
    from mmseq.runner.task import task_names

    gc = _load()
    assert sum(gc.CAPS.values()) <= 7 * 60, "leave at least a minute of the 8 for start-up and overruns"
    args = gc.parse_args([])
    assert args.caps == gc.CAPS and args.out == REPO / "benchmarks" / "gpu_check_out"
    dry = gc.parse_args(["--dry-run", "--tasks-cap", "3"])
    assert dry.caps["tasks"] == 3 and dry.caps["tests"] == gc.DRY_CAPS["tests"] and dry.tests_k
    for name in task_names():
        assert gc.task_config(name) is not None, name
    assert gc.task_config("ct-tokenizer") == REPO / "configs" / "medical" / "tokenizer_stage1.yaml"


def test_the_cap_interrupts_a_unit_of_work_but_not_the_bookkeeping():
    import time

    gc = _load()
    with gc.Cap(0.05) as cap:
        time.sleep(0.15)  # outside a unit the timer only marks the cap as reached
        assert cap.over()
        with pytest.raises(gc.CapReached), cap.unit():  # and no new unit starts
            pass
    with gc.Cap(0.05) as cap, pytest.raises(gc.CapReached), cap.unit():
        time.sleep(5)  # a unit in flight is interrupted
    assert cap.hit
