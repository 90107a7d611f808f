"""A whole run through the runner: folder contents, logged throughput, export, and eval with overrides."""

import csv
import json

import torch
import yaml

from mmseq.runner.pretrained import from_pretrained
from mmseq.runner.train import evaluate, train


def test_run_folder_metrics_export_and_eval(tmp_path, tiny_mqar, monkeypatch):
    monkeypatch.delenv("MMSEQ_RUN_DIR", raising=False)
    run = tmp_path / "run"
    metrics = train(tiny_mqar, ["trainer.max_steps=20"], run_dir=run)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "logs", "metrics.json", "model"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["max_steps"] == 20 and saved["model"]["mixer"] == {"name": "attention", "n_heads": 2}
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["global_step"] == 20 and "val/acc" in on_disk["val"] and "test/acc" in on_disk["test"]
    assert metrics["val"] == on_disk["val"]
    assert on_disk["throughput"]["perf/samples_per_sec"] > 0 and on_disk["throughput"]["perf/peak_mem_mb"] > 0
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    assert any(r.get("perf/tokens_per_sec") for r in rows) and any(r.get("train/loss") for r in rows)

    # The exported model is the best checkpoint's weights.
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    model = from_pretrained(run)
    for k, v in model.state_dict().items():
        assert torch.equal(v, best["model." + k]), k

    result = evaluate(run, ["data.seq_len=48", "data.num_val=32", "data.num_test=32"])
    written = json.loads((run / "eval.json").read_text())
    assert written["config"]["seq_len"] == 48 and "val/acc" in written["val"]
    assert result["val"] == written["val"]


def test_passkey_reports_accuracy_per_depth(tmp_path, monkeypatch):
    monkeypatch.delenv("MMSEQ_RUN_DIR", raising=False)
    cfg = tmp_path / "passkey.yaml"
    cfg.write_text(
        "task: passkey\n"
        "data: {seq_len: 40, n_digits: 3, num_train: 64, num_val: 20, num_test: 20, batch_size: 8, "
        "val_depths: [0.0, 0.5, 1.0]}\n"
        "model: {d_model: 16, n_layers: 1, mixer: {name: attention, n_heads: 2}}\n"
        "trainer: {max_steps: 4, val_check_interval: 4, enable_progress_bar: false}\n"
    )
    metrics = train(cfg, run_dir=tmp_path / "run")
    for d in ("0", "0.5", "1"):
        assert 0.0 <= metrics["test"][f"test/acc_depth_{d}"] <= 1.0
    assert 0.0 <= metrics["val"]["val/exact"] <= 1.0


def test_bf16_mixed_precision_runs(tmp_path, tiny_mqar, monkeypatch):
    monkeypatch.delenv("MMSEQ_RUN_DIR", raising=False)
    metrics = train(tiny_mqar, ["trainer.max_steps=3", "trainer.precision=bf16-mixed"], run_dir=tmp_path / "run")
    assert metrics["global_step"] == 3 and torch.isfinite(torch.tensor(metrics["val"]["val/loss"]))
