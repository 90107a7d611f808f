"""`mmseq bench longcontext`: a grid killed part-way and resumed runs each cell once; tables match the CSV;
other arguments for an existing grid and bad names are one-line errors."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmseq.cli import main
from mmseq.runner import train as runner
from mmseq.synthetic import longcontext_bench as bench

# 2 mixers x 2 tasks x 2 lengths at a tiny size: about 2 s per cell on a loaded CPU core.
GRID = ["--mixers", "attention,s4d", "--tasks", "mqar,copy", "--lengths", "32,48", "--steps", "4",
        "--d-model", "16", "--n-layers", "1", "--batch-size", "8", "--num-test", "32", "--device", "cpu"]


def _rows(out: Path) -> list[dict[str, str]]:
    path = out / "results.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _key(row: dict[str, str]) -> tuple[str, str, int]:
    return row["mixer"], row["task"], int(row["length"])


@pytest.fixture(scope="module")
def resumed_grid(tmp_path_factory):
    """Start the grid in a subprocess, kill it once a cell is in results.csv, then finish it in-process,
    counting the cells the second call trains."""
    out = tmp_path_factory.mktemp("grid") / "bench"
    exe = Path(sys.executable).with_name("mmseq")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("MMSEQ_RUN_DIR", None)
    proc = subprocess.Popen([str(exe), "bench", "longcontext", *GRID, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 180
    try:
        while not _rows(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    before = _rows(out)
    assert before, f"no cell finished before the kill (exit {proc.returncode}): {err.decode()[-2000:]}"
    assert len(before) < 8, "the grid finished before it could be killed"

    trained: list[str] = []
    real_train = runner.train

    def counting_train(config=None, overrides=None, run_dir=None, resume=None):
        trained.append(Path(run_dir or resume).name)
        return real_train(config, overrides, run_dir=run_dir, resume=resume)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "train", counting_train)
        assert main(["bench", "longcontext", *GRID, "--out", str(out)]) == 0
    return out, before, trained


def test_a_killed_grid_resumes_without_running_a_finished_cell_again(resumed_grid):
    out, before, trained = resumed_grid
    after = _rows(out)
    cells = {(m, t, n) for m in ("attention", "s4d") for t in ("mqar", "copy") for n in (32, 48)}
    assert sorted(map(_key, after)) == sorted(cells)  # every cell, each once
    finished = {f"{m}_{t}_L{n}" for m, t, n in map(_key, before)}
    assert not finished & set(trained), "a cell finished before the kill was trained again"
    assert len(trained) == len(set(trained)) == 8 - len(before)
    kept = {_key(r): r for r in after}
    assert all(kept[_key(r)] == r for r in before)  # finished rows are kept as they were
    for row in after:
        assert 0.0 <= float(row["score"]) <= 1.0 and row["metric"] == "test/acc"
        assert int(row["steps"]) == 4 and int(row["params"]) > 0
        assert int(row["tokens_seen"]) == 4 * 8 * int(row["seq_tokens"])
    assert {int(r["seq_tokens"]) for r in after if r["task"] == "copy"} == {31, 47}  # 2n + 1 <= length


def test_markdown_and_heatmap_hold_the_csv_numbers(resumed_grid):
    out, _, _ = resumed_grid
    rows = _rows(out)
    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["mixer", "mqar@32", "mqar@48", "copy@32", "copy@48"]
    shown = {}
    for line in table[1:]:
        mixer, *scores = [c.strip() for c in line.strip("|").split("|")]
        shown.update({(mixer, *col.split("@")): s for col, s in zip(header[1:], scores)})
    assert {(r["mixer"], r["task"], r["length"]): r["score"] for r in rows} == shown
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_other_arguments_for_an_existing_grid_are_refused(resumed_grid, capsys):
    out, _, _ = resumed_grid
    files = {p: p.read_bytes() for p in out.iterdir() if p.is_file()}
    other = [x if x != "32,48" else "32,64" for x in GRID]  # the same grid at another length
    other[other.index("--steps") + 1] = "5"
    assert main(["bench", "longcontext", *other, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--steps 5 (this grid has 4)" in err and "--lengths 32,64" in err
    assert {p: p.read_bytes() for p in out.iterdir() if p.is_file()} == files


def test_a_half_finished_cell_continues_from_its_checkpoint(tmp_path):
    """A cell whose run stopped at step 2 of 4 (its last checkpoint) is continued, not started over."""
    import json
    from dataclasses import asdict

    out = tmp_path / "bench"
    argv = ["--mixers", "attention", "--tasks", "mqar", "--lengths", "32", *GRID[GRID.index("--steps"):]]
    spec = bench.spec_from_args(bench_parser().parse_args([*argv, "--out", str(out)]))
    (cell,) = bench.plan(spec, out)
    out.mkdir()
    (out / "grid.json").write_text(json.dumps(asdict(spec)))
    (out / "runs").mkdir()
    partial = tmp_path / "partial.yaml"
    partial.write_text(json.dumps(cell.raw))
    runner.train(partial, ["trainer.max_steps=2"], run_dir=out / "runs" / cell.id)
    assert main(["bench", "longcontext", *argv, "--out", str(out)]) == 0
    (row,) = _rows(out)
    assert row["resumed"] == "1" and row["steps"] == "4"
    ckpt = runner.safe_torch_load(out / "runs" / cell.id / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4


def bench_parser():
    import argparse

    sub = argparse.ArgumentParser().add_subparsers()
    bench.add_command(sub)
    return sub.choices["longcontext"]


@pytest.mark.parametrize("change, fragment", [
    (("--mixers", "attention,mambo"), "unknown mixer 'mambo' (did you mean 'mamba'?)"),
    (("--tasks", "mqar,cpy"), "unknown long-context task 'cpy' (did you mean 'copy'?); choose from: mqar,"),
    (("--lengths", "32,0"), "--lengths: each length must be >= 1, got 0"),
    (("--lengths", "32,x"), "expected a whole number >= 1, got 'x'"),
    (("--steps", "0"), "--steps must be >= 1, got 0"),
    (("--tasks", "maze"), "task maze cannot take length 32: the smallest maze (2 x 2) takes 23 tokens"),
    (("--lengths", "16"), "task mqar cannot take length 16"),
    (("--d-model", "-1"), "--d-model must be >= 1"),
    (("--device", "tpu"), "--device must be cpu or cuda, got 'tpu'"),
])
def test_bad_input_is_one_line(change, fragment, tmp_path, capsys):
    argv = list(GRID)
    option, value = change
    argv[argv.index(option) + 1] = value
    if option == "--tasks" and value == "maze":
        argv[argv.index("--lengths") + 1] = "32,16"  # 32 fits a 2 x 2 maze; 16 fits none
        fragment = "task maze cannot take length 16: the smallest maze (2 x 2) takes 23 tokens"
    assert main(["bench", "longcontext", *argv, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "b").exists()


def test_a_budget_is_required_once(tmp_path, capsys):
    argv = [x for x in GRID]
    i = argv.index("--steps")
    del argv[i:i + 2]
    assert main(["bench", "longcontext", *argv, "--out", str(tmp_path / "b")]) == 2
    assert "either --steps N or --tokens N" in capsys.readouterr().err
    assert main(["bench", "longcontext", *argv, "--steps", "3", "--tokens", "90", "--out", str(tmp_path / "b")]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize("task", [t for t in bench.SUITE if t not in bench.DNA_TASKS])
@pytest.mark.parametrize("length", [64, 127])
def test_each_task_fits_the_length(task, length):
    """The sequence a task makes for a length is that long or shorter, and the largest that fits."""
    from mmseq.runner.task import load_task

    spec = bench.GridSpec(mixers=["attention"], tasks=[task], lengths=[length], steps=1)
    data, tokens = bench.SUITE[task].size(length)
    cell = bench.Cell("attention", task, length, seq_tokens=tokens)
    t = load_task(bench.cell_config(spec, cell, data, tokens, None))
    assert t.make_split("test", num=1)["inputs"].shape[1] == tokens <= length
    if task in ("mqar", "passkey", "selective-copy"):
        assert tokens == length  # the others' sizes come in steps; the generators refuse short mqar/passkey
    else:
        with pytest.raises(ValueError):
            bench.SUITE[task].size(2)


def test_a_token_budget_sets_the_steps_per_length():
    spec = bench.GridSpec(mixers=["attention"], tasks=["copy"], lengths=[32, 128], tokens=1000, batch_size=8)
    steps = {}
    for length in spec.lengths:
        data, tokens = bench.SUITE["copy"].size(length)
        raw = bench.cell_config(spec, bench.Cell("attention", "copy", length), data, tokens, None)
        steps[length] = raw["trainer"]["max_steps"]
        assert raw["data"]["num_train"] == steps[length] * 8  # every training sequence fresh
    assert steps == {32: 5, 128: 1}  # ceil(1000 / (8 * 31)), ceil(1000 / (8 * 127))


def test_all_names_every_registered_mixer(tmp_path):
    from mmseq.mixers import list_mixers

    argv = ["--mixers", "all", "--tasks", "mqar", "--lengths", "32", *GRID[GRID.index("--steps"):]]
    spec = bench.spec_from_args(bench_parser().parse_args([*argv, "--out", str(tmp_path / "bench")]))
    assert spec.mixers == list_mixers() and {"mamba2", "s4", "sambay"} <= set(spec.mixers)
