"""Shared helpers for the kernel dispatchers: which paths exist, which one to pick, input checks.

Every op in ``mmseq.kernels`` has three paths behind one public function:
``impl="ref"`` (plain PyTorch, float64-capable ground truth), ``impl="torch"`` (vectorized CPU path)
and ``impl="triton"`` (CUDA; also runs on CPU tensors under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import functools
import os
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
