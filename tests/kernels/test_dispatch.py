"""mmseq.kernels._dispatch: which path pick_impl chooses or refuses, and kernel modules without Triton.

pick_impl reads only ``device.type``, so ``torch.device("cuda")`` stands for a GPU on any machine, and
``triton_importable`` / ``TRITON_INTERPRET`` are patched to play each situation.
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from mmseq.kernels import _dispatch

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SMALL_INPUTS = {  # positional arguments of each op's public function (named like its module)
    "attention": lambda: (torch.randn(1, 1, 3, 4),) * 3,
    "causal_conv1d": lambda: (torch.randn(1, 2, 5), torch.randn(2, 3)),
    "fft_conv": lambda: (torch.randn(1, 2, 5), torch.randn(2, 5)),
    "selective_scan": lambda: (torch.randn(1, 2, 5), torch.rand(1, 2, 5), -torch.rand(2, 3), torch.randn(1, 3, 5),
                               torch.randn(1, 3, 5)),
}


@pytest.fixture
def triton_installed(monkeypatch):
    """Set whether Triton imports: ``triton_installed(False)``."""
    return lambda yes: monkeypatch.setattr(_dispatch, "triton_importable", lambda: yes)


@pytest.mark.parametrize("installed,want", [(True, "triton"), (False, "torch")], ids=["triton", "no-triton"])
def test_default_on_cuda_is_triton_when_it_imports(triton_installed, installed, want):
    triton_installed(installed)
    assert _dispatch.pick_impl("op", None, CUDA) == want


@pytest.mark.parametrize("interpret", [None, "0", "1"])
def test_default_on_cpu_is_torch_even_under_the_interpreter(triton_installed, monkeypatch, interpret):
    triton_installed(True)
    if interpret is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", interpret)
    assert _dispatch.pick_impl("op", None, CPU) == "torch"


@pytest.mark.parametrize("interpret", [None, "", "0"], ids=["unset", "empty", "zero"])
def test_triton_on_cpu_without_the_interpreter_is_refused(triton_installed, monkeypatch, interpret):
    triton_installed(True)
    if interpret is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", interpret)
    match = r"my_op: impl='triton' is unavailable: tensors are on cpu.*TRITON_INTERPRET"
    with pytest.raises(RuntimeError, match=match):
        _dispatch.pick_impl("my_op", "triton", CPU)


def test_triton_on_cpu_under_the_interpreter_and_on_cuda_is_granted(triton_installed, monkeypatch):
    triton_installed(True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _dispatch.pick_impl("op", "triton", CPU) == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    assert _dispatch.pick_impl("op", "triton", CUDA) == "triton"


@pytest.mark.parametrize("device", [CPU, CUDA], ids=["cpu", "cuda"])
def test_triton_without_triton_is_refused_everywhere(triton_installed, monkeypatch, device):
    triton_installed(False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="my_op: impl='triton' is unavailable: triton is not installed"):
        _dispatch.pick_impl("my_op", "triton", device)


@pytest.mark.parametrize("impl", ["ref", "torch"])
@pytest.mark.parametrize("device", [CPU, CUDA], ids=["cpu", "cuda"])
def test_ref_and_torch_are_granted_everywhere(triton_installed, impl, device):
    triton_installed(False)
    assert _dispatch.pick_impl("op", impl, device) == impl


def test_unknown_impl_is_a_value_error():
    match = r"my_op: impl must be one of \('ref', 'torch', 'triton'\) or None, got 'cuda'"
    with pytest.raises(ValueError, match=match):
        _dispatch.pick_impl("my_op", "cuda", CPU)


def test_stand_ins_leave_functions_alone_and_compute_host_sizes():
    fn = lambda a: a
    assert _dispatch.NO_TRITON.jit(fn) is fn
    assert _dispatch.NO_TRITON.jit(do_not_specialize=["x"])(fn) is fn
    assert [_dispatch.NO_TRITON.cdiv(a, 4) for a in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]
    assert [_dispatch.NO_TRITON.next_power_of_2(n) for n in (1, 2, 3, 4, 5, 17)] == [1, 2, 4, 4, 8, 32]


@pytest.mark.parametrize("name", list(SMALL_INPUTS))
def test_kernel_module_imports_and_runs_without_triton(name, triton_installed, monkeypatch):
    """A fresh copy of the module, built while ``import triton`` fails: its torch path runs, triton is refused."""
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    triton_installed(False)
    assert _dispatch.load_triton() == (_dispatch.NO_TRITON, _dispatch.NO_TRITON_LANGUAGE)
    path = Path(_dispatch.__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"mmseq.kernels._no_triton_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.triton is _dispatch.NO_TRITON and module.tl is _dispatch.NO_TRITON_LANGUAGE
    fn, args = getattr(module, name), SMALL_INPUTS[name]()
    torch.testing.assert_close(fn(*args, impl="torch"), fn(*args, impl="ref"), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="triton is not installed"):
        fn(*args, impl="triton")


def test_kernel_runnable_on_cpu_needs_a_kernel_built_for_the_interpreter(triton_installed, monkeypatch):
    InterpretedFunction = type("InterpretedFunction", (), {})  # what @triton.jit builds under TRITON_INTERPRET=1
    JITFunction = type("JITFunction", (), {})  # what it builds otherwise
    triton_installed(True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _dispatch.kernel_runnable(InterpretedFunction(), CPU)
    assert not _dispatch.kernel_runnable(JITFunction(), CPU)
    assert _dispatch.kernel_runnable(JITFunction(), CUDA)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not _dispatch.kernel_runnable(InterpretedFunction(), CPU)
    triton_installed(False)
    assert not _dispatch.kernel_runnable(JITFunction(), CUDA)
