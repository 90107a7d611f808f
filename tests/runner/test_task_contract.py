"""Every registered task through one contract, as tests/mixers/test_contract.py does for mixers.

The config validates, the model builds, one training step runs through Lightning and changes the weights, the
model exports itself (class + arguments, no run config), reloads with equal outputs, and the run folder's
evaluation reproduces the trained figures. A new task fails ``test_every_task_has_a_case`` until it is added.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from mmseq.runner.pretrained import from_pretrained
from mmseq.runner.task import load_task, task_names
from mmseq.runner.train import evaluate, train

TRAINER = {"max_steps": 2, "val_check_interval": 1, "checkpoint_every_n_steps": 1, "log_every_n_steps": 1,
           "enable_progress_bar": False}
CASE_NAMES = ("mqar", "passkey", "keywords", "ct-tokenizer", "ct-report", "segmentation", "joint-recall", "copy",
              "selective-copy", "maze", "dna-pretrain", "dna-classify")
TINY_CT = {"filters": 8, "channel_multipliers": [1, 2], "temporal_downsample": [True], "num_res_blocks": 1,
           "token_bits": 6, "norm_groups": 4}
TINY_TRUNK = {"d_model": 16, "n_layers": 1, "mixer": {"name": "attention", "n_heads": 2}}


def _tone_folder(root: Path) -> Path:
    """root/<class>/<speaker>_nohash_0.wav: 3 classes of 0.25 s tones, 30 speakers each (all three splits)."""
    rng = np.random.default_rng(0)
    t = np.arange(4000) / 16000
    for c, freq in enumerate((300.0, 900.0, 2500.0)):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for s in range(30):
            wave = 0.3 * np.sin(2 * math.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
            sf.write(folder / f"spk{c}x{s}_nohash_0.wav", wave.astype(np.float32), 16000)
    return root


def _ct_set(tmp: Path) -> tuple[Path, Path]:
    """A few phantoms in the CT-RATE layout and their token files from a random tiny tokenizer."""
    from mmseq.medical.cli import _ctrate_sources
    from mmseq.medical.phantoms import make_ct_phantoms
    from mmseq.medical.tokenizer import CTTokenizer
    from mmseq.medical.tokens import tokenize_many

    root = tmp / "ct"
    make_ct_phantoms(root, n=8, seed=0, progress=False)
    torch.manual_seed(0)
    tokenizer = CTTokenizer(**TINY_CT, preprocess={"spacing": [8.0, 8.0, 8.0]})
    tokenize_many(tokenizer, _ctrate_sources(root), tmp / "ct_tokens", progress=False)
    return root, tmp / "ct_tokens"


def _scenes(tmp: Path) -> dict:
    """The segmentation data section over tiny built-in street scenes (source and one target)."""
    from mmseq.vision.scenes import make_street_scenes

    for domain in ("synthetic", "adverse"):
        make_street_scenes(tmp / domain, domain=domain, n=5, size=(64, 128), progress=False)
    return {"source": {"format": "cityscapes", "root": str(tmp / "synthetic"), "split": "train"},
            "source_val": {"format": "cityscapes", "root": str(tmp / "synthetic"), "split": "val"},
            "targets": {"adverse": {"format": "cityscapes", "root": str(tmp / "adverse"), "split": "val"}},
            "crop_size": [56, 56], "scale_range": [1.0, 1.0], "window": 56, "stride": 40, "batch_size": 2,
            "eval_batch_size": 2}


TINY_SEG = {"dinov2": {"model_name": "vit_small_patch14_dinov2", "frozen": False, "embed_dim": 16, "depth": 1,
                       "num_heads": 2},
            "clip": {"frozen": False, "model_cfg": {
                "embed_dim": 16, "vision_cfg": {"image_size": 56, "layers": 1, "width": 16, "head_width": 8,
                                                "patch_size": 14},
                "text_cfg": {"context_length": 13, "vocab_size": 49408, "width": 8, "heads": 1, "layers": 1}}},
            "img_size": 56, "fuser": {"d_state": 2, "dropout": 0.0}, "enhancer": {"width": 8, "num_heads": 1},
            "head": {"name": "light", "hidden_dim": 16, "num_heads": 2, "decoder_layers": 1},
            "loss": {"num_points": 64}}


def _suite_cases(tmp: Path) -> dict[str, dict]:
    """The long-context suite's tasks at tiny sizes; the DNA tasks read a small built-in genome."""
    from mmseq.synthetic.dna import make_genome

    make_genome(tmp / "genome", length=40_000, chromosomes=2, site_spacing=100, seed=0)
    splits = {"num_train": 32, "num_val": 8, "num_test": 8, "batch_size": 8}
    dna = {**splits, "fasta": str(tmp / "genome" / "genome.fa.gz"), "seq_len": 32}
    return {
        "joint-recall": {"task": "joint-recall", "data": {"num_contexts": 2, "num_keys": 3, "num_values": 4,
                                                          "num_queries": 4, **splits}, "model": TINY_TRUNK},
        "copy": {"task": "copy", "data": {"copy_len": 8, "vocab_size": 4, **splits}, "model": TINY_TRUNK},
        "selective-copy": {"task": "selective-copy", "data": {"seq_len": 16, "num_tokens": 3, "vocab_size": 4,
                                                              **splits}, "model": TINY_TRUNK},
        "maze": {"task": "maze", "data": {"grid": 3, **splits},
                 "model": {**TINY_TRUNK, "objective": "mlm-u", "decode": "confident-first"}},
        "dna-pretrain": {"task": "dna-pretrain", "data": dna, "model": TINY_TRUNK},
        "dna-classify": {"task": "dna-classify", "data": dna, "model": TINY_TRUNK},
    }


def _cases(tmp: Path) -> dict[str, dict]:
    ct_root, ct_tokens = _ct_set(tmp)
    return {
        **_suite_cases(tmp),
        "segmentation": {"task": "segmentation", "data": _scenes(tmp / "scenes"), "model": TINY_SEG},
        "mqar": {"task": "mqar", "data": {"vocab_size": 16, "seq_len": 16, "num_kv_pairs": 2, "num_train": 32,
                                          "num_val": 8, "num_test": 8, "batch_size": 8}, "model": TINY_TRUNK},
        "passkey": {"task": "passkey", "data": {"seq_len": 24, "n_digits": 2, "filler_vocab": 4, "num_train": 32,
                                                "num_val": 10, "num_test": 10, "batch_size": 8},
                    "model": TINY_TRUNK},
        "keywords": {"task": "keywords",
                     "data": {"root": str(_tone_folder(tmp / "tones")), "format": "folder", "clip_seconds": 0.25,
                              "batch_size": 8, "eval_batch_size": 16, "augment": None},
                     "model": {"frontend": {"name": "logmel", "n_mels": 16}, "d_model": 16, "n_layers": 1,
                               "mixer": {"name": "s4d", "d_state": 8}}},
        "ct-tokenizer": {"task": "ct-tokenizer",
                         "data": {"root": str(ct_root), "spacing": [8.0, 8.0, 8.0], "size": [9, 32, 32],
                                  "crop_depth": 5, "batch_size": 2, "eval_batch_size": 2},
                         "model": {**TINY_CT, "ssim_weight": 0.0}},
        "ct-report": {"task": "ct-report",
                      "data": {"root": str(ct_root), "tokens": str(ct_tokens), "batch_size": 4, "eval_batch_size": 4,
                               "num_generate": 2, "max_report_tokens": 24, "bpe_vocab_size": 300},
                      "model": {"d_model": 16, "n_layers": 1, "mixer": {"name": "attention", "n_heads": 2},
                                "prefix_grid": [1, 2, 2]}},
    }


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, dict]:
    return _cases(tmp_path_factory.mktemp("task_cases"))


def test_every_task_has_a_case(cases):
    assert set(task_names()) == set(cases) == set(CASE_NAMES), "add a contract case for each new task"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_task_contract(name, cases, tmp_path):
    raw = {**cases[name], "seed": 0, "trainer": TRAINER}
    task = load_task(raw)
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in task.build_model().state_dict().items()}

    run = tmp_path / "run"
    metrics = train_from_dict(raw, tmp_path, run)
    assert metrics["global_step"] == 2

    exported = yaml.safe_load((run / "model" / "config.yaml").read_text())
    assert set(exported) == {"class", "args", "format"}  # the model alone: no data, optim or trainer
    model = from_pretrained(run)
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "one training step must change the weights"

    # a model re-exported from the loaded one is the same model
    model.save_pretrained(tmp_path / "again")
    again = type(model).from_pretrained(tmp_path / "again")
    batch = _example_input(name, cases[name])
    batch = batch if isinstance(batch, tuple) else (batch,)
    with torch.no_grad():
        torch.testing.assert_close(again(*batch), model(*batch), rtol=0, atol=0)

    result = evaluate(run)
    for split in ("val", "test"):
        for key, value in metrics[split].items():
            assert result[split][key] == pytest.approx(value, abs=1e-5), key


def train_from_dict(raw: dict, tmp_path: Path, run: Path) -> dict:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    return train(config, run_dir=run)


def _example_input(name: str, case: dict):
    if name == "keywords":
        return torch.randn(2, 4000)
    if name == "ct-tokenizer":
        return torch.rand(1, 1, 9, 32, 32) * 2 - 1
    if name == "ct-report":
        return torch.randn(2, 6, 1, 2, 2).sign(), torch.randint(0, 50, (2, 7))
    if name == "segmentation":
        return torch.rand(1, 3, 56, 70)
    return torch.randint(0, 6, (2, case["data"].get("seq_len", 24)))
