"""Cauchy kernel: a batch of complex Cauchy sums evaluated at a shared set of nodes (the S4 DPLR kernel's core).

Shapes in letters: R... any leading (batch) dims, N terms, L nodes.

    v    [..., N]   complex numerators
    w    [..., N]   complex poles (v and w broadcast against each other over the leading dims)
    z    [L]        complex nodes, shared by every row
    out  [..., L]   complex

    out[..., l] = sum_n v[..., n] / (z[l] - w[..., n])

Everything is computed in complex128 when any input is complex128, else in complex64 (real inputs are taken
as complex); ``out`` has that dtype.

Gradients follow PyTorch's convention for complex inputs (the conjugate Wirtinger derivative, so that a real
loss descends along ``-grad``): for a holomorphic map the input's gradient is the output's gradient times the
conjugate of the derivative, i.e. with g = d loss / d out

    grad_v[n] = sum_l g[l] * conj(1 / (z[l] - w[n]))
    grad_w[n] = sum_l g[l] * conj(v[n] / (z[l] - w[n])^2)
    grad_z[l] = -sum_n g[l] * conj(v[n] / (z[l] - w[n])^2)     (summed over the leading dims)

Paths (``impl=``):
- "ref": broadcast ``v[..., :, None] / (z - w[..., :, None])`` and sum over N; materialises [..., N, L];
  autograd; the ground truth.
- "torch": the same sum over blocks of nodes: each block's slab 1/(z - w) [rows, N, Lb] is built in place,
  contracted over N by a batched matrix product and freed before the next; a hand-written backward recomputes
  the slabs block by block (contracting over L), so memory stays at O(rows * N * Lb), never [..., N, L]
  (``_TORCH_BLOCK_ELEMS`` entries per slab).
- "triton": complex numbers as (re, im) pairs of float32 (float64 for complex128). The forward runs one program
  per (row, block of BL nodes) and loops over N in blocks of BN; the backward one program per (row, block of BN
  terms) looping over L, accumulating sum_l g conj(1/d) and sum_l g conj(1/d)^2 (then grad_w = conj(v) times
  the second). The division is the textbook one (conj(d) / |d|^2): |z - w|^2 must stay inside the float
  range (|z - w| < 1e19 in float32). A gradient for z, rarely needed (the nodes are constants in S4), is taken
  from the torch path's blocked formula.
"""

from __future__ import annotations

import torch

from ._dispatch import check_tensor, load_triton, pick_impl, run_triton, shape_str

triton, tl = load_triton()  # stand-ins without Triton: the module imports, impl="triton" is refused

__all__ = ["cauchy", "cauchy_ref", "cauchy_torch"]

_TORCH_BLOCK_ELEMS = 1 << 18  # complex entries of one [rows, N, Lb] slab on the torch path (4 MiB in complex128)


def _complex_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """complex128 when any input is complex128 or float64, else complex64."""
    wide = any(t.dtype in (torch.complex128, torch.float64) for t in tensors)
    return torch.complex128 if wide else torch.complex64


# ----------------------------------------------------------------------------------------------------------
# Reference: broadcast and sum.
# ----------------------------------------------------------------------------------------------------------


def cauchy_ref(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Ground truth: sum_n v[..., n] / (z[l] - w[..., n]), materialising [..., N, L]. Shapes as above."""
    cdt = _complex_dtype(v, z, w)
    v, z, w = v.to(cdt), z.to(cdt), w.to(cdt)
    return (v[..., :, None] / (z - w[..., :, None])).sum(-2)


# ----------------------------------------------------------------------------------------------------------
# Torch: blocks of nodes, hand-written backward.
# ----------------------------------------------------------------------------------------------------------


def _node_blocks(rows: int, N: int, L: int):
    """Slices of [0, L) whose [rows, N, Lb] slab holds at most ``_TORCH_BLOCK_ELEMS`` entries (at least one node)."""
    Lb = max(1, _TORCH_BLOCK_ELEMS // max(rows * N, 1))
    return [slice(s, min(s + Lb, L)) for s in range(0, L, Lb)]


class _CauchyTorchFn(torch.autograd.Function):
    """v, w [R, N] (same dtype, complex), z [L] -> out [R, L]. Each block's slab 1/(z - w) [R, N, Lb] is built in
    place and contracted over N (forward) or L (backward) by batched matrix products."""

    @staticmethod
    def forward(ctx, v, z, w):
        R, N = v.shape
        L = z.shape[0]
        out = torch.empty(R, L, dtype=v.dtype, device=v.device)
        vr = v[:, None, :]  # [R, 1, N]
        for sl in _node_blocks(R, N, L):
            inv = (z[sl] - w[:, :, None]).reciprocal_()  # [R, N, Lb]
            out[:, sl] = torch.bmm(vr, inv)[:, 0]
        ctx.save_for_backward(v, z, w)
        return out

    @staticmethod
    def backward(ctx, g):
        v, z, w = ctx.saved_tensors
        R, N = v.shape
        L = z.shape[0]
        need_v, need_z, need_w = ctx.needs_input_grad
        gc = g.conj()[:, :, None]  # [R, L, 1]
        # sum_l g conj(x) = conj(sum_l conj(g) x): the products below take the slab as it is
        sv = torch.zeros(R, N, 1, dtype=v.dtype, device=v.device) if need_v else None  # conj of grad_v
        s2 = torch.zeros(R, N, 1, dtype=v.dtype, device=v.device) if need_w else None  # sum_l conj(g) / d^2
        gz = torch.empty_like(z) if need_z else None
        for sl in _node_blocks(R, N, L):
            inv = (z[sl] - w[:, :, None]).reciprocal_()  # [R, N, Lb]
            if need_v:
                sv += torch.bmm(inv, gc[:, sl])
            if need_w or need_z:
                inv2 = inv.square_()
                if need_w:
                    s2 += torch.bmm(inv2, gc[:, sl])
                if need_z:
                    gz[sl] = -(g[:, sl] * torch.bmm(v[:, None, :], inv2)[:, 0].conj()).sum(0)
        gv = sv[..., 0].conj() if need_v else None
        gw = (v * s2[..., 0]).conj() if need_w else None  # conj(v) * sum_l g conj(1/d^2)
        return gv, gz, gw


def _rows(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor):
    """Bring v and w to one [R, N] layout (broadcast leading dims) in the compute dtype; the leading shape."""
    cdt = _complex_dtype(v, z, w)
    lead = torch.broadcast_shapes(v.shape[:-1], w.shape[:-1])
    N = v.shape[-1]
    v2 = v.to(cdt).expand(*lead, N).reshape(-1, N)
    w2 = w.to(cdt).expand(*lead, N).reshape(-1, N)
    return v2, z.to(cdt), w2, lead


def cauchy_torch(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The Cauchy sum over blocks of nodes, never holding [..., N, L]; gradients by a blocked backward."""
    v2, z2, w2, lead = _rows(v, z, w)
    return _CauchyTorchFn.apply(v2, z2, w2).reshape(*lead, z.shape[0])


# ----------------------------------------------------------------------------------------------------------
# Triton: complex numbers as (re, im) pairs.
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _cauchy_fwd_kernel(v, w, z, out, N, L, BL: tl.constexpr, BN: tl.constexpr, ACC: tl.constexpr):
    """out[r, l] = sum_n v[r, n] / (z[l] - w[r, n]); v, w [R, N, 2], z [L, 2], out [R, L, 2] (re, im)."""
    i_l, i_r = tl.program_id(0), tl.program_id(1)
    p_v = v + i_r.to(tl.int64) * N * 2
    p_w = w + i_r.to(tl.int64) * N * 2
    o_l = i_l * BL + tl.arange(0, BL)
    m_l = o_l < L
    b_zr = tl.load(z + 2 * o_l, mask=m_l, other=0.0).to(ACC)
    b_zi = tl.load(z + 2 * o_l + 1, mask=m_l, other=0.0).to(ACC)
    acc_r = tl.zeros([BL], dtype=ACC)
    acc_i = tl.zeros([BL], dtype=ACC)
    n0 = 0
    while n0 < N:  # a while loop: runtime trip counts in `for` loops break the interpreter (numpy >= 2.3)
        o_n = n0 + tl.arange(0, BN)
        m_n = o_n < N
        b_vr = tl.load(p_v + 2 * o_n, mask=m_n, other=0.0).to(ACC)
        b_vi = tl.load(p_v + 2 * o_n + 1, mask=m_n, other=0.0).to(ACC)
        b_wr = tl.load(p_w + 2 * o_n, mask=m_n, other=0.0).to(ACC)
        b_wi = tl.load(p_w + 2 * o_n + 1, mask=m_n, other=0.0).to(ACC)
        b_dr = b_zr[:, None] - b_wr[None, :]  # d = z - w, [BL, BN]
        b_di = b_zi[:, None] - b_wi[None, :]
        m = m_l[:, None] & m_n[None, :]
        b_den = tl.where(m, b_dr * b_dr + b_di * b_di, 1.0)
        # v / d = v conj(d) / |d|^2; masked terms have v = 0
        acc_r += tl.sum((b_vr[None, :] * b_dr + b_vi[None, :] * b_di) / b_den, axis=1)
        acc_i += tl.sum((b_vi[None, :] * b_dr - b_vr[None, :] * b_di) / b_den, axis=1)
        n0 += BN
    p_o = out + i_r.to(tl.int64) * L * 2 + 2 * o_l
    tl.store(p_o, acc_r.to(out.dtype.element_ty), mask=m_l)
    tl.store(p_o + 1, acc_i.to(out.dtype.element_ty), mask=m_l)


@triton.jit
def _cauchy_bwd_kernel(v, w, z, g, dv, dw, N, L, BL: tl.constexpr, BN: tl.constexpr, ACC: tl.constexpr):
    """dv[r, n] = sum_l g[r, l] conj(1/d), dw[r, n] = conj(v[r, n]) sum_l g[r, l] conj(1/d)^2, d = z[l] - w[r, n];
    all as (re, im) pairs: v, w, dv, dw [R, N, 2], z [L, 2], g [R, L, 2]."""
    i_n, i_r = tl.program_id(0), tl.program_id(1)
    row_n = i_r.to(tl.int64) * N * 2
    p_g = g + i_r.to(tl.int64) * L * 2
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    b_wr = tl.load(w + row_n + 2 * o_n, mask=m_n, other=0.0).to(ACC)
    b_wi = tl.load(w + row_n + 2 * o_n + 1, mask=m_n, other=0.0).to(ACC)
    s1_r = tl.zeros([BN], dtype=ACC)
    s1_i = tl.zeros([BN], dtype=ACC)
    s2_r = tl.zeros([BN], dtype=ACC)
    s2_i = tl.zeros([BN], dtype=ACC)
    l0 = 0
    while l0 < L:
        o_l = l0 + tl.arange(0, BL)
        m_l = o_l < L
        b_zr = tl.load(z + 2 * o_l, mask=m_l, other=0.0).to(ACC)
        b_zi = tl.load(z + 2 * o_l + 1, mask=m_l, other=0.0).to(ACC)
        b_gr = tl.load(p_g + 2 * o_l, mask=m_l, other=0.0).to(ACC)
        b_gi = tl.load(p_g + 2 * o_l + 1, mask=m_l, other=0.0).to(ACC)
        b_dr = b_zr[:, None] - b_wr[None, :]  # [BL, BN]
        b_di = b_zi[:, None] - b_wi[None, :]
        m = m_l[:, None] & m_n[None, :]
        b_den = tl.where(m, b_dr * b_dr + b_di * b_di, 1.0)
        b_cr = b_dr / b_den  # conj(1/d) = d / |d|^2
        b_ci = b_di / b_den
        b_qr = b_cr * b_cr - b_ci * b_ci  # conj(1/d)^2
        b_qi = 2 * b_cr * b_ci
        # masked nodes have g = 0
        s1_r += tl.sum(b_gr[:, None] * b_cr - b_gi[:, None] * b_ci, axis=0)
        s1_i += tl.sum(b_gr[:, None] * b_ci + b_gi[:, None] * b_cr, axis=0)
        s2_r += tl.sum(b_gr[:, None] * b_qr - b_gi[:, None] * b_qi, axis=0)
        s2_i += tl.sum(b_gr[:, None] * b_qi + b_gi[:, None] * b_qr, axis=0)
        l0 += BL
    b_vr = tl.load(v + row_n + 2 * o_n, mask=m_n, other=0.0).to(ACC)
    b_vi = tl.load(v + row_n + 2 * o_n + 1, mask=m_n, other=0.0).to(ACC)
    p_dv = dv + row_n + 2 * o_n
    p_dw = dw + row_n + 2 * o_n
    tl.store(p_dv, s1_r.to(dv.dtype.element_ty), mask=m_n)
    tl.store(p_dv + 1, s1_i.to(dv.dtype.element_ty), mask=m_n)
    tl.store(p_dw, (b_vr * s2_r + b_vi * s2_i).to(dw.dtype.element_ty), mask=m_n)  # conj(v) * s2
    tl.store(p_dw + 1, (b_vr * s2_i - b_vi * s2_r).to(dw.dtype.element_ty), mask=m_n)


def _blocks(device: torch.device, n_par: int, n_loop: int) -> tuple[int, int]:
    """(parallel, looped) block sizes: moderate tiles on the GPU; in the CPU interpreter, whose cost is mostly per
    step, tiles as big as the problem up to 256."""
    if device.type == "cuda":
        return 64, min(64, max(16, triton.next_power_of_2(n_loop)))
    fit = lambda n: max(16, min(256, triton.next_power_of_2(n)))
    return fit(n_par), fit(n_loop)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.complex128 else tl.float32


def _cauchy_fwd(v, z, w):
    """v, w [R, N] complex contiguous, z [L] -> out [R, L]."""
    R, N = v.shape
    L = z.shape[0]
    out = torch.empty(R, L, dtype=v.dtype, device=v.device)
    BL, BN = _blocks(v.device, L, N)
    _cauchy_fwd_kernel[(triton.cdiv(L, BL), R)](
        torch.view_as_real(v), torch.view_as_real(w), torch.view_as_real(z), torch.view_as_real(out),
        N, L, BL=BL, BN=BN, ACC=_acc(v.dtype),
    )  # fmt: skip
    return out


def _cauchy_bwd(v, z, w, g):
    """Gradients of v and w (each [R, N]) for the output cotangent g [R, L]."""
    R, N = v.shape
    L = z.shape[0]
    dv, dw = torch.empty_like(v), torch.empty_like(w)
    BN, BL = _blocks(v.device, N, L)
    _cauchy_bwd_kernel[(triton.cdiv(N, BN), R)](
        torch.view_as_real(v), torch.view_as_real(w), torch.view_as_real(z), torch.view_as_real(g),
        torch.view_as_real(dv), torch.view_as_real(dw), N, L, BL=BL, BN=BN, ACC=_acc(v.dtype),
    )  # fmt: skip
    return dv, dw


class _CauchyTritonFn(torch.autograd.Function):
    """v, w [R, N] (same complex dtype), z [L] -> out [R, L]."""

    @staticmethod
    def forward(ctx, v, z, w):
        v, z, w = v.contiguous(), z.contiguous(), w.contiguous()
        ctx.save_for_backward(v, z, w)
        return _cauchy_fwd(v, z, w)

    @staticmethod
    def backward(ctx, g):
        v, z, w = ctx.saved_tensors
        need_v, need_z, need_w = ctx.needs_input_grad
        gv = gw = gz = None
        if need_v or need_w:
            gv, gw = _cauchy_bwd(v, z, w, g.contiguous())
        if need_z:
            with torch.enable_grad():  # the blocked torch formula, for the rarely needed node gradient
                zz = z.detach().requires_grad_(True)
                (gz,) = torch.autograd.grad(_CauchyTorchFn.apply(v.detach(), zz, w.detach()), zz, g)
        return (gv if need_v else None), gz, (gw if need_w else None)


def _cauchy_triton(v, z, w):
    v2, z2, w2, lead = _rows(v, z, w)
    return _CauchyTritonFn.apply(v2, z2, w2).reshape(*lead, z.shape[0])


# ----------------------------------------------------------------------------------------------------------
# Public function.
# ----------------------------------------------------------------------------------------------------------


def _check_cauchy(v, z, w) -> None:
    check_tensor("z", z, (None,), "[L]")
    for name, t in (("v", v), ("w", w)):
        if not isinstance(t, torch.Tensor) or t.dim() < 1:
            raise ValueError(f"{name} must be a tensor [..., N] with N >= 1, got {shape_str(t)}")
        if not (t.is_complex() or t.is_floating_point()):
            raise ValueError(f"{name} must be a complex (or floating-point) tensor, got {t.dtype}")
        if t.device != v.device:
            raise ValueError(f"{name} must be on v's device {v.device}, got {t.device}")
    if not (z.is_complex() or z.is_floating_point()):
        raise ValueError(f"z must be a complex (or floating-point) tensor, got {z.dtype}")
    if z.device != v.device:
        raise ValueError(f"z must be on v's device {v.device}, got {z.device}")
    if v.shape[-1] != w.shape[-1] or v.shape[-1] == 0:
        raise ValueError(f"v and w must be [..., N] with the same N >= 1, got {shape_str(v)} and {shape_str(w)}")
    try:
        torch.broadcast_shapes(v.shape[:-1], w.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"v and w must have leading dims that broadcast, got {shape_str(v)} and {shape_str(w)}"
        ) from None
    if z.shape[0] == 0:
        raise ValueError(f"z must be [L] with L >= 1, got {shape_str(z)}")


def cauchy(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """Cauchy sums: v [..., N], z [L], w [..., N] (complex) -> out [..., L], out[..., l] = sum_n v_n / (z_l - w_n).

    v and w broadcast over their leading dims; out is complex128 when any input is complex128 (or float64), else
    complex64. ``impl``: "ref", "torch", "triton" or None (torch off CUDA, Triton on CUDA; if the Triton kernel
    fails to compile or launch, one warning and the torch path from then on). See the module docstring.

    >>> v, w = torch.randn(4, 8, dtype=torch.cfloat), torch.randn(4, 8, dtype=torch.cfloat)
    >>> cauchy(v, torch.randn(16, dtype=torch.cfloat), w).shape
    torch.Size([4, 16])
    """
    _check_cauchy(v, z, w)
    requested, impl = impl, pick_impl("cauchy", impl, v.device)
    if impl == "ref":
        return cauchy_ref(v, z, w)
    if impl == "torch":
        return cauchy_torch(v, z, w)
    return run_triton("cauchy", requested, _cauchy_triton, cauchy_torch, v, z, w)
