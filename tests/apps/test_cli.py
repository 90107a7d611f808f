"""`mmseq demo`: its options, its one-line errors, and a light `mmseq --help`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mmseq.errors import UserError


def test_help_lists_demo_and_stays_light(tmp_path):
    code = ("import sys; from mmseq.cli import main; rc = main(['--help']); "
            "print('HEAVY', [m for m in ('torch', 'gradio') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "demo" in r.stdout and "HEAVY []" in r.stdout


def test_demo_help(tmp_path, run_cli):
    r = run_cli("demo", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "usage: mmseq demo" in r.stdout
    for option in ("--host", "--port", "--checkpoint", "--max-file-size", "{vision,medical,audio,all}"):
        assert option in r.stdout
    assert "127.0.0.1" in r.stdout


def test_parse_checkpoints():
    from mmseq.apps.cli import parse_checkpoints

    assert parse_checkpoints(None, "all") == {}
    assert parse_checkpoints(["runs/seg"], "vision") == {"vision": "runs/seg"}
    assert parse_checkpoints(["runs/tok"], "medical") == {"ct-tokenizer": "runs/tok"}
    assert parse_checkpoints(["vision=a", "ct-report=b", "medical=c"], "all") == {
        "vision": "a", "ct-report": "b", "ct-tokenizer": "c"}
    with pytest.raises(UserError, match="with 'all' say which model"):
        parse_checkpoints(["runs/seg"], "all")
    with pytest.raises(UserError, match="unknown model 'speech'"):
        parse_checkpoints(["speech=x"], "all")


@pytest.mark.parametrize(("args", "message"), [
    (["demo", "all", "--checkpoint", "vision=does/not/exist"], "--checkpoint vision=does/not/exist: no such folder"),
    (["demo", "all", "--checkpoint", "somewhere"], "with 'all' say which model"),
])
def test_demo_bad_arguments_are_one_line(tmp_path, run_cli, args, message):
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_launch_options_are_local_and_limited():
    from mmseq.apps.app import build_demo, launch_options
    from mmseq.apps.common import Settings, examples_dir

    opts = launch_options(Settings(max_file_mb=7), "127.0.0.1", 7860)
    assert opts["server_name"] == "127.0.0.1" and opts["share"] is False
    assert opts["max_file_size"] == "7mb" and opts["allowed_paths"] == [str(examples_dir())]
    import os

    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    demo = build_demo(("audio",), Settings())
    assert demo.analytics_enabled is False
    assert demo._queue.default_concurrency_limit == 2  # the queue is on: requests wait their turn


def test_demo_on_a_busy_port_is_one_line(tmp_path, run_cli):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_cli("demo", "audio", "--port", str(port), cwd=tmp_path, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"mmseq demo: error: cannot serve on 127.0.0.1:{port}: Address already in use" in r.stderr
    assert "Traceback" not in r.stderr
