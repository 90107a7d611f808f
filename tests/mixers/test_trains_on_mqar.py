"""Every registered mixer trains on MQAR through the runner (the `model.mixer` override path).

A short run cannot be expected to solve recall (see benchmarks/RESULTS.md for that); it must learn the
task's token statistics through the mixer, bringing the test loss well below a uniform guess (log V = 3.47;
an untrained model starts near it).
"""

import math

import pytest

from mmseq.mixers import MIXERS, list_mixers
from mmseq.mixers.base import mixer_hparams
from mmseq.runner.train import train

V, L = 32, 32


@pytest.mark.parametrize("name", list_mixers())
def test_mixer_trains_on_mqar(name, tmp_path, monkeypatch):
    monkeypatch.delenv("MMSEQ_RUN_DIR", raising=False)
    hparams = dict(MIXERS.get(name).test_hparams)
    if "l_max" in mixer_hparams(name):
        hparams["l_max"] = L
    mixer = ", ".join(f"{k}: {v!r}" if not isinstance(v, dict) else f"{k}: {v}" for k, v in hparams.items())
    mixer = "{name: " + name + (", " + mixer if mixer else "") + "}"
    cfg = tmp_path / "mqar.yaml"
    cfg.write_text(
        "task: mqar\n"
        f"data: {{vocab_size: {V}, seq_len: {L}, num_kv_pairs: 4, num_train: 512, num_val: 32, num_test: 64, "
        "batch_size: 16}\n"
        "model: {d_model: 32, n_layers: 1, mlp_ratio: 0}\n"
        "optim: {lr: 3.0e-3, warmup_steps: 5, schedule: constant}\n"
        "trainer: {max_steps: 40, val_check_interval: 40, checkpoint_every_n_steps: 40, enable_progress_bar: false}\n"
    )
    metrics = train(cfg, [f"model.mixer={mixer}"], run_dir=tmp_path / "run")
    assert metrics["global_step"] == 40
    assert metrics["test"]["test/loss"] < math.log(V) - 0.4, metrics["test"]
