"""The medical verbs end to end on generated phantoms and on a DICOM series written by the test."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mmseq.cli import main
from mmseq.medical.ctrate import CTRate
from mmseq.medical.io import load_ct
from mmseq.medical.report_model import ReportGenerator, train_bpe
from mmseq.medical.tokenizer import CTTokenizer
from mmseq.medical.tokens import CTTokens

TINY = {"filters": 8, "channel_multipliers": [1, 2], "temporal_downsample": [True], "num_res_blocks": 1,
        "token_bits": 6, "norm_groups": 4}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from mmseq.medical.phantoms import make_ct_phantoms

    root = tmp_path_factory.mktemp("ct") / "phantoms"
    make_ct_phantoms(root, n=6, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    CTTokenizer(**TINY, preprocess={"spacing": [6.0, 6.0, 6.0]}).save_pretrained(out)
    return out


def _first_volume(root: Path) -> dict:
    return CTRate(root, "train")[0]


def test_tokenize_then_detokenize_keeps_the_geometry(phantoms, tokenizer_dir, tmp_path, capsys):
    item = _first_volume(phantoms)
    tokens = tmp_path / "t.safetensors"
    assert main(["tokenize-ct", str(item["path"]), "-o", str(tokens), "--checkpoint", str(tokenizer_dir),
                 "--slope", str(item["slope"]), "--intercept", str(item["intercept"])]) == 0
    t = CTTokens.load(tokens)
    tokenizer = CTTokenizer.from_pretrained(tokenizer_dir)
    source = load_ct(item["path"], slope=item["slope"], intercept=item["intercept"])
    assert t.ids.shape == tokenizer.latent_shape(*[tokenizer.valid_depth(t.shape[0]), *[
        -(-n // tokenizer.spatial_factor) * tokenizer.spatial_factor for n in t.shape[1:]]])
    assert t.ids.max() < 2 ** 6 and t.token_bits == 6
    out = tmp_path / "back.nii.gz"
    assert main(["detokenize-ct", str(tokens), "-o", str(out), "--checkpoint", str(tokenizer_dir)]) == 0
    back, src = nib.load(out), nib.load(item["path"])
    # Written in the input's axis order and world position, on the tokenizer's 6 mm grid.
    assert nib.aff2axcodes(back.affine) == nib.aff2axcodes(src.affine)
    np.testing.assert_allclose(np.abs(np.diag(back.affine)[:3]), [6.0, 6.0, 6.0], rtol=1e-6)
    np.testing.assert_allclose(back.affine[:3, 3], src.affine[:3, 3], atol=6.0)
    assert back.shape == tuple(t.shape[i] for i in (1, 2, 0)) or back.shape[2] == t.shape[0]
    assert load_ct(out).array.shape == t.shape
    assert source.array.shape[0] > t.shape[0]  # 6 mm slices: fewer than the source's
    capsys.readouterr()
    # Nothing is overwritten silently.
    assert main(["detokenize-ct", str(tokens), "-o", str(out), "--checkpoint", str(tokenizer_dir)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_tokens_do_not_depend_on_the_window(phantoms, tokenizer_dir, tmp_path):
    item = _first_volume(phantoms)
    ids = []
    for window in (1, 4, 64):
        out = tmp_path / f"w{window}.safetensors"
        assert main(["tokenize-ct", str(item["path"]), "-o", str(out), "--checkpoint", str(tokenizer_dir),
                     "--intercept", str(item["intercept"]), "--slope", "1", "--window", str(window)]) == 0
        ids.append(CTTokens.load(out).ids)
    assert torch.equal(ids[0], ids[1]) and torch.equal(ids[1], ids[2])


def test_a_whole_ctrate_folder_resumes(phantoms, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "tokens"
    assert main(["tokenize-ct", str(phantoms), "-o", str(out), "--checkpoint", str(tokenizer_dir)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["volumes"] == 6 and first["tokenized"] == 6 and first["failed"] == 0
    made = sorted(p.name for p in out.glob("*.safetensors"))
    names = {CTRate(phantoms, s).names[i] for s in ("train", "valid") for i in range(len(CTRate(phantoms, s)))}
    assert made == sorted(n.removesuffix(".nii.gz") + ".safetensors" for n in names)
    with (out / "index.csv").open() as f:
        assert {r["status"] for r in csv.DictReader(f)} == {"ok"}
    # Each volume was read with its metadata row's rescale values (-1024 or -8192): the same ids as tokenizing
    # that one file with its intercept given by hand; without it they differ.
    item = _first_volume(phantoms)
    one, raw = tmp_path / "one.safetensors", tmp_path / "raw.safetensors"
    assert main(["tokenize-ct", str(item["path"]), "-o", str(one), "--checkpoint", str(tokenizer_dir),
                 "--intercept", str(item["intercept"]), "--slope", str(item["slope"])]) == 0
    assert main(["tokenize-ct", str(item["path"]), "-o", str(raw), "--checkpoint", str(tokenizer_dir),
                 "--intercept", "0", "--slope", "1"]) == 0
    capsys.readouterr()
    folder_ids = CTTokens.load(out / (item["name"].removesuffix(".nii.gz") + ".safetensors")).ids
    assert torch.equal(folder_ids, CTTokens.load(one).ids)
    assert not torch.equal(folder_ids, CTTokens.load(raw).ids)
    (out / made[0]).unlink()
    assert main(["tokenize-ct", str(phantoms), "-o", str(out), "--checkpoint", str(tokenizer_dir)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["tokenized"] == 1 and again["skipped_existing"] == 5
    assert not list(out.glob(".*.tmp"))  # no half-written file


def test_tokenize_a_dicom_series(tokenizer_dir, tmp_path, write_dicom_series, capsys):
    hu = np.full((9, 24, 24), -1000.0, dtype=np.float32)
    hu[:, 6:18, 6:18] = 40.0
    folder = tmp_path / "series"
    write_dicom_series(folder, hu, spacing=(5.0, 2.0, 2.0), slope=1.0, intercept=-1024.0)
    out = tmp_path / "d.safetensors"
    assert main(["tokenize-ct", str(folder), "-o", str(out), "--checkpoint", str(tokenizer_dir)]) == 0
    t = CTTokens.load(out)
    assert t.source == "series" and t.ids.dim() == 3


def test_report_ct_writes_a_report_with_findings(phantoms, tokenizer_dir, tmp_path, capsys):
    texts = [CTRate(phantoms, "train").report(i) for i in range(3)]
    torch.manual_seed(0)
    reporter = ReportGenerator(train_bpe(texts, vocab_size=300, min_frequency=1), token_bits=6, d_model=16,
                               n_layers=1, mixer={"name": "attention", "n_heads": 2}, prefix_grid=(1, 2, 2),
                               max_report_tokens=12)
    reporter.save_pretrained(tmp_path / "reporter")
    item = _first_volume(phantoms)
    argv = ["report-ct", str(item["path"]), "--checkpoint", str(tmp_path / "reporter"), "--tokenizer",
            str(tokenizer_dir), "--intercept", str(item["intercept"]), "--slope", "1", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)  # stdout holds the JSON alone
    assert set(out) == {"input", "report", "findings"} and isinstance(out["report"], str)


def test_report_ct_json_gives_the_label_heads_probabilities(phantoms, tokenizer_dir, tmp_path, capsys):
    from mmseq.medical.ctrate import ABNORMALITIES
    from mmseq.medical.tokens import CTTokens

    texts = [CTRate(phantoms, "train").report(i) for i in range(3)]
    torch.manual_seed(0)
    reporter = ReportGenerator(train_bpe(texts, vocab_size=300, min_frequency=1), token_bits=6, d_model=16,
                               n_layers=1, mixer={"name": "attention", "n_heads": 2}, prefix_grid=(1, 2, 2),
                               max_report_tokens=12, encoder="bag", label_prompt=True)
    reporter.save_pretrained(tmp_path / "reporter")
    item = _first_volume(phantoms)
    tokens = tmp_path / "t.safetensors"
    assert main(["tokenize-ct", str(item["path"]), "-o", str(tokens), "--checkpoint", str(tokenizer_dir),
                 "--intercept", str(item["intercept"]), "--slope", "1"]) == 0
    capsys.readouterr()
    assert main(["report-ct", str(tokens), "--checkpoint", str(tmp_path / "reporter"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["probabilities"]) == list(ABNORMALITIES)
    want = reporter.eval().predict_labels(CTTokens.load(tokens).codes()[None])[0]
    assert [round(float(v), 4) for v in want] == list(out["probabilities"].values())


@pytest.mark.parametrize("argv, fragment", [
    (["tokenize-ct", "nosuch.nii.gz", "-o", "x.safetensors"], "no such file or folder"),
    (["detokenize-ct", "nosuch.safetensors", "-o", "x.nii.gz"], "no such token file"),
    (["report-ct", "nosuch.nii.gz"], "no such file or folder"),
])
def test_missing_inputs_are_one_line(argv, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1


def test_not_a_token_file_is_one_line(tmp_path, tokenizer_dir, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    assert main(["detokenize-ct", str(bad), "-o", str(tmp_path / "o.nii.gz"), "--checkpoint",
                 str(tokenizer_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unreadable or truncated" in err and len(err.splitlines()) == 1


def _token_file(phantoms, tokenizer_dir, tmp_path, capsys) -> Path:
    item = _first_volume(phantoms)
    tokens = tmp_path / "t.safetensors"
    assert main(["tokenize-ct", str(item["path"]), "-o", str(tokens), "--checkpoint", str(tokenizer_dir),
                 "--intercept", str(item["intercept"]), "--slope", "1"]) == 0
    capsys.readouterr()
    return tokens


def _reporter_dir(phantoms, tmp_path, n_layers: int) -> Path:
    texts = [CTRate(phantoms, "train").report(i) for i in range(3)]
    torch.manual_seed(0)
    reporter = ReportGenerator(train_bpe(texts, vocab_size=300, min_frequency=1), token_bits=6, d_model=16,
                               n_layers=n_layers, mixer={"name": "attention", "n_heads": 2}, prefix_grid=(1, 2, 2),
                               max_report_tokens=24)
    reporter.save_pretrained(tmp_path / f"reporter{n_layers}")
    return tmp_path / f"reporter{n_layers}"


@pytest.mark.parametrize("kind", ["window", "lacache"])
def test_report_ct_with_a_bounded_kv_cache(phantoms, tokenizer_dir, tmp_path, capsys, kind):
    """A budget that holds the whole decoding gives the full cache's report; a small one still writes one."""
    tokens = _token_file(phantoms, tokenizer_dir, tmp_path, capsys)
    reporter = str(_reporter_dir(phantoms, tmp_path, 2))
    assert main(["report-ct", str(tokens), "--checkpoint", reporter, "--json"]) == 0
    full = json.loads(capsys.readouterr().out)["report"]
    for reposition in ([], ["--kv-reposition"]):
        assert main(["report-ct", str(tokens), "--checkpoint", reporter, "--json", "--kv-cache", kind,
                     "--kv-budget", "40", *reposition]) == 0
        assert json.loads(capsys.readouterr().out)["report"] == full
    assert main(["report-ct", str(tokens), "--checkpoint", reporter, "--json", "--kv-cache", kind,
                 "--kv-budget", "12"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out)["report"], str)


@pytest.mark.parametrize("layers, extra, fragment", [
    (2, ["--kv-cache", "window", "--kv-budget", "5"], "budget must exceed sinks"),
    (1, ["--kv-cache", "lacache"], "at least 2 attention layers"),
    (2, ["--kv-cache", "lacache", "--kv-span", "2"], "span must be < n_layers"),
])
def test_report_ct_bad_kv_cache_options_are_one_line(phantoms, tokenizer_dir, tmp_path, capsys, layers, extra,
                                                      fragment):
    tokens = _token_file(phantoms, tokenizer_dir, tmp_path, capsys)
    reporter = str(_reporter_dir(phantoms, tmp_path, layers))
    assert main(["report-ct", str(tokens), "--checkpoint", reporter, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "--kv-cache" in err and len(err.splitlines()) == 1
