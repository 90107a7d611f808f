"""Compiled CPU kernels (kernels/_cpu_build.py, kernels/csrc): built at first use, used by the torch path, and a
missing or failing compiler costs one warning and nothing else."""

import importlib
import os

import pytest
import torch

from tests.kernels._helpers import assert_close, outputs_and_grads

build = importlib.import_module("mmseq.kernels._cpu_build")
ss = importlib.import_module("mmseq.kernels.selective_scan")

HAS_COMPILER = build.find_compiler() is not None
NAMES = ("out", "last_state", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias")


def _inputs(Bs, D, N, L, G, dtype=torch.float64, seed=0, A_sign=-1.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    return {"u": r(Bs, D, L), "delta": r(Bs, D, L) * 0.5, "A": A_sign * (torch.rand(D, N, generator=g,
            dtype=dtype) + 0.2), "B": r(Bs, G, N, L), "C": r(Bs, G, N, L), "D": r(D), "z": r(Bs, D, L),
            "delta_bias": r(D) * 0.1}


def _scan(x, softplus=True):
    def fn(**kw):
        return ss.selective_scan(**kw, delta_softplus=softplus, return_last_state=True, impl="torch")
    return outputs_and_grads(fn, x, NAMES)


def _ref(x, softplus=True):
    def fn(**kw):
        return ss.selective_scan_ref(**kw, delta_softplus=softplus, return_last_state=True)
    return outputs_and_grads(fn, x, NAMES)


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """A private cache directory and a cleared loader, restored after the test."""
    monkeypatch.setenv("MMSEQ_CACHE_DIR", str(tmp_path))
    build._load.cache_clear()
    yield tmp_path
    build._load.cache_clear()


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler (g++: `make system-deps`)")
def test_builds_into_the_cache_and_is_used(fresh_build, monkeypatch):
    calls = []
    real = ss._selective_scan_cpu
    monkeypatch.setattr(ss, "_selective_scan_cpu", lambda *a: calls.append(1) or real(*a))
    x = _inputs(2, 4, 3, 9, 1, torch.float32)
    ss.selective_scan(**x, delta_softplus=True, impl="torch")
    assert len(calls) == 1
    built = list((fresh_build / "cpu_kernels").glob("selective_scan_cpu-*.so"))
    assert len(built) == 1, built
    assert not list((fresh_build / "cpu_kernels").glob(".*")), "no temporary file is left behind"
    monkeypatch.setenv("MMSEQ_CPU_KERNELS", "0")
    ss.selective_scan(**x, delta_softplus=True, impl="torch")
    assert len(calls) == 1, "MMSEQ_CPU_KERNELS=0 keeps the PyTorch code"


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler (g++: `make system-deps`)")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(1, 6, 5, 17, 1), (3, 8, 16, 40, 2), (2, 5, 3, 1, 5), (1, 7, 33, 64, 7)],
                         ids=lambda s: "B{}-D{}-N{}-L{}-G{}".format(*s))
def test_compiled_core_equals_the_reference_in_float64(shape, threads):
    """Every output and gradient to 1e-12 against the float64 loop; with one batch row and two threads the
    channels of a group are split into parts whose dB, dC slices are summed (G = D: one channel per group)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = _inputs(*shape)
        assert_close(_scan(x), _ref(x), 1e-12, by="max", label=str(shape))
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler (g++: `make system-deps`)")
@pytest.mark.parametrize("case", ["underflow", "growth"])
def test_compiled_core_at_extreme_steps(case):
    """dt * A of about -1e3 a step (decays underflow to zero) and a growing state (A > 0), both in float32
    against the float64 reference: the exp2 of the core is clamped, never overflowed or NaN."""
    x = _inputs(1, 4, 8, 60, 1, A_sign=-1.0 if case == "underflow" else 0.3)
    x["delta"] = x["delta"].abs() * (4000 if case == "underflow" else 1)
    want = _ref(x, softplus=False)
    got = _scan({k: v.float() for k, v in x.items()}, softplus=False)
    assert all(torch.isfinite(t).all() for t in got.values())
    assert_close(got, want, 1e-5, by="max", label=case)


@pytest.mark.parametrize("compiler", ["missing", "failing"])
def test_without_a_working_compiler_one_warning_then_the_pytorch_path(fresh_build, monkeypatch, compiler):
    monkeypatch.setenv("CXX", "/nonexistent/g++" if compiler == "missing" else "false")
    x = _inputs(2, 4, 3, 9, 1, torch.float32)
    with pytest.warns(build.CpuKernelWarning, match="selective_scan_cpu"):
        got = ss.selective_scan(**x, delta_softplus=True, impl="torch")
    monkeypatch.setenv("MMSEQ_CPU_KERNELS", "0")
    assert torch.equal(got, ss.selective_scan(**x, delta_softplus=True, impl="torch"))
    monkeypatch.delenv("MMSEQ_CPU_KERNELS")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ss.selective_scan(**x, delta_softplus=True, impl="torch")  # once per process: no second warning
    assert not list(fresh_build.glob("**/*.so"))


def test_second_order_gradients_are_refused():
    x = {k: v.float().requires_grad_() for k, v in _inputs(1, 4, 3, 5, 1).items()}
    out = ss.selective_scan(**x, delta_softplus=True, impl="torch")
    (gu,) = torch.autograd.grad(out.pow(2).sum(), x["u"], create_graph=True)
    if build.load_cpu_library("selective_scan_cpu") is None:
        pytest.skip("no compiled core")
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gu.sum().backward()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MMSEQ_CACHE_DIR", str(tmp_path / "c"))
    assert build.cache_dir() == tmp_path / "c" / "cpu_kernels"
    monkeypatch.delenv("MMSEQ_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert build.cache_dir() == tmp_path / "x" / "mmseq" / "cpu_kernels"
    assert os.fspath(build.CSRC / "selective_scan_cpu.cpp")


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler (g++: `make system-deps`)")
def test_the_backward_follows_the_forward_when_the_kernels_are_switched_off_between(monkeypatch):
    x = _inputs(2, 4, 3, 9, 1)
    want = _ref(x)

    def fn(**kw):
        out, last = ss.selective_scan(**kw, delta_softplus=True, return_last_state=True, impl="torch")
        monkeypatch.setenv("MMSEQ_CPU_KERNELS", "0")  # before the backward that outputs_and_grads runs
        return out, last

    assert_close(outputs_and_grads(fn, x, NAMES), want, 1e-12, by="max", label="switched off")


def test_cpu_kernels_off_restores_the_environment(monkeypatch):
    monkeypatch.delenv("MMSEQ_CPU_KERNELS", raising=False)
    with build.cpu_kernels_off():
        assert not build.cpu_kernels_enabled()
    assert "MMSEQ_CPU_KERNELS" not in os.environ
    monkeypatch.setenv("MMSEQ_CPU_KERNELS", "1")
    with pytest.raises(KeyError), build.cpu_kernels_off():
        raise KeyError("inside")
    assert os.environ["MMSEQ_CPU_KERNELS"] == "1"
