"""Shared by the kernel tests: the device Triton runs on, skip marks, and one comparison of named tensors.

Test files import it as ``from tests.kernels._helpers import ...``: under ``--import-mode=importlib`` pytest
imports ``tests`` as a package (it holds the root conftest.py), so this works from any working directory.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before any kernel module is built (tests/conftest.py sets it first as well)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mmseq.kernels._dispatch import kernel_runnable  # noqa: E402

# Where the Triton paths run: the GPU when there is one, else the CPU under TRITON_INTERPRET=1.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

GPU = [pytest.mark.gpu, pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a GPU")]


def triton_marks(*kernels) -> list:
    """Marks for a test that launches ``kernels`` (``@triton.jit`` functions) on ``DEVICE``: ``triton``, and a
    skip where they cannot run (Triton missing, or on the CPU built before TRITON_INTERPRET=1 was set)."""
    ready = all(kernel_runnable(k, DEVICE) for k in kernels)
    reason = "Triton kernels cannot run here (not installed, or built before TRITON_INTERPRET=1 was set)"
    return [pytest.mark.triton, pytest.mark.skipif(not ready, reason=reason)]


def marked(marks: list):
    """Decorator applying a list of marks (such as ``triton_marks(...)``) to a test function."""

    def wrap(fn):
        for mark in reversed(marks):
            fn = mark(fn)
        return fn

    return wrap


def errors(got: torch.Tensor, want: torch.Tensor, floor: float = 0.0) -> dict:
    """Errors of ``got`` against ``want``, in float64 on the CPU.

    ``rms``: RMS(got - want) / max(RMS(want), floor); the floor keeps exact-zero references meaningful.
    ``max``: max |got - want| / max |want|. ``abs``: max |got - want|.
    """
    a, b = got.detach().double().cpu(), want.detach().double().cpu()
    if b.numel() == 0:
        return {"rms": 0.0, "max": 0.0, "abs": 0.0}
    d = a - b
    rms = lambda t: t.pow(2).mean().sqrt().item()
    max_abs = d.abs().max().item()
    return {"rms": rms(d) / max(rms(b), floor, 1e-300), "max": max_abs / max(b.abs().max().item(), 1e-300),
            "abs": max_abs}


def assert_close(got: dict, want: dict, tol: float, *, by: str = "rms", floor: float = 0.0, label: str = "") -> None:
    """Every tensor of ``want`` against the one of the same name in ``got``: same shape, finite, and the error
    ``by`` ("rms" or "max", see ``errors``) at most ``tol``. A None in ``want`` (no gradient expected) needs a
    None in ``got``. Every tensor's errors are printed, and the failing ones are named in the message."""
    assert by in ("rms", "max"), by
    report, bad = [], []
    for name, w in want.items():
        g = got.get(name)
        if w is None:
            assert g is None, f"{label} {name}: expected None (no gradient), got a tensor"
            continue
        assert g is not None, f"{label} {name}: missing"
        assert g.shape == w.shape, f"{label} {name}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        assert torch.isfinite(g).all(), f"{label} {name}: non-finite values"
        e = errors(g, w, floor)
        report.append(f"{name}: rel rms {e['rms']:.2e}, rel max {e['max']:.2e}, max abs {e['abs']:.2e}")
        if not e[by] <= tol:
            bad.append(name)
    print(label, "; ".join(report))
    assert not bad, f"{label} {bad}: rel {by} error above {tol:g}: " + "; ".join(report)


def outputs_and_grads(call, inputs: dict, names: tuple[str, str], seed: int = 1) -> dict:
    """Run ``call(**leaves)`` -> (output, final state) on fresh leaf copies of ``inputs`` (None stays None), then
    backward with seeded random cotangents for both, so the state's backward is checked too.

    Returns {names[0]: output, names[1]: state, "d<input>": its gradient (None for None inputs)}."""
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out, state = call(**leaves)
    g = torch.Generator().manual_seed(seed)
    d_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype).to(out.device)
    d_state = torch.randn(state.shape, generator=g, dtype=torch.float64).to(state.dtype).to(state.device)
    ((out * d_out).sum() + (state * d_state).sum()).backward()
    res = {names[0]: out, names[1]: state}
    for k, v in leaves.items():
        res["d" + k] = v.grad if v is not None else None
    return res
