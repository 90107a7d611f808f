"""``mmseq tokenize-ct SET -o OUT --devices N``: N processes through Lightning's predict loop make the same token
files and index as one, resume a partly done folder, and split any count of volumes without loss or overlap.

One two-process run from the ``mmseq`` command (DDP start-up is slow on a few cores) serves every test here."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmseq.cli import main
from mmseq.medical.tokenizer import CTTokenizer
from mmseq.medical.tokens import CTTokens
from mmseq.medical.tokens_ddp import RankStrided

from .conftest import TINY_PHANTOMS

TINY = {"filters": 8, "channel_multipliers": [1, 2], "temporal_downsample": [True], "num_res_blocks": 1,
        "token_bits": 6, "norm_groups": 4}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """A CSV of 5 phantoms and one unreadable file, tokenized by one process and, into a folder already holding
    one of the token files, by two processes (5 still to do: an odd count) with a loader worker each."""
    from mmseq.medical.phantoms import make_ct_phantoms

    root = tmp_path_factory.mktemp("tokenize_parallel")
    make_ct_phantoms(root / "phantoms", n=5, seed=0, progress=False, **TINY_PHANTOMS)
    volumes = sorted((root / "phantoms").rglob("*.nii.gz"))
    broken = root / "broken.nii.gz"
    broken.write_bytes(b"not a volume")
    listing = root / "volumes.csv"
    with listing.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path"])
        writer.writerows([str(p)] for p in [*volumes[:2], broken, *volumes[2:]])
    torch.manual_seed(0)
    tokenizer = root / "tokenizer"
    CTTokenizer(**TINY, preprocess={"spacing": [6.0, 6.0, 6.0]}).save_pretrained(tokenizer)

    one, two = root / "one", root / "two"
    assert main(["tokenize-ct", str(listing), "-o", str(one), "--checkpoint", str(tokenizer)]) == 2  # the broken one
    done = sorted(one.glob("*.safetensors"))[1]
    two.mkdir()
    shutil.copy2(done, two / done.name)
    before = os.stat(two / done.name)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([str(Path(sys.executable).with_name("mmseq")), "tokenize-ct", str(listing), "-o", str(two),
                        "--checkpoint", str(tokenizer), "--devices", "2", "--accelerator", "cpu", "--num-workers", "1"],
                       capture_output=True, text=True, timeout=600, env=env)
    return {"one": one, "two": two, "run": r, "done": done.name, "before": before, "n": 6}


def test_two_processes_make_the_same_files_as_one(runs):
    r = runs["run"]
    assert r.returncode == 2, r.stderr[-3000:]  # the unreadable file, as with one process
    one, two = runs["one"], runs["two"]
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir())  # no temporary file left behind either
    assert len(names) == runs["n"]  # 5 token files and index.csv
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
        if name.endswith(".safetensors"):
            assert torch.equal(CTTokens.load(one / name).ids, CTTokens.load(two / name).ids)


def test_the_index_lists_each_volume_once_with_its_error(runs):
    with (runs["two"] / "index.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len({row["source"] for row in rows}) == runs["n"]
    assert [row["status"] == "ok" for row in rows] == [True, True, False, True, True, True]
    assert rows[2]["status"].startswith("error: ") and rows[2]["tokens"] == ""


def test_a_partly_done_folder_resumes_with_the_rest(runs):
    summary = json.loads(runs["run"].stdout)  # stdout is the summary alone: the progress bar is on stderr
    assert summary == {"volumes": 6, "tokenized": 4, "skipped_existing": 1, "failed": 1,
                       "index": str(runs["two"] / "index.csv")}
    after = os.stat(runs["two"] / runs["done"])
    assert (after.st_ino, after.st_mtime_ns) == (runs["before"].st_ino, runs["before"].st_mtime_ns)


@pytest.mark.parametrize("n", [0, 1, 2, 5, 7])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_share_any_count_without_padding(n, world):
    shares = [list(RankStrided(n, rank, world)) for rank in range(world)]
    assert sorted(i for share in shares for i in share) == list(range(n))
    assert [len(share) for share in shares] == [len(RankStrided(n, rank, world)) for rank in range(world)]


@pytest.mark.parametrize("options, fragment", [
    (["--devices", "0"], "argument --devices: must be >= 1, got 0"),
    (["--devices", "two"], "argument --devices: expected a whole number >= 1, got 'two'"),
    (["--accelerator", "tpu"], "argument --accelerator: invalid choice: 'tpu'"),
    (["--num-workers", "-1"], "argument --num-workers: must be >= 0, got -1"),
    pytest.param(["--accelerator", "gpu"], "--accelerator gpu: torch sees no CUDA device here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")),
])
def test_bad_options_are_one_line(options, fragment, runs, capsys):
    listing = runs["one"].parent / "volumes.csv"
    assert main(["tokenize-ct", str(listing), "-o", str(runs["one"].parent / "bad"), *options]) == 2
    err = capsys.readouterr().err
    assert fragment in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not (runs["one"].parent / "bad").exists()


def test_one_volume_takes_no_device_options(runs, capsys):
    volume = next((runs["one"].parent / "phantoms").rglob("*.nii.gz"))
    assert main(["tokenize-ct", str(volume), "-o", str(runs["one"].parent / "v.safetensors"), "--devices", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--devices applies to a data set" in err and len(err.splitlines()) == 1
