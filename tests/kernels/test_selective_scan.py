"""mmseq.kernels.selective_scan: the fast paths against the float64 reference, streaming, bad inputs.

Each comparison checks the output, the last state and the gradient of every input (with random
cotangents for both outputs) under its own name, and reports max abs error and relative RMS error.
Triton runs in its CPU interpreter when no GPU is present (small shapes), and on the GPU otherwise.
"""

import importlib
import math
from typing import NamedTuple

import pytest
import torch

from tests.kernels._helpers import DEVICE, GPU, assert_close, outputs_and_grads, triton_marks

ss = importlib.import_module("mmseq.kernels.selective_scan")  # the module, not the function

TRITON = triton_marks(ss._selective_scan_fwd_kernel, ss._selective_scan_bwd_kernel)

NAMES = ("out", "last_state", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias")


class Case(NamedTuple):
    B: int
    D: int
    N: int
    L: int
    G: int  # 0: B and C are [B, N, L]; else [B, G, N, L]
    skip: bool  # D
    gate: bool  # z
    bias: bool  # delta_bias
    softplus: bool


def _id(c: Case) -> str:
    groups = "BNL" if c.G == 0 else f"G{c.G}"
    flags = "".join(f for f, on in (("D", c.skip), ("z", c.gate), ("b", c.bias), ("s", c.softplus)) if on)
    return f"B{c.B}-D{c.D}-N{c.N}-L{c.L}-{groups}-{flags or 'plain'}"


def _inputs(c: Case, dtype=torch.float64, device="cpu", seed=0, C_groups=None):
    """Inputs in dtype, drawn in float64 so every dtype sees the same values (rounded)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype).to(device)

    bc = (c.B, c.N, c.L) if c.G == 0 else (c.B, c.G, c.N, c.L)
    cc = bc if C_groups is None else (c.B, C_groups, c.N, c.L)
    if c.softplus:  # raw delta around -2: dt = softplus(...) ~ 0.1
        delta = rnd(c.B, c.D, c.L, scale=0.5, shift=-2.0)
    else:  # positive step sizes
        delta = torch.rand(c.B, c.D, c.L, generator=g, dtype=torch.float64) * 0.2 + 0.005
        delta = delta.to(dtype).to(device)
    A = (-torch.rand(c.D, c.N, generator=g, dtype=torch.float64) * 3 - 0.2).to(dtype).to(device)
    return {
        "u": rnd(c.B, c.D, c.L),
        "delta": delta,
        "A": A,
        "B": rnd(*bc),
        "C": rnd(*cc),
        "D": rnd(c.D) if c.skip else None,
        "z": rnd(c.B, c.D, c.L) if c.gate else None,
        "delta_bias": rnd(c.D, scale=0.1) if c.bias else None,
    }


def _run(fn, inputs: dict, softplus: bool, seed=1) -> dict:
    """Forward with return_last_state, backward with random cotangents for out and last_state."""
    return outputs_and_grads(lambda **kw: fn(**kw, delta_softplus=softplus, return_last_state=True),
                             inputs, ("out", "last_state"), seed)


def _assert_close(got: dict, want: dict, rtol: float, label: str = ""):
    """Max abs error relative to the reference's max abs value, per tensor (RMS error reported too)."""
    assert_close(got, {name: want.get(name) for name in NAMES}, rtol, by="max", label=label)


@pytest.fixture(params=["compiled", "vectorized"])
def cpu_path(request, monkeypatch):
    """The torch path both ways: with its compiled core (kernels/csrc; the default on the CPU when it builds) and
    with MMSEQ_CPU_KERNELS=0, its PyTorch code alone."""
    if request.param == "vectorized":
        monkeypatch.setenv("MMSEQ_CPU_KERNELS", "0")
    return request.param


def _impl(name):
    return lambda **kw: ss.selective_scan(**kw, impl=name)


# ----------------------------------------------------------------------------------------------------------
# The reference itself
# ----------------------------------------------------------------------------------------------------------


def test_ref_matches_scalar_recurrence():
    """The reference against the recurrence written out one scalar at a time."""
    c = Case(2, 4, 3, 6, 2, True, True, True, True)
    x = _inputs(c)
    out, last = ss.selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    u, delta, A, Bm, Cm, Dv, z, bias = (x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"))
    want = torch.zeros_like(out)
    for b in range(c.B):
        for d in range(c.D):
            grp = d // (c.D // c.G)
            h = [0.0] * c.N
            for t in range(c.L):
                dt = torch.nn.functional.softplus(delta[b, d, t] + bias[d]).item()
                y = 0.0
                for n in range(c.N):
                    decay = torch.exp(dt * A[d, n]).item()
                    h[n] = decay * h[n] + dt * Bm[b, grp, n, t].item() * u[b, d, t].item()
                    y += Cm[b, grp, n, t].item() * h[n]
                y += Dv[d].item() * u[b, d, t].item()
                want[b, d, t] = y * torch.nn.functional.silu(z[b, d, t]).item()
                if t == c.L - 1:
                    assert torch.allclose(last[b, d], torch.tensor(h, dtype=torch.float64), rtol=1e-12)
    assert torch.allclose(out, want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# Vectorized CPU path against the reference
# ----------------------------------------------------------------------------------------------------------

TORCH_CASES = [
    Case(2, 8, 4, 1, 0, True, True, True, True),
    Case(2, 12, 5, 7, 0, False, False, False, False),
    Case(1, 10, 16, 63, 2, True, False, True, True),
    Case(2, 6, 4, 129, 6, False, True, False, False),
    Case(2, 24, 8, 1000, 3, True, True, False, True),
    Case(1, 3, 4, 4097, 0, True, True, True, True),
]


@pytest.mark.parametrize("c", TORCH_CASES, ids=_id)
def test_torch_float64_matches_ref(c, cpu_path):
    x = _inputs(c)
    want = _run(ss.selective_scan_ref, x, c.softplus)
    _assert_close(_run(_impl("torch"), x, c.softplus), want, 1e-10, _id(c))


@pytest.mark.parametrize("c", TORCH_CASES, ids=_id)
def test_torch_float32_matches_ref(c, cpu_path):
    want = _run(ss.selective_scan_ref, _inputs(c), c.softplus)
    got = _run(_impl("torch"), _inputs(c, torch.float32), c.softplus)
    assert got["out"].dtype == torch.float32 and got["last_state"].dtype == torch.float32
    _assert_close(got, want, 1e-4, _id(c))


@pytest.mark.parametrize("c", [Case(2, 16, 8, 100, 2, True, True, True, True)], ids=_id)
def test_torch_bfloat16_matches_ref(c, cpu_path):
    x16 = _inputs(c, torch.bfloat16)
    want = _run(ss.selective_scan_ref, {k: (v.double() if v is not None else None) for k, v in x16.items()},
                c.softplus)
    got = _run(_impl("torch"), x16, c.softplus)
    assert got["out"].dtype == torch.bfloat16 and got["dB"].dtype == torch.bfloat16
    assert got["last_state"].dtype == torch.float32
    _assert_close(got, want, 2e-2, _id(c))


def test_torch_groups_of_B_and_C_may_differ(cpu_path):
    c = Case(2, 12, 4, 40, 2, True, False, False, False)
    x = _inputs(c, C_groups=3)
    _assert_close(_run(_impl("torch"), x, False), _run(ss.selective_scan_ref, x, False), 1e-10, "G_B=2 G_C=3")


def test_torch_non_contiguous_inputs(cpu_path):
    c = Case(2, 8, 4, 50, 0, True, True, False, True)
    x = _inputs(c)
    for k in ("u", "delta", "z"):  # [B, L, D] storage seen as [B, D, L], as in a Mamba block
        x[k] = x[k].transpose(1, 2).contiguous().transpose(1, 2)
    x["B"] = x["B"].transpose(1, 2).contiguous().transpose(1, 2)
    assert not x["u"].is_contiguous()
    _assert_close(_run(_impl("torch"), x, True), _run(ss.selective_scan_ref, x, True), 1e-10, "strided")


def test_torch_large_steps_stay_finite(cpu_path):
    """dt * A of -1e3 per step: decays underflow to zero, nothing overflows."""
    c = Case(1, 4, 4, 80, 0, True, False, False, False)
    x = _inputs(c)
    x["delta"] = x["delta"] * 5000
    got = _run(_impl("torch"), {k: (v.float() if v is not None else None) for k, v in x.items()}, False)
    _assert_close(got, _run(ss.selective_scan_ref, x, False), 1e-4, "large dt")


def test_default_impl_on_cpu_is_torch():
    c = Case(1, 4, 4, 20, 0, True, True, True, True)
    x = _inputs(c, torch.float32)
    got = ss.selective_scan(**x, delta_softplus=True)
    assert torch.equal(got, ss.selective_scan_torch(**x, delta_softplus=True))
    assert got.shape == (1, 4, 20)


# ----------------------------------------------------------------------------------------------------------
# Streaming: one token at a time equals the whole sequence
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("c", [Case(2, 12, 4, 33, 3, True, True, True, True),
                               Case(1, 5, 3, 9, 0, False, False, False, False)], ids=_id)
def test_state_update_streams_the_scan(c, dtype):
    x = _inputs(c, dtype)
    full, last = ss.selective_scan(**x, delta_softplus=c.softplus, return_last_state=True, impl="torch")
    state = torch.zeros(c.B, c.D, c.N, dtype=dtype)
    ys = []
    for t in range(c.L):
        y = ss.selective_state_update(
            state, x["u"][..., t], x["delta"][..., t], x["A"], x["B"][..., t], x["C"][..., t], D=x["D"],
            z=x["z"][..., t] if c.gate else None, dt_bias=x["delta_bias"], dt_softplus=c.softplus)
        assert y.shape == (c.B, c.D) and y.dtype == dtype
        ys.append(y)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(torch.stack(ys, -1), full, rtol=tol, atol=tol)
    torch.testing.assert_close(state, last.to(dtype), rtol=tol, atol=tol)


def _state_update_loop(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decoding step written out per (b, d, n) in float64 Python numbers -> (new state, y), both float64:
    dt' = softplus(dt + bias); h = exp(dt' A) h + dt' B x; y = (sum_n C h + D x) * silu(z)."""
    Bn, Dn, N = state.shape
    val = lambda t: None if t is None else t.detach().double().cpu().tolist()
    h, x, dt, A, D, z, bias = map(val, (state, x, dt, A, D, z, dt_bias))
    B, C = (val(t if t.dim() == 3 else t[:, None]) for t in (B, C))  # [Bn, G, N]
    G = len(B[0])
    y = [[0.0] * Dn for _ in range(Bn)]
    for b in range(Bn):
        for d in range(Dn):
            g = d // (Dn // G)
            step = dt[b][d] + (bias[d] if bias is not None else 0.0)
            step = math.log1p(math.exp(step)) if dt_softplus else step
            acc = 0.0
            for n in range(N):
                h[b][d][n] = math.exp(step * A[d][n]) * h[b][d][n] + step * B[b][g][n] * x[b][d]
                acc += C[b][g][n] * h[b][d][n]
            if D is not None:
                acc += D[d] * x[b][d]
            if z is not None:
                acc *= z[b][d] / (1 + math.exp(-z[b][d]))
            y[b][d] = acc
    return torch.tensor(h, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)


def _step_inputs(Bn, Dn, N, G, full: bool, dtype=torch.float64, seed=0):
    """Arguments of selective_state_update (G=0: B and C are [B, N]); ``full`` adds D, z, dt_bias, softplus."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    bc = (Bn, N) if G == 0 else (Bn, G, N)
    args = {"state": rnd(Bn, Dn, N), "x": rnd(Bn, Dn), "A": -(torch.rand(Dn, N, generator=g) * 2 + 0.1).to(dtype),
            "B": rnd(*bc), "C": rnd(*bc)}
    if full:
        args.update(dt=rnd(Bn, Dn) * 0.5 - 1.0, D=rnd(Dn), z=rnd(Bn, Dn), dt_bias=rnd(Dn) * 0.1, dt_softplus=True)
    else:
        args.update(dt=(torch.rand(Bn, Dn, generator=g) * 0.3 + 0.01).to(dtype))
    return args


STEP_IMPLS = ["ref", "torch", pytest.param("triton", marks=TRITON)]


@pytest.mark.parametrize("full", [True, False], ids=["G3-D-z-bias-softplus", "BN-plain"])
@pytest.mark.parametrize("impl", STEP_IMPLS)
def test_state_update_equals_the_step_written_out(impl, full):
    device = DEVICE if impl == "triton" else torch.device("cpu")
    args = _step_inputs(2, 6, 3, 3 if full else 0, full)
    want_state, want_y = _state_update_loop(**args)
    on = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    y = ss.selective_state_update(**on, impl=impl)
    assert y.shape == (2, 6) and y.dtype == torch.float64
    assert_close({"y": y, "state": on["state"]}, {"y": want_y, "state": want_state}, 1e-12, by="max", label=impl)


def test_state_update_is_in_place_and_keeps_state_dtype():
    args = _step_inputs(2, 4, 3, 0, True, dtype=torch.bfloat16)
    state = args["state"].float()
    want_state, want_y = _state_update_loop(**{**args, "state": state})
    ptr = state.data_ptr()
    y = ss.selective_state_update(**{**args, "state": state})
    assert state.data_ptr() == ptr and state.dtype == torch.float32
    assert y.dtype == torch.bfloat16
    assert_close({"y": y, "state": state}, {"y": want_y, "state": want_state}, 1e-2, by="max")


# ----------------------------------------------------------------------------------------------------------
# Triton (interpreter on the CPU: small shapes; the chunk is shrunk so short sequences span several chunks)
# ----------------------------------------------------------------------------------------------------------

TRITON_CASES = [
    Case(2, 4, 3, 1, 0, True, True, True, True),
    Case(1, 4, 4, 7, 0, False, False, False, False),
    Case(2, 6, 5, 21, 3, True, True, True, False),
    Case(1, 8, 4, 19, 2, True, False, False, True),
]


@pytest.fixture
def small_chunks(monkeypatch):
    if DEVICE.type == "cpu":
        monkeypatch.setattr(ss, "_TRITON_CHUNK", 8)


def _on_device(x: dict) -> dict:
    return {k: (v.to(DEVICE) if v is not None else None) for k, v in x.items()}


@pytest.mark.parametrize("c", [pytest.param(c, id=_id(c), marks=TRITON) for c in TRITON_CASES])
def test_triton_float64_matches_ref(c, small_chunks):
    x = _inputs(c)
    want = _run(ss.selective_scan_ref, x, c.softplus)
    _assert_close(_run(_impl("triton"), _on_device(x), c.softplus), want, 1e-10, _id(c))


@pytest.mark.parametrize("c", [pytest.param(c, id=_id(c), marks=TRITON) for c in TRITON_CASES[2:]])
def test_triton_float32_matches_ref(c, small_chunks):
    want = _run(ss.selective_scan_ref, _inputs(c), c.softplus)
    got = _run(_impl("triton"), _on_device(_inputs(c, torch.float32)), c.softplus)
    assert got["out"].dtype == torch.float32 and got["last_state"].dtype == torch.float32
    _assert_close(got, want, 1e-4, _id(c))


@pytest.mark.parametrize("c", [pytest.param(Case(1, 4, 4, 12, 0, True, True, True, True), id="B1-D4-N4-L12",
                                            marks=TRITON)])
def test_triton_bfloat16_matches_ref(c, small_chunks):
    x16 = _inputs(c, torch.bfloat16)
    want = _run(ss.selective_scan_ref, {k: (v.double() if v is not None else None) for k, v in x16.items()},
                c.softplus)
    got = _run(_impl("triton"), _on_device(x16), c.softplus)
    assert got["out"].dtype == torch.bfloat16 and got["du"].dtype == torch.bfloat16
    _assert_close(got, want, 2e-2, "bf16")


@pytest.mark.parametrize("c", [pytest.param(c, id=_id(c), marks=[*TRITON, *GPU])
                               for c in (Case(2, 32, 16, 300, 1, True, True, True, True),
                                         Case(2, 96, 16, 1025, 4, False, True, False, True))])
def test_triton_gpu_long(c):
    x = _inputs(c, torch.float32)
    want = _run(ss.selective_scan_ref, _inputs(c), c.softplus)
    _assert_close(_run(_impl("triton"), _on_device(x), c.softplus), want, 1e-4, _id(c))


# ----------------------------------------------------------------------------------------------------------
# Bad input: one ValueError naming the argument and the expected shape
# ----------------------------------------------------------------------------------------------------------

_GOOD = Case(2, 8, 4, 10, 0, True, True, True, False)

BAD_SCAN = [
    ("delta", lambda x: x.update(delta=x["delta"][..., :9]),
     "delta must be [B, D, L] = [2, 8, 10], got [2, 8, 9]"),
    ("A", lambda x: x.update(A=x["A"][:7]), "A must be [D, N] = [8, *], got [7, 4]"),
    ("B-N", lambda x: x.update(B=x["B"][:, :3]), "B must be [B, N, L] = [2, 4, 10], got [2, 3, 10]"),
    ("C-groups", lambda x: x.update(C=torch.zeros(2, 3, 4, 10, dtype=torch.float64)), "C has G=3 groups"),
    ("B-rank", lambda x: x.update(B=x["B"][None, None]), "B must be [B, G, N, L]"),
    ("B-const", lambda x: x.update(B=x["B"][0]), "B must be [D, N] = [8, 4], got [4, 10]"),
    ("D", lambda x: x.update(D=x["D"][:5]), "D must be [D] = [8], got [5]"),
    ("z", lambda x: x.update(z=x["z"][:1]), "z must be [B, D, L] = [2, 8, 10], got [1, 8, 10]"),
    ("delta_bias", lambda x: x.update(delta_bias=x["delta_bias"][None]), "delta_bias must be [D]"),
    ("L0", lambda x: x.update(u=x["u"][..., :0], delta=x["delta"][..., :0]),
     "u must be [B, D, L] with L >= 1"),
    ("u-int", lambda x: x.update(u=x["u"].long()), "u must be a floating-point tensor"),
    ("B-int", lambda x: x.update(B=x["B"].int()), "B must be a floating-point tensor"),
]


@pytest.mark.parametrize("case", [pytest.param(b, id=b[0]) for b in BAD_SCAN])
def test_bad_scan_inputs(case):
    _, edit, message = case
    x = _inputs(_GOOD)
    edit(x)
    with pytest.raises(ValueError) as err:
        ss.selective_scan(**x)
    assert message in str(err.value)


def test_unknown_impl():
    with pytest.raises(ValueError, match="impl must be one of"):
        ss.selective_scan(**_inputs(_GOOD), impl="cuda")


BAD_STEP = [
    ("state", {"state": torch.zeros(2, 8)}, "state must be [B, D, N]"),
    ("x", {"x": torch.zeros(2, 7)}, "x must be [B, D] = [2, 8], got [2, 7]"),
    ("dt", {"dt": torch.zeros(3, 8)}, "dt must be [B, D] = [2, 8], got [3, 8]"),
    ("A", {"A": torch.zeros(8, 5)}, "A must be [D, N] = [8, 4], got [8, 5]"),
    ("B", {"B": torch.zeros(2, 5)}, "B must be [B, N] = [2, 4], got [2, 5]"),
    ("C-groups", {"C": torch.zeros(2, 3, 4)}, "C has G=3 groups, which must divide D=8"),
    ("z", {"z": torch.zeros(2, 8, 1)}, "z must be [B, D] = [2, 8], got [2, 8, 1]"),
    ("dt_bias", {"dt_bias": torch.zeros(4)}, "dt_bias must be [D] = [8], got [4]"),
    ("x-int", {"x": torch.zeros(2, 8, dtype=torch.long)}, "x must be a floating-point tensor"),
]


@pytest.mark.parametrize("case", [pytest.param(b, id=b[0]) for b in BAD_STEP])
def test_bad_state_update_inputs(case):
    _, change, message = case
    args = {"state": torch.zeros(2, 8, 4), "x": torch.zeros(2, 8), "dt": torch.zeros(2, 8),
            "A": torch.zeros(8, 4), "B": torch.zeros(2, 4), "C": torch.zeros(2, 4)}
    args.update(change)
    with pytest.raises(ValueError) as err:
        ss.selective_state_update(**args)
    assert message in str(err.value)


def _heads_inputs(Bn, H, P, N, G, dtype=torch.float64, seed=0):
    """Arguments of the heads form (state [B, H, P, N]; G=0: B and C are [B, N]), all options on."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    bc = (Bn, N) if G == 0 else (Bn, G, N)
    return {"state": rnd(Bn, H, P, N), "x": rnd(Bn, H, P), "dt": rnd(Bn, H, P) * 0.5 - 1.0,
            "A": -(torch.rand(H, P, N, generator=g) * 2 + 0.1).to(dtype), "B": rnd(*bc), "C": rnd(*bc),
            "D": rnd(H, P), "z": rnd(Bn, H, P), "dt_bias": rnd(H, P) * 0.1, "dt_softplus": True}


@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided-state"])
@pytest.mark.parametrize("G", [0, 1, 3])
def test_state_update_heads_form(G, strided):
    """mamba_ssm's heads form: head h reads group h // (H // G); equal to the loop over D = H * P channels."""
    Bn, H, P, N = 2, 3, 2, 4
    args = _heads_inputs(Bn, H, P, N, G)
    flat = {k: (v.reshape(*v.shape[:1], H * P, *v.shape[3:]) if k in ("state", "x", "dt", "z")
                else v.reshape(H * P, *v.shape[2:]) if k in ("A", "D", "dt_bias") else v) for k, v in args.items()}
    if G:  # over D = H * P channels, group g spans P * H // G of them: the same grouping
        flat["B"], flat["C"] = args["B"], args["C"]
    want_state, want_y = _state_update_loop(**flat)
    state = args["state"]
    if strided:  # [B, P, H, N] storage seen as [B, H, P, N]: cannot be flattened without a copy
        state = state.transpose(1, 2).contiguous().transpose(1, 2)
    ptr = state.data_ptr()
    y = ss.selective_state_update(**{**args, "state": state})
    assert y.shape == (Bn, H, P) and state.data_ptr() == ptr
    assert_close({"y": y.reshape(Bn, H * P), "state": state.reshape(Bn, H * P, N)},
                 {"y": want_y, "state": want_state}, 1e-12, by="max", label=f"G{G}")


def test_state_update_heads_bad_shapes():
    args = _heads_inputs(2, 4, 2, 3, 0)
    with pytest.raises(ValueError, match=r"A must be \[H, P, N\] = \[4, 2, 3\], got \[8, 3\]"):
        ss.selective_state_update(**{**args, "A": args["A"].reshape(8, 3)})
    with pytest.raises(ValueError, match="B has G=3 groups, which must divide H=4"):
        ss.selective_state_update(**{**args, "B": torch.zeros(2, 3, 3, dtype=torch.float64)})
