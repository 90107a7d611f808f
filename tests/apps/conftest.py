"""Shared pieces of the demo tests: a tiny random segmentation model and files that pretend to be something else."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vision._helpers import TINY_MFUSER

pytest.importorskip("gradio", reason="the demos need the apps extra: pip install -e '.[apps]'")


@pytest.fixture(scope="session")
def tiny_segmenter(tmp_path_factory) -> Path:
    """A model folder (config.yaml + model.safetensors) of a tiny random MFuser."""
    import warnings

    import torch

    from mmseq.vision.model import MFuser

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no pretrained weights: random init"
        model = MFuser(**TINY_MFUSER)
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
