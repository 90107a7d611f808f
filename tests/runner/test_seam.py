"""The seam between the core and the domains: the core imports no domain, tasks and verbs are found by name."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import mmseq.plugins as plugins
from mmseq.errors import ConfigError
from mmseq.runner.task import TASKS, get_task, task_names

PACKAGE = Path(__file__).resolve().parents[2] / "mmseq"
DOMAINS = ("audio", "synthetic", "vision", "medical")
# The core: the runner, and the modules every command and domain builds on.
CORE = [*sorted((PACKAGE / "runner").glob("*.py")), PACKAGE / "cli.py", PACKAGE / "commands.py",
        PACKAGE / "plugins.py", PACKAGE / "registry.py", PACKAGE / "info.py", PACKAGE / "errors.py",
        *sorted((PACKAGE / "data").glob("*.py")), *sorted((PACKAGE / "mixers").glob("*.py"))]


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included), as absolute names."""
    package = ".".join(["mmseq", *path.relative_to(PACKAGE).parts[:-1]])
    return _imports_in(path.read_text(), package)


def _imports_in(source: str, package: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                names.add(".".join([*base, node.module] if node.module else base))
            else:
                names.add(node.module)
    return names


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_module_imports_no_domain(path):
    domains = {m for m in _imported_modules(path) for d in DOMAINS if m == f"mmseq.{d}" or
               m.startswith(f"mmseq.{d}.")}
    assert not domains, f"{path.name} imports {sorted(domains)}; find domains through mmseq.plugins"


def test_import_scan_sees_relative_and_nested_imports():
    """The scan above must be able to fail: imports inside functions and relative ones are found."""
    source = "import os\ndef f():\n    from ..audio import tasks\n    from .config import x\n    import mmseq.vision\n"
    assert _imports_in(source, "mmseq.runner") >= {"mmseq.audio", "mmseq.runner.config", "mmseq.vision"}
    assert "mmseq.plugins" in _imported_modules(PACKAGE / "runner" / "task.py")


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_training_mqar_through_the_cli_imports_no_other_domain(tiny_mqar, tmp_path):
    r = _run_python(f"""
        import json, sys
        from mmseq.cli import main
        code = main(["train", {str(tiny_mqar)!r}, "trainer.max_steps=2", "--run-dir", "run"])
        loaded = sorted({{m.split(".")[1] for m in sys.modules if m.startswith("mmseq.") and m.count(".") >= 1}})
        print(json.dumps({{"code": code, "loaded": loaded}}))
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["code"] == 0
    assert "synthetic" in out["loaded"]
    assert not {"audio", "vision", "medical"} & set(out["loaded"]), out["loaded"]


def test_help_lists_every_verb_without_importing_torch(tmp_path):
    r = _run_python("""
        import contextlib, io, sys
        from mmseq.cli import main
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main(["--help"])
        print(code, "torch" in sys.modules, "lightning" in sys.modules)
        print(buf.getvalue())
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    first, help_text = r.stdout.split("\n", 1)
    assert first.split() == ["0", "False", "False"]
    for verb in ("train", "eval", "info", "data", "classify-audio", "tokenize-ct", "detokenize-ct", "report-ct"):
        assert verb in help_text


def test_data_make_lists_every_registered_data_set(run_cli, tmp_path):
    r = run_cli("data", "make", "--help", cwd=tmp_path)
    assert r.returncode == 0
    for name in ("mqar", "passkey", "keywords", "ct-phantoms"):
        assert name in r.stdout
    r = run_cli("data", "make", "keywords", "--help", cwd=tmp_path)
    assert "--per-word" in r.stdout and "--engines" in r.stdout
    r = run_cli("data", "make", "mqar", "--help", cwd=tmp_path)
    assert "--per-word" not in r.stdout and "data.KEY=VALUE" in r.stdout


def test_a_package_adds_a_task_through_an_entry_point(tmp_path, monkeypatch):
    module = tmp_path / "toy_tasks_pkg.py"
    module.write_text(textwrap.dedent("""
        from mmseq.runner.task import register_task
        from mmseq.synthetic.tasks import MQARTask

        @register_task("toy_recall")
        class ToyRecall(MQARTask):
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [EntryPoint(name="toy_recall", value="toy_tasks_pkg", group=plugins.TASK_GROUP)]
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps if group == plugins.TASK_GROUP else [])
    plugins.task_modules.cache_clear()
    try:
        assert "toy_recall" in task_names()
        assert get_task("toy_recall").__name__ == "ToyRecall"
    finally:
        plugins.task_modules.cache_clear()
        TASKS._entries.pop("toy_recall", None)
        sys.modules.pop("toy_tasks_pkg", None)


def test_unknown_task_and_broken_task_module_are_one_line(monkeypatch):
    with pytest.raises(ConfigError, match="unknown task 'mqr' \\(did you mean 'mqar'\\?\\)"):
        get_task("mqr")
    monkeypatch.setitem(plugins.BUILTIN_TASKS, "ghost", "mmseq.no_such_module")
    plugins.task_modules.cache_clear()
    try:
        with pytest.raises(ConfigError, match="ghost.*cannot be imported"):
            get_task("ghost")
    finally:
        monkeypatch.undo()
        plugins.task_modules.cache_clear()


def test_builtin_table_matches_what_the_modules_register():
    import importlib

    for name, module in plugins.BUILTIN_TASKS.items():
        importlib.import_module(module)
        assert TASKS.get(name).__module__ == module
