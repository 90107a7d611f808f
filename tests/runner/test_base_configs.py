"""``base:`` configs: a file states only what differs; the run folder keeps the whole resolved config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmseq.errors import ConfigError
from mmseq.runner.config import load_config_file, merge_configs
from mmseq.runner.task import load_task_file

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_merge_rules():
    base = {"data": {"a": 1, "b": [1, 2]}, "model": {"d": 8, "mixer": {"name": "attention", "n_heads": 4}}}
    top = {"data": {"b": [3]}, "model": {"mixer": {"name": "mamba", "d_state": 16}}, "seed": 3}
    merged = merge_configs(base, top)
    assert merged == {"data": {"a": 1, "b": [3]},
                      "model": {"d": 8, "mixer": {"name": "mamba", "d_state": 16}}, "seed": 3}
    # the same registry name merges argument by argument
    same = merge_configs(base, {"model": {"mixer": {"name": "attention", "window": 8}}})
    assert same["model"]["mixer"] == {"name": "attention", "n_heads": 4, "window": 8}
    assert base["model"]["mixer"] == {"name": "attention", "n_heads": 4}  # inputs untouched


def test_chained_bases_resolve_in_order(tmp_path):
    _write(tmp_path / "a.yaml", "task: mqar\nseed: 1\ndata: {seq_len: 32, num_kv_pairs: 4}\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\nseed: 2\ndata: {vocab_size: 32}\n")
    top = _write(tmp_path / "c.yaml", "base: [b.yaml]\ndata: {seq_len: 16}\n")
    assert load_config_file(top) == {"task": "mqar", "seed": 2,
                                     "data": {"seq_len": 16, "num_kv_pairs": 4, "vocab_size": 32}}


def test_missing_and_circular_bases_are_one_line(tmp_path):
    missing = _write(tmp_path / "m.yaml", "base: nowhere.yaml\ntask: mqar\n")
    with pytest.raises(ConfigError, match="base file nowhere.yaml not found"):
        load_config_file(missing)
    _write(tmp_path / "x.yaml", "base: y.yaml\n")
    _write(tmp_path / "y.yaml", "base: x.yaml\n")
    with pytest.raises(ConfigError, match="loop \\(x.yaml -> y.yaml -> x.yaml\\)"):
        load_config_file(tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match="'base' must be a file name"):
        load_config_file(_write(tmp_path / "n.yaml", "base: {a: 1}\n"))


def test_cli_reports_a_bad_base_in_one_line(tmp_path, run_cli):
    _write(tmp_path / "cfg.yaml", "base: gone.yaml\n")
    r = run_cli("train", "cfg.yaml", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "gone.yaml" in r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name, mixer", [
    ("synthetic/mqar_mamba.yaml", {"name": "mamba", "d_state": 16}),
    ("synthetic/mqar_swa.yaml", {"name": "swa", "window": 64, "n_heads": 4}),
    ("audio/keywords_attention.yaml", {"name": "attention", "n_heads": 4, "rotary": True}),
])
def test_shipped_variants_extend_their_base(name, mixer):
    raw = yaml.safe_load((CONFIGS / name).read_text())
    assert "base" in raw and set(raw) <= {"base", "model", "data", "trainer"}  # only what differs
    cfg = load_task_file(CONFIGS / name).cfg
    assert dict(cfg.model.mixer) == mixer  # the base's mixer arguments do not leak into another mixer
    base = load_task_file(CONFIGS / name.split("/")[0] / raw["base"]).cfg
    assert cfg.data == base.data and cfg.optim == base.optim and cfg.model.d_model == base.model.d_model


def test_run_folder_keeps_the_whole_resolved_config(tmp_path, tiny_mqar):
    from mmseq.runner.train import train

    child = _write(tmp_path / "child.yaml", f"base: {tiny_mqar.name}\nmodel: {{mixer: {{name: s4d}}}}\n"
                                            "trainer: {max_steps: 2}\n")
    train(child, run_dir=tmp_path / "run")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert "base" not in saved
    assert saved["model"]["mixer"]["name"] == "s4d" and saved["data"]["vocab_size"] == 32
    assert saved["trainer"]["max_steps"] == 2 and saved["trainer"]["val_check_interval"] == 10
