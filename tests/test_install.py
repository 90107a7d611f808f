"""Install smoke tests: the command, its verbs, and no top-level `kernels` module."""

import re
import subprocess
import sys

import pytest


def test_help_lists_verbs(tmp_path, run_cli):
    r = run_cli("--help", cwd=tmp_path)
    assert r.returncode == 0
    for verb in ("train", "eval", "info", "data", "classify-audio"):
        assert verb in r.stdout


@pytest.mark.parametrize("verb", [["train"], ["eval"], ["info"], ["data"], ["data", "make"], ["classify-audio"]])
def test_every_verb_has_help(tmp_path, verb, run_cli):
    r = run_cli(*verb, "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "usage: mmseq" in r.stdout


def test_info_reports_versions_and_kernel_paths(tmp_path, run_cli):
    r = run_cli("info", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import json

    info = json.loads(r.stdout)
    assert info["versions"]["torch"].startswith("2.")
    assert set(info["kernel_paths"]) == {"selective_scan", "causal_conv1d", "fft_conv", "attention"}
    assert info["default_kernel_path"] in ("torch", "triton")
    assert set(info["cpu_kernels"]) == {"selective_scan"}
    assert any(w in info["cpu_kernels"]["selective_scan"] for w in ("built", "no C++ compiler", "off"))
    import shutil

    assert info["speech_engines"]["espeak"] == (shutil.which("espeak-ng") is not None)
    assert set(info["speech_engines"]) == {"espeak", "flite", "festival", "piper"}


def test_no_top_level_kernels_module_installed(tmp_path):
    # Run from an empty folder so the repository's own kernels/ folder is not on sys.path.
    code = "import importlib.util, mmseq.kernels; print(importlib.util.find_spec('kernels'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"


def test_every_package_is_listed_in_pyproject(repo_root):
    text = (repo_root / "pyproject.toml").read_text()
    listed = set(re.findall(r'^\s+"(mmseq[\w.]*)",$', text, flags=re.M))
    found = {"mmseq." + ".".join(p.parent.relative_to(repo_root / "mmseq").parts) if p.parent != repo_root / "mmseq"
             else "mmseq" for p in (repo_root / "mmseq").rglob("__init__.py")}
    found.add("mmseq.kernels")
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_unknown_verb_and_bad_args_fail(tmp_path, run_cli):
    r = run_cli("frobnicate", cwd=tmp_path)
    assert r.returncode != 0


def test_info_lists_kernels_that_fell_back(monkeypatch):
    import mmseq.kernels._dispatch as dispatch

    from mmseq.info import collect_info, format_info

    assert collect_info()["kernel_fallbacks"] == {}
    monkeypatch.setitem(dispatch._FAILED, "attention", "RuntimeError: no kernel image")
    info = collect_info()
    assert info["kernel_fallbacks"] == {"attention": "RuntimeError: no kernel image"}
    assert "attention        fell back to torch in this process: RuntimeError: no kernel image" in format_info(info)
