"""mmseq.kernels.selective_scan, torch path: its blocks and chunks, against the float64 reference.

The path cuts the sequence into blocks of about ``_TORCH_BLOCK`` state elements, walked position by position
when a position holds at least ``_TORCH_STEP`` state elements and cut into chunks of ``_TORCH_CHUNK`` scanned
side by side otherwise. Small test shapes fit in one block, so the sizes are shrunk here to run every case:
several blocks, a short last block, several chunks per block, one chunk per block, real and complex A.
"""

import importlib

import pytest
import torch

from tests.kernels._helpers import assert_close

ss = importlib.import_module("mmseq.kernels.selective_scan")

# (_TORCH_CHUNK, _TORCH_BLOCK, _TORCH_STEP, _TORCH_MIN_BLOCK): with P = B * D * N = 2 * 6 * 4 = 48 per position
PLANS = {
    "positions-blocks5": (16, 5 * 48, 1, 1),  # position by position, blocks of 5 (the last one short)
    "positions-block1": (16, 1, 1, 1),  # one position per block
    "chunks4-blocks12": (4, 12 * 48, 10**9, 1),  # blocks of 3 chunks of 4 (L padded to a multiple of 4)
    "chunks5-block1chunk": (5, 5 * 48, 10**9, 1),  # one chunk per block
    "chunks3-one-block": (3, 10**9, 10**9, 1),  # all chunks in one block
}


@pytest.fixture(params=list(PLANS), ids=list(PLANS))
def plan(request, monkeypatch):
    for name, value in zip(("_TORCH_CHUNK", "_TORCH_BLOCK", "_TORCH_STEP", "_TORCH_MIN_BLOCK"),
                           PLANS[request.param]):
        monkeypatch.setattr(ss, name, value)
    return request.param


def _inputs(L, cplx=False, groups=2, constant_B=False, A_scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    Bs, Dn, N = 2, 6, 4
    A = -(torch.rand(Dn, N, generator=g, dtype=torch.float64) * A_scale + 0.2)
    Lx = 2 * L if cplx else L  # complex A: B, C as (re, im) pairs along the last axis
    if cplx:
        A = torch.complex(A * 0.5, rnd(Dn, N) * 2)
    return {
        "u": rnd(Bs, Dn, L), "delta": rnd(Bs, Dn, L) * 0.5 - 2.0, "A": A,
        "B": rnd(Dn, N) if constant_B else rnd(Bs, groups, N, Lx), "C": rnd(Bs, N, Lx),
        "D": rnd(Dn), "z": rnd(Bs, Dn, L), "delta_bias": rnd(Dn) * 0.1,
    }


def _run(fn, inputs, seed=1):
    """Forward with the last state, backward with random cotangents for both outputs; complex results as
    (re, im) pairs."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    out, last = fn(**leaves, delta_softplus=True, return_last_state=True)
    g = torch.Generator().manual_seed(seed)
    d_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    d_last = torch.randn(last.shape, generator=g, dtype=torch.float64).to(last.dtype)
    ((out * d_out).sum() + (last * d_last).real.sum()).backward()
    res = {"out": out, "last_state": last, **{"d" + k: v.grad for k, v in leaves.items()}}
    return {k: torch.view_as_real(v) if v.is_complex() else v for k, v in res.items()}  # compare both parts


def _torch(**kw):
    return ss.selective_scan(**kw, impl="torch")


@pytest.mark.parametrize("L", [1, 7, 23])
def test_blocks_float64(plan, L):
    x = _inputs(L)
    assert_close(_run(_torch, x), _run(ss.selective_scan_ref, x), 1e-10, by="max", label=f"{plan} L{L}")


def test_blocks_constant_B(plan):
    """A constant [D, N] B: its gradient sums over every block and chunk."""
    x = _inputs(23, constant_B=True)
    got = _run(_torch, x)
    assert got["dB"].shape == (6, 4)
    assert_close(got, _run(ss.selective_scan_ref, x), 1e-10, by="max", label=plan)


def test_blocks_complex(plan):
    """Complex A: the conjugates of the backward in every block and chunk."""
    x = _inputs(23, cplx=True)
    assert_close(_run(_torch, x), _run(ss.selective_scan_ref, x), 1e-10, by="max", label=plan)


def test_plan_shapes():
    """Blocks hold about _TORCH_BLOCK state elements, at least _TORCH_MIN_BLOCK positions (the states saved
    for backward stay a fraction of [B, D, N, L]); chunks divide the blocks and the padded length."""
    for P in (1, 48, 5000, 1 << 16, 1 << 17, 1 << 22):
        for L in (1, 15, 16, 17, 98, 2048, 4097):
            T, Lb, Lp = ss._torch_plan(P, L)
            assert 1 <= T <= Lb <= Lp and Lp - L < T, (P, L, T, Lb, Lp)
            if T == Lb:  # position by position: no padding, the last block may be short
                assert Lp == L and Lb >= min(L, ss._TORCH_MIN_BLOCK), (P, L, T, Lb, Lp)
            else:
                assert Lb % T == 0 and Lp % T == 0, (P, L, T, Lb, Lp)
            assert Lb * P <= max(ss._TORCH_BLOCK, ss._TORCH_MIN_BLOCK * P, T * P)


def test_float32_long_and_steep():
    """float32 over 3,000 positions with decay rates up to 200 per unit step (exp(dt * A) down to 0): finite and
    equal to the float64 reference."""
    x = _inputs(3000, A_scale=200.0)
    got = _run(_torch, {k: v.float() for k, v in x.items()})
    assert_close(got, _run(ss.selective_scan_ref, x), 1e-4, by="max", label="float32 L3000")
