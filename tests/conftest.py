import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Triton kernels are built when their module is imported, and only then read TRITON_INTERPRET; set it before
# any test module imports mmseq.kernels so that without a GPU every Triton test runs in the CPU interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist every worker is its own process: one torch thread each (and in the commands they start),
# so that two workers on two cores do not each spin two threads and fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_mqar(tmp_path) -> Path:
    """A small, fast MQAR config file."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "task: mqar\nseed: 0\n"
        "data: {vocab_size: 32, seq_len: 32, num_kv_pairs: 4, num_train: 512, num_val: 64, num_test: 64, "
        "batch_size: 16}\n"
        "model: {d_model: 32, n_layers: 1, dropout: 0.1, mixer: {name: attention, n_heads: 2}}\n"
        "optim: {lr: 3.0e-3, warmup_steps: 5}\n"
        "trainer: {max_steps: 30, val_check_interval: 10, checkpoint_every_n_steps: 5, "
        "log_every_n_steps: 5, enable_progress_bar: false}\n"
    )
    return cfg


def _run_cli(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env.pop("MMSEQ_RUN_DIR", None)
    exe = Path(sys.executable).with_name("mmseq")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full_env)


@pytest.fixture
def run_cli():
    """Run the installed ``mmseq`` command in a subprocess: ``run_cli("info", cwd=tmp_path)``."""
    return _run_cli


@pytest.fixture
def repo_root() -> Path:
    return REPO
