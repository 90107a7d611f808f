"""Command-line pieces of the audio domain: ``mmseq classify-audio`` and ``mmseq data make keywords``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmseq.commands import DatasetMaker, positive_float, positive_int, register_dataset
from mmseq.errors import UserError


@register_dataset("keywords")
class KeywordSet(DatasetMaker):
    help = "spoken keywords synthesized offline, in the Speech Commands v2 layout"
    description = ("Synthesize the Speech Commands words with every installed offline speech engine into OUT_DIR "
                   "(Speech Commands v2 layout: <word>/<speaker>_nohash_<n>.wav, validation_list.txt, "
                   "testing_list.txt, _background_noise_/). Splits are by voice; output is byte-identical per seed.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--words", choices=("sc35", "sc10"), default="sc35", help="word set (default sc35)")
        parser.add_argument("--per-word", type=positive_int, default=200, help="clips per word (default 200)")
        parser.add_argument("--engines", help="comma-separated speech engines (espeak,flite,festival,piper; "
                                              "default: all installed)")
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        parser.add_argument("--jobs", type=positive_int, help="worker processes (default: CPU count)")
        parser.add_argument("--noise-seconds", type=positive_float,
                            help="length of each background-noise file (default 30-60 s)")

    def make(self, args: argparse.Namespace, out_dir: Path) -> int:
        from .keywords import make_keywords

        engines = [e.strip() for e in args.engines.split(",") if e.strip()] if args.engines else None
        summary = make_keywords(out_dir, words=args.words, per_word=args.per_word, seed=args.seed, engines=engines,
                                jobs=args.jobs, noise_seconds=args.noise_seconds)
        print(json.dumps(summary, indent=2, default=str))
        return 0


def _cmd_classify_audio(args: argparse.Namespace) -> int:
    if not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if not any(Path(c).exists() for c in args.clips):  # answered before the model and torch are loaded
        raise UserError(f"no such file: {args.clips[0]}" + (f" (nor any of the other {len(args.clips) - 1})"
                                                             if len(args.clips) > 1 else ""))
    if args.checkpoint is not None and not Path(args.checkpoint).exists():
        raise UserError(f"--checkpoint {args.checkpoint}: no such folder")
    from .classify import classify_files

    results = classify_files(args.clips, args.checkpoint, top_k=args.top_k, threshold=args.threshold)
    failed = [r for r in results if "error" in r]
    if args.json:
        print(json.dumps(results, indent=2, allow_nan=False))
    else:
        for r in results:
            if "error" in r:
                continue
            others = "  ".join(f"{t['label']} {t['score']:.3f}" for t in r["top_k"][1:])
            guess = f" (best guess {r['best_guess']})" if r["label"] != r["best_guess"] else ""
            print(f"{r['file']}\t{r['label']}\t{r['score']:.3f}{guess}" + (f"\t[{others}]" if others else ""))
    for r in failed:
        print(f"mmseq classify-audio: error: {r['error']}", file=sys.stderr)
    return 2 if failed else 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    c = subparsers.add_parser("classify-audio", help="classify audio clips with a keyword model",
                              description="Print the label and probability of each clip (WAV/FLAC/OGG/MP3; any rate "
                                          "or channel count). Without --checkpoint the shipped SC35 keyword model is "
                                          "used. A best score under --threshold is reported as _unknown_.")
    c.add_argument("clips", nargs="+", metavar="CLIP")
    c.add_argument("--checkpoint", help="run folder or model folder (default: the shipped SC35 model)")
    c.add_argument("--top-k", type=positive_int, default=3, help="how many labels to list per clip (default 3)")
    c.add_argument("--threshold", type=float, default=0.5,
                   help="below this best probability the clip is _unknown_ (default 0.5)")
    c.add_argument("--json", action="store_true", help="print a JSON list, one object per clip")
    c.set_defaults(func=_cmd_classify_audio)


def info() -> dict:
    """Which synthesizers `mmseq data make keywords` can use here."""
    from .synth import ENGINES, get_engine

    return {"speech_engines": {name: get_engine(name).available() for name in ENGINES}}
