"""The segmentation task end to end on built-in street scenes: training, per-domain mIoU, export, `mmseq segment`."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mmseq.vision.labels import IGNORE, NUM_CLASSES
from mmseq.vision.scenes import make_street_scenes
from tests.vision._helpers import TINY_MFUSER

DOMAINS = ("synthetic", "realistic", "adverse")

# The segmentation config's model section: the tiny MFuser plus few loss points.
TINY_MODEL = {**TINY_MFUSER, "loss": {"num_points": 256}}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    for domain in DOMAINS:
        make_street_scenes(root / domain, domain=domain, n=30, seed=0, size=(112, 224), val_fraction=0.2,
                           progress=False)
    return root


def seg_config(scenes: Path, max_steps: int, **trainer) -> dict:
    def spec(domain, split):
        return {"format": "cityscapes", "root": str(scenes / domain), "split": split}

    return {
        "task": "segmentation", "seed": 0,
        "data": {"source": spec("synthetic", "train"), "source_val": spec("synthetic", "val"),
                 "targets": {"realistic": spec("realistic", "val"), "adverse": spec("adverse", "val")},
                 "crop_size": [112, 112], "scale_range": [0.9, 1.1], "window": 112, "stride": 72,
                 "batch_size": 4, "eval_batch_size": 2},
        "model": TINY_MODEL,
        "optim": {"lr": 2.0e-3, "warmup_steps": 5, "schedule": "poly"},
        "trainer": {"max_steps": max_steps, "val_check_interval": max_steps, "checkpoint_every_n_steps": max_steps,
                    "log_every_n_steps": 5, "enable_progress_bar": False, **trainer},
    }


def train_run(cfg: dict, tmp_path: Path, name: str) -> tuple[Path, dict]:
    from mmseq.runner.train import train

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = train(path, run_dir=run)
    return run, metrics


def majority_miou(scenes: Path, domain: str) -> float:
    """mIoU of predicting the source's most frequent class everywhere, on the domain's val split (mmseg rules:
    classes absent from both labels and predictions are left out)."""
    from mmseq.vision.datasets import Cityscapes

    counts = np.zeros(NUM_CLASSES, np.int64)
    for _, label in Cityscapes(scenes / "synthetic", "train"):
        ids = label.numpy()
        counts += np.bincount(ids[ids != IGNORE], minlength=256)[:NUM_CLASSES]
    majority = int(counts.argmax())
    inter = np.zeros(NUM_CLASSES)
    union = np.zeros(NUM_CLASSES)
    for _, label in Cityscapes(scenes / domain, "val"):
        ids = label.numpy()
        valid = ids != IGNORE
        for c in range(NUM_CLASSES):
            gt = (ids == c) & valid
            pred = valid if c == majority else np.zeros_like(valid)
            inter[c] += (gt & pred).sum()
            union[c] += (gt | pred).sum()
    present = union > 0
    return float((inter[present] / union[present]).mean())


def test_short_run_beats_the_majority_class_on_unseen_domains(scenes, tmp_path):
    run, metrics = train_run(seg_config(scenes, 120), tmp_path, "run")
    val = {k.removeprefix("val/"): v for k, v in metrics["val"].items()}
    for key in ("miou", "miou_realistic", "miou_adverse", "miou_targets", "acc"):
        assert key in val
    for domain in ("realistic", "adverse"):
        baseline = majority_miou(scenes, domain)
        assert baseline < 0.05
        # Trained only on the flat-shaded source, the model must transfer well beyond a constant guess
        # (measured: realistic 0.062, adverse 0.041 against 0.016).
        assert val[f"miou_{domain}"] > 2 * baseline, (domain, val[f"miou_{domain}"], baseline)
    assert val["miou"] > val["miou_targets"]  # the source domain is the easy one: a real domain gap
    # per-class tables are written beside the metrics
    table = json.loads((run / "iou_val.json").read_text())
    assert set(table) == {"source", "realistic", "adverse"}
    assert table["source"]["miou"] == pytest.approx(val["miou"], abs=1e-6)
    assert "| mIoU |" in (run / "iou_val.md").read_text()
    for domain in ("source", "realistic", "adverse"):  # colourised test predictions beside the tables
        saved = sorted(p.name for p in (run / "predictions_test" / domain).iterdir())
        assert saved == sorted(f"{i:02d}_{k}.png" for i in range(4) for k in ("labelTrainIds", "color", "overlay"))

    # training lowered the loss
    import csv

    rows = [r for r in csv.DictReader((run / "logs" / "metrics.csv").open()) if r.get("train/loss")]
    losses = [float(r["train/loss"]) for r in rows]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])

    # the exported model segments images through the CLI: files in, files out
    images = sorted((scenes / "realistic" / "leftImg8bit" / "val").rglob("*.png"))[:2]
    rgba = tmp_path / "rgba.png"
    Image.open(images[0]).convert("RGBA").save(rgba)
    gray16 = tmp_path / "gray16.png"
    Image.fromarray(np.asarray(Image.open(images[1]).convert("L")).astype(np.uint16) * 257).save(gray16)
    out = tmp_path / "seg"
    proc = subprocess.run([sys.executable, "-m", "mmseq.cli", "segment", str(images[0]), str(rgba), str(gray16),
                           "--checkpoint", str(run), "-o", str(out), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert len(summary["images"]) == 3
    for item in summary["images"]:
        label = Image.open(item["outputs"]["label"])
        assert label.mode == "L" and label.size == (224, 112)
        assert set(np.unique(np.asarray(label)).tolist()) <= set(range(NUM_CLASSES))
        assert sum(item["pixel_share"].values()) == pytest.approx(1.0, abs=1e-3)
        assert Image.open(item["outputs"]["overlay"]).mode == "RGB"
    # RGBA input gives the same labels as its RGB source
    a, b = (np.asarray(Image.open(summary["images"][i]["outputs"]["label"])) for i in (0, 1))
    assert (a == b).mean() > 0.99


def test_frozen_towers_get_no_gradient_and_only_adapters_train(tmp_path):
    from mmseq.vision.losses import MaskClassificationLoss
    from mmseq.vision.model import MFuser

    model_args = dict(TINY_MFUSER)
    model_args["dinov2"] = {**model_args["dinov2"], "frozen": True}
    model_args["clip"] = {**model_args["clip"], "frozen": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MFuser(**model_args)
    model.train()
    assert not model.dino.training and not model.clip.training  # frozen towers stay in eval mode
    out = model(torch.rand(2, 3, 112, 112))
    loss = MaskClassificationLoss(NUM_CLASSES, num_points=64)(out, torch.randint(0, 19, (2, 112, 112)))["loss"]
    loss.backward()
    trained = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"fusers", "pyramid", "prompt", "enhancer", "head"}
    for name, p in model.named_parameters():
        if name.startswith(("dino.", "clip.")):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None, name
    assert model.prompt.context.grad.abs().sum() > 0  # the context learns through the frozen text tower


@pytest.mark.parametrize("fusion", ["both", "dinov2", "clip"])
def test_fusion_modes_share_the_head_and_export(fusion, tmp_path):
    from mmseq.vision.model import MFuser

    model_args = dict(TINY_MFUSER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MFuser(fusion=fusion, **model_args).eval()
    x = torch.rand(1, 3, 120, 130)  # not a multiple of the patch: the last rows/columns are dropped, output full size
    scores = model.predict_scores(x)
    assert scores.shape == (1, NUM_CLASSES, 120, 130)
    model.save_pretrained(tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a saved model reloads without the "random initialisation" warning
        again = MFuser.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(again.predict_scores(x), scores)


def test_mixer_swap_in_the_fusers(tmp_path):
    from mmseq.vision.model import MFuser

    model_args = dict(TINY_MFUSER)
    model_args["fuser"] = {"d_state": 4, "mixer": {"name": "attention", "n_heads": 2}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MFuser(**model_args)
    assert type(model.fusers[0].ssm).__name__ == "AttentionMixer"
    out = model(torch.rand(1, 3, 112, 112))
    assert out["pred_masks"].shape[1] == NUM_CLASSES


def test_config_errors_are_one_line(scenes, tmp_path):
    cfg = seg_config(scenes, 2)
    cfg["data"]["targets"]["realistic"]["format"] = "kitti"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "mmseq.cli", "train", str(path), "--run-dir", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "data.targets.realistic.format" in proc.stderr and "cityscapes" in proc.stderr
    assert "Traceback" not in proc.stderr

    cfg = seg_config(scenes, 2)
    cfg["data"]["source"]["root"] = str(tmp_path / "missing")
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "mmseq.cli", "train", str(path), "--run-dir", str(tmp_path / "r2")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "missing" in proc.stderr


def test_segment_rejects_a_file_that_is_not_an_image(tmp_path):
    bad = tmp_path / "photo.png"
    bad.write_text("not an image")
    proc = subprocess.run([sys.executable, "-m", "mmseq.cli", "segment", str(bad), "-o", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "photo.png" in proc.stderr and "not an image" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_data_make_street_scenes_verb(tmp_path):
    out = tmp_path / "adverse"
    proc = subprocess.run([sys.executable, "-m", "mmseq.cli", "data", "make", "street-scenes", str(out), "--domain",
                           "adverse", "--n", "3", "--size", "64x128", "--seed", "5"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    from mmseq.vision.datasets import Cityscapes

    train, val = Cityscapes(out, "train"), Cityscapes(out, "val")
    assert (len(train), len(val)) == (2, 1)
    image, label = val[0]
    assert image.shape == (3, 64, 128) and label.shape == (64, 128)
    for args, message in ((["--size", "10x20"], "--size"), (["--domain", "sunny"], "--domain")):
        proc = subprocess.run([sys.executable, "-m", "mmseq.cli", "data", "make", "street-scenes",
                               str(tmp_path / "x"), *args], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    # an existing non-empty folder is never written over
    proc = subprocess.run([sys.executable, "-m", "mmseq.cli", "data", "make", "street-scenes", str(out), "--n", "1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
