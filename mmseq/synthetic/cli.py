"""Command-line pieces of the synthetic domain: ``mmseq data make mqar|passkey``."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmseq.commands import DatasetMaker, register_dataset
from mmseq.errors import UserError


class _RecallSet(DatasetMaker):
    task = ""
    takes_overrides = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE",
                            help="set the task's data options, e.g. data.seq_len=256 data.num_train=5000")
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    def make(self, args: argparse.Namespace, out_dir: Path) -> int:
        from mmseq.runner.task import load_task

        from .tasks import make_dataset

        bad = [o for o in args.overrides if not o.startswith("data.")]
        if bad:
            raise UserError(f"data make {self.task} takes data.* overrides only, got {bad[0]!r}")
        task = load_task({"task": self.task, "seed": args.seed}, args.overrides)
        for path in make_dataset(task, out_dir):
            print(f"wrote {path}")
        return 0


@register_dataset("mqar")
class MQARSet(_RecallSet):
    task = "mqar"
    help = "multi-query associative recall (train/val/test .safetensors)"
    description = ("Write MQAR train/val/test splits as safetensors files that a config's data.root reads. "
                   "data.* overrides set the sizes, e.g. data.seq_len=256 data.num_kv_pairs=16.")


@register_dataset("passkey")
class PasskeySet(_RecallSet):
    task = "passkey"
    help = "passkey retrieval at several depths (train/val/test .safetensors)"
    description = ("Write passkey-retrieval splits as safetensors files that a config's data.root reads. "
                   "data.* overrides set the sizes, e.g. data.seq_len=1024.")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """The synthetic domain has data sets but no verbs of its own."""
