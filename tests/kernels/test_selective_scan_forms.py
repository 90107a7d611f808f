"""mmseq.kernels.selective_scan: every argument form of mamba_ssm's ``selective_scan_fn``, on every path.

B and C each constant [D, N] (time-invariant, per channel), variable [B, N, L] or grouped [B, G, N, L]; complex A
with B/C as interleaved real pairs [.., 2L] or complex constants, the output being 2 * Re(y); half-precision
inputs. Everything is checked against a plain float64 / complex128 loop written here (not the kernel code),
output, last state and the gradient of every input.
"""

import importlib

import pytest
import torch

from tests.kernels._helpers import DEVICE, assert_close, triton_marks

ss = importlib.import_module("mmseq.kernels.selective_scan")

TRITON = triton_marks(ss._selective_scan_fwd_kernel, ss._selective_scan_bwd_kernel)
INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _per_channel(t, Bs, Dn, L, cplx):
    """B or C as [Bs, Dn, N, L] for channel d, from any accepted form (the loop's own reading of the forms)."""
    if t.dim() == 2:  # [D, N]: one constant per channel
        t = t.to(torch.complex128) if cplx else t
        return t[None, :, :, None].expand(Bs, Dn, t.shape[1], L)
    if cplx and not t.is_complex():  # (re, im) interleaved along the last axis
        t = torch.complex(t[..., 0::2], t[..., 1::2])
    if t.dim() == 3:  # [B, N, L]: shared by all channels
        return t[:, None].expand(Bs, Dn, *t.shape[1:])
    return t[:, torch.arange(Dn) // (Dn // t.shape[1])]  # [B, G, N, L]: channel d reads group d // (D // G)


def _loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The recurrence one position at a time in float64 (complex128 for complex A) -> (out, last_state)."""
    cplx = A.is_complex()
    u, delta = u.double(), delta.double()
    A = A.to(torch.complex128) if cplx else A.double()
    B, C = (t.to(torch.complex128) if t.is_complex() else t.double() for t in (B, C))
    Bs, Dn, L = u.shape
    Bf, Cf = _per_channel(B, Bs, Dn, L, cplx), _per_channel(C, Bs, Dn, L, cplx)
    dt = delta + (delta_bias.double()[:, None] if delta_bias is not None else 0.0)
    if delta_softplus:
        dt = torch.log1p(torch.exp(dt))
    h = torch.zeros(Bs, Dn, A.shape[1], dtype=A.dtype)
    ys = []
    # per-position slices by unbind: indexing [..., t] would make the backward quadratic in L
    steps = zip(dt.unbind(-1), u.unbind(-1), Bf.unbind(-1), Cf.unbind(-1),
                z.double().unbind(-1) if z is not None else [None] * L)
    for dt_t, u_t, B_t, C_t, z_t in steps:
        h = torch.exp(dt_t[..., None] * A) * h + (dt_t * u_t)[..., None] * B_t
        y = (h * C_t).sum(-1)
        y = 2 * y.real if cplx else y
        if D is not None:
            y = y + D.double() * u_t
        if z_t is not None:
            y = y * z_t / (1 + torch.exp(-z_t))
        ys.append(y)
    return torch.stack(ys, -1), h


def _run(fn, inputs: dict, softplus: bool, seed=1) -> dict:
    """Forward with return_last_state, backward with random cotangents for out and last_state (CPU results)."""
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out, last = fn(**leaves, delta_softplus=softplus)
    g = torch.Generator().manual_seed(seed)
    d_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    last_r = torch.view_as_real(last) if last.is_complex() else last
    d_last = torch.randn(last_r.shape, generator=g, dtype=torch.float64)
    loss = (out * d_out.to(out.dtype).to(out.device)).sum() + (last_r * d_last.to(last_r.dtype).to(out.device)).sum()
    loss.backward()
    res = {"out": out, "last_state": last_r}
    for k, v in leaves.items():
        grad = None if v is None else v.grad
        res["d" + k] = torch.view_as_real(grad) if grad is not None and grad.is_complex() else grad
    return {k: (v.cpu() if v is not None else None) for k, v in res.items()}


def _impl(name):
    return lambda **kw: ss.selective_scan(**kw, return_last_state=True, impl=name)


def _bc(form, Bs, Dn, N, L, rnd, cplx):
    """One of B, C: "c" constant [D, N], "v" [B, N, L], "g2" [B, 2, N, L]; interleaved or complex when cplx."""
    if form == "c":
        return torch.complex(rnd(Dn, N), rnd(Dn, N)) if cplx else rnd(Dn, N)
    Lx = 2 * L if cplx else L
    return rnd(Bs, N, Lx) if form == "v" else rnd(Bs, 2, N, Lx)


def _inputs(Bf, Cf, Bs=2, Dn=4, N=3, L=9, cplx=False, full=True, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    A = -(torch.rand(Dn, N, generator=g, dtype=torch.float64) * 2 + 0.2)
    if cplx:
        A = torch.complex(A * 0.5, torch.randn(Dn, N, generator=g, dtype=torch.float64) * 2)
    x = {"u": rnd(Bs, Dn, L), "A": A, "B": _bc(Bf, Bs, Dn, N, L, rnd, cplx), "C": _bc(Cf, Bs, Dn, N, L, rnd, cplx)}
    if full:  # raw delta around -2 with softplus: dt ~ 0.1
        x.update(delta=rnd(Bs, Dn, L) * 0.5 - 2.0, D=rnd(Dn), z=rnd(Bs, Dn, L), delta_bias=rnd(Dn) * 0.1)
    else:
        x.update(delta=torch.rand(Bs, Dn, L, generator=g, dtype=torch.float64) * 0.2 + 0.01)
    cast = {torch.float64: torch.complex128, torch.float32: torch.complex64}.get(dtype, torch.complex64)
    return {k: (v.to(cast) if v.is_complex() else v.to(dtype)) for k, v in x.items()}


def _want(x, softplus):
    return _run(lambda **kw: _loop(**kw), x, softplus)


def _check(got, want, tol, label):
    assert_close(got, {k: want[k] for k in ("out", "last_state", *("d" + k for k in INPUTS)) if k in want},
                 tol, by="max", label=label)


FORMS = [(b, c) for b in ("c", "v", "g2") for c in ("c", "v", "g2")]
FORM_IDS = [f"B{b}-C{c}" for b, c in FORMS]


@pytest.fixture
def small_chunks(monkeypatch):
    if DEVICE.type == "cpu":
        monkeypatch.setattr(ss, "_TRITON_CHUNK", 4)


def _on(x, device):
    return {k: v.to(device) for k, v in x.items()}


# ----------------------------------------------------------------------------------------------------------
# Real A: constant, variable and grouped B and C in every combination
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["ref", "torch"])
@pytest.mark.parametrize("forms", FORMS, ids=FORM_IDS)
def test_forms_float64(forms, impl):
    x = _inputs(*forms)
    _check(_run(_impl(impl), x, True), _want(x, True), 1e-10, f"{impl} {forms}")


@pytest.mark.parametrize("forms", [pytest.param(f, id=i, marks=TRITON) for f, i in zip(FORMS, FORM_IDS)])
def test_forms_triton_float64(forms, small_chunks):
    x = _inputs(*forms, L=6)
    _check(_run(_impl("triton"), _on(x, DEVICE), True), _want(x, True), 1e-10, f"triton {forms}")


@pytest.mark.parametrize("impl", ["ref", "torch"])
def test_constant_forms_without_options(impl):
    x = _inputs("c", "c", full=False)
    got = _run(_impl(impl), x, False)
    assert got["dB"].shape == (4, 3) and got["dC"].shape == (4, 3) and "dD" not in got
    _check(got, _want(x, False), 1e-10, impl)


def test_constant_B_float32_across_blocks():
    """L spans several blocks and chunks of the torch path: the [D, N] gradient sums over all of them."""
    x = _inputs("c", "g2", Bs=1, Dn=4, N=4, L=300)
    got = _run(_impl("torch"), {k: v.float() for k, v in x.items()}, True)
    assert got["out"].dtype == torch.float32 and got["dB"].dtype == torch.float32
    _check(got, _want(x, True), 1e-4, "float32 L300")


def test_constant_B_is_a_broadcast_not_a_batch_copy():
    """A constant B broadcast over the batch: rows with the same u, delta give the same output."""
    x = _inputs("c", "c", Bs=1)
    x2 = {k: (torch.cat([v, v]) if k in ("u", "delta", "z") else v) for k, v in x.items()}
    out = ss.selective_scan(**x2, delta_softplus=True, impl="torch")
    assert torch.equal(out[0], out[1])


# ----------------------------------------------------------------------------------------------------------
# Complex A: B and C as interleaved real pairs or complex constants; out = 2 Re(y)
# ----------------------------------------------------------------------------------------------------------

CFORMS = [("v", "v"), ("g2", "v"), ("c", "g2"), ("c", "c")]
CFORM_IDS = [f"B{b}-C{c}" for b, c in CFORMS]


@pytest.mark.parametrize("impl", ["ref", "torch", pytest.param("triton", marks=TRITON)])
@pytest.mark.parametrize("forms", CFORMS, ids=CFORM_IDS)
def test_complex_float64(forms, impl):
    x = _inputs(*forms, cplx=True, L=7)
    got = _run(_impl(impl), _on(x, DEVICE if impl == "triton" else "cpu"), True)
    assert got["out"].dtype == torch.float64 and got["last_state"].shape == (2, 4, 3, 2)
    _check(got, _want(x, True), 1e-10, f"{impl} complex {forms}")


def test_complex_torch_across_blocks():
    """The torch path's complex core over several blocks and chunks (conjugates in its backward)."""
    x = _inputs("c", "g2", cplx=True, Bs=1, Dn=4, N=2, L=300)
    _check(_run(_impl("torch"), x, True), _want(x, True), 1e-10, "complex L300")


def test_complex64_float32():
    x = _inputs("g2", "v", cplx=True, L=20, dtype=torch.float32)
    got = _run(_impl("torch"), x, True)
    assert got["out"].dtype == torch.float32
    _check(got, _want(x, True), 1e-4, "complex64")


def test_complex_constant_B_from_real_pairs_equals_complex():
    """Interleaved pairs [B, N, 2L] and the complex tensor they spell give the same result."""
    x = _inputs("v", "v", cplx=True, L=5)
    Bc = torch.complex(x["B"][..., 0::2], x["B"][..., 1::2])
    a = ss.selective_scan(**x, delta_softplus=True, impl="torch")
    b = ss.selective_scan(**{**x, "B": Bc}, delta_softplus=True, impl="torch")
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------
# Bad forms: one ValueError naming the argument
# ----------------------------------------------------------------------------------------------------------

BAD = [
    ("B-const-shape", lambda x: x.update(B=x["B"][:3]), "B must be [D, N] = [4, 3], got [3, 3]"),
    ("C-complex-real-A", lambda x: x.update(C=x["C"].to(torch.complex128)), "C may be complex only when A is"),
    ("B-pairs-length", lambda x: x.update(A=x["A"].to(torch.complex128), B=torch.zeros(2, 3, 9)),
     "B must be [B, N, 2L] = [2, 3, 18], got [2, 3, 9]"),
]


@pytest.mark.parametrize("case", [pytest.param(b, id=b[0]) for b in BAD])
def test_bad_forms(case):
    _, edit, message = case
    x = _inputs("c", "c")
    edit(x)
    with pytest.raises(ValueError) as err:
        ss.selective_scan(**x)
    assert message in str(err.value)


# ----------------------------------------------------------------------------------------------------------
# Half precision: mamba_ssm's own test setup and tolerances (its test_selective_scan), against the float64 loop
# ----------------------------------------------------------------------------------------------------------

# (rtol, atol) of the output, last state and input gradients, per input dtype, as in mamba_ssm's tests
MAMBA_TOL = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}


def _mamba_setup(itype, L, Bf, Cf, has_z, seed=0, Bs=2, Dn=4, N=8, device="cpu"):
    """u, delta, z and variable B/C in itype; A, D, delta_bias and constant B/C (the weights) in float32."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, dtype=itype: torch.randn(*shape, generator=g).to(dtype)
    bc = lambda form: rnd(Dn, N, dtype=torch.float32) if form == "c" else rnd(Bs, 2, N, L) if form == "g2" \
        else rnd(Bs, N, L)
    x = {"u": rnd(Bs, Dn, L), "delta": (0.5 * torch.rand(Bs, Dn, L, generator=g)).to(itype),
         "A": -0.5 * torch.rand(Dn, N, generator=g), "B": bc(Bf), "C": bc(Cf), "D": rnd(Dn, dtype=torch.float32),
         "z": rnd(Bs, Dn, L) if has_z else None, "delta_bias": 0.5 * torch.rand(Dn, generator=g)}
    return {k: v.to(device) for k, v in x.items() if v is not None}


def _mamba_check(got, want, itype, Bf, Cf, has_z):
    """mamba_ssm's asserts: weights at (1e-3, 1e-3), loosened to the input tolerance with z; dA's atol x5."""
    rtol, atol = MAMBA_TOL[itype]
    rtolw, atolw = (max(1e-3, rtol), max(1e-3, atol)) if has_z else (1e-3, 1e-3)
    tol = {"out": (rtol, atol), "last_state": (rtol, atol), "du": (2 * rtol, 2 * atol),
           "ddelta": (5 * rtol, 10 * atol), "dA": (rtolw, 5 * atolw), "dD": (rtolw, atolw), "dz": (rtolw, atolw),
           "ddelta_bias": (rtolw, atolw), "dB": (rtol, atol) if Bf != "c" else (rtolw, atolw),
           "dC": (rtol, atol) if Cf != "c" else (rtolw, atolw)}
    bad = []
    for name, (r, a) in tol.items():
        if want.get(name) is None:
            continue
        g, w = got[name].double(), want[name].double()
        excess = ((g - w).abs() - (a + r * w.abs())).max().item()
        print(f"{name}: max abs err {(g - w).abs().max().item():.3g} (max |ref| {w.abs().max().item():.3g})")
        if excess > 0:
            bad.append(name)
    assert not bad, f"{bad} outside mamba_ssm's tolerances"


def _run_out_only(fn, x, itype):
    """mamba_ssm's backward: one cotangent on out (drawn in the input dtype), none on last_state."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    out, last = fn(**leaves, delta_softplus=True)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(itype)
    out.backward(g.to(out.dtype).to(out.device))
    return {"out": out.cpu(), "last_state": last.cpu(), **{"d" + k: v.grad.cpu() for k, v in leaves.items()}}


@pytest.mark.parametrize("itype, L, Bf, Cf, has_z", [
    (torch.bfloat16, 1134, "v", "v", False),  # the strictest weight tolerances, at the length dA once failed
    (torch.bfloat16, 1134, "c", "g2", True),
    (torch.float16, 300, "g2", "c", False),
    (torch.float32, 300, "v", "v", False),
], ids=["bf16-L1134-BvCv", "bf16-L1134-BcCg2-z", "fp16-L300-Bg2Cc", "fp32-L300-BvCv"])
def test_half_inputs_meet_mamba_tolerances(itype, L, Bf, Cf, has_z):
    x = _mamba_setup(itype, L, Bf, Cf, has_z)
    got = _run_out_only(_impl("torch"), x, itype)
    assert got["out"].dtype == itype and got["du"].dtype == itype and got["dA"].dtype == torch.float32
    assert got["last_state"].dtype == torch.float32
    want = _run_out_only(lambda **kw: _loop(**kw), {k: v.double() for k, v in x.items()}, itype)
    _mamba_check(got, want, itype, Bf, Cf, has_z)


@pytest.mark.parametrize("itype", [pytest.param(t, id=str(t)[6:], marks=TRITON)
                                   for t in (torch.bfloat16, torch.float16)])
def test_half_inputs_meet_mamba_tolerances_triton(itype, small_chunks):
    x = _mamba_setup(itype, 10, "v", "g2", True, Dn=2, N=4)
    got = _run_out_only(_impl("triton"), _on(x, DEVICE), itype)
    want = _run_out_only(lambda **kw: _loop(**kw), {k: v.double() for k, v in x.items()}, itype)
    _mamba_check(got, want, itype, "v", "g2", True)


def test_half_weight_gradient_is_the_float32_sum_rounded_once():
    """A bf16 A gets a bf16 dA: the float32 accumulation rounded once (relative 2^-9, e.g. +-4 near 1,500), the
    floor for a bf16 weight; keep A in float32 (as mamba_ssm and the Mamba mixer do) for a float32 dA."""
    x = _mamba_setup(torch.bfloat16, 200, "v", "v", False)
    x16 = {**x, "A": x["A"].bfloat16()}
    x["A"] = x16["A"].float()  # the same values
    got16 = _run_out_only(_impl("torch"), x16, torch.bfloat16)
    got32 = _run_out_only(_impl("torch"), x, torch.bfloat16)
    assert got16["dA"].dtype == torch.bfloat16
    assert torch.equal(got16["dA"], got32["dA"].bfloat16())


@pytest.mark.parametrize("itype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_complex_half_inputs_meet_mamba_tolerances(itype):
    """mamba_ssm's complex setup: A complex64, variable B as interleaved pairs in itype, constant C complex64."""
    g = torch.Generator().manual_seed(0)
    Bs, Dn, N, L = 2, 4, 8, 300
    cx = lambda *shape: torch.complex(torch.randn(*shape, generator=g), torch.randn(*shape, generator=g))
    x = {"u": torch.randn(Bs, Dn, L, generator=g).to(itype),
         "delta": (0.5 * torch.rand(Bs, Dn, L, generator=g)).to(itype),
         "A": torch.complex(-0.5 * torch.rand(Dn, N, generator=g), torch.randn(Dn, N, generator=g)),
         "B": torch.randn(Bs, N, 2 * L, generator=g).to(itype), "C": cx(Dn, N), "D": torch.randn(Dn, generator=g),
         "delta_bias": 0.5 * torch.rand(Dn, generator=g)}
    real = lambda res: {k: (torch.view_as_real(v) if v.is_complex() else v) for k, v in res.items()}
    got = real(_run_out_only(_impl("torch"), x, itype))
    assert got["out"].dtype == itype and got["dB"].dtype == itype
    wide = {k: (v.to(torch.complex128) if v.is_complex() else v.double()) for k, v in x.items()}
    want = real(_run_out_only(lambda **kw: _loop(**kw), wide, itype))
    _mamba_check(got, want, itype, "v", "c", False)
