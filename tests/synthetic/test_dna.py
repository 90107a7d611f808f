"""DNA tasks: the FASTA reader (plain, gzipped, bad files), the synthetic genome's planted motifs found by a
brute-force string search, windows labelled as a brute-force scan says, and the data make / read-back path."""

import gzip

import numpy as np
import pytest
import torch

from mmseq.errors import UserError
from mmseq.synthetic.data import IGNORE
from mmseq.synthetic.dna import (
    MOTIF_FILE,
    SITES_FILE,
    decode,
    encode,
    make_classification,
    make_genome,
    read_fasta,
    read_motifs,
    split_regions,
)


def _occurrences(text: str, motif: str) -> list[int]:
    """Every start of ``motif`` in ``text`` by str.find (overlaps included)."""
    out, i = [], text.find(motif)
    while i >= 0:
        out.append(i)
        i = text.find(motif, i + 1)
    return out


@pytest.fixture(scope="module")
def genome(tmp_path_factory):
    out = tmp_path_factory.mktemp("genome")
    make_genome(out, length=60_000, chromosomes=3, site_spacing=200, seed=1)
    return out


def test_fasta_plain_and_gzipped_read_the_same(tmp_path):
    text = ">chr1 first record\nACGTN\nacgtr\n\n>chr2\nGG-*\n"
    (tmp_path / "a.fa").write_text(text)
    with gzip.open(tmp_path / "a.fasta", "wt") as f:  # gzip is found by its bytes, not its name
        f.write(text)
    plain, gz = read_fasta(tmp_path / "a.fa"), read_fasta(tmp_path / "a.fasta")
    assert list(plain) == ["chr1", "chr2"]
    assert decode(plain["chr1"]) == "ACGTNACGTN" and decode(plain["chr2"]) == "GGNN"
    assert all(np.array_equal(plain[k], gz[k]) for k in plain)
    assert np.array_equal(encode("ACGTN"), [2, 3, 4, 5, 1])


@pytest.mark.parametrize("content,message", [
    ("ACGT\n>x\nA\n", "sequence before the first '>'"),
    ("", "no FASTA record"),
    (">x\nAC GT\n", "not a nucleotide letter"),
    (">x\nA\n>x\nC\n", "appears twice"),
    (">\nA\n", "needs a record name"),
])
def test_bad_fasta_is_one_clear_error(tmp_path, content, message):
    (tmp_path / "bad.fa").write_text(content)
    with pytest.raises(UserError, match=message):
        read_fasta(tmp_path / "bad.fa")
    (tmp_path / "broken.fa.gz").write_bytes(b"\x1f\x8b" + b"not really gzip")
    with pytest.raises(UserError, match="not a readable FASTA"):
        read_fasta(tmp_path / "broken.fa.gz")
    with pytest.raises(UserError, match="not found"):
        read_fasta(tmp_path / "missing.fa")


def test_motifs_occur_exactly_at_the_planted_sites(genome):
    records = {k: decode(v) for k, v in read_fasta(genome / "genome.fa.gz").items()}
    motifs = read_motifs(genome / MOTIF_FILE)
    planted = set()
    for line in (genome / SITES_FILE).read_text().splitlines():
        chrom, start, end, name = line.split("\t")
        planted.add((chrom, int(start), name))
        assert records[chrom][int(start):int(end)] == motifs[name]
    found = {(c, s, m) for c, text in records.items() for m, motif in motifs.items() for s in _occurrences(text, motif)}
    assert found == planted and len(planted) > 3 * 50
    assert {m for _, _, m in planted} == set(motifs)


def test_classification_labels_match_a_brute_force_scan(genome):
    records = read_fasta(genome / "genome.fa.gz")
    motifs = read_motifs(genome / MOTIF_FILE)
    names = list(motifs)
    for split in ("train", "test"):
        d = make_classification(records, motifs, split, 40, 120, seed=3, val_fraction=0.1, test_fraction=0.1)
        x, y = d["inputs"], d["labels"]
        assert x.shape == (120, 40) and torch.equal(torch.bincount(y), torch.full((4,), 30))
        for i in range(120):
            text = decode(x[i].numpy())
            held = [k for k, name in enumerate(names, 1) if motifs[name] in text]
            assert held == ([int(y[i])] if y[i] else []), "label = the one motif the window holds, 0 for none"
        # every window lies inside its split's regions
        texts = {c: decode(v) for c, v in records.items()}
        for i in range(0, 120, 7):
            w = decode(x[i].numpy())
            hits = [(c, s) for c, t in texts.items() for s in _occurrences(t, w)]
            assert hits and all(split_regions(len(texts[c]), 0.1, 0.1)[split][0] <= s
                                and s + 40 <= split_regions(len(texts[c]), 0.1, 0.1)[split][1] for c, s in hits)


def test_pretrain_windows_predict_the_next_nucleotide(genome, tmp_path):
    from mmseq.runner.task import load_task

    task = load_task({"task": "dna-pretrain", "data": {"fasta": str(genome), "seq_len": 64, "num_train": 16,
                                                       "num_val": 4, "num_test": 4}})
    dm = task.build_datamodule()
    dm.setup("fit")
    x, y = dm.splits["train"].tensors
    assert x.shape == y.shape == (16, 64)
    assert torch.equal(y[:, :-1], x[:, 1:])  # the label at t is the token at t + 1
    assert ((y >= 2) | (y == IGNORE)).all()


def test_data_make_dna_genome_writes_what_the_tasks_read(tmp_path, capsys):
    from mmseq.cli import main

    out = tmp_path / "g"
    assert main(["data", "make", "dna-genome", str(out), "--length", "30000", "--chromosomes", "2",
                 "--site-spacing", "150"]) == 0
    assert {p.name for p in out.iterdir()} == {"genome.fa.gz", MOTIF_FILE, SITES_FILE}
    assert set(read_fasta(out / "genome.fa.gz")) == {"chr1", "chr2"}
    capsys.readouterr()
    (tmp_path / "cfg.yaml").write_text(f"task: dna-classify\ndata: {{fasta: {out / SITES_FILE}}}\n")
    assert main(["train", str(tmp_path / "cfg.yaml"), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "sequence before the first '>'" in err and err.strip().count("\n") == 0
    (tmp_path / "cfg.yaml").write_text(f"task: dna-classify\ndata: {{fasta: {out}, motifs: {out / 'genome.fa.gz'}}}\n")
    assert main(["train", str(tmp_path / "cfg.yaml"), "--run-dir", str(tmp_path / "run")]) == 2
    assert "not a text motif table" in capsys.readouterr().err
