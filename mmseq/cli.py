"""The ``mmseq`` command: train, eval, info and data make; each domain adds its verbs and data sets
(``mmseq.plugins`` lists the domains' CLI modules). Nothing heavy is imported until a verb runs."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from mmseq.commands import DATASETS
from mmseq.errors import UserError
from mmseq.plugins import command_modules


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

    if args.json:  # stdout carries the JSON alone: progress bars and notices go to stderr
        with contextlib.redirect_stdout(sys.stderr):
            result = evaluate(args.run_dir, args.overrides, out=args.out)
    else:
        result = evaluate(args.run_dir, args.overrides, out=args.out)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_metrics(result)
    return 0



def _cmd_info(args: argparse.Namespace) -> int:
    from mmseq.info import collect_info, format_info

    info = collect_info()
    for module in _command_modules():
        if hasattr(module, "info"):
            info.update(module.info())
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _cmd_data_make(args: argparse.Namespace) -> int:
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {out} is a file; choose a new folder")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output folder {out} already exists and is not empty; choose a new folder")
    return args.maker.make(args, out)


def _command_modules() -> list:
    """Each domain's CLI module (torch-free at import, so ``mmseq --help`` stays fast)."""
    import importlib

    return [importlib.import_module(m) for m in command_modules().values()]


# Verbs of the core that need no domain's CLI module: `mmseq train` imports the trained task's domain only.
CORE_ONLY_VERBS = ("train", "eval")


def build_parser(with_domains: bool = True) -> argparse.ArgumentParser:
    """The ``mmseq`` parser; ``with_domains=False`` leaves out the domains' verbs and data sets."""
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
                         description="Write a built-in data set to OUT_DIR (new or empty). "
                                     "`mmseq data make NAME --help` lists a data set's options.")
    msub = dm.add_subparsers(dest="dataset", metavar="DATASET")
    d.set_defaults(func=lambda a: (d.print_help(), 2)[1])
    dm.set_defaults(func=lambda a: (dm.print_help(), 2)[1])

    if not with_domains:
        return p
    for module in _command_modules():  # each domain adds its verbs and registers its data sets
        module.add_commands(sub)
    for name in DATASETS.names():
        maker = DATASETS.get(name)()
        p_ds = msub.add_parser(name, help=maker.help, description=maker.description or maker.help)
        p_ds.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (new or empty)")
        maker.add_arguments(p_ds)
        p_ds.set_defaults(func=_cmd_data_make, maker=maker)
    return p


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else list(argv)
    verb = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(with_domains=verb not in CORE_ONLY_VERBS)
    try:
        # Overrides may come after options (``train CFG --run-dir D a=1``), which argparse leaves unparsed.
        args, extra = parser.parse_known_args(args_list)
        if extra:
            if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.overrides = list(args.overrides) + extra
    except SystemExit as e:  # --help (0) or a usage error (2, already printed on stderr)
        return int(e.code or 0)
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
