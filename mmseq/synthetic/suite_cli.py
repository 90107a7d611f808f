"""Command-line pieces of the long-context suite: ``mmseq data make`` for its tasks and the DNA genome, and
``mmseq bench longcontext`` (mmseq/synthetic/longcontext_bench.py).

``joint-recall``, ``copy``, ``selective-copy`` and ``maze`` write train/val/test safetensors splits that a
config's ``data.root`` reads (as ``mqar`` does); ``dna-genome`` writes a synthetic genome as gzipped FASTA
with its motif table and planted sites, which the DNA tasks read through ``data.fasta``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmseq.commands import DatasetMaker, positive_int, register_dataset, verb_group

from . import longcontext_bench
from .cli import _RecallSet


@register_dataset("joint-recall")
class JointRecallSet(_RecallSet):
    task = "joint-recall"
    help = "joint recall: a key's value under each context (train/val/test .safetensors)"
    description = ("Write joint-recall splits as safetensors files that a config's data.root reads. "
                   "data.* overrides set the sizes, e.g. data.num_contexts=8 data.num_keys=16.")


@register_dataset("copy")
class CopySet(_RecallSet):
    task = "copy"
    help = "COPY: a random string, a separator, the string again (train/val/test .safetensors)"
    description = ("Write COPY splits as safetensors files that a config's data.root reads. "
                   "data.* overrides set the sizes, e.g. data.copy_len=256 data.vocab_size=32.")


@register_dataset("selective-copy")
class SelectiveCopySet(_RecallSet):
    task = "selective-copy"
    help = "selective copying: data tokens among blanks, copied in order (train/val/test .safetensors)"
    description = ("Write selective-copying splits as safetensors files that a config's data.root reads. "
                   "data.* overrides set the sizes, e.g. data.seq_len=1024 data.num_tokens=16.")


@register_dataset("maze")
class MazeSet(_RecallSet):
    task = "maze"
    help = "DFS mazes with their shortest paths, tokenised as in MLM-U (train/val/test .safetensors)"
    description = ("Write maze-navigation splits (random depth-first-search mazes, origin, target and the "
                   "shortest path) as safetensors files that a config's data.root reads, for either training "
                   "objective. data.* overrides set the sizes, e.g. data.grid=8 data.num_train=100000.")


@register_dataset("dna-genome")
class DNAGenomeSet(DatasetMaker):
    help = "a synthetic genome with planted regulatory motifs (genome.fa.gz, motifs.tsv, sites.bed)"
    description = ("Write a synthetic genome as gzipped FASTA (random background, GC 42%, no chance motif "
                   "matches) with regulatory motifs planted at known places: motifs.tsv names them and "
                   "sites.bed lists every site. The dna-pretrain and dna-classify tasks read it through "
                   "data.fasta=OUT_DIR.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--length", type=positive_int, default=400_000, help="total bases (default 400000)")
        parser.add_argument("--chromosomes", type=positive_int, default=4, help="FASTA records (default 4)")
        parser.add_argument("--site-spacing", type=positive_int, default=2000,
                            help="one planted motif per this many bases on average (default 2000)")
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    def make(self, args: argparse.Namespace, out_dir: Path) -> int:
        from mmseq.errors import UserError

        from .dna import make_genome

        try:
            paths = make_genome(out_dir, length=args.length, chromosomes=args.chromosomes, seed=args.seed,
                                site_spacing=args.site_spacing)
        except ValueError as e:
            raise UserError(str(e)) from None
        for path in paths:
            print(f"wrote {path}")
        return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """``mmseq bench longcontext``: the suite's mixer x task x length grid."""
    bench = verb_group(subparsers, "bench", help="benchmarks that train and score models",
                       description="Benchmarks that train and score models through the runner.")
    longcontext_bench.add_command(bench)
