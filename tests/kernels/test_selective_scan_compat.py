"""mmseq.kernels.selective_scan against the test grids of mamba_ssm (state-spaces/mamba).

``selective_scan`` on every value that upstream's tests/ops/test_selective_scan.py (test_selective_scan) lists,
active or commented out: wtype float32 and complex64, itype float32, float16 and bfloat16, lengths 1 and 2 (here)
and 8 to 4096 (372, 784 and 1134 among them), D, z, delta_bias, softplus and return_last_state each on and off,
B and C each constant or variable, and two B/C groups. Its setup (batch 2, dim 4, dstate 8, the same
distributions), its backward (one cotangent on out) and its tolerances per itype, loosened for the gradients by
its factors. ``selective_state_update`` on the grids of upstream's tests/ops/triton/test_selective_state_update.py
(test_selective_state_update, ..._with_heads: dims 2048, 2064 and 4096, dstate 16 to 64, z, groups, heads whose
dt, A, D and dt_bias are tied across the head dimension) with their tolerances. Not here: upstream's
..._with_batch_indices tests (this package's selective_state_update takes no ``state_batch_indices``).

Everything is checked against a reference written here: a float64 (complex128) loop over positions with its
backward written out, independent of the module's own reference. The full grids carry the ``slow`` mark; the
default run covers every value of every parameter on every path through all-pairs sub-grids on short sequences,
and each longer length once. The Triton interpreter takes about 0.1 s per position on the CPU, so there its grid
stops at TRITON_CPU_MAX_L (longer sequences run on a GPU).
"""

import contextlib
import importlib
import itertools
import zlib
from collections import OrderedDict

import numpy as np
import pytest
import torch
from mmseq.kernels._cpu_build import cpu_kernels_off

from tests.kernels._helpers import DEVICE, triton_marks

ss = importlib.import_module("mmseq.kernels.selective_scan")  # the module, not the function

TRITON = triton_marks(ss._selective_scan_fwd_kernel, ss._selective_scan_bwd_kernel)
# "torch" is the torch path as it runs by default on the CPU (the compiled core, kernels/csrc, when it builds);
# "torch-vectorized" is the same path with MMSEQ_CPU_KERNELS=0, its PyTorch code alone
PATHS = ["ref", "torch", "torch-vectorized", "triton"]
UPDATE_PATHS = ["ref", "torch", "triton"]  # one token: the same PyTorch code on the CPU whatever the path
ITYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WTYPES = {"real": torch.float32, "cplx": torch.complex64}
SEQLENS = [1, 2, 8, 16, 32, 64, 128, 256, 372, 512, 784, 1024, 1134, 2048, 4096]
SHORT_SEQLENS = [1, 2, 8, 16, 32, 64]  # the default run's all-pairs sub-grid (ref and torch paths)
TRITON_SHORT_SEQLENS = [1, 2, 8]  # ... and the Triton path's, in the CPU interpreter
TRITON_CPU_MAX_L = 8  # longest sequence of the Triton grid in the CPU interpreter
# (is_variable_B, is_variable_C, varBC_groups): upstream skips groups > 1 unless both are variable
BC_FORMS = {"BvCv": (True, True, 1), "Bg2Cg2": (True, True, 2), "BvCc": (True, False, 1),
            "BcCv": (False, True, 1), "BcCc": (False, False, 1)}
FLAGS = ("has_D", "has_z", "has_delta_bias", "delta_softplus", "return_last_state")
BATCH, DIM, DSTATE = 2, 4, 8  # upstream's


def _path_param(path: str, *values, id: str, marks=()):
    marks = [*marks, *(TRITON if path == "triton" else [])]
    return pytest.param(path, *values, id=f"{path}-{id}", marks=marks)


def _path_env(path: str):
    """The setting ``path`` runs in: compiled CPU kernels off for "torch-vectorized" (the choice between the
    compiled core and the PyTorch code is made in the forward; the backward follows it)."""
    return cpu_kernels_off() if path == "torch-vectorized" else contextlib.nullcontext()


def _seed(label: str) -> int:
    return zlib.crc32(label.encode())


def _all_pairs(domains: dict[str, list]) -> list[dict]:
    """Cases (name -> value) in which every pair of values of every two parameters appears at least once.

    Greedy: each case starts from the first pair not yet covered and takes, parameter by parameter, the value
    covering the most new pairs with the values already chosen (the first such value on ties); deterministic.
    """
    names = list(domains)
    sizes = [len(domains[n]) for n in names]
    todo = {(i, a, j, b) for i, j in itertools.combinations(range(len(names)), 2)
            for a in range(sizes[i]) for b in range(sizes[j])}
    def pair(k, v, m, w):  # the key of "parameter k takes v and parameter m takes w"
        return (k, v, m, w) if k < m else (m, w, k, v)

    cases = []
    while todo:
        i, a, j, b = min(todo)
        case = {i: a, j: b}
        for k in range(len(names)):
            if k not in case:
                gains = [sum(pair(k, v, m, w) in todo for m, w in case.items()) for v in range(sizes[k])]
                case[k] = gains.index(max(gains))
        todo -= {(p, case[p], q, case[q]) for p, q in itertools.combinations(sorted(case), 2)}
        cases.append({names[k]: domains[names[k]][v] for k, v in sorted(case.items())})
    return cases


def _close(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> str | None:
    """upstream's torch.allclose(got, want): |got - want| <= atol + rtol |want|, with the reference rounded to
    got's dtype first (upstream's reference computes in, or is cast to, the tested dtype). None when it holds."""
    got = got.detach().cpu()
    if tuple(got.shape) != tuple(want.shape):
        return f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    wide = torch.complex128 if got.is_complex() else torch.float64
    g, w = got.to(wide), want.to(got.dtype).to(wide)
    err = (g - w).abs()
    ok = err <= atol + rtol * w.abs()
    if bool(ok.all()):
        return None
    return (f"{name}: {int((~ok).sum())} of {ok.numel()} off (max abs err {err.max().item():.3e}, "
            f"max |ref| {w.abs().max().item():.3e}, rtol {rtol:g}, atol {atol:g})")


# ----------------------------------------------------------------------------------------------------------
# Reference written out: a float64 loop over positions, forward and backward (complex128 for complex A).
# Tensors inside are time-major, [L, B, D, N], so that each step works on one contiguous [B, D, N] slice.
# ----------------------------------------------------------------------------------------------------------


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    if t is None:
        return None
    return t.detach().to(torch.complex128 if t.is_complex() else torch.float64).cpu().numpy()


def _per_channel(t: np.ndarray, cplx: bool, L: int) -> np.ndarray:
    """B or C in any accepted form -> [L, B or 1, D, N] as channel d reads it."""
    if t.ndim == 2:  # constant [D, N]
        return np.broadcast_to(t.astype(np.complex128) if cplx else t, (L, 1, *t.shape))
    if cplx and not np.iscomplexobj(t):  # (re, im) pairs along the last axis
        t = t[..., 0::2] + 1j * t[..., 1::2]
    if t.ndim == 3:  # [B, N, L]: one group for all channels
        return t.transpose(2, 0, 1)[:, :, None, :]
    G = t.shape[1]  # [B, G, N, L]: channel d reads group d // (D // G)
    return t[:, np.arange(DIM) // (DIM // G)].transpose(3, 0, 1, 2)


def _fold(grad: np.ndarray, like: np.ndarray, cplx: bool) -> torch.Tensor:
    """The gradient of a per-channel [L, B, D, N] B or C, brought back to the form of ``like``."""
    if like.ndim == 2:  # constant: summed over positions and batch rows
        return torch.from_numpy(grad.sum((0, 1)))
    if like.ndim == 3:
        g = grad.sum(2).transpose(1, 2, 0)  # [B, N, L]
    else:
        G = like.shape[1]
        g = grad.reshape(*grad.shape[:2], G, DIM // G, DSTATE).sum(3).transpose(1, 2, 3, 0)  # [B, G, N, L]
    if cplx and not np.iscomplexobj(like):  # interleave (re, im) again
        g = np.stack([g.real, g.imag], axis=-1).reshape(like.shape)
    return torch.from_numpy(np.ascontiguousarray(g))


def _scan_reference(x: dict, softplus: bool, dout: torch.Tensor) -> dict:
    """out, last_state and the gradient of every input for the cotangent ``dout`` on out, in float64.

    h[t] = exp(dt[t] A) h[t-1] + dt[t] u[t] B[t]; y[t] = <C[t], h[t]> (2 Re for complex A) + D u[t];
    out[t] = y[t] silu(z[t]); dt = softplus(delta + delta_bias). Gradients follow PyTorch's convention for
    complex tensors (d/dRe + i d/dIm), the conjugates written out.
    """
    A = _np(x["A"])
    cplx = np.iscomplexobj(A)
    u, delta = _np(x["u"]).transpose(2, 0, 1), _np(x["delta"]).transpose(2, 0, 1)  # [L, B, D]
    L = u.shape[0]
    D, z, bias = _np(x.get("D")), x.get("z"), _np(x.get("delta_bias"))
    z = _np(z).transpose(2, 0, 1) if z is not None else None
    Bf, Cf = _per_channel(_np(x["B"]), cplx, L), _per_channel(_np(x["C"]), cplx, L)
    pre = delta + (bias if bias is not None else 0.0)
    dt = np.logaddexp(0.0, pre) if softplus else pre
    a = np.exp(dt[..., None] * A)  # [L, B, D, N]
    xin = dt * u
    b = xin[..., None] * Bf
    h = np.empty_like(b)
    state = np.zeros_like(b[0])
    for t in range(L):
        state = a[t] * state + b[t]
        h[t] = state
    s = (h * Cf).sum(-1)
    y = 2 * s.real if cplx else s
    if D is not None:
        y = y + D * u
    sig = 1.0 / (1.0 + np.exp(-z)) if z is not None else None
    out = y * z * sig if z is not None else y

    g_out = _np(dout).transpose(2, 0, 1)
    dy = g_out * z * sig if z is not None else g_out
    ds = 2 * dy if cplx else dy  # d/ds of 2 Re(s), as a complex cotangent
    src = ds[..., None] * np.conj(Cf)  # d loss / d h[t] from y[t] alone
    gh = np.empty_like(h)
    carry = src[L - 1]
    gh[L - 1] = carry
    for t in range(L - 2, -1, -1):
        carry = src[t] + np.conj(a[t + 1]) * carry
        gh[t] = carry
    dx = (gh * np.conj(Bf)).sum(-1).real  # x = dt u is real
    h_prev = np.concatenate([np.zeros_like(h[:1]), h[:-1]])
    dlog = gh * np.conj(a * h_prev)  # d loss / d (dt A)
    ddt = dx * u + (dlog * np.conj(A)).sum(-1).real
    dpre = ddt / (1.0 + np.exp(-pre)) if softplus else ddt
    du = dx * dt + (dy * D if D is not None else 0.0)
    per_bd = lambda t: torch.from_numpy(np.ascontiguousarray(t.transpose(1, 2, 0)))  # [L, B, D] -> [B, D, L]
    res = {"out": per_bd(out), "last_state": torch.from_numpy(h[L - 1]), "du": per_bd(du), "ddelta": per_bd(dpre),
           "dA": torch.from_numpy((dlog * dt[..., None]).sum((0, 1))),
           "dB": _fold(gh * xin[..., None], _np(x["B"]), cplx), "dC": _fold(ds[..., None] * np.conj(h), _np(x["C"]),
                                                                             cplx)}
    if D is not None:
        res["dD"] = torch.from_numpy((dy * u).sum((0, 1)))
    if z is not None:
        res["dz"] = per_bd(g_out * y * sig * (1.0 + z * (1.0 - sig)))
    if bias is not None:
        res["ddelta_bias"] = torch.from_numpy(dpre.sum((0, 1)))
    return res


_REFERENCES: OrderedDict = OrderedDict()  # the paths of one case run one after the other and share it


def _reference(key: str, x: dict, softplus: bool, dout: torch.Tensor) -> dict:
    if key not in _REFERENCES:
        _REFERENCES[key] = _scan_reference(x, softplus, dout)
        while len(_REFERENCES) > 64:
            _REFERENCES.popitem(last=False)
    return _REFERENCES[key]


# ----------------------------------------------------------------------------------------------------------
# selective_scan: upstream's test_selective_scan.
# ----------------------------------------------------------------------------------------------------------


def _scan_tols(itype: torch.dtype, has_z: bool, var_B: bool, var_C: bool) -> dict:
    """(rtol, atol) per tensor, as upstream's asserts: weights at 1e-3, raised to the input tolerance with z."""
    rtol, atol = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}[itype]
    rtolw, atolw = (max(1e-3, rtol), max(1e-3, atol)) if has_z else (1e-3, 1e-3)
    return {"out": (rtol, atol), "last_state": (rtol, atol), "du": (2 * rtol, 2 * atol),
            "ddelta": (5 * rtol, 10 * atol), "dA": (rtolw, 5 * atolw),
            "dB": (rtol, atol) if var_B else (rtolw, atolw), "dC": (rtol, atol) if var_C else (rtolw, atolw),
            "dD": (rtolw, atolw), "dz": (rtolw, atolw), "ddelta_bias": (rtolw, atolw)}


def _scan_inputs(wtype, itype, L, bc, flags, seed) -> dict:
    """upstream's setup: A = -0.5 rand (real and imaginary parts for complex64); variable B/C randn in itype
    ([B, N, L], [B, G, N, L]; 2L interleaved pairs with complex A); constant B/C randn [D, N] in wtype;
    D randn and delta_bias 0.5 rand in float32; u, z randn and delta 0.5 rand in itype."""
    g = torch.Generator().manual_seed(seed)
    var_B, var_C, groups = BC_FORMS[bc]
    cplx = wtype.is_complex

    def bc_tensor(variable):
        if not variable:
            return torch.randn(DIM, DSTATE, generator=g, dtype=wtype)
        shape = (BATCH, DSTATE) if groups == 1 else (BATCH, groups, DSTATE)
        return torch.randn(*shape, 2 * L if cplx else L, generator=g).to(itype)

    A = -0.5 * (torch.complex(torch.rand(DIM, DSTATE, generator=g), torch.rand(DIM, DSTATE, generator=g))
                if cplx else torch.rand(DIM, DSTATE, generator=g))
    x = {"u": torch.randn(BATCH, DIM, L, generator=g).to(itype),
         "delta": (0.5 * torch.rand(BATCH, DIM, L, generator=g)).to(itype), "A": A,
         "B": bc_tensor(var_B), "C": bc_tensor(var_C)}
    if flags["has_D"]:
        x["D"] = torch.randn(DIM, generator=g)
    if flags["has_z"]:
        x["z"] = torch.randn(BATCH, DIM, L, generator=g).to(itype)
    if flags["has_delta_bias"]:
        x["delta_bias"] = 0.5 * torch.rand(DIM, generator=g)
    return x


def _check_scan(path: str, wname: str, iname: str, L: int, bc: str, flags: dict) -> list[str]:
    """One case of upstream's grid on ``path``: the failures (empty when it passes)."""
    wtype, itype = WTYPES[wname], ITYPES[iname]
    label = f"{wname}-{iname}-L{L}-{bc}-" + "".join(str(int(flags[f])) for f in FLAGS)
    x = _scan_inputs(wtype, itype, L, bc, flags, _seed(label))
    dout = torch.randn(BATCH, DIM, L, generator=torch.Generator().manual_seed(_seed(label) + 1)).to(itype)
    want = _reference(label, x, flags["delta_softplus"], dout)
    device = DEVICE if path == "triton" else torch.device("cpu")
    leaves = {k: v.to(device).requires_grad_() for k, v in x.items()}
    with _path_env(path):
        res = ss.selective_scan(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"],
                                leaves.get("D"), z=leaves.get("z"), delta_bias=leaves.get("delta_bias"),
                                delta_softplus=flags["delta_softplus"],
                                return_last_state=flags["return_last_state"], impl=path.removesuffix("-vectorized"))
    if flags["return_last_state"]:
        out, last_state = res
        got = {"out": out, "last_state": last_state}
    else:
        assert isinstance(res, torch.Tensor), f"{label}: a tensor without return_last_state"
        out, got = res, {"out": res}
    assert out.dtype == itype, f"{label}: out is {out.dtype}, u is {itype}"
    out.backward(dout.to(device))
    got.update({"d" + k: v.grad for k, v in leaves.items()})
    tols = _scan_tols(itype, flags["has_z"], *BC_FORMS[bc][:2])
    failures = [_close(name, t, want[name], *tols[name]) for name, t in got.items()]
    return [f"{path} {label} {f}" for f in failures if f is not None]


@pytest.fixture
def small_triton_chunks(monkeypatch):
    """In the CPU interpreter, chunks of 4 positions, so the short sequences there cross chunk borders."""
    if DEVICE.type == "cpu":
        monkeypatch.setattr(ss, "_TRITON_CHUNK", 4)


def _scan_grid() -> list:
    """One test per (wtype, itype, length, B/C form, path) running the 32 combinations of upstream's flags; the
    three paths of a case next to each other (they share its reference)."""
    params = []
    for (wname, iname, L, bc), path in itertools.product(
        itertools.product(WTYPES, ITYPES, SEQLENS, BC_FORMS), PATHS
    ):
        marks = [pytest.mark.slow]
        if path == "triton" and DEVICE.type == "cpu" and L > TRITON_CPU_MAX_L:
            marks.append(pytest.mark.skip(reason=f"the Triton interpreter on the CPU: L <= {TRITON_CPU_MAX_L}"))
        params.append(_path_param(path, wname, iname, L, bc, id=f"{wname}-{iname}-L{L}-{bc}", marks=marks))
    return params


@pytest.mark.parametrize("path,wname,iname,L,bc", _scan_grid())
def test_selective_scan_grid(path, wname, iname, L, bc, small_triton_chunks):
    """upstream's test_selective_scan on every value it lists (and L = 1, 2), all flag combinations."""
    failures, n = [], 0
    for values in itertools.product([False, True], repeat=len(FLAGS)):
        failures += _check_scan(path, wname, iname, L, bc, dict(zip(FLAGS, values)))
        n += 1
    cases = len({f.split(" ")[1] for f in failures})
    print(f"{path} {wname}-{iname}-L{L}-{bc}: {n - cases} of {n} flag combinations pass")
    assert not failures, f"{cases} of {n} flag combinations fail:\n" + "\n".join(failures)


@pytest.mark.parametrize("path,L,bc,bits", [
    _path_param("torch", 512, "BcCv", "00111", id="L512-BcCv-z-bias-softplus"),
    _path_param("torch", 1134, "BvCc", "01111", id="L1134-BvCc-D-z-bias-softplus"),
    # the interpreter needs about a minute for this length, so on the CPU it runs with the slow grids
    _path_param("triton", 512, "BcCv", "00111", id="L512-BcCv-z-bias-softplus",
                marks=[] if torch.cuda.is_available() else [pytest.mark.slow]),
])
def test_half_gradient_of_B_or_C_beside_a_constant_one_sums_in_float32(path, L, bc, bits):
    """fp16: the variable one of B and C, beside a constant one (G = D groups), gets its gradient summed over
    the channels of its group; both paths cast to float32 before repeating, because summed in fp16 it missed
    upstream's tolerance by a few fp16 ulps of the larger terms (dC 0.732 for 0.742)."""
    failures = _check_scan(path, "real", "fp16", L, bc, {f: b == "1" for f, b in zip(FLAGS, bits)})
    assert not failures, "\n".join(failures)


def _flag_id(flags: dict) -> str:
    names = {"has_D": "D", "has_z": "z", "has_delta_bias": "bias", "delta_softplus": "softplus",
             "return_last_state": "last"}
    return "-".join(names[f] for f in FLAGS if flags[f]) or "plain"


def _scan_subgrid() -> list:
    """All pairs of values of wtype, itype, B/C form, each flag and a short length, per path; then each longer
    length once (ref and torch), with every flag on in bf16 as Mamba runs it, the B/C form and wtype rotating."""
    params = []
    for path in PATHS:
        seqlens = TRITON_SHORT_SEQLENS if path == "triton" else SHORT_SEQLENS
        domains = {"L": seqlens, "bc": list(BC_FORMS), "iname": list(ITYPES), "wname": list(WTYPES),
                   **{f: [False, True] for f in FLAGS}}
        for case in _all_pairs(domains):
            flags = {f: case[f] for f in FLAGS}
            cid = f"{case['wname']}-{case['iname']}-L{case['L']}-{case['bc']}-{_flag_id(flags)}"
            params.append(_path_param(path, case["wname"], case["iname"], case["L"], case["bc"], flags, id=cid))
    all_on = dict.fromkeys(FLAGS, True)
    for n, L in enumerate(s for s in SEQLENS if s > max(SHORT_SEQLENS)):
        bc, wname = list(BC_FORMS)[n % len(BC_FORMS)], list(WTYPES)[n % 2]
        for path in ("ref", "torch", "torch-vectorized"):
            params.append(_path_param(path, wname, "bf16", L, bc, all_on, id=f"{wname}-bf16-L{L}-{bc}-all"))
    return params


@pytest.mark.parametrize("path,wname,iname,L,bc,flags", _scan_subgrid())
def test_selective_scan_subgrid(path, wname, iname, L, bc, flags, small_triton_chunks):
    """The default run's share of upstream's test_selective_scan."""
    failures = _check_scan(path, wname, iname, L, bc, flags)
    assert not failures, "\n".join(failures)


def test_subgrid_covers_every_value():
    """Every value of every parameter of the scan grid appears in the default sub-grid, on every path."""
    seen = {path: set() for path in PATHS}
    for p in _scan_subgrid():
        path, wname, iname, L, bc, flags = p.values
        seen[path] |= {("w", wname), ("i", iname), ("L", L), ("bc", bc), *((f, v) for f, v in flags.items())}
    every = {("w", w) for w in WTYPES} | {("i", i) for i in ITYPES} | {("bc", b) for b in BC_FORMS} | {
        (f, v) for f in FLAGS for v in (False, True)}
    for path in PATHS:
        assert every <= seen[path], (path, every - seen[path])
    for path in ("ref", "torch", "torch-vectorized"):
        assert {("L", L) for L in SEQLENS} <= seen[path], path
    assert {("L", L) for L in TRITON_SHORT_SEQLENS} <= seen["triton"]


def test_all_pairs_covers_every_pair():
    domains = {"a": [0, 1, 2], "b": ["x", "y"], "c": [False, True], "d": [5, 6, 7, 8]}
    cases = _all_pairs(domains)
    for p, q in itertools.combinations(domains, 2):
        assert {(c[p], c[q]) for c in cases} == set(itertools.product(domains[p], domains[q])), (p, q)
    assert len(cases) < len(list(itertools.product(*domains.values())))


def _autograd_loop(x: dict, softplus: bool) -> torch.Tensor:
    """The recurrence in plain PyTorch float64 / complex128, for autograd (checks the written-out backward)."""
    A = x["A"]
    cplx = A.is_complex()
    L = x["u"].shape[-1]
    per = [_differentiable_per_channel(t, cplx, L) for t in (x["B"], x["C"])]  # [L, B or 1, D, N]
    dt = x["delta"] + (x["delta_bias"][:, None] if "delta_bias" in x else 0.0)
    dt = torch.nn.functional.softplus(dt) if softplus else dt
    h = torch.zeros(BATCH, DIM, DSTATE, dtype=A.dtype)
    ys = []
    for t in range(L):
        h = torch.exp(dt[..., t, None] * A) * h + (dt[..., t] * x["u"][..., t])[..., None] * per[0][t]
        ys.append((h * per[1][t]).sum(-1))
    y = torch.stack(ys, -1)
    y = 2 * y.real if cplx else y
    if "D" in x:
        y = y + x["D"][:, None] * x["u"]
    return y * torch.nn.functional.silu(x["z"]) if "z" in x else y


def _differentiable_per_channel(t: torch.Tensor, cplx: bool, L: int) -> torch.Tensor:
    """``_per_channel`` in PyTorch, so that autograd sees the indexing."""
    if t.dim() == 2:
        return t[None, None].expand(L, 1, *t.shape)
    if cplx and not t.is_complex():
        t = torch.complex(t[..., 0::2], t[..., 1::2])
    if t.dim() == 3:
        return t.permute(2, 0, 1)[:, :, None, :]
    return t[:, torch.arange(DIM) // (DIM // t.shape[1])].permute(3, 0, 1, 2)


@pytest.mark.parametrize("wname", list(WTYPES))
@pytest.mark.parametrize("bc", list(BC_FORMS))
def test_written_out_backward_equals_autograd(bc, wname):
    """The reference's hand-written backward against PyTorch autograd through the same loop (float64)."""
    flags = dict.fromkeys(FLAGS, True)
    x = _scan_inputs(WTYPES[wname], torch.float32, 7, bc, flags, seed=5)
    wide = {k: (v.to(torch.complex128) if v.is_complex() else v.double()).requires_grad_() for k, v in x.items()}
    dout = torch.randn(BATCH, DIM, 7, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    want = _scan_reference(wide, True, dout)
    out = _autograd_loop(wide, True)
    out.backward(dout)
    torch.testing.assert_close(want["out"], out.detach(), rtol=1e-12, atol=1e-12)
    for k, v in wide.items():
        torch.testing.assert_close(want["d" + k], v.grad, rtol=1e-11, atol=1e-11, msg=f"d{k}")


# ----------------------------------------------------------------------------------------------------------
# selective_state_update: upstream's test_selective_state_update and ..._with_heads.
# ----------------------------------------------------------------------------------------------------------

UPDATE_DIMS, HEADS_DIMS, UPDATE_DSTATES, NGROUPS, HEADDIM = [2048, 2048 + 16, 4096], [2048, 4096], [16, 32, 64], \
    [1, 2, 4], 64


def _update_tols(itype: torch.dtype, heads: bool) -> tuple[float, float]:
    if itype == torch.float32:
        return 3e-4, 1e-3
    if itype == torch.float16:
        return (5e-3, 3e-2) if heads else (5e-3, 1e-2)
    return (1e-2, 1e-1) if heads else (1e-2, 5e-2)


def _update_inputs(dim, dstate, has_z, itype, heads, ngroups, tie_hdim, seed) -> dict:
    """upstream's setup: state, x, dt, z randn in itype; dt_bias = rand - 4, A = -rand - 1, B, C, D randn in
    float32. Heads: [B, H, P, N] with P = 64; tied ones are broadcast views over P (einops' repeat)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g)
    if not heads:
        x = {"state": rnd(BATCH, dim, dstate).to(itype), "x": rnd(BATCH, dim).to(itype),
             "dt": rnd(BATCH, dim).to(itype), "dt_bias": torch.rand(dim, generator=g) - 4.0,
             "A": -torch.rand(dim, dstate, generator=g) - 1.0, "B": rnd(BATCH, dstate), "C": rnd(BATCH, dstate),
             "D": rnd(dim)}
    else:
        H, P = dim // HEADDIM, HEADDIM
        x = {"state": rnd(BATCH, H, P, dstate).to(itype), "x": rnd(BATCH, H, P).to(itype)}
        if tie_hdim:
            x.update(dt=rnd(BATCH, H).to(itype)[..., None].expand(BATCH, H, P),
                     dt_bias=(torch.rand(H, generator=g) - 4.0)[:, None].expand(H, P),
                     A=(-torch.rand(H, generator=g) - 1.0)[:, None, None].expand(H, P, dstate),
                     D=rnd(H)[:, None].expand(H, P))
        else:
            x.update(dt=rnd(BATCH, H, P).to(itype), dt_bias=torch.rand(H, P, generator=g) - 4.0,
                     A=-torch.rand(H, P, dstate, generator=g) - 1.0, D=rnd(H, P))
        x.update(B=rnd(BATCH, ngroups, dstate), C=rnd(BATCH, ngroups, dstate))
    if has_z:
        x["z"] = rnd(*x["x"].shape).to(itype)
    return x


def _update_reference(x: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, new state) in float64: one step of the recurrence with dt = softplus(dt + dt_bias), per head
    (the plain form is heads of one channel, B/C of one group)."""
    state, xt, dt, A, D = (_np(x[k]) for k in ("state", "x", "dt", "A", "D"))
    heads = state.ndim == 4
    if not heads:
        state, xt, dt, A, D = state[:, :, None], xt[..., None], dt[..., None], A[:, None], D[:, None]
    B, C = _np(x["B"]), _np(x["C"])
    B, C = (t[:, None] if t.ndim == 2 else t for t in (B, C))
    H = state.shape[1]
    B, C = (t[:, np.arange(H) // (H // t.shape[1])][:, :, None, :] for t in (B, C))  # [B, H, 1, N]
    dt = np.logaddexp(0.0, dt + (_np(x["dt_bias"]) if heads else _np(x["dt_bias"])[:, None]))
    new = np.exp(dt[..., None] * A) * state + (dt * xt)[..., None] * B
    y = (new * C).sum(-1) + D * xt
    if "z" in x:
        z = _np(x["z"]) if heads else _np(x["z"])[..., None]
        y = y * z / (1.0 + np.exp(-z))
    if not heads:
        new, y = new[:, :, 0], y[..., 0]
    return torch.from_numpy(y), torch.from_numpy(new)


def _check_update(path, dim, dstate, has_z, iname, heads=False, ngroups=1, tie_hdim=False):
    itype = ITYPES[iname]
    label = f"{'heads' if heads else 'plain'}-D{dim}-N{dstate}-{'z' if has_z else 'noz'}-{iname}-G{ngroups}-{tie_hdim}"
    x = _update_inputs(dim, dstate, has_z, itype, heads, ngroups, tie_hdim, _seed(label))
    want_y, want_state = _update_reference(x)
    state = x["state"]
    ptr = state.data_ptr()
    y = ss.selective_state_update(state, x["x"], x["dt"], x["A"], x["B"], x["C"], D=x["D"], z=x.get("z"),
                                  dt_bias=x["dt_bias"], dt_softplus=True, impl=path)
    assert state.data_ptr() == ptr and state.dtype == itype, "the state is updated in place, in its dtype"
    assert y.dtype == itype and y.shape == x["x"].shape
    tol = _update_tols(itype, heads)
    failures = [f for f in (_close("state", state, want_state, *tol), _close("out", y, want_y, *tol)) if f]
    assert not failures, f"{path} {label}: " + "; ".join(failures)


def _split(domains: dict) -> list[tuple[dict, list]]:
    """Every case of the product of ``domains`` with its marks: all pairs by default, the rest slow."""
    pairs = _all_pairs(domains)
    rest = [c for c in (dict(zip(domains, v)) for v in itertools.product(*domains.values())) if c not in pairs]
    return [(c, []) for c in pairs] + [(c, [pytest.mark.slow]) for c in rest]


def _update_grid() -> list:
    """upstream's plain grid (dim, dstate, z, itype), per path."""
    domains = {"dim": UPDATE_DIMS, "dstate": UPDATE_DSTATES, "has_z": [False, True], "iname": list(ITYPES),
               "path": UPDATE_PATHS}
    return [_path_param(c["path"], c["dim"], c["dstate"], c["has_z"], c["iname"],
                        id=f"D{c['dim']}-N{c['dstate']}-{'z' if c['has_z'] else 'noz'}-{c['iname']}", marks=marks)
            for c, marks in _split(domains)]


@pytest.mark.parametrize("path,dim,dstate,has_z,iname", _update_grid())
def test_selective_state_update_grid(path, dim, dstate, has_z, iname):
    """upstream's test_selective_state_update."""
    _check_update(path, dim, dstate, has_z, iname)


def _heads_grid() -> list:
    """upstream's heads grid (dim, dstate, groups, z, tied head dim, itype), per path."""
    domains = {"dim": HEADS_DIMS, "dstate": UPDATE_DSTATES, "ngroups": NGROUPS, "has_z": [False, True],
               "tie_hdim": [False, True], "iname": list(ITYPES), "path": UPDATE_PATHS}
    return [_path_param(c["path"], c["dim"], c["dstate"], c["ngroups"], c["has_z"], c["tie_hdim"], c["iname"],
                        id=(f"D{c['dim']}-N{c['dstate']}-G{c['ngroups']}-{'z' if c['has_z'] else 'noz'}-"
                            f"{'tied' if c['tie_hdim'] else 'untied'}-{c['iname']}"), marks=marks)
            for c, marks in _split(domains)]


@pytest.mark.parametrize("path,dim,dstate,ngroups,has_z,tie_hdim,iname", _heads_grid())
def test_selective_state_update_with_heads_grid(path, dim, dstate, ngroups, has_z, tie_hdim, iname):
    """upstream's test_selective_state_update_with_heads (tied: dt, dt_bias, A, D broadcast over the head dim)."""
    _check_update(path, dim, dstate, has_z, iname, heads=True, ngroups=ngroups, tie_hdim=tie_hdim)
