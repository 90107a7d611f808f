"""Selective scan (the Mamba-1 SSM) with a D skip and a z gate, plus its one-token decoding step.

Shapes in letters: B batch, D channels, L sequence length, N state size, G groups of B/C (G divides D).

    u, delta, z    [B, D, L]                  input, step size (before bias/softplus), gate
    A              [D, N]                     decay rates (negative real part for a stable scan); real, or
                                              complex64/complex128
    B, C           [D, N]                     constant (time-invariant, S4): channel d uses row d
                   [B, N, L] or [B, G, N, L]  variable; channel d uses group d // (D // G)
    D, delta_bias  [D]                        skip weight, step-size bias
    out            [B, D, L]                  in u's dtype
    last_state     [B, D, N]                  float32 (float64 when any input is float64); complex for complex A

With dt = softplus(delta + delta_bias) (bias and softplus optional), per channel d and state n:

    h[t] = exp(dt[t] * A[d, n]) * h[t-1] + dt[t] * B[t, n] * u[t],   h[-1] = 0
    y[t] = sum_n C[t, n] * h[t, n] + D[d] * u[t]        (sum_n ... is 2 * Re(sum_n ...) for complex A)
    out[t] = y[t] * silu(z[t])

With complex A (a conjugate-pair half of a real SSM), a variable B or C is either complex [.., N, L] or real with
(re, im) pairs interleaved along its last axis, [B, N, 2L] or [B, G, N, 2L]; a constant one is complex [D, N]
(a real one is cast). The output counts each state with its conjugate: 2 * Re(y), as mamba_ssm does.

The argument order, forms and meaning follow ``selective_scan_fn`` of state-spaces/mamba, so either can be used.
Unlike it, ``last_state`` here is differentiable: a cotangent on it flows back to every input.
Everything is accumulated in float32 (float64 when any input is float64); gradients come back in the
dtype of their input (a constant B/C's gradient is summed over batch and positions to [D, N]). With
half-precision u, delta, z and variable B/C, outputs and gradients meet mamba_ssm's own test tolerances (checked
at L = 1134 in bf16). Keep the weights (A, D, delta_bias, a constant B/C) in float32, as mamba_ssm and the Mamba
mixer do: a bf16 weight gets a bf16 gradient, the float32 sum rounded once (relative 2^-9: +-4 near 1,500).

Every form is brought to the grouped one before the paths run: a constant [D, N] becomes a broadcast view
[B, D, N, L] (G = D, one group per channel; no copy until a path lays it out), [B, N, L] becomes [B, 1, N, L].

Decoding: ``selective_state_update(state, x, dt, A, B, C, ...)`` advances ``state`` [B, D, N] in place by
one token (x, dt, z: [B, D]; B, C: [B, N] or [B, G, N]) and returns y [B, D]; stepping through a
sequence from a zero state reproduces ``selective_scan``. mamba_ssm's heads form (state [B, H, P, N], x [B, H, P],
A [H, P, N], B/C groups dividing H) is taken as D = H * P channels. Real A only; no constant B/C for decoding.

Paths (``impl=``): "ref" loops over L in plain PyTorch (the ground truth, autograd through the loop);
"torch", on CPU tensors with real A, runs the scan in a compiled C++ core (``csrc/selective_scan_cpu.cpp``, built
at first use by ``_cpu_build``: one (batch row, channel) pair walks L with its N states in a vector register, and
the backward replays its channel into a per-thread buffer of 2 L N values), with step size, skip and gate in
PyTorch around it; without a C++ compiler, with ``MMSEQ_CPU_KERNELS=0``, for complex A and on other devices it
scans blocks of positions small enough to stay in cache (cut into chunks scanned side by side when a
position's state is small), with a hand-written backward that recomputes states block by block, so memory
stays at O(block) instead of [B, D, L, N]; "triton" runs one program per (batch row, block of
channels) that walks L with the state in registers, saving the state at chunk boundaries; its backward
kernel replays each chunk from its saved state and walks it in reverse. Complex A: "ref" and "torch" run it
in complex arithmetic; the Triton kernels are real, so "triton" (also the default on CUDA) runs "torch" for
it. A constant B/C costs the torch and Triton paths a [B, D, N, L] layout of it (they see G = D groups; Triton
then runs one channel per program).
"""

from __future__ import annotations

import ctypes
import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._cpu_build import load_cpu_library
from ._dispatch import check_float, check_tensor, load_triton, pick_impl, run_triton, shape_str

triton, tl = load_triton()  # stand-ins without Triton: the module imports, impl="triton" is refused

__all__ = [
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_torch",
    "selective_state_update",
    "selective_state_update_ref",
]


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 when any input is float64 (or complex128), else float32 (half-precision inputs are upcast)."""
    wide = any(t is not None and t.dtype in (torch.float64, torch.complex128) for t in tensors)
    return torch.float64 if wide else torch.float32


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _as_grouped(t: torch.Tensor, A: torch.Tensor, batch: int, L: int) -> torch.Tensor:
    """B or C in the grouped form [B, G, N, L] that every path computes with.

    A constant [D, N] (time-invariant, per channel) becomes the broadcast view [B, D, N, L]: G = D, one group
    per channel, so autograd sums its gradient back to [D, N]. [B, N, L] becomes [B, 1, N, L]. With complex A,
    a real variable B/C holds (real, imag) pairs interleaved along its last axis (length 2L) and becomes
    complex (as ``view_as_complex`` in mamba_ssm); a real constant one is cast to complex. Idempotent.
    """
    if t.dim() == 2:
        if A.is_complex() and not t.is_complex():
            t = t.to(_complex_of(_compute_dtype(t, A)))
        return t[None, :, :, None].expand(batch, t.shape[0], t.shape[1], L)
    if t.dim() == 3:
        t = t.unsqueeze(1)
    if A.is_complex() and not t.is_complex():
        t = torch.view_as_complex(t.to(_compute_dtype(t, A)).unflatten(-1, (L, 2)).contiguous())
    return t


def _step_size(delta, delta_bias, delta_softplus, dtype):
    """dt = softplus(delta + delta_bias) in ``dtype``; bias and softplus optional. delta: [B, D, ...]."""
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype).view(-1, *([1] * (dt.dim() - 2)))
    return F.softplus(dt) if delta_softplus else dt


def _common_groups(B: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B and C as [B, G, N, L] with one G for both (their lcm when the two are grouped differently).

    A half-precision tensor is repeated in float32: the repeat's backward sums the copies' gradients in the
    dtype it repeats, and summed in fp16 they miss mamba_ssm's tolerances."""
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    G = math.lcm(B.shape[1], C.shape[1])
    if B.shape[1] != G:
        B = _float32_if_half(B).repeat_interleave(G // B.shape[1], dim=1)
    if C.shape[1] != G:
        C = _float32_if_half(C).repeat_interleave(G // C.shape[1], dim=1)
    return B, C


def _float32_if_half(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


# ----------------------------------------------------------------------------------------------------------
# Reference: one step per position, readable, float64 capable.
# ----------------------------------------------------------------------------------------------------------


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """Ground truth: the recurrence of the module docstring, one position at a time.

    u, delta, z: [B, D, L]; A: [D, N] real or complex; B, C: [D, N], [B, N, L] or [B, G, N, L] (real pairs
    along 2L, or complex, when A is complex); D, delta_bias: [D].
    Returns out [B, D, L] (u's dtype), and last_state [B, D, N] (float32/float64, complex with complex A).
    """
    cdt = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    sdt = _complex_of(cdt) if A.is_complex() else cdt  # dtype of the state
    batch, dim, L = u.shape
    dt = _step_size(delta, delta_bias, delta_softplus, cdt)
    x = dt * u.to(cdt)  # [B, D, L]
    # every channel gets its group's B and C: [B, D, N, L]
    B, C = (_as_grouped(t, A, batch, L).to(sdt) for t in (B, C))
    A = A.to(sdt)
    B = B.repeat_interleave(dim // B.shape[1], dim=1)
    C = C.repeat_interleave(dim // C.shape[1], dim=1)
    h = u.new_zeros(batch, dim, A.shape[1], dtype=sdt)  # [B, D, N]
    ys = []
    # unbind (not indexing) keeps the backward linear in L
    for dt_t, x_t, B_t, C_t in zip(dt.unbind(-1), x.unbind(-1), B.unbind(-1), C.unbind(-1)):
        h = torch.exp(dt_t[..., None] * A) * h + x_t[..., None] * B_t
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    if y.is_complex():  # the conjugate pair's contribution, as in mamba_ssm
        y = y.real * 2
    if D is not None:
        y = y + D.to(cdt)[:, None] * u.to(cdt)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    out = y.to(u.dtype)
    return (out, h) if return_last_state else out


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decoding step: state [B, D, N] is advanced in place; x, dt, z: [B, D]; B, C: [B, N] or [B, G, N].

    Returns y [B, D] in x's dtype. Equals one position of ``selective_scan_ref`` (docstring recurrence).
    """
    cdt = _compute_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    dim = x.shape[1]
    dt = _step_size(dt, dt_bias, dt_softplus, cdt)  # [B, D]
    B = (B.unsqueeze(1) if B.dim() == 2 else B).to(cdt)
    C = (C.unsqueeze(1) if C.dim() == 2 else C).to(cdt)
    B = B.repeat_interleave(dim // B.shape[1], dim=1)  # [B, D, N]
    C = C.repeat_interleave(dim // C.shape[1], dim=1)
    h = torch.exp(dt[..., None] * A.to(cdt)) * state.to(cdt) + (dt * x.to(cdt))[..., None] * B
    state.copy_(h)
    y = (h * C).sum(-1)
    if D is not None:
        y = y + D.to(cdt) * x.to(cdt)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(x.dtype)


# ----------------------------------------------------------------------------------------------------------
# Vectorized CPU path: a blocked scan with a hand-written backward.
#
# Inside the core everything is position-major: per-position tensors are [L, B, G, Dg] and the state-sized
# ones [L, B, G, N, Dg] (Dg = D // G), so a block of positions is one contiguous piece of memory, the state of
# one position a contiguous [B, G, N, Dg] slice, and elementwise ops run along the long Dg axis. The sequence
# is cut into blocks of about _TORCH_BLOCK state elements (B * D * N per position), small enough that a
# block's decays and states stay in cache while they are made, scanned and read; nothing of size
# [B, D, L, N] is ever materialised. A block is scanned in place over its inputs. When a position holds at
# least _TORCH_STEP state elements, the scan walks the block one position at a time. With fewer, one step
# would cost more in dispatch than in arithmetic, so the block is cut into nC chunks of T positions: all
# chunks are scanned at once from zero (T steps), a loop over the chunks carries the state across chunk
# boundaries, and a second pass rescans every chunk from its true start state. Decays only ever multiply
# states (exp(A * sum dt) <= 1 for a decaying scan, never its inverse), so nothing overflows whatever dt * A
# is. A real decay is computed as exp2(dt * A log2(e)): the same to rounding, and several times faster than
# exp on CPU.
#
# Turning the scan into matrix products inside chunks (as Mamba-2's SSD does) does not pay here: with a decay
# per channel and state (A is [D, N], not one scalar per head) the chunk's T x T decay matrix differs for
# every (d, n), so it costs T times the exps and products of the scan itself.
# ----------------------------------------------------------------------------------------------------------

_TORCH_CHUNK = 16  # T: positions per chunk when a block is cut into chunks
_TORCH_BLOCK = 1 << 20  # state elements per block (B * D * N * positions): what stays in cache
_TORCH_STEP = 1 << 16  # state elements per position below which blocks are cut into chunks
_TORCH_MIN_BLOCK = 8  # positions per block at least: the states saved for backward are at most 1/8 of all


def _torch_plan(P, L):
    """(T, Lb, Lp) for P state elements per position: chunk, block and padded lengths. T == Lb walks each block
    position by position (no padding); T < Lb cuts blocks into chunks of T (L padded to a multiple of T)."""
    if P >= _TORCH_STEP or L <= _TORCH_CHUNK:
        Lb = min(L, max(_TORCH_MIN_BLOCK, _TORCH_BLOCK // P))
        return Lb, Lb, L
    T = _TORCH_CHUNK
    Lp = -(-L // T) * T
    return T, max(T, min(Lp, _TORCH_BLOCK // P // T * T)), Lp


def _decay_exp_(t):
    """In place: exp of t (complex), or 2 ** t (real; t already scaled by log2(e), see ``_decay_rates``)."""
    return t.exp_() if t.is_complex() else t.exp2_()


def _decay_rates(A, G, N, Dg):
    """A [D, N] as [1, 1, G, N, Dg] for the decays: times log2(e) when real (``_decay_exp_`` takes 2 ** .)."""
    A5 = A.view(G, Dg, N).transpose(1, 2).contiguous().view(1, 1, G, N, Dg)
    return A5 if A.is_complex() else A5 * math.log2(math.e)


def _chunk_decay(dt, A5, T, skip_first=False):
    """Decay across each whole chunk: prod of a = exp(dt * A) over its T positions (the first one skipped
    when ``skip_first``) = exp(A * sum of dt). dt: [Lb, B, G, Dg]; A5 from ``_decay_rates`` -> [nC, B, G, N, Dg].
    """
    Lb, Bs, G, Dg = dt.shape
    dt5 = dt.view(Lb // T, T, Bs, G, Dg)
    S = (dt5[:, 1:] if skip_first else dt5).sum(1)
    return _decay_exp_(torch.mul(S.unsqueeze(-2), A5))


def _scan_block(a, h, h0, dt, A5, nC):
    """h[t] = a[t] * h[t-1] + b[t] over a block, in place: ``h`` holds b on entry and the states on return.

    a, h: [Lb, B, G, N, Dg], Lb = nC * T; h0: [B, G, N, Dg], the state before the block; dt: [Lb, B, G, Dg]
    with a = exp(dt * A), A5 from ``_decay_rates``. Returns the last state (a copy). With nC chunks, pass 1
    scans every chunk from zero at once, keeping only its end state; the chunk-to-chunk loop gives each chunk
    its true start state, and pass 2 rescans all chunks from those.
    """
    Lb = h.shape[0]
    T = Lb // nC
    a6, h6 = a.view(nC, T, *a.shape[1:]), h.view(nC, T, *h.shape[1:])
    if nC == 1:
        start = h0
    else:
        end = h6[:, 0].clone()  # [nC, B, G, N, Dg]
        for t in range(1, T):
            torch.addcmul(h6[:, t], a6[:, t], end, out=end)
        decay = _chunk_decay(dt, A5, T)
        start = end  # start[c]: the state entering chunk c, written over end[c - 1] from the left
        carry = h0
        for c in range(nC):
            nxt = torch.addcmul(end[c], decay[c], carry)
            start[c] = carry
            carry = nxt
    h6[:, 0].addcmul_(a6[:, 0], start)
    for t in range(1, T):
        h6[:, t].addcmul_(a6[:, t], h6[:, t - 1])
    return h[Lb - 1].clone()


def _scan_block_reverse(a, g, q0, dt, A5, nC):
    """g[t] = s[t] + a[t+1] * g[t+1] over a block, in place (``g`` holds s on entry), where a[Lb] * g[Lb] := q0,
    the carry from the right.

    a, g: [Lb, B, G, N, Dg], Lb = nC * T; q0: [B, G, N, Dg]; dt and A5 as in ``_scan_block``, and the same two
    passes run right to left. Returns a[0] * g[0] (the carry leftward).
    """
    Lb = g.shape[0]
    T = Lb // nC
    a6, g6 = a.view(nC, T, *a.shape[1:]), g.view(nC, T, *g.shape[1:])
    if nC == 1:
        into = q0
    else:
        first = g6[:, T - 1].clone()  # [nC, B, G, N, Dg]: g at each chunk's first position, from zero
        for t in range(T - 2, -1, -1):
            torch.addcmul(g6[:, t], a6[:, t + 1], first, out=first)
        decay = _chunk_decay(dt, A5, T, skip_first=True)  # a[1] * ... * a[T-1] of each chunk
        into = first  # into[c]: a * g at the first position right of chunk c, written over first[c + 1]
        carry = q0
        for c in range(nC - 1, -1, -1):
            nxt = torch.addcmul(first[c], decay[c], carry).mul_(a6[c, 0])
            into[c] = carry
            carry = nxt
    g6[:, T - 1].add_(into)
    for t in range(T - 2, -1, -1):
        g6[:, t].addcmul_(a6[:, t + 1], g6[:, t + 1])
    return a[0] * g[0]


def _block_inputs(dt, x, A5, Bt, a, b):
    """Write a = exp(dt * A) and b = dt * u * B for a block into a, b: [Lb, B, G, N, Dg] (dt, x: [Lb, B, G, Dg],
    Bt: [Lb, B, G, N])."""
    _decay_exp_(torch.mul(dt[..., None, :], A5, out=a))
    torch.mul(x[..., None, :], Bt[..., None], out=b)


def _workspace(ref, count, shape):
    """``count`` scratch tensors for blocks of up to ``shape`` (positions first); allocated once per call, since
    touching fresh memory for every block costs more than the arithmetic. Returns a function giving views for a
    block of ``lb`` positions."""
    buf = ref.new_empty(count, math.prod(shape))
    per = math.prod(shape[1:])
    return lambda lb: [buf[i, : lb * per].view(lb, *shape[1:]) for i in range(count)]


class _SelectiveScanTorchFn(torch.autograd.Function):
    """The scan with its step size, skip and gate: u, delta, z [B, D, L], A [D, N], B, C [B, G, N, L], D and
    delta_bias [D] (or None) -> out [B, D, L], last state [B, D, N].

    u, delta, z, D, delta_bias share one float dtype; A, B, C have it too, or all its complex type (then the
    state is complex, out counts 2 Re(y), and the backward takes conjugates as PyTorch's complex autograd does:
    it is written with ``.conj()``, a no-op on real tensors). Step size, skip and gate run in the core's layout
    beside the scan, with their gradients written out. Saves the inputs, the step size, the output before the
    gate (with z) and the state at each block boundary.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        Bs, dim, L = u.shape
        G, N = B.shape[1], B.shape[2]
        Dg = dim // G
        T, Lb, Lp = _torch_plan(Bs * dim * N, L)

        def position_major(t, last):  # [B, G * last, L] or [B, G, last, L] -> [Lp, B, G, last], zero-padded
            out = t.new_empty(Lp, Bs, G, last)
            out[:L] = t.reshape(Bs, G, last, L).permute(3, 0, 1, 2)
            out[L:] = 0
            return out

        u_t, dt_t = position_major(u, Dg), position_major(delta, Dg)
        if delta_bias is not None:
            dt_t += delta_bias.reshape(G, Dg)
        pre = dt_t if delta_softplus else None  # softplus' input, for its derivative
        if delta_softplus:
            dt_t = F.softplus(dt_t)
        dt_t[L:] = 0  # padded positions have dt = 0: a = 1, b = 0, so they leave the state alone
        x_t = u_t * dt_t
        B_t, C_t = position_major(B, N), position_major(C, N)
        A5 = _decay_rates(A, G, N, Dg)
        y = B.new_empty(Lp, Bs, G, Dg)  # B's dtype: the state's (complex with complex A)
        h = B.new_zeros(Bs, G, N, Dg)
        states = []
        work = _workspace(B, 2, (Lb, Bs, G, N, Dg))
        for l0 in range(0, Lp, Lb):
            l1 = min(l0 + Lb, Lp)
            states.append(h)
            a, hs = work(l1 - l0)
            _block_inputs(dt_t[l0:l1], x_t[l0:l1], A5, B_t[l0:l1], a, hs)
            h = _scan_block(a, hs, h, dt_t[l0:l1], A5, max(1, (l1 - l0) // T))
            torch.matmul(C_t[l0:l1, :, :, None, :], hs, out=y[l0:l1, :, :, None, :])
        if y.is_complex():  # the conjugate pair's contribution, as in mamba_ssm
            y = y.real * 2
        if D is not None:
            y.addcmul_(u_t, D.reshape(G, Dg))
        z_t = position_major(z, Dg) if z is not None else None
        out = y * F.silu(z_t) if z is not None else y
        ctx.save_for_backward(u_t, dt_t, pre, z_t, y if z is not None else None, A, B_t, C_t, D,
                              torch.stack(states))
        ctx.dims = (L, T, Lb)
        ctx.has_bias = delta_bias is not None
        out = out[:L].permute(1, 2, 3, 0).reshape(Bs, dim, L)
        return out, h.transpose(2, 3).reshape(Bs, dim, N)

    @staticmethod
    def backward(ctx, dout, dh_last):
        u_t, dt_t, pre, z_t, y_t, A, B_t, C_t, D, states = ctx.saved_tensors
        L, T, Lb = ctx.dims
        Lp, Bs, G, Dg = u_t.shape
        N = A.shape[1]
        cplx = A.is_complex()
        dy_t = u_t.new_zeros(Lp, Bs, G, Dg)  # d loss / d y, y the output before the gate
        if dout is not None:
            dy_t[:L] = dout.reshape(Bs, G, Dg, L).permute(3, 0, 1, 2)
        dz = dD = None
        if z_t is not None:
            s = torch.sigmoid(z_t)
            silu = z_t * s
            # silu'(z) = s * (1 + z * (1 - s))
            dz = dy_t * y_t * (s * (1 + z_t * (1 - s)))
            dy_t *= silu
        if D is not None:
            dD = (dy_t * u_t).sum(dim=(0, 1))
        dys = (dy_t * 2).to(B_t.dtype) if cplx else dy_t  # d loss / d (scan output y_s): out holds 2 Re(y_s)
        q = B_t.new_zeros(Bs, G, N, Dg)
        if dh_last is not None:
            q.copy_(dh_last.reshape(Bs, G, Dg, N).transpose(2, 3))
        x_t = u_t * dt_t
        x_w = x_t.to(B_t.dtype)  # (x_t itself when real)
        A5 = _decay_rates(A, G, N, Dg)
        A5c = A.view(G, Dg, N).transpose(1, 2).conj().view(1, 1, G, N, Dg)  # d a / d dt = a * A
        dx, ddt = B_t.new_empty(Lp, Bs, G, Dg), B_t.new_empty(Lp, Bs, G, Dg)  # real parts kept when complex
        dB, dC = torch.empty_like(B_t), torch.empty_like(C_t)  # [Lp, B, G, N]
        dA = B_t.new_zeros(G, N, Dg)
        starts = list(range(0, Lp, Lb))
        work = _workspace(B_t, 3, (Lb, Bs, G, N, Dg))
        for i in range(len(starts) - 1, -1, -1):
            l0, l1 = starts[i], min(starts[i] + Lb, Lp)
            nC = max(1, (l1 - l0) // T)
            a, h, g = work(l1 - l0)
            dt_b, dy_b = dt_t[l0:l1], dys[l0:l1]
            _block_inputs(dt_b, x_t[l0:l1], A5, B_t[l0:l1], a, h)
            _scan_block(a, h, states[i], dt_b, A5, nC)
            # (products and sums: a batched matrix-vector product over the long Dg axis is many times slower)
            torch.sum(torch.mul(h.conj(), dy_b[..., None, :], out=g), dim=-1, out=dC[l0:l1])
            torch.mul(C_t[l0:l1, ..., None].conj(), dy_b[..., None, :], out=g)  # dy[t] * dy[t]/dh[t]
            if cplx:
                a.conj_physical_()
            # g[t] = d loss / d h[t]
            q = _scan_block_reverse(a, g, q, dt_b, A5.conj(), nC)
            torch.matmul(B_t[l0:l1, :, :, None, :].conj(), g, out=dx[l0:l1, :, :, None, :])
            # d/d(dt * A) = g[t] * a[t] * h[t-1] (conjugated), in a's buffer (h[t] - b[t] would cancel when a ~ 0)
            a[1:].mul_(h[:-1].conj())
            a[0].mul_(states[i].conj())
            dlog_a = a.mul_(g)
            torch.sum(torch.mul(g, x_w[l0:l1, ..., None, :], out=h), dim=-1, out=dB[l0:l1])
            dA += torch.mul(dlog_a, dt_b[..., None, :], out=h).sum(dim=(0, 1))
            torch.sum(torch.mul(dlog_a, A5c, out=g), dim=-2, out=ddt[l0:l1])
        if cplx:  # u and dt are real: the real part of their complex gradients
            dx, ddt = dx.real, ddt.real
        ddt.addcmul_(dx, u_t)
        du = dx.mul_(dt_t)
        if D is not None:
            du.addcmul_(dy_t, D.reshape(G, Dg))
        if pre is not None:  # softplus'(x) = sigmoid(x)
            ddt.mul_(torch.sigmoid(pre))
        dbias = ddt[:L].sum(dim=(0, 1)).reshape(G * Dg) if ctx.has_bias else None

        def channel_major(t, last):  # [Lp, B, G, last] -> [B, G*last, L]
            return t[:L].permute(1, 2, 3, 0).reshape(Bs, G * last, L)

        dA = dA.view(G, N, Dg).transpose(1, 2).reshape(G * Dg, N)
        return (channel_major(du, Dg), channel_major(ddt, Dg), dA,
                channel_major(dB, N).view(Bs, G, N, L), channel_major(dC, N).view(Bs, G, N, L),
                dD.reshape(G * Dg) if dD is not None else None, channel_major(dz, Dg) if dz is not None else None,
                dbias, None)


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    """Vectorized CPU path (any device works): same arguments and returns as ``selective_scan_ref``.

    The sequence is processed in blocks of about ``_TORCH_BLOCK`` state elements, scanned position by
    position, or, when B * D * N is under ``_TORCH_STEP``, cut into chunks of ``_TORCH_CHUNK`` positions
    scanned side by side. The backward replays each block from its saved start state, so memory is a few
    block-sized tensors, and it is hand-written (first-order gradients only).

    On CPU tensors with real A the scan itself runs the compiled core (``csrc/selective_scan_cpu.cpp``) when it
    builds (``kernels/_cpu_build.py``; ``MMSEQ_CPU_KERNELS=0`` keeps the vectorized PyTorch code).
    """
    Bg, Cg = _common_groups(*(_as_grouped(t, A, u.shape[0], u.shape[2]) for t in (B, C)))
    if _cpu_core_usable(u, A, Bg, Cg):
        return _selective_scan_cpu(u, delta, A, Bg, Cg, D, z, delta_bias, delta_softplus, return_last_state)
    cdt = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    sdt = _complex_of(cdt) if A.is_complex() else cdt  # dtype of the state
    D, z, delta_bias = (t.to(cdt) if t is not None else None for t in (D, z, delta_bias))
    out, last_state = _SelectiveScanTorchFn.apply(u.to(cdt), delta.to(cdt), A.to(sdt), Bg.to(sdt), Cg.to(sdt),
                                                  D, z, delta_bias, delta_softplus)
    out = out.to(u.dtype)
    return (out, last_state) if return_last_state else out


# ----------------------------------------------------------------------------------------------------------
# Compiled CPU core (csrc/selective_scan_cpu.cpp): the scan alone, dt already through bias and softplus, real
# float32/float64. One (batch row, channel) pair walks L with its N states in a vector register, as the CUDA
# kernel does, so nothing of size [B, D, L, N] ever reaches memory; step size, skip and gate stay in PyTorch
# around it (autograd), at 1/N of the scan's cost. Used by the torch path on CPU tensors when it builds.
# ----------------------------------------------------------------------------------------------------------


def _cpu_core_library():
    return load_cpu_library("selective_scan_cpu")


def _ptr(t: torch.Tensor | None):
    return ctypes.c_void_p(t.data_ptr() if t is not None else None)


class _ScanCoreCpuFn(torch.autograd.Function):
    """u, dt [B, D, L], A [D, N], Bt, Ct [B, G, L, N] (positions before states) -> y [B, D, L] = <C, h>,
    last state [B, D, N]; real float32 or float64, contiguous, on the CPU."""

    @staticmethod
    def forward(ctx, u, dt, A, Bt, Ct):
        lib = _cpu_core_library()
        Bs, dim, L = u.shape
        G, N = Bt.shape[1], Bt.shape[3]
        A2 = (A * math.log2(math.e)).contiguous()
        y, last = u.new_empty(Bs, dim, L), u.new_empty(Bs, dim, N)
        fn = lib.mmseq_scan_fwd_f64 if u.dtype == torch.float64 else lib.mmseq_scan_fwd_f32
        fn(*map(_ptr, (u, dt, A2, Bt, Ct, y, last)), *map(ctypes.c_int64, (Bs, dim, L, N, G)),
           ctypes.c_int(torch.get_num_threads()))
        ctx.save_for_backward(u, dt, A, A2, Bt, Ct)
        ctx.lib = lib  # the backward runs the library the forward ran, whatever MMSEQ_CPU_KERNELS says by then
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dlast):
        lib = ctx.lib
        u, dt, A, A2, Bt, Ct = ctx.saved_tensors
        Bs, dim, L = u.shape
        G, N = Bt.shape[1], Bt.shape[3]
        threads = torch.get_num_threads()
        # channels of a group split into `parts` work units when batch x groups alone cannot feed every thread;
        # each part writes its own dB, dC slice (summed below), so no two threads add into one element
        parts = max(1, min(dim // G, -(-2 * threads // (Bs * G))))
        dy = dy.contiguous() if dy is not None else u.new_zeros(Bs, dim, L)
        dlast = dlast.contiguous() if dlast is not None else None
        du, ddt = torch.empty_like(u), torch.empty_like(u)
        dA = u.new_zeros(Bs, dim, N)
        dB, dC = u.new_empty(parts, *Bt.shape), u.new_empty(parts, *Ct.shape)
        fn = lib.mmseq_scan_bwd_f64 if u.dtype == torch.float64 else lib.mmseq_scan_bwd_f32
        fn(*map(_ptr, (u, dt, A, A2, Bt, Ct, dy, dlast, du, ddt, dA, dB, dC)),
           *map(ctypes.c_int64, (Bs, dim, L, N, G, parts)), ctypes.c_int(threads))
        return du, ddt, dA.sum(0), dB.sum(0), dC.sum(0)


def _cpu_core_usable(u, A, B, C) -> bool:
    return (u.device.type == "cpu" and not A.is_complex() and not B.is_complex() and not C.is_complex()
            and _cpu_core_library() is not None)


def _selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    """The torch path's arguments and returns, through the compiled core (B, C already grouped)."""
    cdt = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    u_c = u.to(cdt).contiguous()
    dt = _step_size(delta, delta_bias, delta_softplus, cdt).contiguous()
    Bt, Ct = (t.to(cdt).transpose(-1, -2).contiguous() for t in (B, C))
    y, last = _ScanCoreCpuFn.apply(u_c, dt, A.to(cdt).contiguous(), Bt, Ct)
    if D is not None:
        y = y + u_c * D.to(cdt)[:, None]
    if z is not None:
        y = y * F.silu(z.to(cdt))
    out = y.to(u.dtype)
    return (out, last) if return_last_state else out


# ----------------------------------------------------------------------------------------------------------
# Triton kernels. One program owns BLOCK_D channels of one batch row (all in one group, since BLOCK_D
# divides D // G) and walks L with the [BLOCK_D, BLOCK_N] state in registers. Tensors are contiguous.
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _softplus(x):
    e = tl.exp(x)
    w = 1.0 + e
    # log1p(e) without cancellation for small e; identity above 20 as in F.softplus
    lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _selective_scan_fwd_kernel(
    u, delta, A, B, C, D, z, delta_bias, out, last_state, chunk_states,
    L, DIM, N, DG, NCHUNK,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    ACC: tl.constexpr,
):
    i_d, i_b = tl.program_id(0), tl.program_id(1)
    G = DIM // DG
    i_g = (i_d * BLOCK_D) // DG
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    o_n = tl.arange(0, BLOCK_N)
    m_n = o_n < N
    m_dn = (o_d[:, None] < DIM) & m_n[None, :]
    b_A = tl.load(A + o_d[:, None] * N + o_n[None, :], mask=m_dn, other=0).to(ACC)
    if HAS_D:
        b_D = tl.load(D + o_d).to(ACC)
    if HAS_BIAS:
        b_bias = tl.load(delta_bias + o_d).to(ACC)
    p_row = (i_b * DIM + o_d) * L  # [BLOCK_D]: offsets of position 0 in u, delta, z, out
    p_bc = (i_b * G + i_g) * N * L + o_n * L  # [BLOCK_N]: offsets of position 0 in B, C
    p_state = ((i_b * DIM + o_d[:, None]) * NCHUNK) * N + o_n[None, :]
    b_h = tl.zeros([BLOCK_D, BLOCK_N], dtype=ACC)
    i_c = 0
    while i_c < NCHUNK:  # a while loop: the interpreter cannot range() over a runtime int
        tl.store(chunk_states + p_state + i_c * N, b_h, mask=m_dn)
        for i_i in range(CHUNK):
            i_t = i_c * CHUNK + i_i
            m_t = i_t < L
            b_u = tl.load(u + p_row + i_t, mask=m_t, other=0).to(ACC)
            b_dt = tl.load(delta + p_row + i_t, mask=m_t, other=0).to(ACC)
            if HAS_BIAS:
                b_dt += b_bias
            if SOFTPLUS:
                b_dt = _softplus(b_dt)
            b_dt = tl.where(m_t, b_dt, 0.0)  # positions past L keep the state (a = 1, b = 0)
            b_B = tl.load(B + p_bc + i_t, mask=m_n & m_t, other=0).to(ACC)
            b_C = tl.load(C + p_bc + i_t, mask=m_n & m_t, other=0).to(ACC)
            b_h = tl.exp(b_dt[:, None] * b_A) * b_h + (b_dt * b_u)[:, None] * b_B[None, :]
            b_y = tl.sum(b_h * b_C[None, :], axis=1)
            if HAS_D:
                b_y += b_D * b_u
            if HAS_Z:
                b_z = tl.load(z + p_row + i_t, mask=m_t, other=0).to(ACC)
                b_y *= b_z * tl.sigmoid(b_z)
            tl.store(out + p_row + i_t, b_y.to(out.dtype.element_ty), mask=m_t)
        i_c += 1
    tl.store(last_state + (i_b * DIM + o_d[:, None]) * N + o_n[None, :], b_h, mask=m_dn)


@triton.jit
def _selective_scan_bwd_kernel(
    u, delta, A, B, C, D, z, delta_bias, dout, dlast, chunk_states, scratch,
    du, ddelta, dz, dA_part, dB_part, dC_part, dD_part, dbias_part,
    L, DIM, N, DG, NCHUNK,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr, ACC: tl.constexpr,
):
    i_d, i_b = tl.program_id(0), tl.program_id(1)
    n_db = DIM // BLOCK_D
    G = DIM // DG
    i_g = (i_d * BLOCK_D) // DG
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    o_n = tl.arange(0, BLOCK_N)
    m_n = o_n < N
    m_dn = (o_d[:, None] < DIM) & m_n[None, :]
    b_A = tl.load(A + o_d[:, None] * N + o_n[None, :], mask=m_dn, other=0).to(ACC)
    if HAS_D:
        b_D = tl.load(D + o_d).to(ACC)
    if HAS_BIAS:
        b_bias = tl.load(delta_bias + o_d).to(ACC)
    p_row = (i_b * DIM + o_d) * L
    p_bc = (i_b * G + i_g) * N * L + o_n * L
    p_part = (i_b * n_db + i_d) * N * L + o_n * L  # [BLOCK_N]: this block's rows of dB_part / dC_part
    p_state = ((i_b * DIM + o_d[:, None]) * NCHUNK) * N + o_n[None, :]
    p_scr = (scratch + (i_b * n_db + i_d) * CHUNK * BLOCK_D * BLOCK_N
             + tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + o_n[None, :])
    # b_q = a[t+1] * g[t+1]: what the future sends back to position t (starts as d last_state)
    if HAS_DLAST:
        b_q = tl.load(dlast + (i_b * DIM + o_d[:, None]) * N + o_n[None, :], mask=m_dn, other=0).to(ACC)
    else:
        b_q = tl.zeros([BLOCK_D, BLOCK_N], dtype=ACC)
    b_dA = tl.zeros([BLOCK_D, BLOCK_N], dtype=ACC)
    b_dD = tl.zeros([BLOCK_D], dtype=ACC)
    b_dbias = tl.zeros([BLOCK_D], dtype=ACC)
    i_c = NCHUNK - 1
    while i_c >= 0:
        # replay the chunk from its saved state, keeping h[t-1] for every position in scratch
        b_h = tl.load(chunk_states + p_state + i_c * N, mask=m_dn, other=0).to(ACC)
        for i_i in range(CHUNK):
            i_t = i_c * CHUNK + i_i
            m_t = i_t < L
            tl.store(p_scr + i_i * BLOCK_D * BLOCK_N, b_h)
            b_u = tl.load(u + p_row + i_t, mask=m_t, other=0).to(ACC)
            b_dt = tl.load(delta + p_row + i_t, mask=m_t, other=0).to(ACC)
            if HAS_BIAS:
                b_dt += b_bias
            if SOFTPLUS:
                b_dt = _softplus(b_dt)
            b_dt = tl.where(m_t, b_dt, 0.0)
            b_B = tl.load(B + p_bc + i_t, mask=m_n & m_t, other=0).to(ACC)
            b_h = tl.exp(b_dt[:, None] * b_A) * b_h + (b_dt * b_u)[:, None] * b_B[None, :]
        tl.debug_barrier()
        # walk the chunk backwards
        for i_ii in range(CHUNK):
            i_i = CHUNK - 1 - i_ii
            i_t = i_c * CHUNK + i_i
            m_t = i_t < L
            b_hp = tl.load(p_scr + i_i * BLOCK_D * BLOCK_N)
            b_u = tl.load(u + p_row + i_t, mask=m_t, other=0).to(ACC)
            b_raw = tl.load(delta + p_row + i_t, mask=m_t, other=0).to(ACC)
            if HAS_BIAS:
                b_raw += b_bias
            b_dt = b_raw
            if SOFTPLUS:
                b_dt = _softplus(b_raw)
            b_dt = tl.where(m_t, b_dt, 0.0)
            b_B = tl.load(B + p_bc + i_t, mask=m_n & m_t, other=0).to(ACC)
            b_C = tl.load(C + p_bc + i_t, mask=m_n & m_t, other=0).to(ACC)
            b_do = tl.load(dout + p_row + i_t, mask=m_t, other=0).to(ACC)
            b_a = tl.exp(b_dt[:, None] * b_A)
            b_h = b_a * b_hp + (b_dt * b_u)[:, None] * b_B[None, :]
            b_du = tl.zeros([BLOCK_D], dtype=ACC)
            if HAS_Z:
                b_y = tl.sum(b_h * b_C[None, :], axis=1)
                if HAS_D:
                    b_y += b_D * b_u
                b_z = tl.load(z + p_row + i_t, mask=m_t, other=0).to(ACC)
                b_sig = tl.sigmoid(b_z)
                b_dz = b_do * b_y * b_sig * (1.0 + b_z * (1.0 - b_sig))
                tl.store(dz + p_row + i_t, b_dz.to(dz.dtype.element_ty), mask=m_t)
                b_do = b_do * b_z * b_sig  # now d(y + D u)
            if HAS_D:
                b_dD += b_do * b_u
                b_du += b_do * b_D
            b_g = b_q + b_do[:, None] * b_C[None, :]  # dL/dh[t]
            tl.store(dC_part + p_part + i_t, tl.sum(b_do[:, None] * b_h, axis=0), mask=m_n & m_t)
            tl.store(dB_part + p_part + i_t, tl.sum(b_g * (b_dt * b_u)[:, None], axis=0), mask=m_n & m_t)
            b_dx = tl.sum(b_g * b_B[None, :], axis=1)  # d(dt * u)
            b_dl = b_g * b_a * b_hp  # d(dt * A)
            b_dA += b_dl * b_dt[:, None]
            b_ddt = tl.sum(b_dl * b_A, axis=1) + b_dx * b_u
            b_du += b_dx * b_dt
            if SOFTPLUS:
                b_ddt = tl.where(b_raw > 20.0, b_ddt, b_ddt * tl.sigmoid(b_raw))
            b_ddt = tl.where(m_t, b_ddt, 0.0)
            if HAS_BIAS:
                b_dbias += b_ddt
            tl.store(du + p_row + i_t, b_du.to(du.dtype.element_ty), mask=m_t)
            tl.store(ddelta + p_row + i_t, b_ddt.to(ddelta.dtype.element_ty), mask=m_t)
            b_q = b_a * b_g
        tl.debug_barrier()
        i_c -= 1
    tl.store(dA_part + (i_b * DIM + o_d[:, None]) * N + o_n[None, :], b_dA, mask=m_dn)
    if HAS_D:
        tl.store(dD_part + i_b * DIM + o_d, b_dD)
    if HAS_BIAS:
        tl.store(dbias_part + i_b * DIM + o_d, b_dbias)


_TRITON_CHUNK = 64  # positions between saved states (forward) = positions replayed at once (backward)


def _triton_config(u, B, L, N):
    """(BLOCK_D, BLOCK_N, CHUNK, NCHUNK); BLOCK_D divides D // G, so a block of channels is in one group."""
    dim, G = u.shape[1], B.shape[1]
    dg = dim // G
    block_d = 1
    while block_d < 16 and dg % (block_d * 2) == 0:
        block_d *= 2
    chunk = min(_TRITON_CHUNK, triton.next_power_of_2(L))
    return block_d, triton.next_power_of_2(N), chunk, triton.cdiv(L, chunk)


def _acc_dtype(*tensors):
    return tl.float64 if _compute_dtype(*tensors) == torch.float64 else tl.float32


def _selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """Forward kernel: out [B, D, L] (u's dtype), last_state [B, D, N], chunk_states [B, D, NCHUNK, N]."""
    Bs, dim, L = u.shape
    N = A.shape[1]
    cdt = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    block_d, block_n, chunk, nchunk = _triton_config(u, B, L, N)
    out = torch.empty_like(u)
    last_state = u.new_empty(Bs, dim, N, dtype=cdt)
    chunk_states = u.new_empty(Bs, dim, nchunk, N, dtype=cdt)
    _selective_scan_fwd_kernel[(dim // block_d, Bs)](
        u, delta, A, B, C, D, z, delta_bias, out, last_state, chunk_states,
        L, dim, N, dim // B.shape[1], nchunk,
        CHUNK=chunk, BLOCK_D=block_d, BLOCK_N=block_n,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        ACC=_acc_dtype(u, delta, A, B, C, D, z, delta_bias),
    )
    return out, last_state, chunk_states


def _selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_states, dout, dlast):
    """Launch the backward kernel; returns du, ddelta, dA, dB, dC, dD, dz, ddelta_bias (input dtypes)."""
    Bs, dim, L = u.shape
    G, N = B.shape[1], A.shape[1]
    cdt = chunk_states.dtype
    block_d, block_n, chunk, nchunk = _triton_config(u, B, L, N)
    n_db = dim // block_d
    scratch = u.new_empty(Bs, n_db, chunk, block_d, block_n, dtype=cdt)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dA_part = u.new_empty(Bs, dim, N, dtype=cdt)
    dB_part = u.new_empty(Bs, n_db, N, L, dtype=cdt)
    dC_part = u.new_empty(Bs, n_db, N, L, dtype=cdt)
    dD_part = u.new_empty(Bs, dim, dtype=cdt) if D is not None else None
    dbias_part = u.new_empty(Bs, dim, dtype=cdt) if delta_bias is not None else None
    _selective_scan_bwd_kernel[(n_db, Bs)](
        u, delta, A, B, C, D, z, delta_bias, dout, dlast, chunk_states, scratch,
        du, ddelta, dz, dA_part, dB_part, dC_part, dD_part, dbias_part,
        L, dim, N, dim // G, nchunk,
        CHUNK=chunk, BLOCK_D=block_d, BLOCK_N=block_n,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        HAS_DLAST=dlast is not None, ACC=_acc_dtype(chunk_states),
    )
    # sum the per-block partials of each group, and the per-row partials of the parameters
    dB = dB_part.view(Bs, G, n_db // G, N, L).sum(2).to(B.dtype)
    dC = dC_part.view(Bs, G, n_db // G, N, L).sum(2).to(C.dtype)
    dA = dA_part.sum(0).to(A.dtype)
    dD = dD_part.sum(0).to(D.dtype) if D is not None else None
    ddelta_bias = dbias_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
    return du, ddelta, dA, dB, dC, dD, dz, ddelta_bias


# ----------------------------------------------------------------------------------------------------------
# Autograd Function around the Triton kernels.
# ----------------------------------------------------------------------------------------------------------


class _SelectiveScanTritonFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
        D, z, delta_bias = (t.contiguous() if t is not None else None for t in (D, z, delta_bias))
        out, last_state, chunk_states = _selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias,
                                                            delta_softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, chunk_states)
        ctx.delta_softplus = delta_softplus
        return out, last_state

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, chunk_states = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(u)
        dlast = dlast.contiguous() if dlast is not None else None
        grads = _selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, chunk_states,
                                    dout.contiguous(), dlast)
        return (*grads, None)


def _selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False):
    if A.is_complex():  # the kernels are real: complex A runs the torch path
        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    Bg, Cg = _common_groups(*(_as_grouped(t, A, u.shape[0], u.shape[2]) for t in (B, C)))
    out, last_state = _SelectiveScanTritonFn.apply(u, delta, A, Bg, Cg, D, z, delta_bias, delta_softplus)
    return (out, last_state) if return_last_state else out


# ----------------------------------------------------------------------------------------------------------
# Public functions.
# ----------------------------------------------------------------------------------------------------------


def _check_groups(name, t, batch, N, L, dim, per_position_letters, dim_letter="D"):
    """t must be [B, N, *L] or [B, G, N, *L] with G dividing D (or H, by ``dim_letter``)."""
    tail = (N,) + ((L,) if L is not None else ())
    plain, grouped = (batch, *tail), (batch, None, *tail)
    if t.dim() == len(plain):
        check_tensor(name, t, plain, per_position_letters[0])
    else:
        check_tensor(name, t, grouped, per_position_letters[1])
        if t.shape[1] == 0 or dim % t.shape[1] != 0:
            raise ValueError(f"{name} has G={t.shape[1]} groups, which must divide {dim_letter}={dim} "
                             f"({name} is {per_position_letters[1]}, got {shape_str(t)})")
    check_float(name, t)


def _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias):
    check_tensor("u", u, (None, None, None), "[B, D, L]")
    batch, dim, L = u.shape
    if L == 0:
        raise ValueError(f"u must be [B, D, L] with L >= 1, got {shape_str(u)}")
    check_tensor("delta", delta, (batch, dim, L), "[B, D, L]")
    check_tensor("A", A, (dim, None), "[D, N]")
    if A.is_complex() and A.dtype not in (torch.complex64, torch.complex128):
        raise ValueError(f"A must be float or complex64/complex128, got {A.dtype}")
    N = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if isinstance(t, torch.Tensor) and t.dim() == 2:  # constant (time-invariant) [D, N]
            check_tensor(name, t, (dim, N), "[D, N]")
            if t.is_complex() and not A.is_complex():
                raise ValueError(f"{name} may be complex only when A is: got {name} {t.dtype}, A {A.dtype}")
            if not t.is_complex():
                check_float(name, t)
        elif A.is_complex() and not (isinstance(t, torch.Tensor) and t.is_complex()):
            # real (re, im) pairs interleaved along the last axis, as mamba_ssm takes them
            _check_groups(name, t, batch, N, 2 * L, dim, ("[B, N, 2L]", "[B, G, N, 2L]"))
        elif A.is_complex():
            if t.dim() not in (3, 4):
                raise ValueError(f"{name} must be [D, N], [B, N, L] or [B, G, N, L], got {shape_str(t)}")
            _check_groups(name, t.real, batch, N, L, dim, ("[B, N, L]", "[B, G, N, L]"))
        else:
            _check_groups(name, t, batch, N, L, dim, ("[B, N, L]", "[B, G, N, L]"))
    for name, t, shape, letters in (("D", D, (dim,), "[D]"), ("z", z, (batch, dim, L), "[B, D, L]"),
                                    ("delta_bias", delta_bias, (dim,), "[D]")):
        if t is not None:
            check_tensor(name, t, shape, letters)
    for name, t in (("u", u), ("delta", delta), ("A", A.real if A.is_complex() else A), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        if t is not None:
            check_float(name, t)
    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        if t is not None and t.device != u.device:
            raise ValueError(f"{name} must be on u's device ({u.device}), got {t.device}")


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, impl=None):
    """Selective scan of Mamba-1: the recurrence of the module docstring, batched over B and D.

    Args:
        u: [B, D, L] input. delta: [B, D, L] step size before bias and softplus.
        A: [D, N] decay rates (negative real part for a decaying state); complex A gives 2 * Re(y).
        B, C: [D, N] constant, [B, N, L], or [B, G, N, L] with G dividing D (channel d uses group
            d // (D // G)); with complex A, variable ones as real (re, im) pairs along 2L, or complex.
        D: optional [D] skip weight. z: optional [B, D, L] gate (out * silu(z)).
        delta_bias: optional [D], added to delta. delta_softplus: apply softplus to the step size.
        return_last_state: also return the state after position L-1.
        impl: "ref", "torch", "triton" or None (Triton on CUDA, torch elsewhere; if the Triton kernel fails
            to compile or launch, one warning and the torch path from then on).

    Returns:
        out [B, D, L] in u's dtype; with ``return_last_state`` the pair (out, last_state), last_state
        [B, D, N] in float32 (float64 when any input is float64; complex with complex A). last_state is
        differentiable.

    Example:
        >>> u, delta = torch.randn(2, 64, 100), torch.rand(2, 64, 100)
        >>> A, B, C = -torch.rand(64, 16), torch.randn(2, 16, 100), torch.randn(2, 16, 100)
        >>> out, h = selective_scan(u, delta, A, B, C, return_last_state=True)
        >>> out.shape, h.shape
        (torch.Size([2, 64, 100]), torch.Size([2, 64, 16]))
    """
    _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    requested, impl = impl, pick_impl("selective_scan", impl, u.device)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if impl == "triton" and A.is_complex():  # real kernels only: complex A runs the torch path
        impl = "torch"
    if impl == "triton":
        return run_triton("selective_scan", requested, _selective_scan_triton, selective_scan_torch, *args)
    return {"ref": selective_scan_ref, "torch": selective_scan_torch}[impl](*args)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, *,
                           impl=None):
    """Advance ``state`` [B, D, N] in place by one token and return y [B, D] in x's dtype.

    Args:
        state: [B, D, N] SSM state (any float dtype; kept in its dtype). x, dt, z: [B, D].
        A: [D, N]. B, C: [B, N] or [B, G, N] with G dividing D. D, dt_bias: [D].
        dt_softplus: apply softplus to dt + dt_bias. impl: as for ``selective_scan``.

    The heads form of mamba_ssm's ``selective_state_update`` is taken too: state [B, H, P, N], x, dt, z
    [B, H, P], A [H, P, N], D, dt_bias [H, P], B, C [B, N] or [B, G, N] with G dividing H (head h uses group
    h // (H // G)); y is [B, H, P]. It is the form above with D = H * P channels (channel h * P + p).

    One step is a handful of elementwise ops on [B, D, N], so every ``impl`` runs the same PyTorch code.
    Stepping from a zero state through x[..., t] reproduces ``selective_scan`` position by position.
    """
    if isinstance(state, torch.Tensor) and state.dim() == 4:
        return _state_update_heads(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, impl)
    check_tensor("state", state, (None, None, None), "[B, D, N]")
    batch, dim, N = state.shape
    check_tensor("x", x, (batch, dim), "[B, D]")
    check_tensor("dt", dt, (batch, dim), "[B, D]")
    check_tensor("A", A, (dim, N), "[D, N]")
    _check_groups("B", B, batch, N, None, dim, ("[B, N]", "[B, G, N]"))
    _check_groups("C", C, batch, N, None, dim, ("[B, N]", "[B, G, N]"))
    for name, t, shape, letters in (("D", D, (dim,), "[D]"), ("z", z, (batch, dim), "[B, D]"),
                                    ("dt_bias", dt_bias, (dim,), "[D]")):
        if t is not None:
            check_tensor(name, t, shape, letters)
    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("D", D), ("z", z),
                    ("dt_bias", dt_bias)):
        if t is not None:
            check_float(name, t)
    pick_impl("selective_state_update", impl, state.device)
    return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def _state_update_heads(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, impl):
    """The heads form of ``selective_state_update``: checked, flattened to D = H * P channels, run, and the
    new state written back into ``state`` (in place, whatever its strides)."""
    batch, H, P, N = state.shape
    for name, t, shape, letters in (("x", x, (batch, H, P), "[B, H, P]"), ("dt", dt, (batch, H, P), "[B, H, P]"),
                                    ("A", A, (H, P, N), "[H, P, N]"), ("D", D, (H, P), "[H, P]"),
                                    ("z", z, (batch, H, P), "[B, H, P]"), ("dt_bias", dt_bias, (H, P), "[H, P]")):
        if t is not None:
            check_tensor(name, t, shape, letters)
    for name, t in (("B", B), ("C", C)):
        _check_groups(name, t, batch, N, None, H, ("[B, N]", "[B, G, N]"), "H")
    flat = lambda t, lead: None if t is None else t.reshape(*t.shape[:lead], H * P, *t.shape[lead + 2:])
    s = flat(state, 1)
    shares = s.untyped_storage().data_ptr() == state.untyped_storage().data_ptr()  # a view: updated in place
    y = selective_state_update(s, flat(x, 1), flat(dt, 1), flat(A, 0), B, C, flat(D, 0), flat(z, 1),
                               flat(dt_bias, 0), dt_softplus, impl=impl)
    if not shares:
        state.copy_(s.view(batch, H, P, N))
    return y.view(batch, H, P)
