"""mmseq.kernels.causal_conv1d: every fast path against the float64 reference, streaming, bad inputs.

Each comparison checks the output, the final state and the gradient of every input (with random
cotangents for both outputs) under its own name, and reports max abs error and relative RMS error.
Triton runs in its CPU interpreter when no GPU is present (small shapes), and on the GPU otherwise.
"""

import importlib
import math
from typing import NamedTuple

import pytest
import torch

from tests.kernels._helpers import DEVICE, assert_close, marked, triton_marks

cc = importlib.import_module("mmseq.kernels.causal_conv1d")  # the module, not the function

TRITON = triton_marks(cc._causal_conv1d_fwd_kernel, cc._causal_conv1d_bwd_kernel, cc._causal_conv1d_update_kernel)
FAST_PATHS = [pytest.param("torch", id="torch"), pytest.param("triton", id="triton", marks=TRITON)]
ALL_PATHS = [pytest.param("ref", id="ref"), *FAST_PATHS]


class Case(NamedTuple):
    B: int
    D: int
    L: int
    K: int
    bias: bool
    silu: bool
    init: bool


CASES = {
    "L1-K4-D3-bias-silu-init": Case(2, 3, 1, 4, True, True, True),
    "L2-K4-D5-init": Case(2, 5, 2, 4, False, False, True),  # L < K-1: the final state keeps part of the init
    "L7-K2-D5": Case(2, 5, 7, 2, False, False, False),
    "L7-K3-D6-silu-init": Case(1, 6, 7, 3, False, True, True),
    "L63-K4-D6-bias-silu-init": Case(2, 6, 63, 4, True, True, True),
    "L63-K3-D5-bias": Case(2, 5, 63, 3, True, False, False),
    "L63-K1-D3-bias-init": Case(2, 3, 63, 1, True, False, True),  # empty state
    "L1000-K4-D3-silu-init": Case(2, 3, 1000, 4, False, True, True),
    "L1000-K2-D7-bias": Case(1, 7, 1000, 2, True, False, False),
    "L4097-K4-D2-bias-silu-init": Case(1, 2, 4097, 4, True, True, True),
    "L4097-K3-D3": Case(1, 3, 4097, 3, False, False, False),
}
BF16_CASES = ["L7-K3-D6-silu-init", "L63-K4-D6-bias-silu-init", "L1000-K2-D7-bias"]
TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2}


def _make(case: Case, dtype: torch.dtype, seed: int = 0):
    """Inputs and cotangents, drawn in float64 on the CPU, then rounded to dtype and moved to DEVICE."""
    g = torch.Generator().manual_seed(seed)
    B, D, L, K = case.B, case.D, case.L, case.K
    inputs = {
        "x": torch.randn(B, D, L, generator=g, dtype=torch.float64),
        "weight": torch.randn(D, K, generator=g, dtype=torch.float64) / K**0.5,
        "bias": torch.randn(D, generator=g, dtype=torch.float64) if case.bias else None,
        "initial_state": torch.randn(B, D, K - 1, generator=g, dtype=torch.float64) if case.init else None,
    }
    cots = {
        "y": torch.randn(B, D, L, generator=g, dtype=torch.float64),
        "final_state": torch.randn(B, D, K - 1, generator=g, dtype=torch.float64),
    }
    cast = lambda t: None if t is None else t.to(device=DEVICE, dtype=dtype)
    return {n: cast(t) for n, t in inputs.items()}, {n: cast(t) for n, t in cots.items()}


def _run(impl: str, case: Case, inputs: dict, cots: dict) -> dict:
    """Output, final state and the gradient of every given input, by name."""
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in inputs.items() if t is not None}
    args = {n: leaves.get(n) for n in inputs}
    act = "silu" if case.silu else None
    y, final = cc.causal_conv1d(**args, activation=act, return_final_state=True, impl=impl)
    torch.autograd.backward([y, final], [cots["y"].to(y.dtype), cots["final_state"].to(final.dtype)])
    out = {"y": y.detach(), "final_state": final.detach()}
    out.update({f"grad_{n}": t.grad for n, t in leaves.items()})
    return out


def _check_against_ref(impl: str, case: Case, dtype: torch.dtype) -> None:
    inputs, cots = _make(case, dtype)
    got = _run(impl, case, inputs, cots)
    for name, t in got.items():
        assert t.dtype == dtype, f"{name} has dtype {t.dtype}, expected {dtype}"
    to64 = lambda d: {n: None if t is None else t.double() for n, t in d.items()}
    want = _run("ref", case, to64(inputs), to64(cots))
    assert_close(got, want, TOL[dtype], label=f"{impl} {dtype}")


def _path_case_params(names: list[str]) -> list:
    """(impl, case) pairs; the longest cases on the Triton interpreter join the slow run."""
    params = []
    for impl in ("torch", "triton"):
        for name in names:
            marks = []
            if impl == "triton":
                marks = [*TRITON, *([pytest.mark.slow] if DEVICE.type == "cpu" and CASES[name].L > 1000 else [])]
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
    [Case(1, 5, 30, 4, True, True, True), Case(1, 5, 21, 3, False, False, True)],
    ids=["L30-K4-D5-bias-silu-init", "L21-K3-D5-init"],
)
@marked(TRITON)
def test_triton_small_tiles_cross_every_boundary(case, monkeypatch):
    """Tiles of 4 channels x 8 positions and at most 3 position chunks per row in the backward (for L=30:
    5 blocks in chunks of 2, the last one half empty), so that taps, channels and partial weight gradients
    all cross tile edges."""
    monkeypatch.setattr(cc, "_blocks", lambda device, D, L: (4, 8))
    monkeypatch.setattr(cc, "_MAX_CHUNKS", 3)
    _check_against_ref("triton", case, torch.float64)


def test_ref_matches_nn_conv1d_layout():
    """weight[:, K-1] weighs the current input: nn.Conv1d(padding=K-1) cut to the first L outputs."""
    inputs, _ = _make(Case(2, 5, 20, 4, True, False, False), torch.float64)
    x, w, b = inputs["x"], inputs["weight"], inputs["bias"]
    want = torch.nn.functional.conv1d(x, w[:, None], b, padding=3, groups=5)[..., :20]
    torch.testing.assert_close(cc.causal_conv1d(x, w, b, impl="ref"), want, rtol=1e-12, atol=1e-12)


def _conv_loop(x, w, b, silu, s0):
    """y[b, d, t] = act(bias[d] + sum_k w[d, k] xp[b, d, t + k]), xp = cat(s0, x), one scalar at a time."""
    Bn, D, L = x.shape
    K = w.shape[1]
    xp = torch.cat([s0, x], dim=-1).double().cpu().tolist()
    w, b = w.double().cpu().tolist(), b.double().cpu().tolist()
    y = torch.zeros(Bn, D, L, dtype=torch.float64)
    for i in range(Bn):
        for d in range(D):
            for t in range(L):
                acc = b[d] + sum(w[d][k] * xp[i][d][t + k] for k in range(K))
                y[i, d, t] = acc / (1 + math.exp(-acc)) if silu else acc
    final = torch.tensor(xp, dtype=torch.float64)[..., L:]  # the last K-1 inputs
    return y, final


@pytest.mark.parametrize("silu", [True, False], ids=["silu", "linear"])
@pytest.mark.parametrize("impl", ALL_PATHS)
def test_every_path_equals_the_convolution_written_out(impl, silu):
    case = Case(2, 3, 9, 4, True, silu, True)
    inputs, _ = _make(case, torch.float64)
    x, w, b, s0 = inputs["x"], inputs["weight"], inputs["bias"], inputs["initial_state"]
    y, final = cc.causal_conv1d(x, w, b, "silu" if silu else None, s0, return_final_state=True, impl=impl)
    want_y, want_final = _conv_loop(x, w, b, silu, s0)
    assert_close({"y": y, "final_state": final}, {"y": want_y, "final_state": want_final}, 1e-12, label=impl)


def test_default_impl_on_cpu_is_the_torch_path():
    inputs, _ = _make(CASES["L63-K4-D6-bias-silu-init"], torch.float32)
    x = inputs["x"].cpu()
    w, b = inputs["weight"].cpu(), inputs["bias"].cpu()
    assert torch.equal(cc.causal_conv1d(x, w, b, "silu"), cc.causal_conv1d(x, w, b, "silu", impl="torch"))


STREAM_CASES = {
    "L20-K4-D5-bias-silu-init": Case(2, 5, 20, 4, True, True, True),
    "L9-K3-D3-zero-state": Case(1, 3, 9, 3, False, False, False),
    "L5-K2-D6-silu": Case(2, 6, 5, 2, False, True, True),
    "L6-K1-D3-bias": Case(1, 3, 6, 1, True, False, True),
}


@pytest.mark.parametrize("case", list(STREAM_CASES.values()), ids=list(STREAM_CASES))
@pytest.mark.parametrize("impl", ALL_PATHS)
def test_update_token_by_token_equals_full_op(impl, case):
    inputs, _ = _make(case, torch.float32)
    x, w, b, s0 = inputs["x"], inputs["weight"], inputs["bias"], inputs["initial_state"]
    act = "silu" if case.silu else None
    y_full, final = cc.causal_conv1d(x, w, b, act, s0, return_final_state=True, impl="ref")
    state = s0.clone() if s0 is not None else x.new_zeros(case.B, case.D, case.K - 1)
    ys = []
    for t in range(case.L):
        ys.append(cc.causal_conv1d_update(x[:, :, t], state, w, b, act, impl=impl))
        _, prefix_final = cc.causal_conv1d(x[..., : t + 1], w, b, act, s0, return_final_state=True, impl="ref")
        assert torch.equal(state, prefix_final), f"state after step {t} differs from the prefix's final state"
    y_steps = torch.stack(ys, dim=-1)
    assert y_steps.dtype == x.dtype
    torch.testing.assert_close(y_steps, y_full, rtol=1e-5, atol=1e-6)
    assert torch.equal(state, final)


@pytest.mark.parametrize("impl", ALL_PATHS)
def test_update_writes_through_a_non_contiguous_state(impl):
    case = Case(2, 5, 6, 4, True, True, True)
    inputs, _ = _make(case, torch.float32)
    x, w, b, s0 = inputs["x"], inputs["weight"], inputs["bias"], inputs["initial_state"]
    storage = s0.transpose(1, 2).contiguous()  # [B, K-1, D]
    state = storage.transpose(1, 2)  # [B, D, K-1] view, not contiguous
    for t in range(case.L):
        cc.causal_conv1d_update(x[:, :, t], state, w, b, "silu", impl=impl)
    _, final = cc.causal_conv1d(x, w, b, "silu", s0, return_final_state=True, impl="ref")
    assert torch.equal(storage.transpose(1, 2), final)


@pytest.mark.parametrize("impl", ALL_PATHS)
def test_chunks_chained_through_the_state_equal_one_pass(impl):
    case = Case(2, 5, 50, 4, True, True, True)
    inputs, _ = _make(case, torch.float32)
    x, w, b, s0 = inputs["x"], inputs["weight"], inputs["bias"], inputs["initial_state"]
    y_full, final = cc.causal_conv1d(x, w, b, "silu", s0, return_final_state=True, impl=impl)
    state, ys = s0, []
    for lo, hi in [(0, 2), (2, 17), (17, 50)]:  # the first chunk is shorter than K-1
        y, state = cc.causal_conv1d(x[..., lo:hi], w, b, "silu", state, return_final_state=True, impl=impl)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, dim=-1), y_full, rtol=1e-5, atol=1e-6)
    assert torch.equal(state, final)


def _valid():
    return {"x": torch.randn(2, 64, 10), "weight": torch.randn(64, 4), "bias": torch.randn(64)}


BAD_INPUTS = {
    "x-not-3d": ({"x": torch.randn(64, 10)}, "x must be [B, D, L] = [*, *, *], got [64, 10]"),
    "x-int": ({"x": torch.ones(2, 64, 10, dtype=torch.long)}, "x must be a floating-point tensor"),
    "x-L0": ({"x": torch.randn(2, 64, 0)}, "x must be [B, D, L] with L >= 1, got [2, 64, 0]"),
    "weight-wrong-D": ({"weight": torch.randn(32, 4)}, "weight must be [D, K] = [64, *], got [32, 4]"),
    "weight-K0": ({"weight": torch.randn(64, 0)}, "weight must be [D, K] with K >= 1 taps, got [64, 0]"),
    "weight-int": ({"weight": torch.ones(64, 4, dtype=torch.int32)}, "weight must be a floating-point"),
    "bias-wrong-D": ({"bias": torch.randn(63)}, "bias must be [D] = [64], got [63]"),
    "initial_state-wrong-K": (
        {"initial_state": torch.randn(2, 64, 4)},
        "initial_state must be [B, D, K-1] = [2, 64, 3], got [2, 64, 4]",
    ),
    "activation-name": ({"activation": "relu"}, "activation must be one of"),
    "impl-name": ({"impl": "cuda"}, "impl must be one of"),
}


@pytest.mark.parametrize("change,message", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_inputs_raise_value_error_naming_the_argument(change, message):
    with pytest.raises(ValueError) as err:
        cc.causal_conv1d(**{**_valid(), **change})
    assert message in str(err.value)


BAD_UPDATE_INPUTS = {
    "x-not-2d-or-3d": (
        {"x": torch.randn(2, 64, 1, 1)},
        "x must be [B, D] (one token) or [B, D, T] (T tokens), got [2, 64, 1, 1]",
    ),
    "x-no-tokens": ({"x": torch.randn(2, 64, 0)}, "x must be [B, D, T] with T >= 1 tokens, got [2, 64, 0]"),
    "weight-wrong-D": ({"weight": torch.randn(32, 4)}, "weight must be [D, K] = [64, *], got [32, 4]"),
    "conv_state-shorter-than-K-1": (
        {"conv_state": torch.randn(2, 64, 2)},
        "conv_state must be [B, D, S] with S >= K-1 = 3 (the state holds the last S inputs), got [2, 64, 2]",
    ),
    "conv_state-wrong-B": ({"conv_state": torch.randn(3, 64, 3)}, "conv_state must be [B, D, S] = [2, 64, *]"),
    "conv_state-int": ({"conv_state": torch.zeros(2, 64, 3, dtype=torch.long)}, "conv_state must be a floating"),
    "activation-name": ({"activation": "gelu"}, "activation must be one of"),
}


@pytest.mark.parametrize("change,message", list(BAD_UPDATE_INPUTS.values()), ids=list(BAD_UPDATE_INPUTS))
def test_update_bad_inputs_raise_value_error_naming_the_argument(change, message):
    valid = {"x": torch.randn(2, 64), "conv_state": torch.zeros(2, 64, 3), "weight": torch.randn(64, 4)}
    with pytest.raises(ValueError) as err:
        cc.causal_conv1d_update(**{**valid, **change})
    assert message in str(err.value)
