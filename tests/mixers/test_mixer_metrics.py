"""Diagnostics mixers report (``last_metrics``) reach the run's metrics through the runner."""

import pytest
import torch
from torch import nn

from mmseq.mixers import create_mixer
from mmseq.mixers.base import mixer_metrics
from mmseq.runner.train import train

CONFIG = (
    "task: mqar\n"
    "data: {vocab_size: 32, seq_len: 32, num_kv_pairs: 4, num_train: 64, num_val: 16, num_test: 16, batch_size: 16}\n"
    "model: {d_model: 16, n_layers: 1, mlp_ratio: 0}\n"
    "trainer: {max_steps: 4, val_check_interval: 4, checkpoint_every_n_steps: 4, enable_progress_bar: false}\n"
)


def test_mixer_metrics_average_what_the_mixers_report():
    a, b, c = nn.Linear(1, 1), nn.Linear(1, 1), nn.Linear(1, 1)
    a.last_metrics = {"rate": torch.tensor(0.2)}
    b.last_metrics = {"rate": 0.6, "other": 1.0}
    model = nn.Sequential(a, b, c)
    got = mixer_metrics(model)
    assert set(got) == {"rate", "other"}
    assert got["rate"].item() == pytest.approx(0.4) and got["other"].item() == 1.0


def test_seqboat_reports_its_activation_rate_when_forced():
    m = create_mixer("seqboat", 8, force_active=True)
    m(torch.randn(2, 5, 8))
    assert mixer_metrics(m)["activation_rate"].item() == 1.0


@pytest.mark.parametrize(("mixer", "metric"), [("{name: seqboat, window: 8}", "activation_rate"),
                                               ("{name: memmamba, n_layers: 2, pool_size: 4}", "note_rate")])
def test_a_training_run_logs_the_mixers_metrics(tmp_path, monkeypatch, mixer, metric):
    monkeypatch.delenv("MMSEQ_RUN_DIR", raising=False)
    cfg = tmp_path / "mqar.yaml"
    cfg.write_text(CONFIG)
    metrics = train(cfg, [f"model.mixer={mixer}"], run_dir=tmp_path / "run")
    for stage in ("val", "test"):
        assert 0.0 <= metrics[stage][f"{stage}/{metric}"] <= 1.0
