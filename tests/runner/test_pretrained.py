"""save_pretrained/from_pretrained round trip, and refusal of checkpoints that would run code."""

import os

import pytest
import torch

from mmseq.errors import UserError
from mmseq.runner.checkpoint import atomic_torch_save, safe_torch_load
from mmseq.runner.pretrained import from_pretrained
from mmseq.runner.task import load_task
from mmseq.synthetic.model import SequenceLM

CFG = {"task": "mqar", "data": {"vocab_size": 32, "seq_len": 32, "num_kv_pairs": 4},
       "model": {"d_model": 32, "n_layers": 2, "mixer": {"name": "attention", "n_heads": 2}}}


def test_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = load_task(CFG).build_model().eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.yaml", "model.safetensors"]
    loaded = SequenceLM.from_pretrained(tmp_path / "m")
    x = torch.randint(0, 32, (3, 32))
    assert torch.equal(model(x), loaded(x))
    # a different random init really differs, so the equality above means the weights were loaded
    torch.manual_seed(1)
    other = load_task(CFG).build_model().eval()
    assert not torch.equal(other(x), model(x))


def test_from_pretrained_on_missing_folder(tmp_path):
    with pytest.raises(UserError, match="no exported model"):
        from_pretrained(tmp_path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickled_object_checkpoint_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode()}, evil)
    with pytest.raises(UserError, match="refusing to load"):
        safe_torch_load(evil)
    assert not (tmp_path / "pwned").exists()


def test_resume_from_malicious_checkpoint_is_refused(tmp_path, run_cli):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("task: mqar\ndata: {vocab_size: 32, seq_len: 32, num_kv_pairs: 4}\n")
    torch.save({"state_dict": {}, "payload": _RunsCode()}, run / "checkpoints" / "last.ckpt")
    r = run_cli("train", "--resume", "run", cwd=tmp_path)
    assert r.returncode == 2 and "refusing to load" in r.stderr
    assert not (tmp_path / "pwned").exists()


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": torch.tensor(1)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"step": Boom()}, path)
    assert safe_torch_load(path)["step"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
