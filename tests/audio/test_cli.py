"""`mmseq data make keywords` through the command line parser (in-process)."""

import json
import shutil

import pytest
import soundfile as sf

from mmseq.audio.labels import SC10
from mmseq.cli import main


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (make system-deps)")
def test_data_make_keywords_writes_a_speech_commands_tree(tmp_path, capsys):
    out = tmp_path / "kw"
    assert main(["data", "make", "keywords", str(out), "--words", "sc10", "--per-word", "2", "--engines",
                 "espeak", "--jobs", "1", "--seed", "3", "--noise-seconds", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clips"] == 20 and summary["engines"]["espeak"]["clips"] == 20
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("_")) == sorted(SC10)
    assert len(list(out.glob("*/*_nohash_*.wav"))) == 20
    assert (out / "validation_list.txt").is_file() and (out / "testing_list.txt").is_file()
    noise = sorted((out / "_background_noise_").glob("*.wav"))
    assert noise and all(sf.info(p).duration == pytest.approx(2.0) for p in noise)
    # A second run into the same folder is refused; nothing there is touched.
    before = sorted(p.name for p in out.rglob("*"))
    assert main(["data", "make", "keywords", str(out), "--words", "sc10"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == before


def test_keyword_options_are_refused_for_other_datasets(tmp_path, capsys):
    assert main(["data", "make", "mqar", str(tmp_path / "m"), "--per-word", "3"]) == 2
    assert "--per-word" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_unknown_engine_is_one_clear_error(tmp_path, capsys):
    assert main(["data", "make", "keywords", str(tmp_path / "k"), "--engines", "espeak,sapi"]) == 2
    err = capsys.readouterr().err
    assert "sapi" in err and len(err.strip().splitlines()) == 1
