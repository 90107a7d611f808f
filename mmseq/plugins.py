"""Where the runner and the CLI find domains, by import path: nothing here imports a domain.

A domain package brings its tasks (``<domain>/tasks.py``, classes registered with ``@register_task``) and its
command-line verbs and data sets (``<domain>/cli.py`` with ``add_commands(subparsers)``). The built-in ones
are listed below; another installed package adds its own through entry points in its pyproject::

    [project.entry-points."mmseq.tasks"]
    segmentation = "my_package.tasks"          # task name = module whose import registers it

    [project.entry-points."mmseq.commands"]
    my_domain = "my_package.cli"               # module with add_commands(subparsers)
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

TASK_GROUP = "mmseq.tasks"
COMMAND_GROUP = "mmseq.commands"

BUILTIN_TASKS = {
    "mqar": "mmseq.synthetic.tasks",
    "passkey": "mmseq.synthetic.tasks",
    "joint-recall": "mmseq.synthetic.recall",
    "copy": "mmseq.synthetic.copying",
    "selective-copy": "mmseq.synthetic.copying",
    "maze": "mmseq.synthetic.mazes",
    "dna-pretrain": "mmseq.synthetic.dna",
    "dna-classify": "mmseq.synthetic.dna",
    "keywords": "mmseq.audio.tasks",
    "ct-tokenizer": "mmseq.medical.tasks",
    "ct-report": "mmseq.medical.report_task",
    "segmentation": "mmseq.vision.tasks",
}

BUILTIN_COMMANDS = {
    "synthetic": "mmseq.synthetic.cli",
    "long-context": "mmseq.synthetic.suite_cli",
    "audio": "mmseq.audio.cli",
    "medical": "mmseq.medical.cli",
    "vision": "mmseq.vision.cli",
    "apps": "mmseq.apps.cli",
}


def _entry_points(group: str) -> dict[str, str]:
    return {ep.name: ep.value.split(":")[0] for ep in entry_points(group=group)}


@functools.cache
def task_modules() -> dict[str, str]:
    """Task name -> the module whose import registers it (built-ins, then installed packages)."""
    return {**BUILTIN_TASKS, **_entry_points(TASK_GROUP)}


@functools.cache
def command_modules() -> dict[str, str]:
    """Domain name -> its CLI module (``add_commands(subparsers)``; optional ``info() -> dict``)."""
    return {**BUILTIN_COMMANDS, **_entry_points(COMMAND_GROUP)}
