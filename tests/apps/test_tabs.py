"""Each demo tab's functions called directly, with good and bad inputs (no browser, no server)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from mmseq.apps.common import Settings, examples_dir
from PIL import Image

SCENE = examples_dir() / "street_scene.png"
PHANTOM = examples_dir() / "chest_phantom.nii.gz"
CLIP = examples_dir() / "keywords.wav"


def _is_error(status: str, *needles: str) -> bool:
    import html

    text = html.unescape(status or "")
    return "mmseq-error" in text and all(n in text for n in needles) and "Traceback" not in text


def test_examples_ship_small_and_deterministic():
    files = [SCENE, PHANTOM, CLIP]
    assert all(f.is_file() for f in files)
    assert sum(f.stat().st_size for f in files) < 2_000_000
    from mmseq.vision.scenes import render_scene

    assert np.array_equal(np.asarray(Image.open(SCENE)), render_scene(7, 3, "realistic", (256, 512))[0])


# ------------------------------------------------------------------------------------------------------ vision


@pytest.fixture(scope="module")
def vision(tiny_segmenter):
    from mmseq.apps.vision import VisionDemo

    return VisionDemo(Settings(checkpoints={"vision": str(tiny_segmenter)}))


def test_vision_segments_the_example(vision):
    from mmseq.vision.labels import CLASSES

    image, over, shares, status, seg = vision.on_upload(str(SCENE), 0.5)
    assert "mmseq-ok" in status and "street_scene.png (256 x 512 pixels)" in status
    assert image.shape == over.shape == (256, 512, 3) and image.dtype == over.dtype == np.uint8
    assert seg.ids.shape == (256, 512) and int(seg.ids.max()) < len(CLASSES)
    assert abs(sum(seg.shares.values()) - 1) < 1e-6
    for name, share in seg.shares.items():
        assert f"<td>{name}</td><td class=\"mmseq-num\">{100 * share:.1f}%</td>" in shares
    # the opacity slider redraws from the kept result: 0 is the image itself, 1 the class colours
    from mmseq.vision.labels import colorize

    assert np.array_equal(vision.on_opacity(seg, 0.0), image)
    assert np.array_equal(vision.on_opacity(seg, 1.0), colorize(seg.ids))
    assert vision.on_opacity(None, 0.5) is None


def test_vision_legend_has_every_class():
    from mmseq.apps.vision import legend_html

    from mmseq.vision.labels import CLASSES, PALETTE

    legend = legend_html()
    for name, color in zip(CLASSES, PALETTE, strict=True):
        assert f"rgb{color}" in legend and f"</span>{name}</span>" in legend


def test_vision_scales_down_large_images(vision, tmp_path, monkeypatch):
    import mmseq.vision.cli as vision_cli

    monkeypatch.setattr(vision_cli, "segment_image", lambda model, image: np.zeros(image.shape[:2], np.uint8))
    big = tmp_path / "wide.jpg"
    Image.fromarray(np.full((300, 1500, 3), 90, np.uint8)).save(big)
    image, over, _, status, _ = vision.on_upload(str(big), 0.5)
    assert "(300 x 1500 pixels, shown at 205 x 1024)" in status
    assert over.shape == (205, 1024, 3)


@pytest.mark.parametrize(("name", "needle"), [
    ("not_an_image.png", "not_an_image.png is not an image"),
    ("empty.png", "empty.png is empty"),
    ("notes.txt", "notes.txt: not an image (accepted: .png"),
])
def test_vision_bad_files_give_a_message(vision, fakes, name, needle):
    out = vision.on_upload(str(fakes[name]), 0.5)
    assert _is_error(out[3], needle), out[3]
    assert str(fakes[name].parent) not in out[3]  # the server's folders are not shown
    assert out[0] is None and out[1] is None and out[4] is None


def test_vision_without_a_model_says_so(monkeypatch, tmp_path):
    from mmseq.apps.vision import VisionDemo

    import mmseq.commands

    monkeypatch.setattr(mmseq.commands, "shipped_model_dir", lambda name: tmp_path / "missing")
    out = VisionDemo(Settings()).on_upload(str(SCENE), 0.5)
    assert _is_error(out[3], "no segmentation model ships with this installation")


def test_upload_size_limit(tiny_segmenter, tmp_path):
    from mmseq.apps.vision import VisionDemo

    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(big)
    demo = VisionDemo(Settings(max_file_mb=0.1, checkpoints={"vision": str(tiny_segmenter)}))
    assert _is_error(demo.on_upload(str(big), 0.5)[3], "big.png is 0.5 MB, over this demo's 0.1 MB limit")


def test_unexpected_failures_are_one_line(vision, monkeypatch):
    def boom(path):
        raise RuntimeError("shape mismatch\n  deep inside")

    monkeypatch.setattr(vision, "segment", boom)
    out = vision.on_upload(str(SCENE), 0.5)
    assert _is_error(out[3], "could not process this input (RuntimeError: shape mismatch deep inside)")


# ----------------------------------------------------------------------------------------------------- medical


@pytest.fixture(scope="module")
def medical():
    from mmseq.apps.medical import MedicalDemo

    return MedicalDemo(Settings())


@pytest.fixture(scope="module")
def phantom_outputs(medical):
    return medical.on_upload(str(PHANTOM), "lung", 50, 50, 50)


def test_medical_tokenizes_and_reconstructs_the_example(medical, phantom_outputs):
    axial, coronal, sagittal, stats, status, result, pending = phantom_outputs
    assert "mmseq-ok" in status and "Tokenized chest_phantom.nii.gz into 3,468 tokens" in status
    assert result.grid.shape == result.recon.shape == (45, 68, 68)  # the 4 mm grid of a 60 x 96 x 96 input
    assert result.token_grid == (12, 17, 17) and result.n_tokens == 3468
    ratio_input, ratio_grid = result.compression()
    assert ratio_input == pytest.approx(16 * 60 * 96 * 96 / (3468 * 10))
    assert ratio_grid == pytest.approx(16 * 45 * 68 * 68 / (3468 * 10))
    assert f"<b>{ratio_input:.0f}x</b>" in stats and "<b>3,468</b>" in stats
    psnr, mae = result.psnr_mae()
    assert psnr > 20 and mae < 150  # the shipped tokenizer reconstructs its own phantoms well
    for view in (axial, coronal, sagittal):  # input | reconstruction | error, side by side
        assert view.ndim == 3 and view.shape[2] == 3 and view.dtype == np.uint8
    assert "Writing the report" in pending


def test_medical_processes_a_volume_once(medical, phantom_outputs, monkeypatch):
    import mmseq.medical.tokens as tokens

    def fail(*a, **k):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(tokens, "tokenize_volume", fail)
    result = phantom_outputs[5]
    assert medical.process(str(PHANTOM)) is result  # same content: the cached result
    # moving a slider or a window preset redraws from the kept arrays
    lung = medical.on_view(result, "lung", 30, 50, 50)
    bone = medical.on_view(result, "bone", 30, 50, 50)
    assert not np.array_equal(lung[0], bone[0])
    assert not np.array_equal(lung[0], phantom_outputs[0])  # another axial slice
    assert medical.on_view(None, "lung", 50, 50, 50) == (None, None, None)


def test_medical_views_are_oriented(medical):
    from mmseq.apps.medical import CTResult, draw_view

    grid = np.full((20, 30, 40), -1000.0, np.float32)
    grid[15:, :5, :5] = 1000.0  # superior, patient's right, anterior corner
    r = CTResult("x", grid, grid.copy(), (4.0, 4.0, 4.0), (20, 30, 40), (4.0, 4.0, 4.0), (5, 8, 10), 10, None)
    bright = lambda img: img[..., 0] > 200  # noqa: E731
    ax = draw_view(r, "axial", 100, "bone")  # top slice: rows anterior -> posterior, columns right -> left
    panel = ax[:, :165]
    assert ax.shape == (220, 3 * 165 + 2 * 4, 3)  # 40 x 30 voxels of 4 mm, 5.5 pixels each; 4-pixel gaps
    assert bright(panel)[16:26, 2:25].all() and not bright(panel)[30:, 30:].any()
    co = draw_view(r, "coronal", 0, "bone")[:, :330]  # superior at the top, patient's right on the left
    assert bright(co)[20:50, 5:50].all() and not bright(co)[60:, :].any() and not bright(co)[:, 60:].any()


def test_medical_report_highlights_findings(medical, phantom_outputs):
    result = phantom_outputs[5]
    html = medical.on_report(result)
    text, findings = medical.report(result)
    assert text and result.report == text
    for name in findings:
        assert f'<span class="mmseq-chip">{name}</span>' in html
    assert ('<mark class="mmseq-finding">' in html) == bool(findings)


def test_report_html_marks_stated_and_ruled_out_findings():
    from mmseq.apps.medical import report_html

    html = report_html("Small left pleural effusion. No lung nodule <was> seen.", ["Pleural effusion"])
    assert '<mark class="mmseq-finding">pleural effusion</mark>' in html
    assert '<mark class="mmseq-negated">' in html and "nodule" in html
    assert "&lt;was&gt;" in html  # the report's text is escaped
    assert '<span class="mmseq-chip">Pleural effusion</span>' in html


def _write_dicom_zip(path, hu):
    """``hu [K, R, C]`` as a DICOM series (4 mm voxels) zipped under hostile member names."""
    from tests.medical._writers import write_dicom_series

    folder = write_dicom_series(path.parent / "series", hu, spacing=(4.0, 4.0, 4.0), origin=(0.0, 0.0, 0.0))
    with zipfile.ZipFile(path, "w") as z:
        for k, f in enumerate(sorted(folder.iterdir())):
            z.write(f, f"series/../../IM{k:03d}")  # a hostile name is flattened, never followed


def test_medical_reads_a_zipped_dicom_series(medical, tmp_path):
    hu = np.full((12, 40, 40), -1000, np.int16)
    hu[:, 10:30, 10:30] = 40
    _write_dicom_zip(tmp_path / "series.zip", hu)
    _, _, _, stats, status, result, _ = medical.on_upload(str(tmp_path / "series.zip"), "mediastinum", 50, 50, 50)
    assert "mmseq-ok" in status, status
    assert result.source_shape == (12, 40, 40) and "12 x 40 x 40 voxels" in stats


@pytest.mark.parametrize(("name", "needle"), [
    ("not_a_volume.nii.gz", "not_a_volume.nii.gz is not a readable NIfTI file"),
    ("not_a_volume.nii", "not_a_volume.nii"),
    ("not_a_series.zip", "not_a_series.zip is not a readable zip archive"),
    ("notes.txt", "notes.txt: not a CT volume"),
])
def test_medical_bad_files_give_a_message(fakes, name, needle):
    from mmseq.apps.medical import MedicalDemo

    out = MedicalDemo(Settings()).on_upload(str(fakes[name]))
    assert _is_error(out[4], needle), out[4]
    assert out[5] is None


def test_medical_refuses_zips_that_expand_too_far(tmp_path):
    from mmseq.apps.medical import MedicalDemo

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.dcm", b"\0" * 3 * 2**20)
    out = MedicalDemo(Settings(max_unzipped_mb=1)).on_upload(str(bomb))
    assert _is_error(out[4], "bomb.zip expands to 3 MB, over the 1 MB limit")


# ------------------------------------------------------------------------------------------------------- audio


@pytest.fixture(scope="module")
def audio():
    from mmseq.apps.audio import AudioDemo

    return AudioDemo(Settings())


def test_audio_classifies_the_example_and_draws_a_timeline(audio):
    signal, top, timeline, status = audio.on_upload(str(CLIP))
    assert "mmseq-ok" in status and "keywords.wav: seven" in status
    assert list(top)[0] == "seven" and len(top) == 5 and sum(top.values()) <= 1.0 + 1e-6
    assert signal.ndim == 3 and timeline.ndim == 3
    r = audio.classify(str(CLIP))
    labels = [lab for _, lab, _ in r.timeline]
    assert len(labels) == 42  # one answer per 0.1 s chunk of the 4.17 s clip
    # the example says "yes", "stop", "seven" at about 0.3, 1.6 and 2.9 s
    at = lambda t: labels[round(t * 10) - 1]  # noqa: E731
    assert (at(0.6), at(2.2), at(3.4)) == ("yes", "stop", "seven")


def test_audio_short_clip_has_no_timeline(audio, tmp_path):
    import soundfile as sf

    wave, sr = sf.read(str(CLIP))
    short = tmp_path / "short.flac"
    sf.write(str(short), wave[int(2.6 * sr): int(3.5 * sr)], sr)  # "seven" alone, 0.9 s
    signal, top, timeline, status = audio.on_upload(str(short))
    assert list(top)[0] == "seven" and timeline is None and "Over time" not in status


def test_stream_timeline_equals_streaming_the_model(audio):
    """The timeline is what model.stream answers chunk by chunk (streams restarted every half window)."""
    from mmseq.apps.audio import stream_timeline

    from mmseq.audio.io import load_audio

    model = audio.model.get()
    wave = load_audio(CLIP, model.sample_rate)[:28000]
    chunk, life, half = 1600, 16000, 8000
    streams, expected = [], []
    for pos in range(0, wave.shape[0], chunk):
        if not streams or pos - streams[-1][0] >= half:
            streams.append([pos, model.init_stream(1), None])
        piece = wave[pos:pos + chunk][None]
        for s in streams:
            logits, s[1] = model.stream(piece, s[1])
            s[2] = logits if logits is not None else s[2]
        end = pos + piece.shape[1]
        if streams[0][2] is not None:
            p = streams[0][2][0].softmax(-1)
            expected.append((end / model.sample_rate, model.labels[int(p.argmax())], float(p.max())))
        if end - streams[0][0] >= life and len(streams) > 1:
            streams.pop(0)
    got = stream_timeline(model, wave)
    assert [(t, lab) for t, lab, _ in got] == [(t, lab) for t, lab, _ in expected]
    assert np.allclose([p for *_, p in got], [p for *_, p in expected], atol=1e-4)


@pytest.mark.parametrize(("name", "needle"), [
    ("not_a_clip.wav", "not_a_clip.wav is not a readable audio file"),
    ("notes.txt", "notes.txt: not an audio clip"),
])
def test_audio_bad_files_give_a_message(audio, fakes, name, needle):
    out = audio.on_upload(str(fakes[name]))
    assert _is_error(out[3], needle), out[3]
    assert out[0] is None and out[1] is None


def test_audio_length_limit():
    from mmseq.apps.audio import AudioDemo

    out = AudioDemo(Settings(max_audio_seconds=2)).on_upload(str(CLIP))
    assert _is_error(out[3], "keywords.wav")


def test_no_input_clears_the_outputs(vision, audio):
    assert vision.on_upload(None, 0.5) == (None, None, "", "", None)
    assert audio.on_upload(None) == (None, None, None, "")
