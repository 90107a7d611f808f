"""mmseq.kernels.cauchy: the reference against a term-by-term loop, every fast path against the complex128
reference (output and the gradients of v, w and z, each under its own name), gradcheck in complex128, block and
tile boundaries, bad inputs. Triton runs in its CPU interpreter when no GPU is present.
"""

import importlib
from typing import NamedTuple

import pytest
import torch

from tests.kernels._helpers import DEVICE, assert_close, marked, triton_marks

ck = importlib.import_module("mmseq.kernels.cauchy")  # the module

TRITON = triton_marks(ck._cauchy_fwd_kernel, ck._cauchy_bwd_kernel)


class Case(NamedTuple):
    v_lead: tuple  # leading dims of v
    w_lead: tuple  # leading dims of w (broadcast against v's)
    N: int
    L: int


CASES = {
    "R1-N1-L1": Case((1,), (1,), 1, 1),
    "R3x5-N7-L13": Case((3, 5), (3, 5), 7, 13),
    "w-broadcast-R4x3-N16-L63": Case((4, 3), (3,), 16, 63),
    "v-broadcast-R2x3-N9-L20": Case((3,), (2, 3), 9, 20),
    "R2-N33-L129": Case((2,), (2,), 33, 129),
    "R3-N64-L1025": Case((3,), (3,), 64, 1025),
}
TOL = {torch.complex128: 1e-11, torch.complex64: 1e-4}


def _make(case: Case, dtype: torch.dtype, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """v, z, w and the output cotangent, drawn in complex128 on the CPU, then cast to dtype, on DEVICE. The nodes
    sit on a circle of radius 2 and the poles inside the unit disc, so no term is near a pole."""
    g = torch.Generator().manual_seed(seed)
    cn = lambda *shape: torch.randn(*shape, 2, generator=g, dtype=torch.float64)
    lead = torch.broadcast_shapes(case.v_lead, case.w_lead)
    inputs = {
        "v": torch.view_as_complex(cn(*case.v_lead, case.N)),
        "z": 2 * torch.polar(torch.ones(case.L, dtype=torch.float64),
                             torch.rand(case.L, generator=g, dtype=torch.float64) * 6.28),
        "w": torch.view_as_complex(cn(*case.w_lead, case.N)) * 0.3,
    }
    cot = torch.view_as_complex(cn(*lead, case.L))
    return {n: t.to(device=DEVICE, dtype=dtype) for n, t in inputs.items()}, cot.to(device=DEVICE, dtype=dtype)


def _run(impl: str, inputs: dict, cot: torch.Tensor) -> dict:
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in inputs.items()}
    out = ck.cauchy(leaves["v"], leaves["z"], leaves["w"], impl=impl)
    out.backward(cot)
    return {"out": out.detach(), **{f"grad_{n}": t.grad for n, t in leaves.items()}}


def _as_real(d: dict) -> dict:
    """Complex tensors as (re, im) pairs, so the shared comparison sees both parts."""
    return {n: torch.view_as_real(t.resolve_conj()) if t is not None and t.is_complex() else t for n, t in d.items()}


def _check_against_ref(impl: str, case: Case, dtype: torch.dtype, label: str = "") -> None:
    inputs, cot = _make(case, dtype)
    got = _run(impl, inputs, cot)
    for name, t in got.items():
        assert t.dtype == dtype, f"{name} has dtype {t.dtype}, expected {dtype}"
    want = _run("ref", {n: t.to(torch.complex128) for n, t in inputs.items()}, cot.to(torch.complex128))
    assert_close(_as_real(got), _as_real(want), TOL[dtype], label=f"{impl} {dtype} {label}")


def _params(names: list[str]) -> list:
    params = []
    for impl in ("torch", "triton"):
        for name in names:
            marks = TRITON if impl == "triton" else []
            params.append(pytest.param(impl, CASES[name], id=f"{impl}-{name}", marks=marks))
    return params


def test_reference_equals_term_by_term_loop():
    inputs, _ = _make(CASES["R3x5-N7-L13"], torch.complex128)
    v, z, w = (inputs[n].cpu() for n in ("v", "z", "w"))
    want = torch.zeros(3, 5, 13, dtype=torch.complex128)
    for i in range(3):
        for j in range(5):
            for l in range(13):
                for n in range(7):
                    want[i, j, l] += v[i, j, n] / (z[l] - w[i, j, n])
    torch.testing.assert_close(ck.cauchy_ref(v, z, w), want, rtol=1e-13, atol=1e-13)


def test_single_pole_at_zero_is_the_reciprocal():
    z = torch.tensor([1.0, 2j, -4.0, 0.5 + 0.5j], dtype=torch.complex128)
    one, zero = torch.ones(1, 1, dtype=torch.complex128), torch.zeros(1, 1, dtype=torch.complex128)
    for impl in ("ref", "torch"):
        torch.testing.assert_close(ck.cauchy(one, z, zero, impl=impl)[0], 1 / z, rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64], ids=["c128", "c64"])
@pytest.mark.parametrize("impl,case", _params(list(CASES)))
def test_matches_reference(impl, case, dtype):
    _check_against_ref(impl, case, dtype)


def test_torch_path_across_node_blocks(monkeypatch):
    """Blocks of 2 and 3 nodes (the slab budget below one row's N), forward and backward against the ref."""
    for elems in (2 * 3 * 16, 3 * 3 * 16 + 5):
        monkeypatch.setattr(ck, "_TORCH_BLOCK_ELEMS", elems)
        assert len(ck._node_blocks(12, 16, 63)) > 1
        _check_against_ref("torch", CASES["w-broadcast-R4x3-N16-L63"], torch.complex128, f"elems={elems}")


@pytest.mark.parametrize("impl", ["ref", "torch"])
def test_gradcheck_complex128(impl, monkeypatch):
    """Finite differences (torch's complex convention) for v, z and w; the torch path across node blocks."""
    monkeypatch.setattr(ck, "_TORCH_BLOCK_ELEMS", 2 * 5 * 4)
    inputs, _ = _make(Case((2,), (2,), 5, 7), torch.complex128, seed=1)
    args = tuple(inputs[n].cpu().requires_grad_(True) for n in ("v", "z", "w"))
    assert torch.autograd.gradcheck(lambda v, z, w: ck.cauchy(v, z, w, impl=impl), args)


@pytest.mark.parametrize(
    "case", [Case((2,), (2,), 37, 50), Case((1,), (1,), 16, 17)], ids=["R2-N37-L50", "R1-N16-L17"]
)
@marked(TRITON)
def test_triton_small_tiles_cross_every_boundary(case, monkeypatch):
    """Tiles of 16 x 16, so that the masks on N and L meet every tile edge, forward and backward."""
    monkeypatch.setattr(ck, "_blocks", lambda device, n_par, n_loop: (16, 16))
    _check_against_ref("triton", case, torch.complex128)


@marked(TRITON)
def test_triton_without_node_gradient_and_real_inputs():
    """Real v (taken as complex) and z without gradient: the Triton path returns only what was asked for."""
    inputs, cot = _make(CASES["R3x5-N7-L13"], torch.complex128)
    v = inputs["v"].real.clone().requires_grad_(True)
    w = inputs["w"].clone().requires_grad_(True)
    out = ck.cauchy(v, inputs["z"], w, impl="triton")
    out.backward(cot)
    v_ref = v.detach().clone().requires_grad_(True)
    w_ref = w.detach().clone().requires_grad_(True)
    ck.cauchy_ref(v_ref, inputs["z"], w_ref).backward(cot)
    assert v.grad.dtype == torch.float64 and inputs["z"].grad is None
    torch.testing.assert_close(v.grad, v_ref.grad, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-11, atol=1e-11)


def _valid():
    c = lambda *s: torch.randn(*s, dtype=torch.cfloat)
    return {"v": c(4, 8), "z": c(16), "w": c(4, 8)}


BAD_INPUTS = {
    "z-2d": ({"z": torch.randn(2, 16, dtype=torch.cfloat)}, "z must be [L] = [*], got [2, 16]"),
    "z-empty": ({"z": torch.randn(0, dtype=torch.cfloat)}, "z must be [L] with L >= 1, got [0]"),
    "w-other-N": ({"w": torch.randn(4, 7, dtype=torch.cfloat)}, "v and w must be [..., N] with the same N"),
    "no-broadcast": ({"w": torch.randn(3, 8, dtype=torch.cfloat)}, "leading dims that broadcast"),
    "v-int": ({"v": torch.ones(4, 8, dtype=torch.long)}, "v must be a complex"),
    "v-scalar": ({"v": torch.tensor(1.0)}, "v must be a tensor"),
    "impl-name": ({"impl": "cuda"}, "impl must be one of"),
}


@pytest.mark.parametrize("change,message", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_inputs_raise_value_error_naming_the_argument(change, message):
    args = {**_valid(), **change}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("*", r"\*")):
        ck.cauchy(args["v"], args["z"], args["w"], impl=args.get("impl"))
