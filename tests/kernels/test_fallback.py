"""The safe default: a Triton kernel chosen by default that fails to compile or launch gives way to the torch path.

Each op's public function is made to pick Triton for ``impl=None`` on CPU tensors (its module's ``pick_impl``
is patched), and one of its Triton launchers is patched to raise as a failed compile would. The default call
must then return exactly what ``impl="torch"`` returns, warn once per op (naming the op and how to report it),
stay on the torch path afterwards, and ``impl="triton"`` must still raise. A failing backward kernel is
replaced by the torch path's backward in the same way; those tests launch the real forward kernels
(``TRITON_INTERPRET=1`` on the CPU).
"""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch
from mmseq.kernels import _dispatch

from tests.kernels._helpers import DEVICE, marked, triton_marks

MODULES = {op: importlib.import_module(f"mmseq.kernels.{op}")
           for op in ("selective_scan", "causal_conv1d", "fft_conv", "attention")}


class CompileFailed(RuntimeError):
    """Stands for what Triton raises when a kernel does not compile on a GPU (e.g. out of shared memory)."""


def _boom(*args, **kwargs):
    raise CompileFailed("kernel did not compile (simulated)")


def _inputs(op: str, device: str | torch.device = "cpu", grad: bool = False) -> tuple[tuple, dict]:
    """Small positional and keyword arguments of each op's public function."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(device).requires_grad_(grad)
    if op == "selective_scan":
        A = (-torch.rand(6, 3, generator=g) - 0.5).to(device).requires_grad_(grad)
        delta = torch.rand(2, 6, 11, generator=g).to(device).requires_grad_(grad)
        return (r(2, 6, 11), delta, A, r(2, 3, 11), r(2, 3, 11), r(6), r(2, 6, 11)), {"return_last_state": True}
    if op == "causal_conv1d":
        return (r(2, 5, 13), r(5, 4), r(5)), {"activation": "silu"}
    if op == "fft_conv":
        return (r(2, 3, 17), r(3, 9), r(3)), {}
    q, k, v = r(1, 2, 20, 16), r(1, 2, 20, 16), r(1, 2, 20, 16)
    return (q, k, v), {"causal": True, "window": 5}


# The forward launcher of each op: patched to raise before any kernel runs.
FWD_LAUNCHER = {"selective_scan": "_selective_scan_fwd", "causal_conv1d": "_causal_conv1d_fwd",
                "fft_conv": "_direct_conv", "attention": "_attn_fwd"}
# The Triton forward kernel each op launches (for the skip marks of the tests that really run it).
FWD_KERNEL = {"selective_scan": "_selective_scan_fwd_kernel", "causal_conv1d": "_causal_conv1d_fwd_kernel",
              "fft_conv": "_direct_conv_kernel", "attention": "_attn_fwd_kernel"}


@pytest.fixture(autouse=True)
def fresh_fallbacks(monkeypatch):
    """Each test starts with no op fallen back and no call signature verified."""
    monkeypatch.setattr(_dispatch, "_FAILED", {})
    monkeypatch.setattr(_dispatch, "_VERIFIED", {})


@pytest.fixture
def default_is_triton(monkeypatch):
    """Make ``module``'s public function take the Triton path for impl=None (and for impl="triton") anywhere."""

    def patch(module):
        real = module.pick_impl
        monkeypatch.setattr(module, "pick_impl",
                            lambda op, impl, device: "triton" if impl in (None, "triton") else real(op, impl, device))
        if hasattr(module, "_triton_ready"):  # attention checks the kernel can run before launching it
            monkeypatch.setattr(module, "_triton_ready", lambda device: True)

    return patch


def _call(op: str, args: tuple, kwargs: dict, impl: str | None):
    return getattr(MODULES[op], op)(*args, **kwargs, impl=impl)


def _as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def _fallback_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, _dispatch.TritonFallbackWarning)]


@pytest.mark.parametrize("op", list(MODULES))
def test_failed_forward_falls_back_to_torch_with_one_warning(op, default_is_triton, monkeypatch):
    module = MODULES[op]
    default_is_triton(module)
    calls = []
    monkeypatch.setattr(module, FWD_LAUNCHER[op], lambda *a, **k: calls.append(1) or _boom())
    args, kwargs = _inputs(op)
    want = _as_tuple(_call(op, args, kwargs, "torch"))

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = _as_tuple(_call(op, args, kwargs, None))
        second = _as_tuple(_call(op, args, kwargs, None))

    for got in (first, second):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
    messages = _fallback_warnings(record)
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"{op}: the Triton kernel failed"), messages[0]
    assert "CompileFailed: kernel did not compile (simulated)" in messages[0]
    assert "report it" in messages[0] and "make gpu-check" in messages[0] and "impl='torch'" in messages[0]
    assert calls == [1], "after the first failure the op must not try Triton again"
    assert _dispatch.fallbacks() == {op: "CompileFailed: kernel did not compile (simulated)"}

    with pytest.raises(CompileFailed):  # asked for by name, the Triton path keeps its error
        _call(op, args, kwargs, "triton")


@pytest.mark.parametrize("op", list(MODULES))
def test_failed_forward_with_gradients_falls_back_and_differentiates_the_torch_path(op, default_is_triton,
                                                                                     monkeypatch):
    module = MODULES[op]
    default_is_triton(module)
    monkeypatch.setattr(module, FWD_LAUNCHER[op], _boom)
    args, kwargs = _inputs(op, grad=True)
    leaves = [a for a in args if isinstance(a, torch.Tensor)]

    def grads(impl):
        out = _as_tuple(_call(op, args, kwargs, impl))
        return out, torch.autograd.grad(sum(o.float().sum() for o in out), leaves)

    want_out, want_grads = grads("torch")
    with pytest.warns(_dispatch.TritonFallbackWarning, match=f"^{op}: the Triton kernel failed"):
        got_out, got_grads = grads(None)
    for g, w in zip((*got_out, *got_grads), (*want_out, *want_grads)):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("op", list(MODULES))
def test_out_of_memory_is_not_a_kernel_failure(op, default_is_triton, monkeypatch):
    module = MODULES[op]
    default_is_triton(module)

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(module, FWD_LAUNCHER[op], oom)
    args, kwargs = _inputs(op)
    with pytest.raises(torch.OutOfMemoryError):
        _call(op, args, kwargs, None)
    assert _dispatch.fallbacks() == {}


def test_causal_conv1d_update_falls_back_and_updates_the_state(default_is_triton, monkeypatch):
    module = MODULES["causal_conv1d"]
    default_is_triton(module)
    monkeypatch.setattr(module, "_causal_conv1d_update_triton", _boom)
    g = torch.Generator().manual_seed(1)
    x_t, weight, bias = torch.randn(2, 5, generator=g), torch.randn(5, 4, generator=g), torch.randn(5, generator=g)
    state = torch.randn(2, 5, 3, generator=g)
    want_state = state.clone()
    want = module.causal_conv1d_update(x_t, want_state, weight, bias, "silu", impl="torch")
    with pytest.warns(_dispatch.TritonFallbackWarning, match="^causal_conv1d_update: "):
        got = module.causal_conv1d_update(x_t, state, weight, bias, "silu")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(state, want_state, rtol=0, atol=0)
    with pytest.raises(CompileFailed):
        module.causal_conv1d_update(x_t, state.clone(), weight, bias, "silu", impl="triton")


# The backward launcher of each op, patched to raise once the real Triton forward has run.
def _break_backward(op: str, monkeypatch) -> None:
    module = MODULES[op]
    if op == "selective_scan":
        monkeypatch.setattr(module, "_selective_scan_bwd", _boom)
    elif op == "causal_conv1d":
        monkeypatch.setattr(module, "_causal_conv1d_bwd", _boom)
    elif op == "fft_conv":  # one launcher serves forward and backward: break the backward itself
        monkeypatch.setattr(module._FFTConvTriton, "backward", staticmethod(_boom))
    else:
        monkeypatch.setattr(module, "_attn_bwd", _boom)


def _backward_case(op):
    kernel = getattr(MODULES[op], FWD_KERNEL[op])
    return pytest.param(op, marks=triton_marks(kernel), id=op)


@pytest.mark.parametrize("op", [_backward_case(op) for op in MODULES])
def test_failed_backward_kernel_falls_back_to_the_torch_backward(op, default_is_triton, monkeypatch):
    module = MODULES[op]
    default_is_triton(module)
    _break_backward(op, monkeypatch)
    args, kwargs = _inputs(op, DEVICE, grad=True)
    leaves = [a for a in args if isinstance(a, torch.Tensor)]
    cotangents = [torch.randn_like(o) for o in _as_tuple(_call(op, args, kwargs, "torch"))]

    def grads(impl):
        out = _as_tuple(_call(op, args, kwargs, impl))
        return torch.autograd.grad(out, leaves, cotangents)

    want = grads("torch")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = grads(None)
        again = grads(None)  # now straight on the torch path
    messages = _fallback_warnings(record)
    assert len(messages) == 1 and messages[0].startswith(f"{op}: the Triton kernel failed"), messages
    for i, (g, w, a) in enumerate(zip(got, want, again)):
        torch.testing.assert_close(g, w, rtol=0, atol=0, msg=f"gradient of input {i}")
        torch.testing.assert_close(a, w, rtol=0, atol=0, msg=f"gradient of input {i} (second call)")
    with pytest.raises(CompileFailed):
        grads("triton")


@marked(triton_marks(MODULES["selective_scan"]._selective_scan_fwd_kernel))
def test_a_verified_call_runs_the_ops_own_function(default_is_triton):
    """Once a call signature has run forward and backward on Triton, later calls skip the backup wrapper."""
    module = MODULES["selective_scan"]
    default_is_triton(module)
    args, _ = _inputs("selective_scan", DEVICE, grad=True)
    kwargs = {}  # a single output
    first = _call("selective_scan", args, kwargs, None)
    assert type(first.grad_fn).__name__ == "_TritonWithTorchBackupBackward"
    first.sum().backward()
    second = _call("selective_scan", args, kwargs, None)
    assert type(second.grad_fn).__name__ == "_SelectiveScanTritonFnBackward"
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    assert _dispatch.fallbacks() == {}
