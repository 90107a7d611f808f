"""The ``mmseq`` command: train, eval, info, data make (domain verbs join here)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmseq.errors import UserError

DATASETS = ("mqar", "passkey", "keywords")


def _cmd_train(args: argparse.Namespace) -> int:
    from mmseq.runner.train import train

    if args.resume and args.config and "=" not in args.config:
        raise UserError("give either CONFIG or --resume RUN_DIR, not both")
    overrides = list(args.overrides)
    if args.resume and args.config:  # with --resume the first positional is an override
        overrides.insert(0, args.config)
    metrics = train(None if args.resume else args.config, overrides, run_dir=args.run_dir, resume=args.resume)
    _print_metrics(metrics)
    return 0


def _print_metrics(metrics: dict) -> None:
    for split in ("val", "test"):
        for k, v in sorted(metrics.get(split, {}).items()):
            print(f"{k:32s} {v:.4f}")
    if "written_to" in metrics:
        print(f"wrote {metrics['written_to']}")


def _cmd_eval(args: argparse.Namespace) -> int:
    from mmseq.runner.train import evaluate

    result = evaluate(args.run_dir, args.overrides, out=args.out)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_metrics(result)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from mmseq.info import collect_info, format_info

    info = collect_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _cmd_data_make(args: argparse.Namespace) -> int:
    from mmseq.runner.task import load_task
    from mmseq.synthetic.tasks import make_dataset

    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output folder {out} already exists and is not empty; choose a new folder")
    keyword_options = {"--words": args.words, "--per-word": args.per_word, "--engines": args.engines,
                       "--jobs": args.jobs, "--noise-seconds": args.noise_seconds}
    if args.dataset == "keywords":
        return _make_keywords(args, out)
    given = [k for k, v in keyword_options.items() if v is not None]
    if given:
        raise UserError(f"{', '.join(given)} apply to `data make keywords` only; {args.dataset} takes data.* overrides")
    task = load_task({"task": args.dataset, "seed": args.seed}, args.overrides)
    for path in make_dataset(task, out):
        print(f"wrote {path}")
    return 0


def _make_keywords(args: argparse.Namespace, out: Path) -> int:
    from mmseq.audio.keywords import make_keywords

    if args.overrides:
        raise UserError(f"`data make keywords` takes options, not overrides (got {args.overrides[0]!r}); "
                        f"see `mmseq data make --help`")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()] if args.engines else None
    summary = make_keywords(out, words=args.words or "sc35", per_word=args.per_word or 200, seed=args.seed,
                            engines=engines, jobs=args.jobs, noise_seconds=args.noise_seconds)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_classify_audio(args: argparse.Namespace) -> int:
    from mmseq.audio.classify import classify_files

    results = classify_files(args.clips, args.checkpoint, top_k=args.top_k, threshold=args.threshold)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        others = "  ".join(f"{t['label']} {t['score']:.3f}" for t in r["top_k"][1:])
        guess = f" (best guess {r['best_guess']})" if r["label"] != r["best_guess"] else ""
        print(f"{r['file']}\t{r['label']}\t{r['score']:.3f}{guess}" + (f"\t[{others}]" if others else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmseq", description="mmseq: long-sequence models across modalities.")
    sub = p.add_subparsers(dest="verb", metavar="VERB")

    t = sub.add_parser("train", help="train a task from a YAML config",
                       description="Train from a YAML config. Overrides are key=value (e.g. trainer.max_steps=500). "
                                   "The run folder gets config.yaml, logs/, checkpoints/, metrics.json and model/.")
    t.add_argument("config", nargs="?", help="YAML config, e.g. configs/synthetic/mqar_attention.yaml")
    t.add_argument("overrides", nargs="*", help="key=value overrides")
    t.add_argument("--run-dir", help="run folder to create (default runs/<task>-<time>); must be new or empty")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a run's model on its validation/test data",
                       description="Evaluate RUN_DIR/model on the run's data; data.* overrides test other "
                                   "settings, e.g. data.seq_len=256.")
    e.add_argument("run_dir")
    e.add_argument("overrides", nargs="*", help="data.* or trainer.* key=value overrides")
    e.add_argument("--out", help="where to write the results (default RUN_DIR/eval.json)")
    e.add_argument("--json", action="store_true", help="print the results as JSON")
    e.set_defaults(func=_cmd_eval)

    i = sub.add_parser("info", help="versions, devices and available kernel paths",
                       description="Print versions, devices and which kernel paths (Triton/CUDA/CPU) are available.")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_cmd_info)

    d = sub.add_parser("data", help="make built-in data sets", description="Built-in data sets.")
    dsub = d.add_subparsers(dest="data_verb", metavar="ACTION")
    dm = dsub.add_parser("make", help="write a built-in data set in its real format",
                         description="Write a built-in data set to OUT_DIR. data.* overrides set its "
                                     "parameters, e.g. data.seq_len=256.")
    dm.add_argument("dataset", choices=DATASETS)
    dm.add_argument("out_dir")
    dm.add_argument("overrides", nargs="*", help="data.* key=value overrides")
    dm.add_argument("--seed", type=int, default=0)
    dm.add_argument("--words", choices=("sc35", "sc10"), help="keywords: word set (default sc35)")
    dm.add_argument("--per-word", type=int, help="keywords: clips per word (default 200)")
    dm.add_argument("--engines", help="keywords: comma-separated speech engines (espeak,flite,festival,piper; "
                                      "default all installed)")
    dm.add_argument("--jobs", type=int, help="keywords: worker processes (default: CPU count)")
    dm.add_argument("--noise-seconds", type=float,
                    help="keywords: length of each background-noise file (default 30-60 s)")
    dm.set_defaults(func=_cmd_data_make)

    c = sub.add_parser("classify-audio", help="classify audio clips with a keyword model",
                       description="Print the label and probability of each clip (WAV/FLAC/OGG/MP3; any rate or "
                                   "channel count). Without --checkpoint the shipped SC35 keyword model is used. "
                                   "A best score under --threshold is reported as _unknown_.")
    c.add_argument("clips", nargs="+", metavar="CLIP")
    c.add_argument("--checkpoint", help="run folder or model folder (default: the shipped SC35 model)")
    c.add_argument("--top-k", type=int, default=3, help="how many labels to list per clip (default 3)")
    c.add_argument("--threshold", type=float, default=0.5,
                   help="below this best probability the clip is _unknown_ (default 0.5)")
    c.add_argument("--json", action="store_true", help="print a JSON list, one object per clip")
    c.set_defaults(func=_cmd_classify_audio)
    d.set_defaults(func=lambda a: (d.print_help(), 2)[1])
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options (``train CFG --run-dir D a=1``), which argparse leaves unparsed.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except UserError as e:
        print(f"mmseq {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
