"""Mistakes a user makes get one line naming the problem, exit code 2, and leave nothing half-made behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mmseq.cli import main


def _one_line_error(capsys, argv: list[str], *fragments: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture
def tiny(tiny_mqar, monkeypatch):
    monkeypatch.chdir(tiny_mqar.parent)
    monkeypatch.delenv("MMSEQ_RUN_DIR", raising=False)
    return tiny_mqar


@pytest.mark.parametrize("extra, fragments", [
    (["model.mixer=[attention]"], ["model.mixer is a mapping"]),
    (["model.mixer=attention"], ["model.mixer is a mapping"]),
    (["model.mixer.n_heads=5"], ["config section 'model'", "n_heads=5"]),
    (["trainer.accelerator=gpu"], ["trainer.accelerator", "no CUDA device"]),
    (["data.root=afile"], ["data.root", "not a folder"]),
])
def test_bad_overrides(tiny, capsys, extra, fragments):
    Path("afile").write_text("x")
    _one_line_error(capsys, ["train", str(tiny), *extra, "--run-dir", "run"], *fragments)
    assert not Path("run").exists()  # nothing half-made blocks the same --run-dir


@pytest.mark.parametrize("text, fragments", [
    ("task: mqar\ndata: {a: 1\n", ["not valid YAML at line 3, column 1"]),
    ("task: mqar\ndata: [1, 2]\n", ["config key 'data' must be a mapping"]),
    ("task: mqar\nmodel: {mixer: [attention]}\n", ["config key 'model.mixer' must be a mapping"]),
])
def test_bad_config_files(tmp_path, monkeypatch, capsys, text, fragments):
    monkeypatch.chdir(tmp_path)
    Path("c.yaml").write_text(text)
    _one_line_error(capsys, ["train", "c.yaml", "--run-dir", "run"], *fragments)
    assert not Path("run").exists()


def test_run_dir_that_is_a_file(tiny, capsys):
    Path("taken").write_text("mine")
    _one_line_error(capsys, ["train", str(tiny), "--run-dir", "taken"], "is a file")
    assert Path("taken").read_text() == "mine"


def test_data_made_with_other_sizes(tiny, capsys):
    assert main(["data", "make", "mqar", "made", "data.vocab_size=64", "data.seq_len=32",
                 "data.num_kv_pairs=4", "data.num_train=64", "data.num_val=8", "data.num_test=8"]) == 0
    capsys.readouterr()
    _one_line_error(capsys, ["train", str(tiny), "data.root=made", "--run-dir", "run"],
                    "data.vocab_size", "made with vocab_size=64")
    assert not Path("run").exists()


@pytest.fixture
def finished_run(tiny, capsys) -> Path:
    assert main(["train", str(tiny), "trainer.max_steps=5", "--run-dir", "run"]) == 0
    capsys.readouterr()
    return Path("run")


@pytest.mark.parametrize("content, fragment", [(b"", "is empty (0 bytes)"),
                                                (bytes(range(256)) * 8, "not a PyTorch checkpoint")])
def test_damaged_last_checkpoint(finished_run, capsys, content, fragment):
    (finished_run / "checkpoints" / "last.ckpt").write_bytes(content)
    log = (finished_run / "logs" / "metrics.csv").read_bytes()
    _one_line_error(capsys, ["train", "--resume", "run", "trainer.max_steps=8"], fragment)
    assert (finished_run / "logs" / "metrics.csv").read_bytes() == log  # a failed resume deletes no log


def test_damaged_exported_weights(finished_run, capsys):
    weights = finished_run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    _one_line_error(capsys, ["eval", "run"], "unreadable or truncated")


def test_eval_json_prints_only_json(finished_run, run_cli):
    r = run_cli("eval", "run", "--json", cwd=finished_run.resolve().parent)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)  # the whole of stdout: no progress bar or notice before the JSON
    assert "val/acc" in result["val"]
    assert "GPU available" not in r.stderr and "LeafSpec" not in r.stderr


def test_exported_model_loads_without_its_data_folder(tiny, capsys):
    from mmseq.runner.pretrained import from_pretrained

    assert main(["data", "make", "mqar", "made", "data.vocab_size=32", "data.seq_len=32", "data.num_kv_pairs=4",
                 "data.num_train=64", "data.num_val=8", "data.num_test=8"]) == 0
    assert main(["train", str(tiny), "data.root=made", "trainer.max_steps=3", "--run-dir", "run"]) == 0
    shutil.rmtree("made")
    model = from_pretrained("run")
    assert model(torch.randint(0, 32, (1, 32))).shape == (1, 32, 32)


def test_data_make_refuses_non_positive_counts(tmp_path, capsys):
    for value in ("0", "-3"):
        assert main(["data", "make", "keywords", str(tmp_path / "kw"), "--per-word", value]) == 2
        assert "--per-word" in capsys.readouterr().err
    assert not (tmp_path / "kw").exists()


def test_classify_audio_missing_file_answers_before_loading_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys\nfrom mmseq.cli import main\nc = main(['classify-audio', 'nosuch.wav'])\n"
            "print(c, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["2", "False"], r.stderr
    assert "no such file: nosuch.wav" in r.stderr


def test_train_names_its_run_folder_first_and_hides_lightning_notices(tiny_mqar, run_cli):
    r = run_cli("train", str(tiny_mqar), "trainer.max_steps=2", "--run-dir", "run", cwd=tiny_mqar.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines()[0] == "run folder: run"
    for notice in ("GPU available", "TPU available", "litlogger", "LeafSpec"):
        assert notice not in r.stdout + r.stderr, notice
