"""Shared pieces of the demo tests: a tiny random segmentation model and files that pretend to be something else."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the demos need the apps extra: pip install -e '.[apps]'")

# A random MFuser small enough to build and run in seconds (as tests/vision/test_task.py's TINY_MODEL).
TINY_SEGMENTER = {
    "dinov2": {"model_name": "vit_small_patch14_dinov2", "frozen": False, "embed_dim": 32, "depth": 2,
               "num_heads": 2},
    "clip": {"frozen": False, "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 112, "layers": 2, "width": 32, "head_width": 16, "patch_size": 14},
        "text_cfg": {"context_length": 13, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}},
    "img_size": 112,
    "fuser": {"d_state": 4, "dropout": 0.0},
    "enhancer": {"width": 16, "num_heads": 2, "dropout": 0.0},
    "head": {"name": "light", "hidden_dim": 32, "num_heads": 2},
}


@pytest.fixture(scope="session")
def tiny_segmenter(tmp_path_factory) -> Path:
    """A model folder (config.yaml + model.safetensors) of a tiny random MFuser."""
    import warnings

    import torch

    from mmseq.vision.model import MFuser

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no pretrained weights: random init"
        model = MFuser(**TINY_SEGMENTER)
    out = tmp_path_factory.mktemp("tiny_segmenter")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def fakes(tmp_path_factory) -> dict[str, Path]:
    """Text files named like an image, a volume, a clip and a zip, and an empty image."""
    root = tmp_path_factory.mktemp("fakes")
    text = "this is a text file, not what its name says\n" * 20
    out = {}
    for name in ("not_an_image.png", "not_a_volume.nii.gz", "not_a_volume.nii", "not_a_clip.wav",
                 "not_a_series.zip", "notes.txt"):
        (root / name).write_text(text)
        out[name] = root / name
    (root / "empty.png").write_bytes(b"")
    out["empty.png"] = root / "empty.png"
    return out
