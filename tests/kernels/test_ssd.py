"""mmseq.kernels.ssd: the chunked torch path and the Triton path against the float64 loop reference, the windowed
output, the decoding step, bad inputs.

Each comparison checks y, the final state and the gradient of every input (random cotangents on y and on the
final state) under its own name. Triton runs in its CPU interpreter when no GPU is present (small shapes).
"""

import importlib
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

from tests.kernels._helpers import DEVICE, GPU, assert_close, outputs_and_grads, triton_marks

ssd_mod = importlib.import_module("mmseq.kernels.ssd")

TRITON = triton_marks(ssd_mod._ssd_fwd_kernel, ssd_mod._ssd_bwd_kernel)

NAMES = ("y", "final_states", "dx", "ddt", "dA", "dB", "dC", "dD", "dz", "ddt_bias", "dinitial_states")


class Case(NamedTuple):
    B: int
    L: int
    H: int
    P: int
    G: int
    N: int
    chunk: int
    skip: str  # "", "H" (D [H]) or "HP" (D [H, P])
    gate: bool  # z
    h0: bool  # initial_states
    softplus: bool  # dt_bias and softplus


def _id(c: Case) -> str:
    flags = "".join(f for f, on in ((f"D{c.skip}", c.skip), ("z", c.gate), ("h0", c.h0), ("s", c.softplus)) if on)
    return f"B{c.B}-L{c.L}-H{c.H}-P{c.P}-G{c.G}-N{c.N}-Q{c.chunk}-{flags or 'plain'}"


def _inputs(c: Case, dtype=torch.float64, device="cpu", seed=0) -> dict:
    """Inputs in dtype, drawn in float64 so every dtype sees the same values (rounded)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype).to(device)

    if c.softplus:  # raw dt around -1.5: dt' = softplus(...) ~ 0.2
        dt = rnd(c.B, c.L, c.H, scale=0.5, shift=-1.5)
    else:
        dt = (torch.rand(c.B, c.L, c.H, generator=g, dtype=torch.float64) * 0.4 + 0.01).to(dtype).to(device)
    A = (-torch.rand(c.H, generator=g, dtype=torch.float64) * 2 - 0.1).to(dtype).to(device)
    D = {"": None, "H": (c.H,), "HP": (c.H, c.P)}[c.skip]
    return {
        "x": rnd(c.B, c.L, c.H, c.P),
        "dt": dt,
        "A": A,
        "B": rnd(c.B, c.L, c.G, c.N),
        "C": rnd(c.B, c.L, c.G, c.N),
        "D": rnd(*D) if D else None,
        "z": rnd(c.B, c.L, c.H, c.P) if c.gate else None,
        "dt_bias": rnd(c.H, scale=0.2) if c.softplus else None,
        "initial_states": rnd(c.B, c.H, c.P, c.N) if c.h0 else None,
    }


def _run(fn, inputs: dict, c: Case, seed=1) -> dict:
    """Forward with return_final_states, backward with random cotangents for y and the final state."""
    return outputs_and_grads(
        lambda **kw: fn(**kw, dt_softplus=c.softplus, return_final_states=True, chunk_size=c.chunk),
        inputs, ("y", "final_states"), seed)


def _assert_close(got: dict, want: dict, tol: float, label: str = ""):
    """Max abs error relative to the reference's max abs value, per tensor (RMS error reported too)."""
    assert_close(got, {name: want.get(name) for name in NAMES}, tol, by="max", label=label)


def _impl(name):
    return lambda **kw: ssd_mod.ssd(**kw, impl=name)


def _reference(c: Case, dtype=torch.float64) -> dict:
    """The loop reference in float64 on the inputs as rounded to ``dtype``."""
    x64 = {k: (v.double() if v is not None else None) for k, v in _inputs(c, dtype).items()}
    return _run(ssd_mod.ssd_ref, x64, c)


# ----------------------------------------------------------------------------------------------------------
# The reference itself
# ----------------------------------------------------------------------------------------------------------


def test_ref_matches_scalar_recurrence():
    """The reference against the recurrence written out one scalar at a time."""
    c = Case(2, 6, 4, 2, 2, 3, 4, "HP", True, True, True)
    x = _inputs(c)
    y, final = ssd_mod.ssd_ref(**x, dt_softplus=True, return_final_states=True)
    want = torch.zeros_like(y)
    for b in range(c.B):
        for hd in range(c.H):
            grp = hd // (c.H // c.G)
            h = x["initial_states"][b, hd].clone()
            for t in range(c.L):
                dt = F.softplus(x["dt"][b, t, hd] + x["dt_bias"][hd]).item()
                a = torch.exp(torch.tensor(dt * x["A"][hd].item(), dtype=torch.float64)).item()
                for p in range(c.P):
                    acc = 0.0
                    for n in range(c.N):
                        h[p, n] = a * h[p, n].item() + dt * x["x"][b, t, hd, p].item() * x["B"][b, t, grp, n].item()
                        acc += h[p, n].item() * x["C"][b, t, grp, n].item()
                    acc += x["D"][hd, p].item() * x["x"][b, t, hd, p].item()
                    want[b, t, hd, p] = acc * F.silu(x["z"][b, t, hd, p]).item()
            torch.testing.assert_close(final[b, hd], h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


def _windowed_brute(x: dict, r: int) -> torch.Tensor:
    """y_t = C_t (h_t - (prod_{k=t-r+1..t} a_k) h_{t-r}) + D x_t: the state-difference form, from the full states."""
    dtp = F.softplus(x["dt"] + x["dt_bias"])
    a = torch.exp(dtp * x["A"])  # [B, L, H]
    H = x["x"].shape[2]
    Bh, Ch = (t.repeat_interleave(H // t.shape[2], dim=2) for t in (x["B"], x["C"]))
    Bs, L, _, P = x["x"].shape
    states, h = [], torch.zeros(Bs, H, P, Bh.shape[-1], dtype=torch.float64)
    for t in range(L):
        h = a[:, t, :, None, None] * h + (dtp[:, t, :, None] * x["x"][:, t])[..., None] * Bh[:, t, :, None]
        states.append(h)
    ys = []
    for t in range(L):
        hw = states[t]
        if t - r >= 0:
            hw = hw - a[:, t - r + 1:t + 1].prod(1)[..., None, None] * states[t - r]
        ys.append(torch.einsum("bhpn,bhn->bhp", hw, Ch[:, t]))
    return torch.stack(ys, 1) + x["D"][:, None] * x["x"]


@pytest.mark.parametrize("r", [1, 3, 13])
def test_ref_window_is_the_state_difference(r):
    c = Case(2, 13, 4, 3, 2, 5, 4, "H", False, False, True)
    x = _inputs(c)
    got = ssd_mod.ssd_ref(**x, dt_softplus=True, window=r)
    torch.testing.assert_close(got, _windowed_brute(x, r), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------------------
# Chunked torch path
# ----------------------------------------------------------------------------------------------------------

TORCH_CASES = [
    Case(1, 1, 2, 3, 1, 4, 8, "H", True, True, True),
    Case(2, 7, 4, 3, 2, 5, 8, "", False, False, False),
    Case(2, 13, 4, 3, 2, 5, 8, "HP", True, True, True),
    Case(2, 13, 6, 2, 3, 4, 4, "H", False, True, False),
    Case(1, 33, 4, 5, 1, 3, 8, "H", True, False, True),
    Case(2, 33, 4, 3, 4, 2, 8, "HP", False, True, True),
    Case(1, 16, 2, 2, 1, 3, 8, "", True, True, True),  # L a multiple of the chunk
]


@pytest.mark.parametrize("c", TORCH_CASES, ids=_id)
def test_torch_float64_matches_ref(c):
    _assert_close(_run(_impl("torch"), _inputs(c), c), _reference(c), 1e-10, _id(c))


def test_torch_scan_loop_over_many_chunks(monkeypatch):
    """Past _SCAN_MATRIX_MAX chunks the scan over chunk states is a loop: same results."""
    monkeypatch.setattr(ssd_mod, "_SCAN_MATRIX_MAX", 2)
    c = Case(2, 33, 4, 3, 2, 5, 4, "H", True, True, True)
    _assert_close(_run(_impl("torch"), _inputs(c), c), _reference(c), 1e-10, _id(c))


@pytest.mark.parametrize("c", [TORCH_CASES[2], TORCH_CASES[5]], ids=_id)
def test_torch_float32_matches_ref(c):
    _assert_close(_run(_impl("torch"), _inputs(c, torch.float32), c), _reference(c, torch.float32), 1e-4, _id(c))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_torch_half_matches_ref(dtype):
    """Half inputs accumulate in float32: the error is the output rounding to the half dtype (2^-8 for bf16)."""
    c = Case(2, 33, 4, 8, 2, 8, 8, "H", True, True, True)
    got = _run(_impl("torch"), _inputs(c, dtype), c)
    assert got["y"].dtype == dtype and got["dx"].dtype == dtype and got["final_states"].dtype == torch.float32
    _assert_close(got, _reference(c, dtype), 1e-2, _id(c))


def test_torch_long_chunk_with_strong_decay_float32():
    """A 256-long chunk whose decays sum to about -2000: the masked-cumsum segsum keeps float32 at ~1e-7 relative
    error; a difference of cumulative sums (entries of ~2000 whose float32 rounding is ~1e-4) measured ~3e-6."""
    c = Case(1, 256, 2, 4, 1, 4, 256, "H", False, False, False)
    x = _inputs(c, torch.float32)
    x["dt"] = x["dt"] * 20  # dt' in [0.2, 8]
    got = ssd_mod.ssd(**x, chunk_size=256, impl="torch")
    want = ssd_mod.ssd_ref(**{k: (v.double() if v is not None else None) for k, v in x.items()})
    assert torch.isfinite(got).all()
    _assert_close({"y": got}, {"y": want}, 5e-7, "long chunk")


# ----------------------------------------------------------------------------------------------------------
# Windowed output
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [1, 3, 4, 5, 8, 12, 40])
@pytest.mark.parametrize("L, chunk", [(7, 64), (13, 4), (29, 3)], ids=["L7-Q64", "L13-Q4", "L29-Q3"])
def test_torch_window_matches_ref(L, chunk, r):
    """Forward and backward of the windowed chunked path against the windowed loop: windows inside one chunk,
    equal to it, straddling chunk boundaries and spanning several whole chunks."""
    c = Case(2, L, 4, 3, 2, 5, chunk, "H", True, False, True)
    x = _inputs(c)
    del x["initial_states"]

    def run(impl):
        leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in x.items()}
        y = ssd_mod.ssd(**leaves, dt_softplus=True, window=r, chunk_size=chunk, impl=impl)
        y.mul(torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype)).sum().backward()
        return {"y": y, **{"d" + k: v.grad for k, v in leaves.items() if v is not None}}

    got, want = run("torch"), run("ref")
    assert_close(got, want, 1e-10, by="max", label=f"L{L}-Q{chunk}-r{r}")


def test_window_refuses_states_and_triton():
    c = Case(1, 7, 2, 2, 1, 3, 4, "", False, True, False)
    x = _inputs(c)
    with pytest.raises(ValueError, match="window takes no initial_states"):
        ssd_mod.ssd(**x, window=3)
    del x["initial_states"]
    with pytest.raises(ValueError, match="window takes no initial_states"):
        ssd_mod.ssd(**x, window=3, return_final_states=True)
    with pytest.raises(ValueError, match="impl='triton' takes no window"):
        ssd_mod.ssd(**x, window=3, impl="triton")
    with pytest.raises(ValueError, match="window must be None or an int >= 1"):
        ssd_mod.ssd(**x, window=0)


# ----------------------------------------------------------------------------------------------------------
# Triton (CPU interpreter without a GPU)
# ----------------------------------------------------------------------------------------------------------

TRITON_CASES = [
    Case(1, 1, 2, 3, 1, 4, 8, "H", True, True, True),
    Case(1, 7, 2, 3, 1, 3, 8, "", False, False, False),
    Case(1, 13, 4, 3, 2, 5, 8, "HP", True, True, True),
    Case(1, 33, 2, 2, 1, 3, 8, "H", False, True, True),
]


@pytest.mark.parametrize("c", [pytest.param(c, id=_id(c), marks=TRITON) for c in TRITON_CASES])
def test_triton_float64_matches_ref(c):
    _assert_close(_run(_impl("triton"), _inputs(c, device=DEVICE), c), _reference(c), 1e-10, _id(c))


@pytest.mark.parametrize("c", [pytest.param(TRITON_CASES[2], id=_id(TRITON_CASES[2]), marks=TRITON)])
def test_triton_float32_matches_ref(c):
    got = _run(_impl("triton"), _inputs(c, torch.float32, device=DEVICE), c)
    _assert_close(got, _reference(c, torch.float32), 1e-4, _id(c))


@pytest.mark.parametrize("c", [pytest.param(Case(1, 9, 2, 4, 1, 4, 4, "H", True, False, True), id="L9-bf16",
                                            marks=TRITON)])
def test_triton_bfloat16_matches_ref(c):
    got = _run(_impl("triton"), _inputs(c, torch.bfloat16, device=DEVICE), c)
    assert got["y"].dtype == torch.bfloat16 and got["dB"].dtype == torch.bfloat16
    _assert_close(got, _reference(c, torch.bfloat16), 1e-2, _id(c))


@pytest.mark.slow
@pytest.mark.parametrize("c", [pytest.param(c, id=_id(c), marks=TRITON) for c in TORCH_CASES])
def test_triton_float64_matches_ref_grid(c):
    _assert_close(_run(_impl("triton"), _inputs(c, device=DEVICE), c), _reference(c), 1e-10, _id(c))


@pytest.mark.parametrize("c", [pytest.param(c, id=_id(c), marks=[*TRITON, *GPU]) for c in [
    Case(2, 1025, 4, 64, 2, 128, 64, "H", True, True, True),
    Case(1, 777, 3, 40, 1, 16, 256, "HP", False, False, True),
]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_gpu_long(c, dtype):
    """Real sizes on the GPU (mamba_ssm defaults P 64, N 128); the float64 loop runs there too."""
    got = _run(_impl("triton"), _inputs(c, dtype, device=DEVICE), c)
    want = _run(ssd_mod.ssd_ref, {k: (v.double() if v is not None else None)
                                  for k, v in _inputs(c, dtype, device=DEVICE).items()}, c)
    _assert_close(got, want, 1e-4 if dtype == torch.float32 else 1e-2, _id(c))


# ----------------------------------------------------------------------------------------------------------
# Decoding step
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [Case(2, 13, 4, 3, 2, 5, 8, "HP", True, True, True),
                               Case(2, 7, 2, 2, 1, 3, 8, "H", False, False, False)], ids=_id)
def test_state_update_streams_the_scan(c):
    x = _inputs(c)
    y, final = ssd_mod.ssd(**x, dt_softplus=c.softplus, return_final_states=True, chunk_size=c.chunk)
    state = (x["initial_states"].clone() if c.h0 else torch.zeros(c.B, c.H, c.P, c.N, dtype=torch.float64))
    ys = []
    for t in range(c.L):
        ys.append(ssd_mod.ssd_state_update(
            state, x["x"][:, t], x["dt"][:, t], x["A"], x["B"][:, t], x["C"][:, t], D=x["D"],
            z=x["z"][:, t] if c.gate else None, dt_bias=x["dt_bias"], dt_softplus=c.softplus))
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, final, rtol=1e-10, atol=1e-10)


def test_state_update_is_in_place_and_keeps_state_dtype():
    g = torch.Generator().manual_seed(0)
    state = torch.randn(2, 4, 3, 5, generator=g)
    before = state.clone()
    x, dt = torch.randn(2, 4, 3, generator=g, dtype=torch.float64), torch.rand(2, 4, generator=g, dtype=torch.float64)
    A = -torch.rand(4, dtype=torch.float64)
    B, C = torch.randn(2, 2, 5, dtype=torch.float64), torch.randn(2, 2, 5, dtype=torch.float64)
    ptr = state.data_ptr()
    y = ssd_mod.ssd_state_update(state, x, dt, A, B, C)
    assert state.data_ptr() == ptr and state.dtype == torch.float32 and y.dtype == torch.float64
    want = torch.exp(dt * A)[..., None, None] * before.double() + (dt[..., None] * x)[..., None] * \
        B.repeat_interleave(2, dim=1)[:, :, None]
    torch.testing.assert_close(state.double(), want, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Dispatch and bad inputs
# ----------------------------------------------------------------------------------------------------------


def test_default_impl_on_cpu_is_torch(monkeypatch):
    calls = []
    monkeypatch.setattr(ssd_mod, "ssd_torch", lambda *a: calls.append("torch") or ssd_mod.ssd_ref(*a))
    c = Case(1, 5, 2, 2, 1, 3, 4, "", False, False, False)
    ssd_mod.ssd(**_inputs(c))
    assert calls == ["torch"]


def _good():
    return _inputs(Case(2, 5, 4, 3, 2, 6, 4, "H", True, True, True))


BAD_SSD = [
    ("x-3d", {"x": torch.zeros(2, 5, 12)}, r"x must be \[B, L, H, P\]"),
    ("x-L0", {"x": torch.zeros(2, 0, 4, 3)}, r"L >= 1"),
    ("dt-shape", {"dt": torch.zeros(2, 5, 3)}, r"dt must be \[B, L, H\] = \[2, 5, 4\], got \[2, 5, 3\]"),
    ("A-shape", {"A": torch.zeros(4, 6)}, r"A must be \[H\] = \[4\], got \[4, 6\]"),
    ("B-groups", {"B": torch.zeros(2, 5, 3, 6)}, r"B has G=3 groups, which must divide H=4"),
    ("C-not-B", {"C": torch.zeros(2, 5, 2, 5)}, r"C must be \[B, L, G, N\] \(the shape of B\)"),
    ("D-shape", {"D": torch.zeros(3)}, r"D must be \[H\] or \[H, P\] = \[4\], got \[3\]"),
    ("z-shape", {"z": torch.zeros(2, 5, 4, 2)}, r"z must be \[B, L, H, P\] = \[2, 5, 4, 3\]"),
    ("bias-shape", {"dt_bias": torch.zeros(2)}, r"dt_bias must be \[H\]"),
    ("h0-shape", {"initial_states": torch.zeros(2, 4, 3, 5)},
     r"initial_states must be \[B, H, P, N\] = \[2, 4, 3, 6\]"),
    ("x-int", {"x": torch.zeros(2, 5, 4, 3, dtype=torch.long)}, r"x must be a floating-point tensor"),
]


@pytest.mark.parametrize("case", [pytest.param(b, id=b[0]) for b in BAD_SSD])
def test_bad_ssd_inputs(case):
    _, change, msg = case
    with pytest.raises(ValueError, match=msg):
        ssd_mod.ssd(**{**_good(), **change})


def test_bad_chunk_size_and_impl():
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1, got 0"):
        ssd_mod.ssd(**_good(), chunk_size=0)
    with pytest.raises(ValueError, match="impl must be one of"):
        ssd_mod.ssd(**_good(), impl="cuda")


BAD_STEP = [
    ("x-shape", {"x": torch.zeros(2, 4, 2)}, r"x must be \[B, H, P\] = \[2, 4, 3\], got \[2, 4, 2\]"),
    ("dt-shape", {"dt": torch.zeros(2, 4, 3)}, r"dt must be \[B, H\] = \[2, 4\]"),
    ("B-N", {"B": torch.zeros(2, 2, 5), "C": torch.zeros(2, 2, 5)}, r"B must be \[B, G, N\] with N=6"),
    ("B-groups", {"B": torch.zeros(2, 3, 6), "C": torch.zeros(2, 3, 6)}, r"B has G=3 groups, which must divide H=4"),
    ("state-3d", {"state": torch.zeros(2, 4, 3)}, r"state must be \[B, H, P, N\]"),
]


@pytest.mark.parametrize("case", [pytest.param(b, id=b[0]) for b in BAD_STEP])
def test_bad_state_update_inputs(case):
    _, change, msg = case
    good = {"state": torch.zeros(2, 4, 3, 6), "x": torch.zeros(2, 4, 3), "dt": torch.zeros(2, 4),
            "A": torch.zeros(4), "B": torch.zeros(2, 2, 6), "C": torch.zeros(2, 2, 6)}
    with pytest.raises(ValueError, match=msg):
        ssd_mod.ssd_state_update(**{**good, **change})
