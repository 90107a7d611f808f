"""Depthwise causal 1-D convolution with a streaming state (the short conv of Mamba and Hyena blocks).

Shapes in letters: B batch, D channels, L sequence length, K taps (kernel width).

    x              [B, D, L]     input
    weight         [D, K]        one K-tap filter per channel
    bias           [D]           optional
    initial_state  [B, D, K-1]   the K-1 inputs that precede x[..., 0]; zeros when None
    y              [B, D, L]     output, in x's dtype (accumulated in fp32, or fp64 for fp64 inputs)
    final_state    [B, D, K-1]   the last K-1 entries of cat(initial_state, x), in x's dtype

With xp = cat(initial_state, x) along the last axis (length L + K - 1):

    y[b, d, t] = act(bias[d] + sum_{k=0}^{K-1} weight[d, k] * xp[b, d, t + k])

so weight[:, K-1] multiplies the current input x[t] and weight[:, 0] the input K-1 steps back: the
layout of ``nn.Conv1d(D, D, K, groups=D, padding=K-1)`` truncated to its first L outputs, as in
causal-conv1d. ``act`` is the identity (None) or SiLU ("silu", alias "swish"). When L < K - 1 the
final state still holds K - 1 entries: the tail of the initial state (or zeros) followed by x.

Streaming: ``causal_conv1d_update(x_t, conv_state, ...)`` takes one token x_t [B, D] and the state
[B, D, K-1], returns y_t [B, D], and shifts the state in place (drops the oldest input, appends x_t).
Stepping through a sequence token by token from ``initial_state`` reproduces ``causal_conv1d`` and leaves
the state equal to ``final_state`` bit for bit (the state is a copy of inputs, never a computed value).

Paths (``impl=``): "ref" loops over the K taps in plain PyTorch (float64 capable, the ground truth);
"torch" is one grouped ``F.conv1d``; "triton" runs a forward kernel and a backward kernel (gradients for
x, weight, bias and initial_state, plus the cotangent of final_state) inside an autograd Function.
The backward kernel recomputes the pre-activation instead of saving it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import check_float, check_tensor, load_triton, pick_impl, run_triton, shape_str

triton, tl = load_triton()  # stand-ins without Triton: the module imports, impl="triton" is refused

__all__ = [
    "causal_conv1d",
    "causal_conv1d_ref",
    "causal_conv1d_torch",
    "causal_conv1d_update",
    "causal_conv1d_update_ref",
]

_ACTIVATIONS = (None, "silu", "swish")


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 when any input is float64, else float32 (half-precision inputs are upcast)."""
    wide = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return torch.float64 if wide else torch.float32


def _padded_input(x: torch.Tensor, initial_state: torch.Tensor | None, K: int) -> torch.Tensor:
    """xp = cat(initial_state or zeros, x): [B, D, K-1+L], in x's dtype."""
    B, D, _ = x.shape
    if initial_state is None:
        initial_state = x.new_zeros(B, D, K - 1)
    return torch.cat([initial_state.to(x.dtype), x], dim=-1)


# ----------------------------------------------------------------------------------------------------------
# Reference: readable, float64 capable.
# ----------------------------------------------------------------------------------------------------------


def causal_conv1d_ref(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False):
    """Ground truth: one shifted multiply-add per tap. Shapes as in the module docstring."""
    L, K = x.shape[-1], weight.shape[-1]
    cdt = _compute_dtype(x, weight, bias, initial_state)
    xp = _padded_input(x, initial_state, K)  # [B, D, K-1+L]
    xc = xp.to(cdt)
    y = torch.zeros_like(xc[..., :L])
    for k in range(K):
        y = y + weight[:, k, None].to(cdt) * xc[..., k : k + L]
    if bias is not None:
        y = y + bias[:, None].to(cdt)
    if activation is not None:
        y = F.silu(y)
    y = y.to(x.dtype)
    if return_final_state:
        return y, xp[..., L:]
    return y


def causal_conv1d_update_ref(x_t, conv_state, weight, bias=None, activation=None):
    """One streaming step: x_t [B, D], conv_state [B, D, K-1] (shifted in place) -> y_t [B, D]."""
    K = weight.shape[-1]
    cdt = _compute_dtype(x_t, weight, bias, conv_state)
    window = torch.cat([conv_state, x_t.to(conv_state.dtype)[..., None]], dim=-1)  # [B, D, K]
    y = torch.zeros_like(window[..., 0], dtype=cdt)
    for k in range(K):
        y = y + weight[:, k].to(cdt) * window[..., k].to(cdt)
    if bias is not None:
        y = y + bias.to(cdt)
    if activation is not None:
        y = F.silu(y)
    conv_state.copy_(window[..., 1:])
    return y.to(x_t.dtype)


# ----------------------------------------------------------------------------------------------------------
# Vectorized CPU path: one grouped conv, gradients by autograd.
# ----------------------------------------------------------------------------------------------------------


def causal_conv1d_torch(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False):
    """``F.conv1d(xp, weight[:, None, :], groups=D)`` in fp32 (fp64 for fp64 inputs)."""
    L, K = x.shape[-1], weight.shape[-1]
    cdt = _compute_dtype(x, weight, bias, initial_state)
    xp = _padded_input(x, initial_state, K)
    b = None if bias is None else bias.to(cdt)
    y = F.conv1d(xp.to(cdt), weight.to(cdt).unsqueeze(1), b, groups=x.shape[1])
    if activation is not None:
        y = F.silu(y)
    y = y.to(x.dtype)
    if return_final_state:
        return y, xp[..., L:]
    return y


def _causal_conv1d_update_torch(x_t, conv_state, weight, bias=None, activation=None):
    cdt = _compute_dtype(x_t, weight, bias, conv_state)
    window = torch.cat([conv_state, x_t.to(conv_state.dtype)[..., None]], dim=-1)  # [B, D, K]
    y = (window.to(cdt) * weight.to(cdt)).sum(-1)
    if bias is not None:
        y = y + bias.to(cdt)
    if activation is not None:
        y = F.silu(y)
    conv_state.copy_(window[..., 1:])
    return y.to(x_t.dtype)


# ----------------------------------------------------------------------------------------------------------
# Triton kernels. Tiles are [BD channels, BL positions] of one batch row; tensors are contiguous.
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _load_xp(x, s, row, q, mask, L, K: tl.constexpr, HAS_STATE: tl.constexpr, ACC: tl.constexpr):
    """xp[row, q] = initial_state[row, q] for q < K-1, else x[row, q-(K-1)]; zero where masked."""
    b_x = tl.load(x + row * L + (q - (K - 1)), mask=mask & (q >= K - 1), other=0.0).to(ACC)
    if HAS_STATE:
        b_x += tl.load(s + row * (K - 1) + q, mask=mask & (q < K - 1), other=0.0).to(ACC)
    return b_x


@triton.jit
def _causal_conv1d_fwd_kernel(
    x, w, bias, s, y, D, L,
    K: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, SILU: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    i_t, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_d = i_d * BD + tl.arange(0, BD)
    o_t = (i_t * BL + tl.arange(0, BL))[None, :]
    m_d = o_d < D
    m = m_d[:, None] & (o_t < L)
    row = (i_b * D + o_d).to(tl.int64)[:, None]

    b_z = tl.zeros([BD, BL], dtype=ACC)
    for k in tl.static_range(K):
        b_w = tl.load(w + o_d * K + k, mask=m_d, other=0.0).to(ACC)
        b_z += b_w[:, None] * _load_xp(x, s, row, o_t + k, m, L, K, HAS_STATE, ACC)
    if HAS_BIAS:
        b_z += tl.load(bias + o_d, mask=m_d, other=0.0).to(ACC)[:, None]
    if SILU:
        b_z = b_z * tl.sigmoid(b_z)
    tl.store(y + row * L + o_t, b_z.to(y.dtype.element_ty), mask=m)


@triton.jit
def _causal_conv1d_bwd_kernel(
    x, w, bias, s, dy, dfs, dx, ds, dw_part, db_part, D, L, PER,
    K: tl.constexpr, KP: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, HAS_DFINAL: tl.constexpr, SILU: tl.constexpr,
    ACC: tl.constexpr,
):  # fmt: skip
    """Gradient with respect to the padded input xp, over padded positions i in [0, L+K-1):

        dxp[i] = sum_k weight[k] * dz[i - k]  (+ d final_state[i - L] for i >= L),

    with dz = dy * act'(z) recomputed from x. Positions i >= K-1 are dx, positions i < K-1 are
    d initial_state. Each program walks PER blocks of BL positions and writes its partial weight and
    bias gradients (sum over its positions of dz[i] * xp[i + k] and of dz[i]) to dw_part / db_part.
    """
    i_c, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    NC = tl.num_programs(0)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    o_k = tl.arange(0, KP)[None, :]
    row = (i_b * D + o_d).to(tl.int64)[:, None]
    if HAS_BIAS:
        b_bias = tl.load(bias + o_d, mask=m_d, other=0.0).to(ACC)[:, None]

    b_dw = tl.zeros([BD, KP], dtype=ACC)
    b_db = tl.zeros([BD], dtype=ACC)
    # a while loop: runtime trip counts in `for` loops break the interpreter under numpy >= 2.3
    i_blk = i_c * PER
    while i_blk < i_c * PER + PER:  # a block past the end is fully masked
        o_i = (i_blk * BL + tl.arange(0, BL))[None, :]
        b_dxp = tl.zeros([BD, BL], dtype=ACC)
        for k in tl.static_range(K):
            p = o_i - k
            m_p = m_d[:, None] & (p >= 0) & (p < L)
            b_dz = tl.load(dy + row * L + p, mask=m_p, other=0.0).to(ACC)
            if SILU:
                b_z = tl.zeros([BD, BL], dtype=ACC)
                for j in tl.static_range(K):
                    b_wj = tl.load(w + o_d * K + j, mask=m_d, other=0.0).to(ACC)
                    b_z += b_wj[:, None] * _load_xp(x, s, row, p + j, m_p, L, K, HAS_STATE, ACC)
                if HAS_BIAS:
                    b_z += b_bias
                b_sig = tl.sigmoid(b_z)
                b_dz = b_dz * b_sig * (1 + b_z * (1 - b_sig))
            b_wk = tl.load(w + o_d * K + k, mask=m_d, other=0.0).to(ACC)
            b_dxp += b_wk[:, None] * b_dz
            if k == 0:  # here p == i: these positions also feed the weight and bias gradients
                b_db += tl.sum(b_dz, axis=1)
                for j in tl.static_range(K):
                    b_xj = _load_xp(x, s, row, p + j, m_p, L, K, HAS_STATE, ACC)
                    b_dw += tl.where(o_k == j, tl.sum(b_dz * b_xj, axis=1)[:, None], 0.0)
        m_i = m_d[:, None] & (o_i < L + K - 1)
        if HAS_DFINAL:
            b_dxp += tl.load(dfs + row * (K - 1) + (o_i - L), mask=m_i & (o_i >= L), other=0.0).to(ACC)
        tl.store(dx + row * L + (o_i - (K - 1)), b_dxp.to(dx.dtype.element_ty), mask=m_i & (o_i >= K - 1))
        if HAS_STATE:
            tl.store(ds + row * (K - 1) + o_i, b_dxp.to(ds.dtype.element_ty), mask=m_i & (o_i < K - 1))
        i_blk += 1

    part = ((i_b * NC + i_c) * D + o_d).to(tl.int64)
    tl.store(dw_part + part[:, None] * K + o_k, b_dw, mask=m_d[:, None] & (o_k < K))
    if HAS_BIAS:
        tl.store(db_part + part, b_db, mask=m_d)


@triton.jit
def _causal_conv1d_update_kernel(
    x, s, w, bias, y, D,
    K: tl.constexpr, KP: tl.constexpr, BD: tl.constexpr,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """window = cat(state, x_t) [BD, K]; y_t = act(bias + sum_k w[k] window[k]); state <- window[1:]."""
    i_d, i_b = tl.program_id(0), tl.program_id(1)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    o_k = tl.arange(0, KP)[None, :]
    row = (i_b * D + o_d).to(tl.int64)
    p_s = s + row[:, None] * (K - 1) + o_k

    b_x = tl.load(x + row, mask=m_d, other=0.0).to(s.dtype.element_ty)[:, None]
    b_s = tl.load(p_s, mask=m_d[:, None] & (o_k < K - 1), other=0.0)
    b_win = tl.where(o_k == K - 1, b_x, b_s)
    b_w = tl.load(w + o_d[:, None] * K + o_k, mask=m_d[:, None] & (o_k < K), other=0.0).to(ACC)
    b_y = tl.sum(b_w * b_win.to(ACC), axis=1)
    if HAS_BIAS:
        b_y += tl.load(bias + o_d, mask=m_d, other=0.0).to(ACC)
    if SILU:
        b_y = b_y * tl.sigmoid(b_y)
    tl.store(y + row, b_y.to(y.dtype.element_ty), mask=m_d)

    # new state[k] = window[k + 1]; every load of the old state happens before the barrier
    b_next = tl.load(p_s + 1, mask=m_d[:, None] & (o_k + 1 < K - 1), other=0.0)
    b_next = tl.where(o_k == K - 2, b_x, b_next)
    tl.debug_barrier()
    tl.store(p_s, b_next, mask=m_d[:, None] & (o_k < K - 1))


def _tl_acc(*tensors: torch.Tensor | None):
    return tl.float64 if _compute_dtype(*tensors) == torch.float64 else tl.float32


def _blocks(device: torch.device, D: int, L: int) -> tuple[int, int]:
    """(channels, positions) per tile: moderate on the GPU; in the CPU interpreter, whose cost is mostly per
    tile, as big as the problem up to [32, 1024]."""
    if device.type == "cuda":
        return 16, 128
    return min(32, triton.next_power_of_2(D)), max(16, min(1024, triton.next_power_of_2(L)))


_MAX_CHUNKS = 32  # position chunks per row in the backward (bounds the partial weight-gradient buffer)


def _causal_conv1d_fwd(x, weight, bias, state, silu):
    B, D, L = x.shape
    K = weight.shape[1]
    y = torch.empty_like(x)
    BD, BL = _blocks(x.device, D, L)
    grid = (triton.cdiv(L, BL), triton.cdiv(D, BD), B)
    _causal_conv1d_fwd_kernel[grid](
        x, weight, x if bias is None else bias, x if state is None else state, y, D, L,
        K=K, BD=BD, BL=BL, HAS_BIAS=bias is not None, HAS_STATE=state is not None, SILU=silu,
        ACC=_tl_acc(x, weight, bias, state),
    )  # fmt: skip
    return y


def _causal_conv1d_bwd(x, weight, bias, state, dy, dfinal, silu):
    B, D, L = x.shape
    K = weight.shape[1]
    acc = _compute_dtype(x, weight, bias, state)
    BD, BL = _blocks(x.device, D, L + K - 1)
    nblk = triton.cdiv(L + K - 1, BL)
    per = triton.cdiv(nblk, _MAX_CHUNKS)
    nc = triton.cdiv(nblk, per)
    dx = torch.empty_like(x)
    ds = None if state is None else torch.empty_like(state)
    dw_part = torch.empty(B, nc, D, K, device=x.device, dtype=acc)
    db_part = None if bias is None else torch.empty(B, nc, D, device=x.device, dtype=acc)
    _causal_conv1d_bwd_kernel[(nc, triton.cdiv(D, BD), B)](
        x, weight, x if bias is None else bias, x if state is None else state, dy,
        x if dfinal is None else dfinal, dx, x if ds is None else ds, dw_part,
        dw_part if db_part is None else db_part, D, L, per,
        K=K, KP=triton.next_power_of_2(K), BD=BD, BL=BL, HAS_BIAS=bias is not None,
        HAS_STATE=state is not None, HAS_DFINAL=dfinal is not None, SILU=silu,
        ACC=_tl_acc(x, weight, bias, state),
    )  # fmt: skip
    dw = dw_part.sum((0, 1)).to(weight.dtype)
    db = None if bias is None else db_part.sum((0, 1)).to(bias.dtype)
    return dx, dw, db, ds


def _causal_conv1d_update_triton(x_t, conv_state, weight, bias=None, activation=None):
    B, D = x_t.shape
    K = weight.shape[1]
    s = conv_state if conv_state.is_contiguous() else conv_state.contiguous()
    y = torch.empty_like(x_t)
    BD = _blocks(x_t.device, D, 1)[0]
    _causal_conv1d_update_kernel[(triton.cdiv(D, BD), B)](
        x_t.contiguous(), s, weight.contiguous(), x_t if bias is None else bias.contiguous(), y, D,
        K=K, KP=triton.next_power_of_2(K), BD=BD, HAS_BIAS=bias is not None, SILU=activation is not None,
        ACC=_tl_acc(x_t, weight, bias, conv_state),
    )  # fmt: skip
    if s is not conv_state:
        conv_state.copy_(s)
    return y


# ----------------------------------------------------------------------------------------------------------
# Autograd Function over the Triton kernels.
# ----------------------------------------------------------------------------------------------------------


class _CausalConv1dTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, silu):
        K = weight.shape[1]
        x, weight = x.contiguous(), weight.contiguous()
        bias = None if bias is None else bias.contiguous()
        state = None if initial_state is None or K == 1 else initial_state.contiguous()
        y = _causal_conv1d_fwd(x, weight, bias, state, silu)
        final = _padded_input(x, initial_state, K)[..., x.shape[-1] :].contiguous()
        ctx.save_for_backward(x, weight, bias, state)
        ctx.silu = silu
        ctx.has_state = initial_state is not None
        ctx.set_materialize_grads(False)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, weight, bias, state = ctx.saved_tensors
        K = weight.shape[1]
        dy = torch.zeros_like(x) if dy is None else dy.contiguous()
        dfinal = None if dfinal is None or K == 1 else dfinal.contiguous()
        dx, dw, db, ds = _causal_conv1d_bwd(x, weight, bias, state, dy, dfinal, ctx.silu)
        if ctx.has_state and ds is None:  # K == 1: the state is empty
            ds = x.new_zeros(x.shape[0], x.shape[1], 0)
        return dx, dw, db, ds if ctx.has_state else None, None


# ----------------------------------------------------------------------------------------------------------
# Public functions.
# ----------------------------------------------------------------------------------------------------------


def _check_activation(activation) -> None:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")


def _check_same_device(ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} must be on {ref_name}'s device {ref.device}, got {t.device}")


def _check_causal_conv1d(x, weight, bias, activation, initial_state) -> None:
    check_tensor("x", x, (None, None, None), "[B, D, L]")
    B, D, L = x.shape
    if L == 0:
        raise ValueError(f"x must be [B, D, L] with L >= 1, got {shape_str(x)}")
    check_tensor("weight", weight, (D, None), "[D, K]")
    K = weight.shape[1]
    if K < 1:
        raise ValueError(f"weight must be [D, K] with K >= 1 taps, got {shape_str(weight)}")
    if bias is not None:
        check_tensor("bias", bias, (D,), "[D]")
    if initial_state is not None:
        check_tensor("initial_state", initial_state, (B, D, K - 1), "[B, D, K-1]")
    for name, t in (("x", x), ("weight", weight), ("bias", bias), ("initial_state", initial_state)):
        if t is not None:
            check_float(name, t)
    _check_same_device("x", x, weight=weight, bias=bias, initial_state=initial_state)
    _check_activation(activation)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    *,
    impl: str | None = None,
):
    """Depthwise causal conv: x [B, D, L], weight [D, K] -> y [B, D, L] (and final_state [B, D, K-1]).

    ``y[b, d, t] = act(bias[d] + sum_k weight[d, k] * xp[b, d, t + k])`` with xp = cat(initial_state, x);
    ``activation`` is None or "silu". With ``return_final_state`` returns ``(y, final_state)``, where
    final_state holds the last K-1 inputs and can seed the next chunk or ``causal_conv1d_update``.
    ``impl``: "ref", "torch", "triton" or None (Triton on CUDA, torch elsewhere; if the Triton kernel fails to
    compile or launch, one warning and the torch path from then on).
    """
    _check_causal_conv1d(x, weight, bias, activation, initial_state)
    requested, impl = impl, pick_impl("causal_conv1d", impl, x.device)
    args = (x, weight, bias, activation, initial_state, return_final_state)
    if impl == "ref":
        return causal_conv1d_ref(*args)
    if impl == "torch":
        return causal_conv1d_torch(*args)
    return run_triton("causal_conv1d", requested, _causal_conv1d_triton, causal_conv1d_torch, *args)


def _causal_conv1d_triton(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False):
    y, final = _CausalConv1dTriton.apply(x, weight, bias, initial_state, activation is not None)
    return (y, final) if return_final_state else y


def causal_conv1d_update(
    x_t: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    *,
    impl: str | None = None,
) -> torch.Tensor:
    """One decoding step: x_t [B, D], conv_state [B, D, K-1] -> y_t [B, D]; conv_state is updated IN PLACE.

    The state holds the previous K-1 inputs, oldest first; after the call it has dropped the oldest and
    appended x_t. Meant for inference (the Triton path has no backward).
    """
    check_tensor("x_t", x_t, (None, None), "[B, D]")
    B, D = x_t.shape
    check_tensor("weight", weight, (D, None), "[D, K]")
    K = weight.shape[1]
    if K < 1:
        raise ValueError(f"weight must be [D, K] with K >= 1 taps, got {shape_str(weight)}")
    check_tensor("conv_state", conv_state, (B, D, K - 1), "[B, D, K-1]")
    if bias is not None:
        check_tensor("bias", bias, (D,), "[D]")
    for name, t in (("x_t", x_t), ("conv_state", conv_state), ("weight", weight), ("bias", bias)):
        if t is not None:
            check_float(name, t)
    _check_same_device("x_t", x_t, conv_state=conv_state, weight=weight, bias=bias)
    _check_activation(activation)
    requested, impl = impl, pick_impl("causal_conv1d_update", impl, x_t.device)
    args = (x_t, conv_state, weight, bias, activation)
    if impl == "ref":
        return causal_conv1d_update_ref(*args)
    if impl == "torch":
        return _causal_conv1d_update_torch(*args)
    # a kernel that fails to compile or launch has not written conv_state yet, so the torch path can take over
    return run_triton("causal_conv1d_update", requested, _causal_conv1d_update_triton, _causal_conv1d_update_torch,
                      *args)
