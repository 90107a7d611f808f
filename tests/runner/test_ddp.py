"""Two-process DDP on the CPU (gloo) completes and writes its outputs once."""

import csv
import json


def test_ddp_two_cpu_processes(tmp_path, tiny_mqar, run_cli):
    r = run_cli("train", str(tiny_mqar), "trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_steps=10",
                "--run-dir", "run", cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 10
    assert 0.0 <= metrics["val"]["val/acc"] <= 1.0
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "logs", "metrics.json", "model"]
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    val_steps = [row["step"] for row in rows if row.get("val/acc")]
    assert len(val_steps) == len(set(val_steps)), "validation metrics were logged by more than one process"
