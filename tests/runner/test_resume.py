"""Kill a training run with SIGKILL, resume it, and get the weights of an uninterrupted run."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmseq.runner.checkpoint import safe_torch_load


def _final_state(run: Path) -> tuple[int, dict]:
    ckpt = safe_torch_load(run / "checkpoints" / "last.ckpt")
    return ckpt["global_step"], ckpt["state_dict"]


def _step_of(path: Path) -> int:
    try:
        return safe_torch_load(path)["global_step"]
    except Exception:  # being replaced right now; the rename makes the next read whole
        return -1


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, tiny_mqar, run_cli):
    common = ["trainer.max_steps=40"]
    ref = run_cli("train", str(tiny_mqar), *common, "--run-dir", "ref", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr[-2000:]

    exe = Path(sys.executable).with_name("mmseq")
    env = {k: v for k, v in os.environ.items() if k != "MMSEQ_RUN_DIR"}
    proc = subprocess.Popen([str(exe), "train", str(tiny_mqar), *common, "--run-dir", "killed"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and _step_of(last) >= 15:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail("the run finished before it could be killed; slow it down or lower the kill step")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _step_of(last)
    assert 15 <= killed_at < 40

    # A copy of the killed run (made before the original resumes and rewrites its checkpoints) must resume the
    # same way: its checkpoints hold absolute paths into the original folder.
    shutil.copytree(tmp_path / "killed", tmp_path / "copy")
    for name in ("killed", "copy"):
        res = run_cli("train", "--resume", name, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        run = tmp_path / name
        step_ref, ref_state = _final_state(tmp_path / "ref")
        step_res, res_state = _final_state(run)
        assert step_ref == step_res == 40
        assert ref_state.keys() == res_state.keys()
        for k in ref_state:
            torch.testing.assert_close(res_state[k], ref_state[k], rtol=1e-5, atol=1e-6, msg=f"{name}: {k}")
        # Nothing lost, nothing twice: the log holds the uninterrupted run's rows.
        assert _log_rows(run) == _log_rows(tmp_path / "ref"), name
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"], name
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["global_step"] == 40 and metrics["best_checkpoint"] == "checkpoints/best.ckpt"
        best = safe_torch_load(run / "checkpoints" / "best.ckpt")["state_dict"]
        exported = load_file(str(run / "model" / "model.safetensors"))
        for k, v in exported.items():
            torch.testing.assert_close(v, best[f"model.{k}"], rtol=0, atol=0, msg=f"{name}: {k}")


def _log_rows(run: Path) -> list[tuple]:
    """metrics.csv rows without the timing columns (throughput, memory), sorted."""
    with (run / "logs" / "metrics.csv").open(newline="") as f:
        rows = [tuple(sorted((k, v) for k, v in r.items() if v != "" and not k.startswith("perf/")))
                for r in csv.DictReader(f)]
    assert len(rows) == len(set(rows)), "a row was logged twice"
    return sorted(rows)


def test_finished_run_is_left_alone_and_extends_by_appending(tmp_path, tiny_mqar, run_cli):
    r = run_cli("train", str(tiny_mqar), "trainer.max_steps=20", "--run-dir", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "run"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    r = run_cli("train", "--resume", "run", cwd=tmp_path)
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stderr[-2000:]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    rows_before = _log_rows(run)
    r = run_cli("train", "--resume", "run", "trainer.max_steps=30", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rows_after = _log_rows(run)
    kept = [row for row in rows_before if int(dict(row)["step"]) < 20]
    assert kept and set(kept) <= set(rows_after)  # the first 20 steps' rows survive the extension
    assert max(int(dict(row)["step"]) for row in rows_after) == 30
    # The finished run's closing evaluation (logged after its last checkpoint) is not carried into the longer run.
    early_test = [row for row in rows_after if any(k.startswith("test/") for k, _ in row) and
                  int(dict(row)["step"]) < 30]
    assert not early_test, early_test
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 30


def test_resume_needs_a_checkpoint(tmp_path, run_cli):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("task: mqar\n")
    r = run_cli("train", "--resume", "run", cwd=tmp_path)
    assert r.returncode == 2 and "last.ckpt" in r.stderr


def test_resume_refuses_model_overrides(tmp_path, tiny_mqar, run_cli):
    r = run_cli("train", str(tiny_mqar), "trainer.max_steps=5", "--run-dir", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("train", "--resume", "run", "model.d_model=64", cwd=tmp_path)
    assert r.returncode == 2 and "trainer.*" in r.stderr


def test_a_copied_run_keeps_its_best_checkpoint_record(tmp_path, tiny_mqar, run_cli):
    """The best-model record (score, path) survives a copy: otherwise a resumed copy would forget a best score
    reached before the copy and overwrite best.ckpt with a worse one."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mmseq.runner.checkpoint import SafeCheckpointIO

    r = run_cli("train", str(tiny_mqar), "trainer.max_steps=20", "--run-dir", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    shutil.rmtree(tmp_path / "run")  # moved, not copied: the old paths now point nowhere
    ckpt_dir = (tmp_path / "copy" / "checkpoints").resolve()
    state = SafeCheckpointIO(relocate_to=ckpt_dir).load_checkpoint(ckpt_dir / "last.ckpt")
    (key, saved), = [(k, v) for k, v in state["callbacks"].items() if "val/acc" in k]
    assert saved["dirpath"] == str(ckpt_dir) and saved["best_model_path"] == str(ckpt_dir / "best.ckpt")
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/acc", mode="max", save_top_k=1,
                           auto_insert_metric_name=False, enable_version_counter=False)
    best.load_state_dict(saved)
    assert best.best_model_path == str(ckpt_dir / "best.ckpt")
    assert best.best_model_score is not None and float(best.best_model_score) == float(saved["best_model_score"])
