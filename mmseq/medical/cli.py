"""Command-line pieces of the medical domain: ``tokenize-ct``, ``detokenize-ct``, ``report-ct`` and
``mmseq data make ct-phantoms``. Nothing heavy is imported until a verb runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmseq.commands import DatasetMaker, load_model, non_negative_int, positive_int, register_dataset
from mmseq.errors import UserError

SHIPPED_TOKENIZER = "ct_tokenizer"
SHIPPED_REPORTER = "ct_report"
VOLUME_SUFFIXES = (".nii", ".nii.gz")


@register_dataset("ct-phantoms")
class CTPhantomSet(DatasetMaker):
    help = "chest-CT phantoms with findings, reports and labels, in the CT-RATE layout"
    description = ("Write deterministic chest-CT phantoms (body, lungs with airways, heart, aorta, spine and ribs "
                   "in realistic HU, scanner-like noise) carrying findings, with matching reports, the 18-label "
                   "table and metadata, in the CT-RATE layout (dataset/train, dataset/valid, "
                   "radiology_text_reports/, multi_abnormality_labels/, metadata/).")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--n", type=positive_int, default=200, help="number of volumes (default 200)")
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    def make(self, args: argparse.Namespace, out_dir: Path) -> int:
        from .phantoms import make_ct_phantoms

        summary = make_ct_phantoms(out_dir, n=args.n, seed=args.seed)
        print(json.dumps(summary, indent=2, default=str))
        return 0


def load_tokenizer(checkpoint: str | None):
    from .tokenizer import CTTokenizer

    return load_model(CTTokenizer, checkpoint, SHIPPED_TOKENIZER, "CT tokenizer")


def load_reporter(checkpoint: str | None):
    from .report_model import ReportGenerator

    return load_model(ReportGenerator, checkpoint, SHIPPED_REPORTER, "report generator")


def _is_volume_file(p: Path) -> bool:
    return p.is_file() and p.name.endswith(VOLUME_SUFFIXES)


def _dataset_inputs(source: Path) -> list[Path] | None:
    """The volumes of a folder of NIfTI files (any depth; a CT-RATE tree) or of a CSV with a VolumeName or
    path column; None when ``source`` is one volume (a NIfTI file or a DICOM folder)."""
    if source.is_file() and source.suffix.lower() == ".csv":
        import csv

        with source.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise UserError(f"{source} lists no volumes")
        key = next((k for k in ("path", "VolumeName") if k in rows[0]), None)
        if key is None:
            raise UserError(f"{source} needs a 'path' or 'VolumeName' column")
        if key == "path":
            return [Path(r["path"]) for r in rows]
        from .ctrate import volume_relpath

        base = source.parent.parent  # dataset/radiology_text_reports/<csv> -> dataset/
        return [base.joinpath(*volume_relpath(r["VolumeName"]).parts) for r in rows]
    if source.is_dir():
        ctrate = _ctrate_sources(source)
        if ctrate:
            return ctrate
        found = sorted(p for p in source.rglob("*") if _is_volume_file(p))
        return found or None
    return None


def _ctrate_sources(root: Path) -> list | None:
    """Every volume of a CT-RATE folder with the rescale values of its metadata CSV; None if not one."""
    from .ctrate import CTRate, CTRateError
    from .tokens import VolumeSource

    sources = []
    for split in ("train", "valid"):
        try:
            index = CTRate(root, split, labels=False, missing="skip")
        except CTRateError:
            continue
        for i in range(len(index)):
            item = index[i]
            sources.append(VolumeSource(item["path"], item["slope"], item["intercept"],
                                        True if item["in_hu"] else None))
    return sources or None


def _single_source(path: Path, args: argparse.Namespace):
    from .tokens import VolumeSource

    return VolumeSource(path, args.slope, args.intercept)


def _add_rescale_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slope", type=float, help="HU = slope * raw + intercept, for files that store raw values "
                                                    "(CT-RATE keeps them in its metadata CSV)")
    parser.add_argument("--intercept", type=float, help="see --slope (CT-RATE: -1024, or -8192)")


def _cmd_tokenize(args: argparse.Namespace) -> int:
    source = Path(args.input)
    if not source.exists():
        raise UserError(f"no such file or folder: {source}")
    inputs = _dataset_inputs(source)
    out = Path(args.output)
    if inputs is None and out.exists() and not args.overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it or choose another -o")
    parallel = {"--devices": args.devices, "--accelerator": args.accelerator, "--num-workers": args.num_workers}
    if inputs is None and any(v is not None for v in parallel.values()):
        given = next(k for k, v in parallel.items() if v is not None)
        raise UserError(f"{given} applies to a data set (a folder or CSV); one volume is tokenized in this process")
    devices, accelerator = args.devices or 1, args.accelerator or "auto"
    if devices > 1 or accelerator == "gpu":  # fail before the tokenizer loads
        from .tokens_ddp import resolve_accelerator

        resolve_accelerator(devices, accelerator)
    from .tokens import tokenize_file, tokenize_many

    tokenizer = load_tokenizer(args.checkpoint)
    if inputs is None:
        path = tokenize_file(tokenizer, _single_source(source, args), out, window=args.window, progress=True,
                             overwrite=args.overwrite)
        print(f"wrote {path}")
        return 0
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out} is a file; a data set is tokenized into a folder")
    summary = tokenize_many(tokenizer, inputs, out, window=args.window, devices=devices, accelerator=accelerator,
                            num_workers=args.num_workers or 0)
    print(json.dumps(summary, indent=2))
    return 2 if summary["failed"] else 0


def _cmd_detokenize(args: argparse.Namespace) -> int:
    if not Path(args.tokens).is_file():
        raise UserError(f"no such token file: {args.tokens}")
    out = Path(args.output)
    if not out.name.endswith(VOLUME_SUFFIXES):
        raise UserError(f"-o {out}: write a .nii or .nii.gz file")
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it or choose another -o")
    from .tokens import detokenize_file

    path = detokenize_file(load_tokenizer(args.checkpoint), args.tokens, out, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


KV_CACHES = ("full", "window", "lacache")


def _cache_policy(args: argparse.Namespace, reporter):
    """The KV cache policy of ``report-ct``'s --kv-* options for ``reporter``'s trunk (None for full)."""
    if args.kv_cache == "full":
        return None
    from mmseq.mixers.kv_policies import LaCache, SinkWindowCache, set_cache_policy

    try:
        layers = set_cache_policy(reporter.trunk, None)  # no policy yet: counts the attention layers
    except ValueError:
        raise UserError(f"--kv-cache {args.kv_cache} bounds attention caches, and this report generator's trunk "
                        "has no causal attention layer; use --kv-cache full") from None
    sinks = reporter.n_prefix + 1 if args.kv_sinks is None else args.kv_sinks
    try:
        if args.kv_cache == "window":
            policy = SinkWindowCache(args.kv_budget, sinks, reposition=args.kv_reposition)
        else:
            policy = LaCache(args.kv_budget, sinks, span=args.kv_span or max(1, layers // 2),
                             reposition=args.kv_reposition)
        policy.validate(layers)
    except ValueError as err:
        raise UserError(f"--kv-cache {args.kv_cache}: {err} (--kv-budget {args.kv_budget}, --kv-sinks {sinks})"
                        ) from None
    return policy


def _cmd_report(args: argparse.Namespace) -> int:
    source = Path(args.input)
    if not source.exists():
        raise UserError(f"no such file or folder: {source}")
    import contextlib

    from .labeler import label_report
    from .tokens import CTTokens, tokenize_volume

    with contextlib.redirect_stdout(sys.stderr):
        reporter = load_reporter(args.checkpoint)
        if source.suffix == ".safetensors":
            tokens = CTTokens.load(source)
        else:
            tokens = tokenize_volume(load_tokenizer(args.tokenizer), _single_source(source, args).load(),
                                     source=source.name)
        codes = tokens.codes()[None]
        report = reporter.generate(codes, beam_size=args.beam, cache_policy=_cache_policy(args, reporter))[0]
        probs = None
        if reporter.label_prompt:
            from .ctrate import ABNORMALITIES

            p = reporter.eval().predict_labels(codes)[0].tolist()
            probs = {name: round(v, 4) for name, v in zip(ABNORMALITIES, p)}
    findings = sorted(name for name, present in label_report(report).items() if present)
    if args.json:
        out = {"input": str(source), "report": report, "findings": findings}
        if probs is not None:  # the label head's probabilities, which prompted the report
            out["probabilities"] = probs
        print(json.dumps(out, indent=2))
    else:
        print(report)
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    t = subparsers.add_parser(
        "tokenize-ct", help="CT volume(s) -> token files",
        description="Tokenize a CT volume (a .nii/.nii.gz file or a folder of DICOM slices) into a token file, or "
                    "a data set (a folder of NIfTI volumes such as a CT-RATE split, or a CSV with a path or "
                    "VolumeName column) into a folder of token files plus index.csv. Data sets resume: files "
                    "already made are skipped. Without --checkpoint the shipped tokenizer is used.")
    t.add_argument("input", metavar="IN",
                   help="NIfTI file, DICOM folder or .zip of one, folder of NIfTI volumes, or CSV")
    t.add_argument("-o", "--output", required=True, help="TOKENS.safetensors for one volume; a folder for a set")
    t.add_argument("--checkpoint", help="tokenizer run or model folder (default: the shipped tokenizer)")
    t.add_argument("--window", type=positive_int, default=32,
                   help="slices encoded at a time (memory; the tokens do not depend on it; default 32)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    _add_rescale_options(t)
    g = t.add_argument_group("several processes or GPUs (data sets only)")
    g.add_argument("--devices", type=positive_int, metavar="N",
                   help="encode the volumes still to do in N processes through Lightning's predict loop (DDP): one "
                        "per GPU, or N CPU processes sharing the cores; the files are the same as with one (default 1: "
                        "this process)")
    g.add_argument("--accelerator", choices=("auto", "cpu", "gpu"),
                   help="where those processes encode: auto (GPUs if there are any, else the CPU), cpu or gpu; gpu "
                        "runs Lightning even with --devices 1 (default auto)")
    g.add_argument("--num-workers", type=non_negative_int, metavar="W",
                   help="loader processes per device that read and resample the next volumes while one is encoded "
                        "(default 0: the device's own process)")
    t.set_defaults(func=_cmd_tokenize)

    d = subparsers.add_parser("detokenize-ct", help="token file -> CT volume (.nii.gz)",
                              description="Decode a token file into a NIfTI volume in the geometry of the volume "
                                          "that was tokenized (on the tokenizer's resampled grid).")
    d.add_argument("tokens", metavar="TOKENS", help="a token file from tokenize-ct")
    d.add_argument("-o", "--output", required=True, help="OUT.nii.gz")
    d.add_argument("--checkpoint", help="tokenizer run or model folder (default: the shipped tokenizer)")
    d.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    d.set_defaults(func=_cmd_detokenize)

    r = subparsers.add_parser("report-ct", help="write a radiology report for a CT volume",
                              description="Generate a report for a CT volume (NIfTI file, DICOM folder or .zip of "
                                          "a DICOM series) or a token file. Without --checkpoint / --tokenizer the "
                                          "shipped models are used.")
    r.add_argument("input", metavar="IN", help="NIfTI file, DICOM folder, .zip of a DICOM series, or token file")
    r.add_argument("--checkpoint", help="report generator run or model folder (default: the shipped one)")
    r.add_argument("--tokenizer", help="tokenizer run or model folder (default: the shipped one)")
    r.add_argument("--beam", type=positive_int, default=1, help="beam size (default 1: greedy)")
    r.add_argument("--json", action="store_true", help="print {input, report, findings} as JSON")
    _add_rescale_options(r)
    k = r.add_argument_group("bounded KV cache while decoding (attention trunks, as the shipped generator's)")
    k.add_argument("--kv-cache", choices=KV_CACHES, default="full",
                   help="full: keep every entry (default); window: the sinks and the newest entries "
                        "(StreamingLLM); lacache: the ladder-shaped cache (LaCache)")
    k.add_argument("--kv-budget", type=positive_int, default=64, metavar="N",
                   help="entries kept per attention layer with window or lacache (default 64)")
    k.add_argument("--kv-sinks", type=non_negative_int, default=None, metavar="N",
                   help="leading entries always kept (default: the prefix and <bos>, so the volume's tokens and "
                        "the label prompt stay whole)")
    k.add_argument("--kv-span", type=positive_int, default=None, metavar="S",
                   help="lacache: about how many adjacent layers keep each entry (default: half the attention "
                        "layers)")
    k.add_argument("--kv-reposition", action="store_true",
                   help="rotate the kept keys at their places in the cache each step, so no query-key distance "
                        "exceeds the budget (StreamingLLM's and LaCache's positions)")
    r.set_defaults(func=_cmd_report)
