"""Config errors fail before any work: non-zero exit, one line naming the key, nothing written."""

import pytest

from mmseq.errors import ConfigError
from mmseq.runner.task import load_task

BASE = {"task": "mqar", "data": {"seq_len": 32, "num_kv_pairs": 4, "vocab_size": 32}}


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.not_a_key=3", "data.not_a_key"),
        ("trainer.max_steps=many", "trainer.max_steps"),
        ("data.root=/no/such/folder", "data.root"),
        ("model.mixer.name=mambo", "model.mixer.name"),
        ("model.mixer.n_hedas=2", "model.mixer.n_hedas"),
        ("trainer.precision=fp7", "trainer.precision"),
        ("optim.lr=-1", "optim.lr"),
    ],
)
def test_cli_config_error_is_one_line_and_writes_nothing(tmp_path, tiny_mqar, override, key, run_cli):
    work = tmp_path / "work"
    work.mkdir()
    r = run_cli("train", str(tiny_mqar), override, "--run-dir", "run", cwd=work)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert key in lines[0]
    assert "Traceback" not in r.stderr
    assert list(work.iterdir()) == []


def test_unknown_task_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'mqar'"):
        load_task({"task": "mqa"})


def test_wrong_type_in_file_names_key():
    with pytest.raises(ConfigError, match="data.batch_size"):
        load_task({**BASE, "data": {**BASE["data"], "batch_size": "big"}})


def test_inconsistent_sizes_are_reported():
    with pytest.raises(ConfigError, match="seq_len"):
        load_task({"task": "mqar", "data": {"seq_len": 16, "num_kv_pairs": 8}})


def test_missing_config_file(tmp_path, run_cli):
    r = run_cli("train", "nope.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "config file not found: nope.yaml" in r.stderr


def test_used_run_dir_is_refused(tmp_path, tiny_mqar, run_cli):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    r = run_cli("train", str(tiny_mqar), "--run-dir", str(run), cwd=tmp_path)
    assert r.returncode == 2 and "--resume" in r.stderr
    assert (run / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]


def test_mapping_override_replaces_the_node():
    from mmseq.runner.config import apply_overrides

    raw = {"model": {"d_model": 8, "mixer": {"name": "attention", "n_heads": 4}}}
    out = apply_overrides(raw, ["model.mixer={name: swa, window: 8}", "model.d_model=16"])
    assert out["model"] == {"d_model": 16, "mixer": {"name": "swa", "window": 8}}
