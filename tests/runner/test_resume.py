"""Kill a training run with SIGKILL, resume it, and get the weights of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

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

    res = run_cli("train", "--resume", "killed", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    step_ref, ref_state = _final_state(tmp_path / "ref")
    step_res, res_state = _final_state(tmp_path / "killed")
    assert step_ref == step_res == 40
    assert ref_state.keys() == res_state.keys()
    for k in ref_state:
        torch.testing.assert_close(res_state[k], ref_state[k], rtol=1e-5, atol=1e-6, msg=k)
    # Validation ran from where the checkpoint left off: the resumed log continues the step count.
    assert (tmp_path / "killed" / "metrics.json").is_file()


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
