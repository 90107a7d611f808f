"""Re-create the demo's shipped examples (deterministic; run from the repository root):

    .venv/bin/python apps/examples/make_examples.py

street_scene.png      built-in street scene (seed 7, scene 3, realistic domain), 256 x 512
chest_phantom.nii.gz  built-in chest-CT phantom (seed 1) with cardiomegaly and a pleural effusion, 60 x 96 x 96
                      voxels, int16 HU in the canonical (S, L, P) layout
keywords.wav          "yes", "stop", "seven" spoken by espeak-ng with pauses, 16 kHz mono, 16-bit
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SAMPLE_RATE = 16000
WORDS = ("yes", "stop", "seven")


def make_scene(out: Path) -> None:
    from PIL import Image

    from mmseq.vision.scenes import render_scene

    image, _ = render_scene(7, 3, "realistic", (256, 512))
    Image.fromarray(image).save(out, format="PNG", optimize=True)


def make_phantom(out: Path) -> None:
    import nibabel as nib

    from mmseq.medical.phantoms import render_phantom

    hu, info = render_phantom(1, ["Cardiomegaly", "Pleural effusion"], slices=(60, 60), slice_mm=(3.0, 3.0),
                              pixels=(96, 96), noise_hu=(8.0, 8.0))
    sz, sx, sy = info["spacing"]
    oz, ox, oy = info["origin_mm"]
    # array axes (D, H, W) point to (S, L, P): RAS+ columns (0, 0, sz), (-sx, 0, 0), (0, -sy, 0)
    affine = np.array([[0.0, -sx, 0.0, -ox], [0.0, 0.0, -sy, -oy], [sz, 0.0, 0.0, oz], [0.0, 0.0, 0.0, 1.0]])
    img = nib.Nifti1Image(np.clip(np.rint(hu), -1024, 3071).astype(np.int16), affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(out))


def make_keywords(out: Path) -> None:
    import soundfile as sf
    import torch

    from mmseq.audio.io import resample
    from mmseq.audio.synth import EspeakEngine

    engine = EspeakEngine()
    if not engine.available():
        sys.exit("espeak-ng is not installed (apt-get install espeak-ng)")
    voice = next(v for v in engine.voices() if v.base == "en-us+m3")
    gap = np.zeros(int(0.6 * SAMPLE_RATE), dtype=np.float32)
    parts = [gap[: SAMPLE_RATE // 4]]
    for word in WORDS:
        wave, sr = engine.synthesize(word, voice, rate=1.0, pitch=0.0)
        wave = resample(torch.from_numpy(np.asarray(wave, dtype=np.float32)), int(sr), SAMPLE_RATE).numpy()
        parts += [0.7 * wave / max(1e-6, float(np.abs(wave).max())), gap]
    rng = np.random.default_rng(0)
    clip = np.concatenate(parts)
    clip = clip + rng.normal(0.0, 0.002, clip.shape).astype(np.float32)
    sf.write(str(out), np.clip(clip, -1, 1), SAMPLE_RATE, subtype="PCM_16")


if __name__ == "__main__":
    make_scene(HERE / "street_scene.png")
    make_phantom(HERE / "chest_phantom.nii.gz")
    make_keywords(HERE / "keywords.wav")
    for p in sorted(HERE.iterdir()):
        print(f"{p.name:24s} {p.stat().st_size:>9,d} bytes")
