"""Long convolution of a sequence with one explicit kernel per channel (S4/S4D, SGConv, LongConv, Hyena).

Shapes in letters: B batch, D channels, L sequence length, Lk kernel length (1 <= Lk <= L).

    u   [B, D, L]    input
    k   [D, Lk]      one kernel per channel
    D   [D]          optional skip weight: adds u * D[:, None]
    y   [B, D, L]    output, in u's dtype (accumulated in fp32, or fp64 for fp64 inputs)

With zero padding outside 0 <= j < L and an offset c,

    y[b, d, t] = sum_{s=0}^{Lk-1} k[d, s] * u[b, d, t - s + c]  (+ D[d] * u[b, d, t])

- causal=True: c = 0, so y[t] = sum_{s=0}^{min(t, Lk-1)} k[s] u[t-s]; k[0] weighs the current input.
- causal=False (bidirectional, "same" convolution): c = (Lk-1) // 2, i.e. the kernel is centred: k[c]
  weighs u[t], k[s] for s < c weighs the future input u[t + (c-s)], and k[s] for s > c the past input
  u[t - (s-c)]. An even Lk has one more past tap than future taps. This equals
  ``F.conv1d(F.pad(u, (Lk-1-c, c)), k.flip(-1)[:, None], groups=D)``. S4's bidirectional rule (a causal
  kernel k0 for the past and k1 for the future, y[t] = sum_{j>=0} k0[j] u[t-j] + sum_{j>=1} k1[j-1] u[t+j])
  is the centred kernel cat(flip(k1[:m]), k0[:m+1]) of length 2m+1; with Lk <= L it reaches m <= (L-1)/2
  steps each way.

Paths (``impl=``):
- "ref": the direct convolution above through ``F.conv1d`` (flip + padding), float64 capable; O(L·Lk).
- "torch": rfft/irfft with n = the next 5-smooth size >= L + Lk - 1, so the circular convolution has no
  wraparound for any L (not only powers of two); O(n log n); gradients by autograd through the FFTs.
- "triton": a tiled direct convolution (a block of BT outputs times a block of BS taps, fp32 accumulation;
  fp64 for fp64 inputs), skipping the tap blocks that only meet zero padding. The backward runs the same
  kernel on the transposed problems: grad_u is the correlation of grad_y with k (the kernel applied with
  the flipped k), grad_k the correlation of grad_y with u (per batch row, then summed over B); grad_D is
  a torch reduction. Trade-off: an FFT inside Triton is a project of its own (FlashFFTConv), while the
  direct form is exact, simple and fast for short and medium kernels but costs O(L·Lk), against
  O(L log L) for cuFFT. Hence ``impl=None`` on CUDA picks Triton only for Lk <= 128 and the torch (cuFFT)
  path for longer kernels; that threshold is a guess, not a measurement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import check_float, check_tensor, load_triton, pick_impl, run_triton, shape_str

triton, tl = load_triton()  # stand-ins without Triton: the module imports, impl="triton" is refused

__all__ = ["fft_conv", "fft_conv_ref", "fft_conv_torch"]

_TRITON_DEFAULT_MAX_LK = 128  # impl=None on CUDA: Triton (direct) up to this kernel length, cuFFT beyond


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 when any input is float64, else float32 (half-precision inputs are upcast)."""
    wide = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return torch.float64 if wide else torch.float32


def _offset(Lk: int, causal: bool) -> int:
    """c in y[t] = sum_s k[s] u[t - s + c]: 0 when causal, the kernel's centre otherwise."""
    return 0 if causal else (Lk - 1) // 2


def _next_fast_len(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (sizes pocketfft and cuFFT transform fastest)."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            q = p35
            while q < n:
                q *= 2
            best = min(best, q)
            p35 *= 3
        p5 *= 5
    return best


# ----------------------------------------------------------------------------------------------------------
# Reference: direct convolution, float64 capable.
# ----------------------------------------------------------------------------------------------------------


def fft_conv_ref(u, k, D=None, causal=True):
    """Ground truth: y = conv1d(pad(u, (Lk-1-c, c)), flip(k), groups=D) (+ u * D). Shapes as above."""
    Lk = k.shape[-1]
    c = _offset(Lk, causal)
    cdt = _compute_dtype(u, k, D)
    uc = u.to(cdt)
    y = F.conv1d(F.pad(uc, (Lk - 1 - c, c)), k.to(cdt).flip(-1).unsqueeze(1), groups=u.shape[1])
    if D is not None:
        y = y + uc * D.to(cdt)[:, None]
    return y.to(u.dtype)


# ----------------------------------------------------------------------------------------------------------
# FFT path: zero-padded real FFTs, gradients by autograd.
# ----------------------------------------------------------------------------------------------------------


def fft_conv_torch(u, k, D=None, causal=True):
    """The full linear convolution by rfft of size n >= L + Lk - 1, then the L outputs from offset c."""
    L, Lk = u.shape[-1], k.shape[-1]
    c = _offset(Lk, causal)
    cdt = _compute_dtype(u, k, D)
    n = _next_fast_len(L + Lk - 1)
    uc = u.to(cdt)
    y = torch.fft.irfft(torch.fft.rfft(uc, n=n) * torch.fft.rfft(k.to(cdt), n=n), n=n)[..., c : c + L]
    if D is not None:
        y = y + uc * D.to(cdt)[:, None]
    return y.to(u.dtype)


# ----------------------------------------------------------------------------------------------------------
# Triton: one tiled direct-convolution kernel, used for the forward and both backward products.
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _direct_conv_kernel(
    inp, w, skip, skip_src, out, D, L_in, L_w, L_out, off, w_stride_b,
    BT: tl.constexpr, BS: tl.constexpr, HAS_SKIP: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """out[b, d, t] = sum_{s < L_w} w[b, d, s] * inp[b, d, t - s + off]  (+ skip[d] * skip_src[b, d, t]).

    inp is [B, D, L_in] (zero outside), out and skip_src are [B, D, L_out], w is [D, L_w] shared by the
    batch (w_stride_b = 0) or [B, D, L_w] (w_stride_b = D * L_w). One program computes BT outputs of one
    (b, d) row and visits only the taps s with some valid input index, in blocks of BS.
    """
    i_t, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    row = i_b.to(tl.int64) * D + i_d
    p_inp = inp + row * L_in
    p_w = w + i_b.to(tl.int64) * w_stride_b + i_d.to(tl.int64) * L_w
    t0 = i_t * BT
    o_t = t0 + tl.arange(0, BT)
    m_t = o_t < L_out

    # 0 <= t - s + off < L_in for some t in [t0, t0 + BT)  <=>  t0 + off - L_in < s < t0 + BT + off
    s_lo = tl.maximum(t0 + off - L_in + 1, 0)
    s_hi = tl.minimum(t0 + BT + off, L_w)
    acc = tl.zeros([BT], dtype=ACC)
    s0 = s_lo
    while s0 < s_hi:  # a while loop: runtime trip counts in `for` loops break the interpreter (numpy >= 2.3)
        o_s = s0 + tl.arange(0, BS)
        m_s = o_s < s_hi
        b_w = tl.load(p_w + o_s, mask=m_s, other=0.0).to(ACC)
        idx = o_t[:, None] - o_s[None, :] + off
        m = m_t[:, None] & m_s[None, :] & (idx >= 0) & (idx < L_in)
        b_u = tl.load(p_inp + idx, mask=m, other=0.0).to(ACC)
        acc += tl.sum(b_u * b_w[None, :], axis=1)
        s0 += BS
    if HAS_SKIP:
        b_src = tl.load(skip_src + row * L_out + o_t, mask=m_t, other=0.0).to(ACC)
        acc += tl.load(skip + i_d).to(ACC) * b_src
    tl.store(out + row * L_out + o_t, acc.to(out.dtype.element_ty), mask=m_t)


def _blocks(device: torch.device, L_out: int, L_w: int) -> tuple[int, int]:
    """(outputs, taps) per step: moderate tiles on the GPU; in the CPU interpreter, whose cost is mostly per
    step, tiles as big as the problem up to 256."""
    if device.type == "cuda":
        return 64, 64
    fit = lambda n: max(16, min(256, triton.next_power_of_2(n)))
    return fit(L_out), fit(L_w)


def _direct_conv(inp, w, L_out, off, skip=None, skip_src=None, out_dtype=None, acc=torch.float32):
    """Launch ``_direct_conv_kernel``: inp [B, D, L_in], w [D, L_w] or [B, D, L_w] -> out [B, D, L_out]."""
    B, D, L_in = inp.shape
    L_w = w.shape[-1]
    out = torch.empty(B, D, L_out, device=inp.device, dtype=out_dtype or inp.dtype)
    BT, BS = _blocks(inp.device, L_out, L_w)
    _direct_conv_kernel[(triton.cdiv(L_out, BT), D, B)](
        inp, w, inp if skip is None else skip, inp if skip_src is None else skip_src, out,
        D, L_in, L_w, L_out, off, D * L_w if w.dim() == 3 else 0,
        BT=BT, BS=BS, HAS_SKIP=skip is not None, ACC=tl.float64 if acc == torch.float64 else tl.float32,
    )  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------------------
# Autograd Function over the Triton kernel.
# ----------------------------------------------------------------------------------------------------------


class _FFTConvTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, k, D, causal):
        u, k = u.contiguous(), k.contiguous()
        D = None if D is None else D.contiguous()
        L, Lk = u.shape[-1], k.shape[-1]
        c = _offset(Lk, causal)
        acc = _compute_dtype(u, k, D)
        y = _direct_conv(u, k, L, c, skip=D, skip_src=u, acc=acc)
        ctx.save_for_backward(u, k, D)
        ctx.c, ctx.acc = c, acc
        return y

    @staticmethod
    def backward(ctx, dy):
        u, k, D = ctx.saved_tensors
        c, acc = ctx.c, ctx.acc
        L, Lk = u.shape[-1], k.shape[-1]
        dy = dy.contiguous()
        du = dk = dD = None
        if ctx.needs_input_grad[0]:
            # du[j] = sum_s k[s] dy[j + s - c] = sum_s' flip(k)[s'] dy[j - s' + (Lk-1-c)]
            du = _direct_conv(dy, k.flip(-1).contiguous(), L, Lk - 1 - c, skip=D, skip_src=dy,
                              out_dtype=u.dtype, acc=acc)  # fmt: skip
        if ctx.needs_input_grad[1]:
            # dk[s] = sum_{b,j} dy[j] u[j - s + c] = sum_b sum_j dy[j] flip(u)[s - j + (L-1-c)]
            dk_rows = _direct_conv(u.flip(-1).contiguous(), dy, Lk, L - 1 - c, out_dtype=acc, acc=acc)
            dk = dk_rows.sum(0).to(k.dtype)
        if D is not None and ctx.needs_input_grad[2]:
            dD = (dy.to(acc) * u.to(acc)).sum((0, 2)).to(D.dtype)
        return du, dk, dD, None


# ----------------------------------------------------------------------------------------------------------
# Public function.
# ----------------------------------------------------------------------------------------------------------


def _check_fft_conv(u, k, D) -> None:
    check_tensor("u", u, (None, None, None), "[B, D, L]")
    _, H, L = u.shape
    if L == 0:
        raise ValueError(f"u must be [B, D, L] with L >= 1, got {shape_str(u)}")
    check_tensor("k", k, (H, None), "[D, Lk]")
    Lk = k.shape[-1]
    if not 1 <= Lk <= L:
        raise ValueError(f"k must be [D, Lk] with 1 <= Lk <= L = {L}, got {shape_str(k)}")
    if D is not None:
        check_tensor("D", D, (H,), "[D]")
    for name, t in (("u", u), ("k", k), ("D", D)):
        if t is not None:
            check_float(name, t)
            if t.device != u.device:
                raise ValueError(f"{name} must be on u's device {u.device}, got {t.device}")


def fft_conv(
    u: torch.Tensor,
    k: torch.Tensor,
    D: torch.Tensor | None = None,
    causal: bool = True,
    *,
    impl: str | None = None,
) -> torch.Tensor:
    """Long convolution: u [B, D, L], k [D, Lk] (Lk <= L), skip D [D] -> y [B, D, L] in u's dtype.

    ``y[t] = sum_s k[s] u[t - s + c] + D u[t]`` with c = 0 (causal) or (Lk-1)//2 (bidirectional, centred
    kernel); see the module docstring. ``impl``: "ref", "torch", "triton" or None (torch off CUDA; on
    CUDA Triton for Lk <= 128, else the cuFFT torch path; if the Triton kernel fails to compile or launch,
    one warning and the torch path from then on).
    """
    _check_fft_conv(u, k, D)
    if impl is None and k.shape[-1] > _TRITON_DEFAULT_MAX_LK:
        impl = "torch"
    requested, impl = impl, pick_impl("fft_conv", impl, u.device)
    if impl == "ref":
        return fft_conv_ref(u, k, D, causal)
    if impl == "torch":
        return fft_conv_torch(u, k, D, causal)
    return run_triton("fft_conv", requested, _fft_conv_triton, fft_conv_torch, u, k, D, causal)


def _fft_conv_triton(u, k, D=None, causal=True):
    return _FFTConvTriton.apply(u, k, D, bool(causal))
