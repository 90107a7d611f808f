"""What a domain's ``cli.py`` uses to join the ``mmseq`` command: data sets and argument checks.

A domain CLI module (listed in ``mmseq.plugins``) defines ``add_commands(subparsers)`` for its verbs and
registers its built-in data sets with ``@register_dataset``; it may define ``info() -> dict`` for
``mmseq info``. It must import no heavy library at module level (``mmseq --help`` imports every domain's CLI
module); verbs import what they need when they run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmseq.errors import UserError
from mmseq.registry import Registry


class DatasetMaker:
    """A built-in data set: ``mmseq data make NAME OUT_DIR [options]`` writes it in its real format."""

    help: str = ""
    description: str = ""
    takes_overrides: bool = False  # accepts data.key=value overrides after OUT_DIR

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this data set's own options."""

    def make(self, args: argparse.Namespace, out_dir: Path) -> int:
        """Write the data set into ``out_dir`` (new or empty); returns the exit code."""
        raise NotImplementedError


DATASETS: Registry[type[DatasetMaker]] = Registry("data set")


def register_dataset(name: str):
    """Class decorator: ``@register_dataset("keywords")`` adds ``mmseq data make keywords``."""
    return DATASETS.register(name)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def shipped_model_dir(name: str) -> Path:
    """The folder of a model that ships inside the package (``mmseq/assets/<name>``); it may not exist."""
    from importlib import resources

    return Path(str(resources.files("mmseq") / "assets" / name))


def load_model(cls, checkpoint: str | Path | None, shipped: str, what: str):
    """``cls.from_pretrained`` of ``checkpoint`` (a run or model folder), or of the shipped model ``shipped``
    when it is None; a missing shipped model is one line naming ``what`` and the way out."""
    path = Path(checkpoint) if checkpoint else shipped_model_dir(shipped)
    if checkpoint is None and not path.is_dir():
        raise UserError(f"no {what} ships with this installation; pass --checkpoint RUN_OR_MODEL_DIR")
    return cls.from_pretrained(path)


def verb_group(subparsers: argparse._SubParsersAction, verb: str, help: str,
               description: str) -> argparse._SubParsersAction:
    """The sub-verbs of ``mmseq VERB``, a verb that several domains may fill (``mmseq bench longcontext``):
    the first domain to ask adds the verb, the others get its sub-verbs back."""
    parser = subparsers.choices.get(verb)
    if parser is None:
        parser = subparsers.add_parser(verb, help=help, description=description)
        parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
        parser.set_defaults(_sub_verbs=parser.add_subparsers(dest=f"{verb}_verb", metavar="NAME"))
    return parser.get_default("_sub_verbs")
