"""Shared helpers for the kernel dispatchers: which paths exist, which one to pick, input checks.

Every op in ``mmseq.kernels`` has three paths behind one public function:
``impl="ref"`` (plain PyTorch, float64-capable ground truth), ``impl="torch"`` (vectorized CPU path)
and ``impl="triton"`` (CUDA; also runs on CPU tensors under ``TRITON_INTERPRET=1``).

When the Triton path was chosen by default (``impl=None``) and fails to compile or launch, the op falls back
to its torch path with one warning per op per process (``run_triton``); ``impl="triton"`` keeps the error.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from types import SimpleNamespace

import torch

IMPLS = ("ref", "torch", "triton")


@functools.cache
def triton_importable() -> bool:
    """True when the ``triton`` package imports (it ships with Linux x86_64 torch wheels)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def _next_power_of_2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


# Stand-ins for ``triton`` and ``triton.language`` when Triton does not import: ``@triton.jit`` leaves the function
# as it is and ``tl.constexpr`` annotations evaluate, so a kernel module still imports and its ref and torch paths
# run. No kernel can launch through them: ``pick_impl`` refuses ``impl="triton"`` before any launcher runs.
NO_TRITON = SimpleNamespace(
    jit=lambda fn=None, **_: fn if fn is not None else (lambda f: f),
    cdiv=lambda a, b: -(-a // b),
    next_power_of_2=_next_power_of_2,
)
NO_TRITON_LANGUAGE = SimpleNamespace(constexpr=object)


def load_triton() -> tuple:
    """``(triton, triton.language)`` when Triton imports, else the stand-ins ``(NO_TRITON, NO_TRITON_LANGUAGE)``.

    Each kernel module starts with ``triton, tl = load_triton()``.
    """
    if triton_importable():
        import triton
        import triton.language as tl

        return triton, tl
    return NO_TRITON, NO_TRITON_LANGUAGE


def triton_interpret() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_usable(device: torch.device) -> bool:
    """Whether the Triton path can run on tensors living on ``device``."""
    if not triton_importable():
        return False
    if device.type == "cuda":
        return True
    return triton_interpret()


def kernel_runnable(kernel, device: torch.device) -> bool:
    """Whether the Triton ``kernel`` (a module-level ``@triton.jit`` function) can launch on ``device`` here.

    On CUDA that is ``triton_usable``. On the CPU the kernel must also have been built for the interpreter, which
    happens only when ``TRITON_INTERPRET=1`` was set before its module was first imported.
    """
    if not triton_usable(device):
        return False
    return device.type == "cuda" or type(kernel).__name__ == "InterpretedFunction"


def pick_impl(op: str, impl: str | None, device: torch.device) -> str:
    """Resolve ``impl`` for ``op`` on ``device``: None picks the fastest available path.

    The default is Triton on CUDA (when Triton imports) and the vectorized torch path elsewhere;
    the interpreter is never chosen by default because it is a correctness tool, not a fast path.
    """
    if impl is None:
        return "triton" if device.type == "cuda" and triton_importable() else "torch"
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS} or None, got {impl!r}")
    if impl == "triton" and not triton_usable(device):
        why = "triton is not installed" if not triton_importable() else (
            f"tensors are on {device.type}; use CUDA tensors or set TRITON_INTERPRET=1 to run on the CPU"
        )
        raise RuntimeError(f"{op}: impl='triton' is unavailable: {why}")
    return impl


def shape_str(t: torch.Tensor | None) -> str:
    return "None" if t is None else "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_tensor(name: str, t: torch.Tensor, expected: tuple, letters: str) -> None:
    """Raise ValueError unless ``t`` has the shape ``expected`` (None entries match any size).

    ``letters`` is the shape in letters for the message, e.g. ``"[B, D, L]"``.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {letters}, got {type(t).__name__}")
    ok = t.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, t.shape))
    if not ok:
        want = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        raise ValueError(f"{name} must be {letters} = {want}, got {shape_str(t)}")


def check_float(name: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {t.dtype}")


# ----------------------------------------------------------------------------------------------------------
# A safe default: the torch path when a Triton kernel chosen by default fails on this machine
# ----------------------------------------------------------------------------------------------------------

REPORT_HINT = (
    "Please report it with this message, the output of `mmseq info` and of `make gpu-check` "
    "(benchmarks/gpu_check.py). Pass impl='triton' to see the error itself, or impl='torch' to silence this."
)


class TritonFallbackWarning(RuntimeWarning):
    """A Triton kernel chosen by default failed; the op now runs its torch path in this process."""


_FAILED: dict[str, str] = {}  # op -> "ErrorType: message" of the failure that switched it to torch
_VERIFIED: dict[str, set] = {}  # op -> call signatures whose Triton forward and backward both ran once
_VERIFIED_MAX = 4096  # signatures remembered per op (variable-length inputs would otherwise grow the set)


def fallbacks() -> dict[str, str]:
    """The ops that fell back to torch in this process, each with the error that made it fall back."""
    return dict(_FAILED)


def reset_fallbacks() -> None:
    """Forget every fallback (and every verified call): the next default call tries Triton again."""
    _FAILED.clear()
    _VERIFIED.clear()


def _fall_back(op: str, err: Exception) -> None:
    if op in _FAILED:
        return
    first = (str(err).strip().splitlines() or [""])[0][:300]
    _FAILED[op] = f"{type(err).__name__}: {first}"
    warnings.warn(
        f"{op}: the Triton kernel failed on this device ({type(err).__name__}: {first}); {op} runs its torch "
        f"path (same results, slower) for the rest of this process. {REPORT_HINT}",
        TritonFallbackWarning, stacklevel=4,
    )


def _signature(flat: tuple) -> tuple:
    """What a Triton launch specializes on: each tensor's dtype, shape, device and requires_grad, other args."""
    out = []
    for a in flat:
        if isinstance(a, torch.Tensor):
            out.append((a.dtype, tuple(a.shape), a.device, a.requires_grad))
        else:
            try:
                hash(a)
                out.append(a)
            except TypeError:
                out.append(repr(a))
    return tuple(out)


class _Call:
    """One call of an op: its two paths and how to put the flat argument list back into ``(*args, **kwargs)``."""

    def __init__(self, op: str, triton_fn: Callable, torch_fn: Callable, n_args: int, names: tuple[str, ...],
                 signature: tuple) -> None:
        self.op, self.triton_fn, self.torch_fn = op, triton_fn, torch_fn
        self.n_args, self.names, self.signature = n_args, names, signature
        self.single = True

    def run(self, fn: Callable, flat: list) -> tuple:
        out = fn(*flat[: self.n_args], **dict(zip(self.names, flat[self.n_args :])))
        self.single = isinstance(out, torch.Tensor)
        return (out,) if self.single else tuple(out)


def _detached(flat) -> list:
    return [a.detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in flat]


class _TritonWithTorchBackup(torch.autograd.Function):
    """The Triton path run as an inner graph, so that a failing backward kernel can be replaced by the torch
    path's backward (recomputed from the saved inputs). Used until a call signature has run forward and
    backward once; after that the op's own autograd Function runs alone."""

    @staticmethod
    def forward(ctx, call: _Call, *flat):
        ctx.set_materialize_grads(False)
        inputs = _detached(flat)
        with torch.enable_grad():
            outs = call.run(call.triton_fn, inputs)
        ctx.call, ctx.inputs, ctx.outs = call, inputs, outs
        detached = tuple(o.detach() for o in outs)
        return detached[0] if call.single else detached

    @staticmethod
    def backward(ctx, *grads):
        call, inputs, outs = ctx.call, ctx.inputs, ctx.outs
        if outs is None:
            raise RuntimeError(f"{call.op}: this backward runs once (retain_graph is not supported on the default "
                               "path until the kernel has run once); pass impl='triton' to backpropagate twice")
        ctx.inputs = ctx.outs = None  # the inner graph is freed by its backward below
        wrt = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor) and a.requires_grad]

        def grad_of(outputs):
            pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
            if not pairs or not wrt:
                return [None] * len(wrt)
            return torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wrt], [g for _, g in pairs],
                                       allow_unused=True)

        try:
            got = grad_of(outs)
            _remember(call.op, call.signature)
        except torch.OutOfMemoryError:
            raise
        except Exception as err:
            _fall_back(call.op, err)
            inputs = _detached(inputs)
            with torch.enable_grad():
                got = grad_of(call.run(call.torch_fn, inputs))
        result: list = [None] * len(inputs)
        for i, g in zip(wrt, got):
            result[i] = g
        return (None, *result)


def _remember(op: str, signature: tuple) -> None:
    seen = _VERIFIED.setdefault(op, set())
    if len(seen) >= _VERIFIED_MAX:
        seen.clear()
    seen.add(signature)


def run_triton(op: str, requested: str | None, triton_fn: Callable, torch_fn: Callable, *args, **kwargs):
    """Run ``triton_fn(*args, **kwargs)``, the Triton path of ``op``, falling back to ``torch_fn`` (same
    arguments, same results) when the Triton path was chosen by default and raises.

    ``requested`` is the ``impl`` the caller passed. ``"triton"`` runs the Triton path alone and lets its errors
    through. None (the default) guards it: an exception from compiling or launching a kernel (forward, or
    backward when the inputs need gradients) gives one ``TritonFallbackWarning`` per op per process, naming the
    op and how to report it, and from then on the op runs ``torch_fn`` in this process. Out-of-memory errors
    are not kernel failures and are raised as they are.
    """
    if requested == "triton":
        return triton_fn(*args, **kwargs)
    if op in _FAILED:
        return torch_fn(*args, **kwargs)
    flat = (*args, *kwargs.values())
    needs_grad = torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in flat)
    try:
        if not needs_grad:
            return triton_fn(*args, **kwargs)
        signature = _signature(flat)
        if signature in _VERIFIED.get(op, ()):
            return triton_fn(*args, **kwargs)
        call = _Call(op, triton_fn, torch_fn, len(args), tuple(kwargs), signature)
        return _TritonWithTorchBackup.apply(call, *flat)
    except torch.OutOfMemoryError:
        raise
    except Exception as err:
        _fall_back(op, err)
        return torch_fn(*args, **kwargs)
