"""mmseq.kernels.fft_conv: every fast path against the float64 direct-convolution reference, known answers,
bad inputs, and (slow) the FFT path's speed over direct convolution at L = 65536.

Each comparison checks the output and the gradients of u, k and D under their own names, and reports max
abs error and relative RMS error. Triton runs in its CPU interpreter when no GPU is present.
"""

import importlib
import time
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

from tests.kernels._helpers import DEVICE, assert_close, marked, triton_marks

fc = importlib.import_module("mmseq.kernels.fft_conv")  # the module, not the function

TRITON = triton_marks(fc._direct_conv_kernel)
FAST_PATHS = [pytest.param("torch", id="torch"), pytest.param("triton", id="triton", marks=TRITON)]
ALL_PATHS = [pytest.param("ref", id="ref"), *FAST_PATHS]


class Case(NamedTuple):
    B: int
    D: int
    L: int
    Lk: int
    causal: bool
    skip: bool


CASES = {
    "L1-Lk1-causal-skip": Case(2, 3, 1, 1, True, True),
    "L7-Lk3-causal": Case(2, 5, 7, 3, True, False),
    "L7-Lk7-bidir-skip": Case(2, 5, 7, 7, False, True),
    "L63-Lk63-causal-skip": Case(2, 3, 63, 63, True, True),
    "L63-Lk20-bidir-skip": Case(2, 3, 63, 20, False, True),  # even Lk: one more past tap than future
    "L64-Lk31-bidir": Case(1, 6, 64, 31, False, False),
    "L1000-Lk1000-causal-skip": Case(1, 3, 1000, 1000, True, True),
    "L1000-Lk257-bidir": Case(2, 3, 1000, 257, False, False),
    "L4097-Lk4097-causal-skip": Case(1, 2, 4097, 4097, True, True),
    "L4097-Lk100-bidir-skip": Case(1, 3, 4097, 100, False, True),
}
BF16_CASES = ["L63-Lk20-bidir-skip", "L1000-Lk257-bidir"]
TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2}


def _make(case: Case, dtype: torch.dtype, seed: int = 0):
    """Inputs and the output cotangent, drawn in float64 on the CPU, then rounded to dtype, on DEVICE."""
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "u": torch.randn(case.B, case.D, case.L, generator=g, dtype=torch.float64),
        "k": torch.randn(case.D, case.Lk, generator=g, dtype=torch.float64) / case.Lk**0.5,
        "D": torch.randn(case.D, generator=g, dtype=torch.float64) if case.skip else None,
    }
    cot = torch.randn(case.B, case.D, case.L, generator=g, dtype=torch.float64)
    cast = lambda t: None if t is None else t.to(device=DEVICE, dtype=dtype)
    return {n: cast(t) for n, t in inputs.items()}, cast(cot)


def _run(impl: str, case: Case, inputs: dict, cot: torch.Tensor) -> dict:
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in inputs.items() if t is not None}
    y = fc.fft_conv(leaves["u"], leaves["k"], leaves.get("D"), causal=case.causal, impl=impl)
    y.backward(cot.to(y.dtype))
    return {"y": y.detach(), **{f"grad_{n}": t.grad for n, t in leaves.items()}}


def _check_against_ref(impl: str, case: Case, dtype: torch.dtype) -> None:
    inputs, cot = _make(case, dtype)
    got = _run(impl, case, inputs, cot)
    for name, t in got.items():
        assert t.dtype == dtype, f"{name} has dtype {t.dtype}, expected {dtype}"
    want = _run("ref", case, {n: None if t is None else t.double() for n, t in inputs.items()}, cot.double())
    assert_close(got, want, TOL[dtype], label=f"{impl} {dtype}")


def _path_case_params(names: list[str]) -> list:
    """(impl, case) pairs; long cases on the Triton interpreter (an O(L·Lk) kernel) join the slow run."""
    params = []
    for impl in ("torch", "triton"):
        for name in names:
            marks = []
            if impl == "triton":
                marks = [*TRITON, *([pytest.mark.slow] if DEVICE.type == "cpu" and CASES[name].L >= 1000 else [])]
            params.append(pytest.param(impl, CASES[name], id=f"{impl}-{name}", marks=marks))
    return params


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("impl,case", _path_case_params(list(CASES)))
def test_matches_reference(impl, case, dtype):
    _check_against_ref(impl, case, dtype)


@pytest.mark.parametrize("impl,case", _path_case_params(BF16_CASES))
def test_bf16_matches_reference(impl, case):
    _check_against_ref(impl, case, torch.bfloat16)


@pytest.mark.parametrize(
    "case",
    [Case(2, 1, 60, 60, True, True), Case(1, 2, 70, 37, False, True), Case(1, 2, 50, 16, False, False)],
    ids=["L60-Lk60-causal-skip", "L70-Lk37-bidir-skip", "L50-Lk16-bidir"],
)
@marked(TRITON)
def test_triton_small_tiles_cross_every_boundary(case, monkeypatch):
    """Tiles of 16 outputs x 16 taps, so that the tap-range pruning and the masks meet every tile edge."""
    monkeypatch.setattr(fc, "_blocks", lambda device, L_out, L_w: (16, 16))
    _check_against_ref("triton", case, torch.float64)


DELTAS = {  # (L, Lk, causal, tap s holding the 1): y[t] = u[t - s + c]
    "causal-s0-identity": (9, 4, True, 0),
    "causal-s3-delay": (9, 5, True, 3),
    "causal-s8-full-length": (9, 9, True, 8),
    "bidir-centre-identity": (10, 5, False, 2),
    "bidir-s0-lookahead": (10, 5, False, 0),
    "bidir-even-Lk-s3-delay": (10, 6, False, 3),
}


@pytest.mark.parametrize("L,Lk,causal,s", list(DELTAS.values()), ids=list(DELTAS))
@pytest.mark.parametrize("impl", ALL_PATHS)
def test_delta_kernel_shifts_the_input(impl, L, Lk, causal, s):
    u = torch.randn(2, 3, L, dtype=torch.float64, device=DEVICE)
    k = torch.zeros(3, Lk, dtype=torch.float64, device=DEVICE)
    k[:, s] = 1.0
    shift = s - (0 if causal else (Lk - 1) // 2)  # y[t] = u[t - shift]
    want = torch.zeros_like(u)
    if shift >= 0:
        want[..., shift:] = u[..., : L - shift]
    else:
        want[..., :shift] = u[..., -shift:]
    torch.testing.assert_close(fc.fft_conv(u, k, causal=causal, impl=impl), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", ALL_PATHS)
def test_causal_ones_kernel_is_cumsum_plus_skip(impl):
    u = torch.randn(2, 3, 33, dtype=torch.float64, device=DEVICE)
    D = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, device=DEVICE)
    k = torch.ones(3, 33, dtype=torch.float64, device=DEVICE)
    want = u.cumsum(-1) + u * D[:, None]
    torch.testing.assert_close(fc.fft_conv(u, k, D, impl=impl), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ALL_PATHS)
def test_bidirectional_odd_kernel_is_same_padded_conv1d(impl):
    """For odd Lk, causal=False is F.conv1d with symmetric padding (Lk-1)/2 and the flipped kernel."""
    u = torch.randn(2, 4, 40, dtype=torch.float64, device=DEVICE)
    k = torch.randn(4, 9, dtype=torch.float64, device=DEVICE)
    want = F.conv1d(u, k.flip(-1)[:, None], padding=4, groups=4)
    torch.testing.assert_close(fc.fft_conv(u, k, causal=False, impl=impl), want, rtol=1e-10, atol=1e-10)


def test_s4_two_kernel_bidirectional_rule_is_a_centred_kernel():
    """y[t] = sum_{j>=0} k0[j] u[t-j] + sum_{j>=1} k1[j-1] u[t+j] equals the kernel cat(flip(k1), k0)."""
    L, m = 12, 4
    u = torch.randn(2, 3, L, dtype=torch.float64)
    k0, k1 = torch.randn(3, m + 1, dtype=torch.float64), torch.randn(3, m, dtype=torch.float64)
    want = torch.zeros_like(u)
    for t in range(L):
        for j in range(m + 1):
            if t - j >= 0:
                want[..., t] += k0[:, j] * u[..., t - j]
        for j in range(1, m + 1):
            if t + j < L:
                want[..., t] += k1[:, j - 1] * u[..., t + j]
    got = fc.fft_conv(u, torch.cat([k1.flip(-1), k0], dim=-1), causal=False, impl="torch")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 7, 97, 1000, 4097, 131071])
def test_next_fast_len_is_the_smallest_5_smooth_size(n):
    m = fc._next_fast_len(n)
    smooth = lambda v: v == 1 or any(v % p == 0 and smooth(v // p) for p in (2, 3, 5))
    assert m >= n and smooth(m)
    assert not any(smooth(v) for v in range(n, m))


def _valid():
    return {"u": torch.randn(2, 64, 10), "k": torch.randn(64, 10), "D": torch.randn(64)}


BAD_INPUTS = {
    "u-not-3d": ({"u": torch.randn(64, 10)}, "u must be [B, D, L] = [*, *, *], got [64, 10]"),
    "u-int": ({"u": torch.ones(2, 64, 10, dtype=torch.long)}, "u must be a floating-point tensor"),
    "u-L0": ({"u": torch.randn(2, 64, 0)}, "u must be [B, D, L] with L >= 1, got [2, 64, 0]"),
    "k-wrong-D": ({"k": torch.randn(32, 10)}, "k must be [D, Lk] = [64, *], got [32, 10]"),
    "k-longer-than-L": ({"k": torch.randn(64, 11)}, "k must be [D, Lk] with 1 <= Lk <= L = 10, got [64, 11]"),
    "k-empty": ({"k": torch.randn(64, 0)}, "k must be [D, Lk] with 1 <= Lk <= L = 10, got [64, 0]"),
    "k-int": ({"k": torch.ones(64, 10, dtype=torch.int64)}, "k must be a floating-point tensor"),
    "D-wrong-size": ({"D": torch.randn(32)}, "D must be [D] = [64], got [32]"),
    "impl-name": ({"impl": "fft"}, "impl must be one of"),
}


@pytest.mark.parametrize("change,message", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_inputs_raise_value_error_naming_the_argument(change, message):
    with pytest.raises(ValueError) as err:
        fc.fft_conv(**{**_valid(), **change})
    assert message in str(err.value)


@pytest.mark.slow
def test_fft_path_is_50x_faster_than_direct_convolution_at_64k():
    """B=1, D=8, L = Lk = 65536, fp32 forward on the CPU: FFT path vs direct convolution (the ref)."""
    u, k, D = torch.randn(1, 8, 65536), torch.randn(8, 65536), torch.randn(8)

    def best(impl, n):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fc.fft_conv(u, k, D, impl=impl)
            times.append(time.perf_counter() - t0)
        return min(times)

    with torch.no_grad():
        fc.fft_conv(u, k, D, impl="torch")  # warm-up
        t_fft, t_direct = best("torch", 5), best("ref", 1)
    assert t_direct / t_fft >= 50, f"FFT {t_fft * 1e3:.1f} ms vs direct {t_direct * 1e3:.0f} ms"
