"""save_pretrained/from_pretrained round trip, and refusal of checkpoints that would run code."""

import os
from pathlib import Path

import pytest
import torch
import yaml

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


def test_a_model_built_directly_saves_and_loads_itself(tmp_path):
    torch.manual_seed(0)
    model = SequenceLM(vocab_size=20, d_model=16, n_layers=1, mixer={"name": "s4d", "d_state": 8}).eval()
    model.save_pretrained(tmp_path / "m")
    config = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())
    assert config["class"] == "mmseq.synthetic.model.SequenceLM"
    assert config["args"] == {"vocab_size": 20, "d_model": 16, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 8},
                              "causal": True, "mlp_ratio": 4.0, "dropout": 0.0}
    loaded = from_pretrained(tmp_path / "m")
    assert type(loaded) is SequenceLM and not loaded.training
    x = torch.randint(0, 20, (2, 9))
    assert torch.equal(model(x), loaded(x))


def test_a_subclass_records_its_own_arguments():
    class Wide(SequenceLM):
        def __init__(self, width: int = 24) -> None:
            super().__init__(vocab_size=10, d_model=width, n_layers=1)

    model = Wide(width=16)
    assert model.init_args == {"width": 16}  # what rebuilds a Wide, not the arguments Wide passed on
    assert model.export_config()["class"].endswith("Wide")


def test_from_pretrained_checks_the_class(tmp_path):
    from mmseq.audio.model import AudioClassifier

    SequenceLM(vocab_size=8, d_model=8, n_layers=1).save_pretrained(tmp_path / "lm")
    with pytest.raises(UserError, match="holds a model of class SequenceLM, expected AudioClassifier"):
        AudioClassifier.from_pretrained(tmp_path / "lm")


def _exported(tmp_path) -> Path:
    SequenceLM(vocab_size=8, d_model=8, n_layers=1).save_pretrained(tmp_path / "m")
    return tmp_path / "m"


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update({"class": "mmseq.synthetic.model.NoSuchModel"}), "not an exportable model class"),
    (lambda c: c.update({"class": "no_such_package.Model"}), "cannot be imported"),
    (lambda c: c.update({"class": "os.path"}), "not an exportable model class"),
    (lambda c: c["args"].update({"width": 3}), "do not build a SequenceLM"),
    (lambda c: c["args"].update({"d_model": 16}), "size mismatch"),
    (lambda c: c.pop("class"), "names no model"),
])
def test_bad_model_folders_are_one_line(tmp_path, edit, message):
    folder = _exported(tmp_path)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    edit(config)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UserError, match=message) as e:
        from_pretrained(folder)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("damage", ["truncate", "empty", "other_model"])
def test_weights_that_do_not_fit_are_one_line(tmp_path, damage):
    folder = _exported(tmp_path)
    weights = folder / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:200])
    elif damage == "empty":
        weights.write_bytes(b"")
    else:
        SequenceLM(vocab_size=8, d_model=8, n_layers=2).save_pretrained(tmp_path / "other")
        weights.write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(UserError, match="unreadable or truncated|does not match") as e:
        from_pretrained(folder)
    assert "\n" not in str(e.value)


def test_unexportable_arguments_are_refused_at_save(tmp_path):
    from mmseq.runner.pretrained import PretrainedMixin

    class Odd(PretrainedMixin, torch.nn.Module):
        def __init__(self, scale: object) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

    with pytest.raises(TypeError, match="constructor argument args.scale is a device"):
        Odd(torch.device("cpu")).save_pretrained(tmp_path / "odd")


def test_classify_audio_with_a_broken_checkpoint_is_one_line(tmp_path, run_cli):
    folder = _exported(tmp_path)
    (tmp_path / "clip.wav").write_bytes(b"")
    r = run_cli("classify-audio", "clip.wav", "--checkpoint", str(folder), cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "expected AudioClassifier" in r.stderr


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
