"""mmseq.kernels.attention: every path against the float64 reference, CAB patterns, memory, KV cache.

Triton runs under TRITON_INTERPRET=1 on the CPU (set by tests/conftest.py before the kernels are built) and on CUDA when
present. Errors are reported as relative RMS (rel) and max abs error (abs).
"""

import importlib
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from mmseq.kernels.attention import KVCache, attention, attention_mask, attention_ref
from torch.utils._python_dispatch import TorchDispatchMode

from tests.kernels._helpers import DEVICE, assert_close, marked, triton_marks

attention_module = importlib.import_module("mmseq.kernels.attention")  # the module, not the function

TRITON = triton_marks(attention_module._attn_fwd_kernel)


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    Lq: int
    Lk: int | None = None  # None: self-attention, Lk = Lq
    causal: bool = False
    cross: bool = False
    window: int | None = None
    chunk: int | None = None
    pad: bool = False  # random key padding, plus the first keys of the last batch element padded
    B: int = 2
    H: int = 2
    P: int = 24
    Pv: int = 20

    @property
    def kwargs(self) -> dict:
        return dict(causal=self.causal, cross=self.cross, window=self.window, chunk=self.chunk)


def _inputs(case: Case, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    Lk = case.Lq if case.Lk is None else case.Lk
    q = torch.randn(case.B, case.H, case.Lq, case.P, generator=gen, dtype=torch.float64)
    k = torch.randn(case.B, case.H, Lk, case.P, generator=gen, dtype=torch.float64)
    v = torch.randn(case.B, case.H, Lk, case.Pv, generator=gen, dtype=torch.float64)
    g = torch.randn(case.B, case.H, case.Lq, case.Pv, generator=gen, dtype=torch.float64)
    kpm = None
    if case.pad:
        kpm = torch.rand(case.B, Lk, generator=gen) > 0.3
        kpm[-1, : min(Lk, 5)] = False  # early causal rows of the last element see no key at all
    return q, k, v, g, kpm


def _run(impl, q, k, v, g, kpm, dtype, device="cpu", **kwargs):
    """Output and gradients of q, k, v for ``impl`` with inputs cast to ``dtype`` on ``device``."""
    xs = [t.detach().to(device=device, dtype=dtype).requires_grad_() for t in (q, k, v)]
    mask = None if kpm is None else kpm.to(device)
    out = attention(*xs, key_padding_mask=mask, impl=impl, **kwargs)
    out.backward(g.to(device=device, dtype=dtype))
    return {"out": out, "dq": xs[0].grad, "dk": xs[1].grad, "dv": xs[2].grad}


def _check_against_ref(impl, case, dtype, tol, device="cpu"):
    """Output and gradients against the float64 reference by relative RMS error; the RMS floor of 1e-2 keeps
    exact-zero references meaningful (with one key, dq and dk are exactly zero and a path returns rounding noise)."""
    q, k, v, g, kpm = _inputs(case)
    ref = _run("ref", q, k, v, g, kpm, torch.float64, **case.kwargs)
    got = _run(impl, q, k, v, g, kpm, dtype, device, **case.kwargs)
    for name in ("out", "dq", "dk", "dv"):
        assert got[name].dtype == dtype, f"{name} dtype {got[name].dtype}"
    assert_close(got, ref, tol, floor=1e-2, label=f"{impl} {case.id}")


# ----------------------------------------------------------------------------------------------------------
# torch path vs reference
# ----------------------------------------------------------------------------------------------------------

TORCH_CASES = [
    *[Case(f"ns-L{L}", L, B=1 if L > 500 else 2) for L in (1, 7, 63, 257, 1000)],
    *[Case(f"cs-L{L}", L, causal=True, B=1 if L > 500 else 2) for L in (1, 7, 63, 257, 1000)],
    Case("nc-50x100", 50, 100, cross=True),
    Case("cc-50x100", 50, 100, causal=True, cross=True),
    Case("cc-1x7", 1, 7, causal=True, cross=True),
    Case("cc-63x1", 63, 1, causal=True, cross=True),
    Case("cc-257x1000", 257, 1000, causal=True, cross=True, B=1),
    Case("ns-lq-ne-lk-7x63", 7, 63),
    Case("swa-causal-W1-L1", 1, causal=True, window=1),
    Case("swa-causal-W1-L7", 7, causal=True, window=1),
    Case("swa-causal-W3-L7", 7, causal=True, window=3),
    Case("swa-causal-W10-L7", 7, causal=True, window=10),
    Case("swa-causal-W16-L63", 63, causal=True, window=16),
    Case("swa-causal-W64-L257", 257, causal=True, window=64),
    Case("swa-causal-W100-L1000", 1000, causal=True, window=100, B=1),
    Case("swa-sym-W3-L7", 7, window=3),
    Case("swa-sym-W16-L63", 63, window=16),
    Case("swa-sym-W20-L257", 257, window=20),
    Case("swa-sym-W33-L1000", 1000, window=33, B=1),
    Case("chunk-C3-L7", 7, chunk=3),
    Case("chunk-C10-L7", 7, chunk=10),
    Case("chunk-C16-L63", 63, chunk=16),
    Case("chunk-C64-L257", 257, chunk=64),
    Case("chunk-C128-L1000", 1000, chunk=128, B=1),
    Case("chunk-C100-L1000", 1000, chunk=100, B=1),
    Case("chunk-causal-C3-L7", 7, causal=True, chunk=3),
    Case("chunk-causal-C16-L63", 63, causal=True, chunk=16),
    Case("chunk-causal-C64-L257", 257, causal=True, chunk=64),
    Case("pad-ns-L63", 63, pad=True),
    Case("pad-cs-L63", 63, causal=True, pad=True),
    Case("pad-nc-50x100", 50, 100, cross=True, pad=True),
    Case("pad-cc-50x100", 50, 100, causal=True, cross=True, pad=True),
    Case("pad-swa-causal-W8-L63", 63, causal=True, window=8, pad=True),
    Case("pad-swa-sym-W8-L63", 63, window=8, pad=True),
    Case("pad-chunk-C16-L63", 63, chunk=16, pad=True),
    Case("pad-chunk-causal-C16-L63", 63, causal=True, chunk=16, pad=True),
]

TORCH_BF16_CASES = [
    Case("cs-L257", 257, causal=True),
    Case("cc-50x100", 50, 100, causal=True, cross=True),
    Case("swa-causal-W64-L257", 257, causal=True, window=64),
    Case("pad-swa-sym-W8-L63", 63, window=8, pad=True),
    Case("chunk-causal-C64-L257", 257, causal=True, chunk=64),
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: c.id)
def test_torch_matches_ref_fp32(case):
    _check_against_ref("torch", case, torch.float32, 1e-4)


@pytest.mark.parametrize("case", TORCH_BF16_CASES, ids=lambda c: c.id)
def test_torch_matches_ref_bf16(case):
    _check_against_ref("torch", case, torch.bfloat16, 2e-2)


@pytest.mark.parametrize("case", TORCH_CASES[:12], ids=lambda c: c.id)
def test_torch_float64_is_exact(case):
    q, k, v, _, kpm = _inputs(case)
    ref = attention_ref(q, k, v, key_padding_mask=kpm, **case.kwargs)
    got = attention(q, k, v, key_padding_mask=kpm, impl="torch", **case.kwargs)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# triton path vs reference (TRITON_INTERPRET=1 on the CPU: small shapes)
# ----------------------------------------------------------------------------------------------------------

TRITON_CASES = [
    Case("ns-L1", 1, B=1),
    Case("ns-L33", 33, B=1),
    Case("cs-L7", 7, causal=True, B=1),
    Case("cs-L33", 33, causal=True, B=1),
    Case("nc-20x37", 20, 37, cross=True, B=1),
    Case("cc-20x37", 20, 37, causal=True, cross=True, B=1),
    Case("swa-causal-W1-L33", 33, causal=True, window=1, B=1),
    Case("swa-causal-W5-L33", 33, causal=True, window=5, B=1),
    Case("swa-causal-W20-L40", 40, causal=True, window=20, B=1),
    Case("swa-sym-W5-L40", 40, window=5, B=1),
    Case("chunk-C16-L40", 40, chunk=16, B=1),
    Case("chunk-C10-L33", 33, chunk=10, B=1),
    Case("chunk-causal-C10-L33", 33, causal=True, chunk=10, B=1),
    Case("pad-cs-L33", 33, causal=True, pad=True),
    Case("pad-cc-20x37", 20, 37, causal=True, cross=True, pad=True),
    Case("pad-swa-sym-W5-L33", 33, window=5, pad=True),
    Case("pad-chunk-causal-C10-L33", 33, causal=True, chunk=10, pad=True),
]

TRITON_BF16_CASES = [
    Case("cs-L33", 33, causal=True, B=1),
    Case("pad-swa-causal-W8-L33", 33, causal=True, window=8, pad=True),
]


@marked(TRITON)
@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: c.id)
def test_triton_matches_ref_fp32(case):
    _check_against_ref("triton", case, torch.float32, 1e-4, DEVICE)


@marked(TRITON)
@pytest.mark.parametrize("case", TRITON_BF16_CASES, ids=lambda c: c.id)
def test_triton_matches_ref_bf16(case):
    _check_against_ref("triton", case, torch.bfloat16, 2e-2, DEVICE)


@pytest.mark.slow
@marked(TRITON)
@pytest.mark.parametrize(
    "case",
    [
        Case("cs-L129", 129, causal=True, P=40, Pv=72),
        Case("swa-causal-W33-L129", 129, causal=True, window=33, pad=True),
        Case("swa-sym-W17-L129", 129, window=17),
        Case("chunk-causal-C32-L129", 129, causal=True, chunk=32, pad=True),
        Case("cc-65x129", 65, 129, causal=True, cross=True, pad=True),
    ],
    ids=lambda c: c.id,
)
def test_triton_matches_ref_larger(case):
    _check_against_ref("triton", case, torch.float32, 1e-4, DEVICE)


@marked(TRITON)
def test_triton_rejects_float64():
    q = torch.randn(1, 1, 4, 8, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="float64"):
        attention(q, q, q, impl="triton")


# ----------------------------------------------------------------------------------------------------------
# CAB patterns
# ----------------------------------------------------------------------------------------------------------

IMPLS = ["ref", "torch", pytest.param("triton", marks=TRITON)]


def _device(impl):
    return DEVICE if impl == "triton" else torch.device("cpu")


@pytest.mark.parametrize("impl", IMPLS)
def test_causal_cross_sees_whole_source_and_is_causal_in_target(impl):
    """CAB CC: target query i attends to every source key (even j > i); dropping target steps > i changes
    nothing; SDPA's top-left is_causal would be wrong here."""
    Lt, Ls = (20, 37) if impl == "triton" else (50, 100)
    dev = _device(impl)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, n, 16, generator=gen).to(dev) for n in (Lt, Ls, Ls))
    out = attention(q, k, v, causal=True, cross=True, impl=impl)

    for i in (0, 7, Lt - 1):
        prefix = attention(q[:, :, : i + 1], k, v, causal=True, cross=True, impl=impl)
        torch.testing.assert_close(prefix, out[:, :, : i + 1], rtol=1e-5, atol=1e-6)

    qd, kd, vd = q.double().cpu(), k.double().cpu(), v.double().cpu()
    free = torch.softmax(qd @ kd.transpose(-1, -2) / math.sqrt(16), dim=-1) @ vd  # no mask at all
    torch.testing.assert_close(out.double().cpu(), free, rtol=1e-5, atol=1e-5)
    assert torch.equal(out, attention(q, k, v, causal=False, cross=True, impl=impl))

    top_left = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True)  # hides source keys j > i
    assert (top_left - free).abs().max() > 1e-2


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "pattern", [dict(), dict(window=5), dict(chunk=8)], ids=["full", "window5", "chunk8"]
)
def test_causal_self_prefix_equals_full(impl, pattern):
    """CAB CS: output at i computed from the prefix 0..i equals the full-sequence output at i."""
    L = 29
    dev = _device(impl)
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, L, 16, generator=gen).to(dev) for _ in range(3))
    out = attention(q, k, v, causal=True, impl=impl, **pattern)
    for i in (0, 4, 13, L - 1):
        n = i + 1
        prefix = attention(q[:, :, :n], k[:, :, :n], v[:, :, :n], causal=True, impl=impl, **pattern)
        torch.testing.assert_close(prefix[:, :, i], out[:, :, i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_noncausal_self_sees_future(impl):
    """CAB NS: changing the last key changes the first query's output (and CS does not)."""
    dev = _device(impl)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 1, 9, 16, generator=gen).to(dev) for _ in range(3))
    v2 = v.clone()
    v2[:, :, -1] += 1.0
    ns = attention(q, k, v2, impl=impl) - attention(q, k, v, impl=impl)
    cs = attention(q, k, v2, causal=True, impl=impl) - attention(q, k, v, causal=True, impl=impl)
    assert ns[:, :, 0].abs().max() > 1e-4
    assert cs[:, :, :-1].abs().max() == 0


def test_attention_mask_patterns():
    i = torch.arange(6)[:, None]
    j = torch.arange(6)[None, :]
    assert torch.equal(attention_mask(6, 6, causal=True), j <= i)
    assert torch.equal(attention_mask(6, 6, causal=True, window=2), (j <= i) & (j >= i - 1))
    assert torch.equal(attention_mask(6, 6, window=2), (j - i).abs() < 2)
    assert torch.equal(attention_mask(6, 6, chunk=4), (i // 4) == (j // 4))
    assert torch.equal(attention_mask(6, 6, causal=True, chunk=4), ((i // 4) == (j // 4)) & (j <= i))
    assert attention_mask(3, 8, causal=True, cross=True).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_fully_padded_rows_give_zeros_and_zero_grads(impl):
    dev = _device(impl)
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 2, 12, 16, generator=gen).to(dev).requires_grad_() for _ in range(3))
    kpm = torch.ones(2, 12, dtype=torch.bool, device=dev)
    kpm[0] = False  # element 0: every key is padding
    kpm[1, :4] = False  # element 1: causal rows 0..3 see nothing
    out = attention(q, k, v, causal=True, key_padding_mask=kpm, impl=impl)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert out[0].abs().max() == 0 and out[1, :, :4].abs().max() == 0
    assert out[1, :, 4:].abs().min() > 0
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert q.grad[0].abs().max() == 0 and k.grad[0].abs().max() == 0 and v.grad[0].abs().max() == 0


def test_default_scale_and_default_impl():
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 10, 12, generator=gen) for _ in range(3))
    assert torch.equal(attention(q, k, v), attention(q, k, v, scale=12**-0.5, impl="torch"))
    torch.testing.assert_close(
        attention(q, k, v, scale=0.3, window=4, causal=True),
        attention_ref(q, k, v, scale=0.3, window=4, causal=True),
    )


# ----------------------------------------------------------------------------------------------------------
# memory: the local torch paths never build an L x L tensor
# ----------------------------------------------------------------------------------------------------------


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize(
    "pattern",
    [dict(causal=True, window=64), dict(window=64), dict(chunk=64), dict(causal=True, chunk=64, pad=True)],
    ids=["swa-causal", "swa-sym", "chunk", "pad-chunk-causal"],
)
def test_local_torch_paths_use_linear_memory(pattern):
    """At L = 16384, an L x L fp32 score matrix would be 1 GiB (268M elements). Every tensor produced in the
    forward and backward of the windowed / chunked torch path must stay O(L * W)."""
    pattern = dict(pattern)
    pad = pattern.pop("pad", False)
    L, W, P = 16384, 64, 16
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 1, L, P, generator=gen).requires_grad_() for _ in range(3))
    kpm = (torch.rand(1, L, generator=gen) > 0.1) if pad else None
    with _LargestTensor() as probe:
        out = attention(q, k, v, key_padding_mask=kpm, impl="torch", **pattern)
        out.sum().backward()
    span = 3 * W  # keys a query block of W rows can reach, at most (symmetric window: W + 2W - 2)
    assert probe.largest <= 2 * L * span, f"largest tensor {probe.largest} > O(L * W) bound {2 * L * span}"
    assert probe.largest * 64 < L * L  # at least 64x below one L x L matrix

    with _LargestTensor() as control:  # the probe does see a quadratic tensor when one is made
        attention_ref(q[:, :, :512].detach(), k[:, :, :512].detach(), v[:, :, :512].detach(), **pattern)
    assert control.largest >= 512 * 512


# ----------------------------------------------------------------------------------------------------------
# KV cache
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [None, 1, 5, 64], ids=["full", "W1", "W5", "W64-longer-than-L"])
@pytest.mark.parametrize("prefill", [0, 11], ids=["no-prefill", "prefill11"])
def test_kv_cache_step_equals_full_forward(window, prefill):
    B, H, L, P, Pv = 2, 3, 37, 16, 8
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(B, H, L, P, generator=gen, dtype=torch.float64)
    k = torch.randn(B, H, L, P, generator=gen, dtype=torch.float64)
    v = torch.randn(B, H, L, Pv, generator=gen, dtype=torch.float64)
    full = attention(q, k, v, causal=True, window=window, impl="ref")

    cache = KVCache(B, H, P, max_len=L, window=window, v_head_dim=Pv, dtype=torch.float64)
    outs = []
    if prefill:
        outs.append(cache.prefill(q[:, :, :prefill], k[:, :, :prefill], v[:, :, :prefill]))
    for t in range(prefill, L):
        outs.append(cache.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1]))
    assert cache.length == L
    torch.testing.assert_close(torch.cat(outs, dim=2), full, rtol=1e-12, atol=1e-12)
    if window is not None:
        assert cache.k.shape[2] == window  # a ring of `window` slots, not max_len


def test_kv_cache_errors():
    cache = KVCache(1, 2, 8, max_len=3)
    x = torch.randn(1, 2, 1, 8)
    for _ in range(3):
        cache.step(x, x, x)
    with pytest.raises(ValueError, match="KVCache is full: max_len=3"):
        cache.step(x, x, x)
    cache.reset()
    assert cache.length == 0
    with pytest.raises(ValueError, match=r"k_t must be \[B, H, 1, P\] = \[1, 2, 1, 8\], got \[1, 2, 1, 4\]"):
        cache.step(x, x[..., :4], x)
    with pytest.raises(ValueError, match="max_len .* or window"):
        KVCache(1, 2, 8)
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        KVCache(1, 2, 8, window=0)
    cache.step(x, x, x)
    with pytest.raises(ValueError, match="empty KVCache"):
        cache.prefill(x, x, x)


# ----------------------------------------------------------------------------------------------------------
# input validation
# ----------------------------------------------------------------------------------------------------------


def _qkv(B=2, H=4, Lq=10, Lk=10, P=32, Pv=32):
    return [torch.randn(B, H, Lq, P), torch.randn(B, H, Lk, P), torch.randn(B, H, Lk, Pv)]


def _with(i, t):
    args = _qkv()
    args[i] = t
    return args


K_MSG = r"k must be \[B, H, Lk, P\] = \[2, 4, \*, 32\], got "
V_MSG = r"v must be \[B, H, Lk, Pv\] = \[2, 4, 10, \*\], got "
BAD_INPUTS = [
    ("k-head-dim", _with(1, torch.randn(2, 4, 10, 16)), {}, K_MSG + r"\[2, 4, 10, 16\]"),
    ("k-batch", _with(1, torch.randn(3, 4, 10, 32)), {}, K_MSG + r"\[3, 4, 10, 32\]"),
    ("v-heads", _with(2, torch.randn(2, 1, 10, 32)), {}, V_MSG + r"\[2, 1, 10, 32\]"),
    ("v-length", _with(2, torch.randn(2, 4, 9, 32)), {}, V_MSG + r"\[2, 4, 9, 32\]"),
    (
        "q-3d",
        _with(0, torch.randn(2, 10, 32)),
        {},
        r"q must be \[B, H, Lq, P\] = \[\*, \*, \*, \*\], got \[2, ",
    ),
    ("q-int", _with(0, torch.ones(2, 4, 10, 32, dtype=torch.long)), {}, "q must be a floating-point tensor"),
    ("mixed-dtype", _with(2, torch.randn(2, 4, 10, 32, dtype=torch.float64)), {}, "share one dtype"),
    (
        "Lq-0",
        _with(0, torch.randn(2, 4, 0, 32)),
        {},
        r"Lq, Lk, P, Pv >= 1: q is \[B, H, Lq, P\] = \[2, 4, 0, ",
    ),
    ("Lk-0", _qkv(Lk=0), {}, r"Lq, Lk, P, Pv >= 1"),
    ("window-0", _qkv(), dict(causal=True, window=0), "window must be an int >= 1 or None, got 0"),
    ("window-float", _qkv(), dict(window=2.5), "window must be an int >= 1 or None, got 2.5"),
    ("chunk-0", _qkv(), dict(chunk=0), "chunk must be an int >= 1 or None, got 0"),
    ("window-cross", _qkv(Lq=5), dict(cross=True, causal=True, window=4), "cannot be used with cross=True"),
    ("chunk-cross", _qkv(Lq=5), dict(cross=True, chunk=4), "cannot be used with cross=True"),
    ("causal-window-chunk", _qkv(), dict(causal=True, window=4, chunk=4), "at most one of window and chunk"),
    ("causal-self-lq-ne-lk", _qkv(Lq=5), dict(causal=True), r"Lk == Lq = 5 .* pass cross=True"),
    ("window-lq-ne-lk", _qkv(Lq=5), dict(window=3), r"Lk == Lq = 5"),
    (
        "kpm-shape",
        _qkv(),
        dict(key_padding_mask=torch.ones(2, 9, dtype=torch.bool)),
        r"key_padding_mask must be \[B, Lk\] = \[2, 10\], got \[2, 9\]",
    ),
    ("kpm-dtype", _qkv(), dict(key_padding_mask=torch.ones(2, 10)), "key_padding_mask must be a bool tensor"),
    ("scale-str", _qkv(), dict(scale="0.1"), "scale must be a float or None"),
    ("impl-unknown", _qkv(), dict(impl="cuda"), "impl must be one of"),
]


@pytest.mark.parametrize(
    ("args", "kwargs", "match"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_inputs_raise_value_error(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        attention(*args, **kwargs)
