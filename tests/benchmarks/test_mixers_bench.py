"""benchmarks/mixers.py: a --quick speed run prints a row per (mixer, L) and a slope row per mixer.

No timing is asserted; the run only has to work end to end. The MQAR part trains through the runner, too slow
for a smoke test, so only how it builds its runs is checked here.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmseq.mixers  # noqa: F401
from mmseq.mixers.base import list_mixers

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "mixers.py"


def _tables(stdout: str) -> list[list[dict[str, str]]]:
    """Every printed pipe table, each as a list of {column: cell} dicts."""
    tables, block = [], []
    for ln in [*stdout.splitlines(), ""]:
        if ln.startswith("|"):
            block.append(ln)
            continue
        if block:
            header = [c.strip() for c in block[0].strip("|").split("|")]
            rows = []
            for row in block[2:]:
                cells = [c.strip() for c in row.strip("|").split("|")]
                assert len(cells) == len(header), row
                rows.append(dict(zip(header, cells)))
            tables.append(rows)
            block = []
    return tables


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("mixers_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["mixers_bench"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("mixers_bench", None)


def test_quick_speed_run_has_a_row_per_mixer_with_positive_numbers(tmp_path):
    md = tmp_path / "results.md"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--part", "speed", "--threads", "1",
         "--speed-lengths", "64", "128", "--reps", "1", "--markdown", str(md)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells, summary = _tables(proc.stdout)
    names = list_mixers()
    assert [r["mixer"] for r in summary] == names
    for name in names:
        rows = [r for r in cells if r["mixer"] == name]
        assert [r["L"] for r in rows] == ["64", "128"], rows
        for r in rows:
            assert float(r["ms"]) > 0 and float(r["peak MB"]) > 0, r
    for r in summary:
        assert r["points"] == "2", r
        float(r["time slope"]), float(r["mem slope"])
    text = md.read_text()
    assert f"torch {torch.__version__}" in text and "--quick" in text


def test_peak_memory_counts_live_tensors(bench):
    def step():
        a = torch.empty(1000, dtype=torch.float32)  # 4000 bytes
        b = torch.empty(2000, dtype=torch.float32)  # 8000 bytes, both alive: 12000
        del a, b
        c = torch.empty(500, dtype=torch.float32)
        return c.view(-1).add_(1)  # a view and an in-place op allocate nothing

    assert bench.peak_bytes(step, torch.device("cpu")) == 12000


def test_loglog_slope(bench):
    Ls = [256, 512, 1024, 2048]
    assert bench.loglog_slope(Ls, [L**2 * 1e-3 for L in Ls]) == pytest.approx(2.0)
    assert bench.loglog_slope(Ls, [3.0 * L for L in Ls]) == pytest.approx(1.0)
    assert bench.loglog_slope([256], [1.0]) is None


def test_mqar_runs_pass_l_max_only_to_mixers_that_take_it(bench, tmp_path):
    args = bench.parse_args(["--part", "mqar", "--steps", "50"])
    ov = bench.mqar_overrides("hyena", 512, args)
    assert "model.mixer.l_max=512" in ov and "data.seq_len=512" in ov and "trainer.max_steps=50" in ov
    assert "trainer.val_check_interval=50" in ov and "trainer.checkpoint_every_n_steps=50" in ov
    assert "data.vocab_size=256" in ov and "data.num_kv_pairs=8" in ov
    assert not any(o.startswith("model.mixer.l_max") for o in bench.mqar_overrides("attention", 512, args))
    path, label = bench.mqar_config("mamba", tmp_path)
    assert path.name == "mqar_mamba.yaml" and path.is_file()
    path, label = bench.mqar_config("no_such_mixer", tmp_path)
    assert "mqar_attention.yaml" in label and "no_such_mixer" in path.read_text()


def test_tokens_per_step_sets_batch_and_fresh_training_data(bench):
    args = bench.parse_args(["--part", "mqar", "--steps", "600", "--tokens-per-step", "16384", "--num-test", "250"])
    ov = bench.mqar_overrides("s4d", 4096, args)
    assert "data.batch_size=4" in ov and "data.num_train=2400" in ov and "data.num_test=250" in ov
    assert "data.batch_size=16" in bench.mqar_overrides("s4d", 1024, args)
    assert "data.batch_size=1" in bench.mqar_overrides("s4d", 32768, args)  # never below one sequence
    plain = bench.mqar_overrides("s4d", 1024, bench.parse_args(["--part", "mqar"]))
    assert not any(o.startswith(("data.batch_size", "data.num_train", "data.num_test")) for o in plain)


@pytest.mark.parametrize("flag", ["--tokens-per-step", "--num-test"])
def test_non_positive_sizes_are_refused_with_the_flag_named(bench, flag, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--part", "mqar", flag, "0"])
    assert f"{flag} must be a positive number" in capsys.readouterr().err


def test_quick_ssd_part_prints_the_scan_ratio_and_the_mixer_pair():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--part", "ssd", "--threads", "1", "--ssd-lengths", "32",
         "--reps", "1"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    scan, pair = _tables(proc.stdout)
    assert [r["L"] for r in scan] == ["32"] and [r["L"] for r in pair] == ["32"]
    assert float(scan[0]["chunked ms"]) > 0 and float(scan[0]["sequential ref ms"]) > 0
    assert float(pair[0]["mamba2 ms"]) > 0 and float(pair[0]["mamba ms"]) > 0
