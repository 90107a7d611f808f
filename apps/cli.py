"""``mmseq demo``: serve the Gradio demos. Imports neither torch nor gradio until the verb runs."""

from __future__ import annotations

import argparse

from mmseq.commands import positive_float, positive_int
from mmseq.errors import UserError

DOMAINS = ("vision", "medical", "audio")
# --checkpoint KEY=DIR keys; a bare DIR goes to the one domain chosen (medical: its tokenizer)
CHECKPOINT_KEYS = ("vision", "audio", "ct-tokenizer", "ct-report")
_BARE = {"vision": "vision", "audio": "audio", "medical": "ct-tokenizer"}


def parse_checkpoints(values: list[str] | None, domain: str) -> dict[str, str]:
    """``["vision=DIR", ...]`` (or one bare ``DIR`` when a single domain is served) -> {key: DIR}."""
    out: dict[str, str] = {}
    for value in values or []:
        key, sep, path = value.partition("=")
        if not sep:
            if domain == "all":
                raise UserError(f"--checkpoint {value}: with 'all' say which model, e.g. --checkpoint vision={value} "
                                f"(keys: {', '.join(CHECKPOINT_KEYS)})")
            key, path = _BARE[domain], value
        key = {"medical": "ct-tokenizer"}.get(key, key)
        if key not in CHECKPOINT_KEYS:
            raise UserError(f"--checkpoint {value}: unknown model {key!r}; use one of {', '.join(CHECKPOINT_KEYS)}")
        if not path:
            raise UserError(f"--checkpoint {value}: give a folder after '='")
        out[key] = path
    return out


def _size_mb(text: str) -> float:
    t = text.strip().lower().removesuffix("b").removesuffix("m")
    return positive_float(t)


def _check_address(host: str, port: int) -> None:
    """Fail in one line, before any model loads, when the port is taken or the address is not this machine's."""
    import socket

    if not 0 < port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise UserError(f"cannot serve on {host}:{port}: {e.strerror or e}; choose another --port or --host") from None


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    checkpoints = parse_checkpoints(args.checkpoint, args.domain)
    for key, path in checkpoints.items():
        if not Path(path).exists():
            raise UserError(f"--checkpoint {key}={path}: no such folder")
    _check_address(args.host, args.port)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the demos need Gradio: pip install 'mmseq[apps]'") from None
    from .app import Settings, serve

    domains = DOMAINS if args.domain == "all" else (args.domain,)
    settings = Settings(max_file_mb=args.max_file_size, max_audio_seconds=args.max_audio_seconds,
                        concurrency=args.concurrency, checkpoints=checkpoints)
    serve(domains, settings, host=args.host, port=args.port)
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    d = subparsers.add_parser(
        "demo", help="serve the Gradio demos (vision, medical, audio or all) in a browser",
        description="Serve interactive demos of the domains on http://HOST:PORT (one tab per domain with 'all'). "
                    "Works offline (no analytics, no CDN, no downloads). Without --checkpoint the shipped models "
                    "are used. Needs the apps extra: pip install 'mmseq[apps]'.")
    d.add_argument("domain", nargs="?", choices=(*DOMAINS, "all"), default="all",
                   help="which demo to serve (default all)")
    d.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 serves the network)")
    d.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    d.add_argument("--checkpoint", action="append", metavar="[MODEL=]DIR",
                   help="a run or model folder to use instead of a shipped model; with 'all' (or for the report "
                        f"generator) say which: {', '.join(k + '=DIR' for k in CHECKPOINT_KEYS)}; repeatable")
    d.add_argument("--max-file-size", type=_size_mb, default=50.0, metavar="MB",
                   help="largest upload accepted, in MB (default 50)")
    d.add_argument("--max-audio-seconds", type=positive_float, default=60.0,
                   help="longest audio clip accepted, in seconds (default 60)")
    d.add_argument("--concurrency", type=positive_int, default=2,
                   help="requests worked on at once; others wait in the queue (default 2)")
    d.set_defaults(func=_cmd_demo)
