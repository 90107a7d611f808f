"""HyenaDNA-style DNA tasks: single-nucleotide tokens, next-nucleotide pretraining and sequence classification.

Genomes are read from FASTA (plain or gzipped, several records). ``make_genome`` writes a built-in synthetic
genome with planted regulatory motifs (``mmseq data make dna-genome``): random background in which no motif
occurs by chance, then motif consensus sequences planted at random places, so the motif sites are known
exactly (``sites.bed``).

- ``dna-pretrain``: windows of ``seq_len`` nucleotides; predict each next nucleotide.
- ``dna-classify``: windows labelled by the motif they hold (class 0: none). The label is found by scanning
  the window for every motif of the table, so it is right by construction on any FASTA; windows holding
  two different motifs are never drawn.

Each FASTA record is cut into train / val / test regions (its first, middle and last part), so no window
of one split overlaps another split.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from mmseq.data import SplitDataModule
from mmseq.errors import ConfigError, UserError
from mmseq.mixers import validate_mixer_config
from mmseq.mixers.blocks import MixerStack
from mmseq.runner.config import path_field, to_dict
from mmseq.runner.module import TaskModule
from mmseq.runner.pretrained import PretrainedMixin
from mmseq.runner.task import Task, register_task

from .data import IGNORE
from .model import SequenceLM
from .tasks import SequenceModelConfig

# Single-nucleotide vocabulary; any other IUPAC letter (R, Y, ...) reads as N.
PAD, N_BASE = 0, 1
BASES = "ACGT"
VOCAB_SIZE = 2 + len(BASES)
_CODE = np.full(256, N_BASE, dtype=np.uint8)
for _i, _b in enumerate(BASES):
    _CODE[ord(_b)] = _CODE[ord(_b.lower())] = 2 + _i

GENOME_FILE, MOTIF_FILE, SITES_FILE = "genome.fa.gz", "motifs.tsv", "sites.bed"
# Consensus-like sites of well-known promoter elements, lengthened to 10 bp so that chance matches are rare.
DEFAULT_MOTIFS = {"TATA-box": "TATAAAAGGC", "CAAT-box": "GGCCAATCAG", "E-box": "ACCACGTGAC"}


def encode(seq: str) -> np.ndarray:
    """Nucleotide letters -> token ids [len] (uint8): A C G T = 2..5, anything else N = 1."""
    return _CODE[np.frombuffer(seq.encode("ascii", "replace"), dtype=np.uint8)]


def decode(tokens: np.ndarray) -> str:
    """Token ids -> letters (PAD and N both read as N)."""
    return "".join(("N" + "N" + BASES)[int(t)] for t in tokens)


def _open_text(path: Path) -> io.TextIOBase:
    """A FASTA file as text, gunzipped when it starts with the gzip magic bytes (whatever its name)."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gz else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="ascii", errors="replace")


def read_fasta(path: str | Path) -> dict[str, np.ndarray]:
    """Every record of a FASTA file (plain or gzipped) as record name -> token ids [len] (uint8).

    The name is the header up to the first space. Lower-case (soft-masked) letters read as upper case;
    a file without records, a sequence line before the first header, an empty or repeated record name, or a
    line of other characters than letters, '-' and '*' is one UserError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"FASTA file not found: {path}")
    records: dict[str, list[str]] = {}
    name = None
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith(";"):
                    continue
                if line.startswith(">"):
                    name = line[1:].split(maxsplit=1)[0] if line[1:].strip() else ""
                    if not name:
                        raise UserError(f"{path}, line {lineno}: a FASTA header needs a record name after '>'")
                    if name in records:
                        raise UserError(f"{path}, line {lineno}: record {name!r} appears twice")
                    records[name] = []
                    continue
                if name is None:
                    raise UserError(f"{path}, line {lineno}: sequence before the first '>' header; "
                                    "is this a FASTA file?")
                bad = next((c for c in line if not (c.isalpha() or c in "-*")), None)
                if bad is not None:
                    raise UserError(f"{path}, line {lineno}: {bad!r} is not a nucleotide letter")
                records[name].append(line)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path} is not a readable FASTA file ({e})") from None
    if not records:
        raise UserError(f"{path} holds no FASTA record (no line starting with '>')")
    return {k: encode("".join(v)) for k, v in records.items()}


def write_fasta(records: dict[str, np.ndarray], path: Path, width: int = 80) -> None:
    """Write token-id records as FASTA, gzipped when ``path`` ends in .gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as f:
        for name, tokens in records.items():
            text = decode(tokens)
            f.write(f">{name}\n")
            for i in range(0, len(text), width):
                f.write(text[i:i + width] + "\n")


def find_motif(tokens: np.ndarray, motif: np.ndarray) -> np.ndarray:
    """Start positions of every exact occurrence of ``motif`` in ``tokens`` (forward strand)."""
    m = len(motif)
    if len(tokens) < m:
        return np.zeros(0, dtype=np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(tokens, m)
    return np.flatnonzero((windows == motif).all(axis=1))


def make_genome(out_dir: Path, length: int = 400_000, chromosomes: int = 4, seed: int = 0,
                site_spacing: int = 2000, motifs: dict[str, str] | None = None, gc: float = 0.42) -> list[Path]:
    """Write a synthetic genome: ``genome.fa.gz`` (``chromosomes`` records of ``length`` // chromosomes bp),
    ``motifs.tsv`` (name, consensus) and ``sites.bed`` (chrom, start, end, motif of every planted site).

    Background bases are i.i.d. with GC fraction ``gc``; every chance occurrence of a motif is broken by a
    point change, then one site per ``site_spacing`` bp on average is planted (motif drawn uniformly, sites
    at least a motif length apart); occurrences a plant creates across its edges are broken too, so the
    exact occurrences of the motifs are the planted sites and nothing else.
    """
    motifs = dict(motifs or DEFAULT_MOTIFS)
    coded = {k: encode(v) for k, v in motifs.items()}
    width = max(len(v) for v in coded.values())
    per = length // chromosomes
    if per < 4 * width:
        raise ValueError(f"length={length} over {chromosomes} chromosomes leaves {per} bp each; need >= {4 * width}")
    rng = np.random.default_rng(seed)
    p = np.array([(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2])  # A C G T
    records, sites = {}, []
    names = list(coded)
    for c in range(chromosomes):
        chrom = f"chr{c + 1}"
        seq = (2 + rng.choice(4, size=per, p=p)).astype(np.uint8)
        n_sites = max(1, per // site_spacing)
        slots = np.sort(rng.choice(per // (2 * width) - 1, size=min(n_sites, per // (2 * width) - 1),
                                   replace=False))
        planted = []
        for slot in slots:
            start = int(slot * 2 * width + rng.integers(width))
            name = names[int(rng.integers(len(names)))]
            planted.append((start, name))
        protected = np.zeros(per, dtype=bool)
        for start, name in planted:
            seq[start:start + len(coded[name])] = coded[name]
            protected[start:start + len(coded[name])] = True
        planted_set = set(planted)
        while True:  # break every occurrence that is not a planted site, changing unprotected bases only
            stray = [(int(s), m) for m in names for s in find_motif(seq, coded[m]) if (int(s), m) not in planted_set]
            if not stray:
                break
            for s, m in stray:
                free = [i for i in range(s, s + len(coded[m])) if not protected[i]]
                if not free:
                    raise ValueError(f"motif {m} occurs inside another motif; give motifs that do not contain "
                                     "each other")
                i = free[int(rng.integers(len(free)))]
                seq[i] = 2 + (seq[i] - 2 + 1 + rng.integers(3)) % 4  # another base
        records[chrom] = seq
        sites += [(chrom, s, s + len(coded[m]), m) for s, m in planted]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_fasta(records, out_dir / GENOME_FILE)
    (out_dir / MOTIF_FILE).write_text("".join(f"{k}\t{v}\n" for k, v in motifs.items()))
    (out_dir / SITES_FILE).write_text("".join(f"{c}\t{s}\t{e}\t{m}\n" for c, s, e, m in sites))
    return [out_dir / GENOME_FILE, out_dir / MOTIF_FILE, out_dir / SITES_FILE]


def read_motifs(path: Path) -> dict[str, str]:
    """A motif table: one ``name<TAB>consensus`` per line (consensus in A, C, G, T)."""
    if not path.is_file():
        raise UserError(f"motif table not found: {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text motif table (expected 'name<TAB>consensus' lines)") from None
    motifs = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or set(parts[1].upper()) - set(BASES):
            raise UserError(f"{path}, line {lineno}: expected 'name<TAB>consensus' with a consensus of A, C, G, T")
        motifs[parts[0]] = parts[1].upper()
    if not motifs:
        raise UserError(f"{path} lists no motif")
    return motifs


def split_regions(length: int, val_fraction: float, test_fraction: float) -> dict[str, tuple[int, int]]:
    """[start, end) of the train, val and test regions of a record of ``length`` bp."""
    a = int(round(length * (1 - val_fraction - test_fraction)))
    b = int(round(length * (1 - test_fraction)))
    return {"train": (0, a), "val": (a, b), "test": (b, length)}


def sample_windows(records: dict[str, np.ndarray], split: str, seq_len: int, num: int, seed: int,
                   val_fraction: float, test_fraction: float) -> np.ndarray:
    """``num`` windows [num, seq_len] at uniform random places of the split's regions (records weighted by the
    room they have)."""
    spans = []
    for tokens in records.values():
        s, e = split_regions(len(tokens), val_fraction, test_fraction)[split]
        spans.append((tokens, s, max(0, e - s - seq_len + 1)))
    room = np.array([r for _, _, r in spans], dtype=np.float64)
    if room.sum() == 0:
        raise ValueError(f"no {split} region is {seq_len} bp long; use a shorter seq_len or a larger "
                         f"{split} fraction")
    rng = np.random.default_rng(seed)
    which = rng.choice(len(spans), size=num, p=room / room.sum())
    out = np.empty((num, seq_len), dtype=np.int64)
    for i, r in enumerate(which):
        tokens, s, n = spans[r]
        start = s + int(rng.integers(n))
        out[i] = tokens[start:start + seq_len]
    return out


def window_classes(windows: np.ndarray, motifs: dict[str, np.ndarray]) -> np.ndarray:
    """The class of each window [N, L]: 1 + index of the one motif it holds, 0 for none, -1 for several."""
    found = np.stack([np.array([len(find_motif(w, m)) > 0 for w in windows]) for m in motifs.values()], axis=1)
    cls = np.where(found.any(1), 1 + found.argmax(1), 0)
    return np.where(found.sum(1) > 1, -1, cls)


def make_classification(records: dict[str, np.ndarray], motifs: dict[str, str], split: str, seq_len: int,
                        num: int, seed: int, val_fraction: float, test_fraction: float) -> dict[str, torch.Tensor]:
    """Balanced windows [num, seq_len] and labels [num]: class 0 holds no motif, class k holds motif k only.

    Motif windows are drawn around the occurrences found in the split's regions (the motif at a random offset
    inside the window); background windows at random places; each label is checked by scanning the window.
    """
    coded = {k: encode(v) for k, v in motifs.items()}
    if any(len(m) > seq_len for m in coded.values()):
        raise ValueError(f"seq_len={seq_len} is shorter than a motif ({max(len(m) for m in coded.values())} bp)")
    rng = np.random.default_rng(seed)
    classes = len(coded) + 1
    per_class = [num // classes + (1 if c < num % classes else 0) for c in range(classes)]
    windows, labels = [], []
    # background: draw extra windows and keep those without any motif
    got = 0
    tries = 0
    while got < per_class[0]:
        cand = sample_windows(records, split, seq_len, 2 * (per_class[0] - got) + 8, seed * 7919 + tries,
                              val_fraction, test_fraction)
        keep = cand[window_classes(cand, coded) == 0][:per_class[0] - got]
        windows.append(keep)
        got += len(keep)
        tries += 1
        if tries > 50:
            raise ValueError(f"too few motif-free {seq_len}-bp windows in the {split} regions")
    for k, (name, motif) in enumerate(coded.items(), start=1):
        sites = []
        for tokens in records.values():
            s, e = split_regions(len(tokens), val_fraction, test_fraction)[split]
            for p in find_motif(tokens[s:e], motif):
                lo, hi = max(s, s + p + len(motif) - seq_len), min(e - seq_len, s + p)
                if lo <= hi:
                    sites.append((tokens, lo, hi))
        if not sites:
            raise ValueError(f"motif {name} occurs nowhere in the {split} regions with room for a {seq_len}-bp "
                             "window; use a larger genome or split fraction")
        out, tries = [], 0
        while len(out) < per_class[k]:
            tokens, lo, hi = sites[int(rng.integers(len(sites)))]
            start = int(rng.integers(lo, hi + 1))
            w = tokens[start:start + seq_len].astype(np.int64)
            if window_classes(w[None], coded)[0] == k:  # a second motif nearby makes it ambiguous: skip
                out.append(w)
            tries += 1
            if tries > 100 * per_class[k] + 1000:
                raise ValueError(f"too few {seq_len}-bp windows hold motif {name} alone in the {split} regions")
        windows.append(np.stack(out) if out else np.zeros((0, seq_len), dtype=np.int64))
    labels = np.concatenate([np.full(c, k) for k, c in enumerate(per_class)])
    inputs = np.concatenate(windows).astype(np.int64)
    order = rng.permutation(len(labels))
    return {"inputs": torch.from_numpy(inputs[order]), "labels": torch.from_numpy(labels[order].astype(np.int64))}


class SequenceClassifier(PretrainedMixin, nn.Module):
    """tokens [B, L] (int64) -> class logits [B, num_classes]: embedding, mixer stack, pooling, linear head.

    ``pool``: ``mean`` over positions (PAD excluded) or ``last`` (the last position, for causal mixers, which
    has seen the whole window).
    """

    def __init__(self, vocab_size: int, num_classes: int, d_model: int = 64, n_layers: int = 2,
                 mixer: dict | None = None, causal: bool = True, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 pool: str = "mean") -> None:
        super().__init__()
        if pool not in ("mean", "last"):
            raise ValueError(f"pool must be 'mean' or 'last', got {pool!r}")
        self.pool = pool
        self.embed = nn.Embedding(vocab_size, d_model)
        self.trunk = MixerStack(d_model, n_layers, dict(mixer or {"name": "attention"}), causal=causal,
                                mlp_ratio=mlp_ratio, dropout=dropout)
        self.head = nn.Linear(d_model, num_classes)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.trunk(self.embed(tokens))  # [B, L, D]
        if self.pool == "last":
            return self.head(h[:, -1])
        keep = (tokens != PAD).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1).clamp(min=1))


class NucleotideLMModule(TaskModule):
    """Next-nucleotide cross-entropy (N and padding targets not scored); ``acc`` per nucleotide."""

    def __init__(self, model, optim, max_steps: int) -> None:
        super().__init__(model, optim, max_steps, prog_bar=("acc",),
                         metrics={"acc": lambda: MulticlassAccuracy(VOCAB_SIZE, average="micro", ignore_index=IGNORE)})

    def loss(self, logits: torch.Tensor, batch) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[1].reshape(-1), ignore_index=IGNORE)

    def update_metrics(self, metrics, logits: torch.Tensor, batch) -> None:
        metrics["acc"].update(logits.argmax(-1), batch[1])


class MotifClassifierModule(TaskModule):
    """Cross-entropy over the window classes; ``acc`` (micro) and ``macro_acc`` (mean per class)."""

    def __init__(self, model, optim, max_steps: int, num_classes: int) -> None:
        super().__init__(model, optim, max_steps, prog_bar=("acc",),
                         metrics={"acc": lambda: MulticlassAccuracy(num_classes, average="micro"),
                                  "macro_acc": lambda: MulticlassAccuracy(num_classes, average="macro")})

    def loss(self, logits: torch.Tensor, batch) -> torch.Tensor:
        return F.cross_entropy(logits.float(), batch[1])


@dataclass
class DNAPretrainDataConfig:
    # a FASTA file (plain or gzipped) or a folder from `mmseq data make dna-genome`
    fasta: str = path_field("data/dna-genome", must_exist=False)
    seq_len: int = 1024  # nucleotides the model reads per window
    num_train: int = 20000  # windows drawn per split
    num_val: int = 256
    num_test: int = 512
    val_fraction: float = 0.1  # the middle part of each record is val, the last part test
    test_fraction: float = 0.1
    batch_size: int = 16


@dataclass
class DNAClassifyDataConfig(DNAPretrainDataConfig):
    motifs: str | None = path_field(None)  # name<TAB>consensus table; None: motifs.tsv beside the FASTA
    seq_len: int = 200


@dataclass
class DNAClassifierConfig(SequenceModelConfig):
    mixer: dict[str, Any] = field(default_factory=lambda: {"name": "hyena"})
    pool: str = "mean"  # mean | last


@dataclass
class DNALMConfig(SequenceModelConfig):
    mixer: dict[str, Any] = field(default_factory=lambda: {"name": "hyena"})


class WindowDataModule(SplitDataModule):
    """Splits made by ``make_split(name)`` from the FASTA records, read once."""

    def __init__(self, make_split, batch_size: int, seed: int, num_workers: int = 0) -> None:
        super().__init__(batch_size, seed, num_workers=num_workers)
        self.make_split = make_split

    def load_split(self, split: str) -> TensorDataset:
        t = self.make_split(split)
        return TensorDataset(t["inputs"], t["labels"])


class _DNATask(Task):
    def fasta_path(self) -> Path:
        p = Path(self.cfg.data.fasta)
        return p / GENOME_FILE if p.is_dir() else p

    def records(self) -> dict[str, np.ndarray]:
        if getattr(self, "_records", None) is None:
            self._records = read_fasta(self.fasta_path())
        return self._records

    def check(self) -> None:
        validate_mixer_config(to_dict(self.cfg.model.mixer), key="model.mixer")
        d = self.cfg.data
        p = Path(d.fasta)
        if not p.exists():
            raise ConfigError(f"config key 'data.fasta': {p} does not exist; give a FASTA file or make the built-in "
                              f"genome with `mmseq data make dna-genome {p}`")
        if p.is_dir() and not (p / GENOME_FILE).is_file():
            raise ConfigError(f"config key 'data.fasta': folder {p} has no {GENOME_FILE}; give a FASTA file or "
                              f"make one with `mmseq data make dna-genome {p}`")
        for key in ("seq_len", "batch_size", "num_train", "num_val", "num_test"):
            if getattr(d, key) < 1:
                raise ConfigError(f"config key 'data.{key}': must be >= 1, got {getattr(d, key)}")
        for key in ("val_fraction", "test_fraction"):
            if not 0 < getattr(d, key) < 0.5:
                raise ConfigError(f"config key 'data.{key}': must be in (0, 0.5), got {getattr(d, key)}")
        self.records()  # a bad FASTA fails before any work

    def split_seed(self, split: str) -> int:
        return self.cfg.seed * 10 + {"train": 1, "val": 2, "test": 3}[split]

    def build_datamodule(self) -> WindowDataModule:
        return WindowDataModule(self._make_split, self.cfg.data.batch_size, self.cfg.seed,
                                self.cfg.trainer.num_workers)

    def _make_split(self, split: str) -> dict[str, torch.Tensor]:
        try:
            return self.make_split(split)
        except ValueError as e:
            raise ConfigError(f"config section 'data': {e}") from None

    def make_split(self, split: str) -> dict[str, torch.Tensor]:
        raise NotImplementedError


@register_task("dna-pretrain")
class DNAPretrainTask(_DNATask):
    """Next-nucleotide pretraining on windows of a FASTA genome (HyenaDNA's objective)."""

    data_config = DNAPretrainDataConfig
    model_config = DNALMConfig

    def make_split(self, split: str) -> dict[str, torch.Tensor]:
        d = self.cfg.data
        w = sample_windows(self.records(), split, d.seq_len + 1, getattr(d, f"num_{split}"), self.split_seed(split),
                           d.val_fraction, d.test_fraction)
        inputs, labels = torch.from_numpy(w[:, :-1]), torch.from_numpy(w[:, 1:].copy())
        labels[labels <= N_BASE] = IGNORE  # an unknown base is no target
        return {"inputs": inputs, "labels": labels}

    def build_model(self) -> SequenceLM:
        return SequenceLM(vocab_size=VOCAB_SIZE, causal=True, **to_dict(self.cfg.model))

    def build_module(self, model) -> NucleotideLMModule:
        return NucleotideLMModule(model, self.cfg.optim, self.cfg.trainer.max_steps)


@register_task("dna-classify")
class DNAClassifyTask(_DNATask):
    """Sequence classification: which regulatory motif (if any) a window holds."""

    data_config = DNAClassifyDataConfig
    model_config = DNAClassifierConfig
    monitor = "val/acc"
    monitor_mode = "max"

    def motif_path(self) -> Path:
        return Path(self.cfg.data.motifs) if self.cfg.data.motifs else self.fasta_path().parent / MOTIF_FILE

    def motifs(self) -> dict[str, str]:
        return read_motifs(self.motif_path())

    def check(self) -> None:
        super().check()
        if not self.motif_path().is_file():
            raise ConfigError(f"config key 'data.motifs': no motif table at {self.motif_path()}; give "
                              "data.motifs=FILE (name<TAB>consensus per line)")
        self.motifs()  # a bad table fails before any work
        if self.cfg.model.pool not in ("mean", "last"):
            raise ConfigError(f"config key 'model.pool': expected mean or last, got {self.cfg.model.pool!r}")

    def make_split(self, split: str) -> dict[str, torch.Tensor]:
        d = self.cfg.data
        return make_classification(self.records(), self.motifs(), split, d.seq_len, getattr(d, f"num_{split}"),
                                   self.split_seed(split), d.val_fraction, d.test_fraction)

    def build_model(self) -> SequenceClassifier:
        return SequenceClassifier(vocab_size=VOCAB_SIZE, num_classes=len(self.motifs()) + 1,
                                  **to_dict(self.cfg.model))

    def build_module(self, model) -> MotifClassifierModule:
        return MotifClassifierModule(model, self.cfg.optim, self.cfg.trainer.max_steps, len(self.motifs()) + 1)
