"""Depthwise causal 1-D convolution with a streaming state (the short conv of Mamba and Hyena blocks).

Shapes in letters: B batch, D channels, L sequence length, K taps (kernel width), T new tokens of one
streaming call, S state length (S >= K-1).

    x              [B, D, L]     input (any strides: channel-last views are fine)
    weight         [D, K]        one K-tap filter per channel
    bias           [D]           optional
    seq_idx        [B, L]        optional integer labels of sequences packed in one row (int32 in causal-conv1d)
    initial_state  [B, D, K-1]   the K-1 inputs that precede x[..., 0]; zeros when None
    y              [B, D, L]     output, in x's dtype (accumulated in fp32, or fp64 for fp64 inputs)
    final_state    [B, D, K-1]   the last K-1 entries of cat(initial_state, x), in x's dtype

With xp = cat(initial_state, x) along the last axis (length L + K - 1):

    y[b, d, t] = act(bias[d] + sum_{k=0}^{K-1} weight[d, k] * xp[b, d, t + k])

so weight[:, K-1] multiplies the current input x[t] and weight[:, 0] the input K-1 steps back: the
layout of ``nn.Conv1d(D, D, K, groups=D, padding=K-1)`` truncated to its first L outputs, as in
causal-conv1d. ``act`` is the identity (None) or SiLU ("silu", alias "swish"). When L < K - 1 the
final state still holds K - 1 entries: the tail of the initial state (or zeros) followed by x.

Packed sequences (``seq_idx``, as in causal-conv1d): the tap that reaches back s steps from position t counts
only when t - s >= 0 and seq_idx[b, t - s] == seq_idx[b, t], so no input crosses from one sequence into
another and each sequence starts from zeros. A position with seq_idx < 0 is padding: its output is exactly 0
(no bias, no activation). Labels are compared for equality, not for contiguity (a label that comes back within
K-1 positions is the same sequence). seq_idx excludes ``initial_state`` and ``return_final_state`` (the
packed row has no single state), as upstream does; both raise ValueError. Gradients are those of this forward,
so padding positions pass no gradient (the CUDA backward of causal-conv1d 1.6 lets gradients of padding outputs
through, although their forward output is a constant 0).

Streaming: ``causal_conv1d_update(x, conv_state, weight, bias, activation, cache_seqlens, conv_state_indices)``
takes x [B, D] (one token, returns [B, D]) or [B, D, T] (T tokens, returns [B, D, T]) and a state
[B, D, S] (or [N, D, S] with conv_state_indices) that is updated IN PLACE. This is the interface and the state
layout of causal-conv1d's ``causal_conv1d_update``:

* Linear state (cache_seqlens None): the state holds the last S inputs, oldest first, the newest at index S-1.
  The conv reads its K-1 newest entries; the call leaves the last S entries of cat(state, x). With S = K-1 (the
  state ``return_final_state`` gives and the mixers of this package keep) nothing is ever dropped that the
  conv needs; a longer state simply keeps more history (S = K is mamba_ssm's layout, the newest input included).
* Circular state (cache_seqlens [B] integers): row b's state is a ring buffer whose next write position is
  c = cache_seqlens[b] mod S. The conv reads the K-1 entries before c (positions c-K+1 .. c-1, mod S, oldest
  first) and token t is written at (c + t) mod S, tokens in order (when T > S a later token overwrites an earlier
  one). cache_seqlens is only read: advancing it by T is the caller's job. A ring state with c = n mod S after n
  inputs equals the linear state rolled left by c.
* Continuous batching (conv_state_indices [B] integers): batch row b uses state row conv_state_indices[b] of a
  larger conv_state [N, D, S]. A negative index is a padding slot (causal-conv1d >= 1.6): its output is 0 and
  no state row is touched. Indices of real rows must be distinct.

Stepping through a sequence token by token reproduces ``causal_conv1d`` and leaves a [B, D, K-1] state equal
to ``final_state`` bit for bit (the state is a copy of inputs, never a computed value); x is stored in the
state's dtype (and the conv sees that rounding), outputs are in x's dtype.

Argument orders: ``causal_conv1d`` accepts both this package's order ``(x, weight, bias, activation,
initial_state, return_final_state)`` and causal-conv1d's ``causal_conv1d_fn`` order ``(x, weight, bias, seq_idx,
initial_states, return_final_states, final_states_out, activation)``: the fourth positional argument is the
activation when it is a string, seq_idx when it is a tensor; the plural keyword names work as aliases.
``final_states_out`` (with return_final_state) receives the final state in place and is returned.

Paths (``impl=``): "ref" loops over the K taps (and, for updates, over batch rows and tokens) in plain PyTorch
(float64 capable, the ground truth); "torch" is one grouped ``F.conv1d`` (with seq_idx, a masked sum over the
unfolded K-wide windows; for updates, one gather, windowed sum and state write for all tokens); "triton" runs a
forward kernel and a backward kernel (gradients for x, weight, bias and initial_state, plus the cotangent of
final_state; seq_idx masks both) inside an autograd Function, and an update kernel that covers every update
argument (several tokens, any S >= K-1, cache_seqlens, conv_state_indices with padding slots, strided x and
state). The backward kernel recomputes the pre-activation instead of saving it. Every argument works on every
path; ``final_states_out`` is filled by the dispatcher after the path has run.
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


def _same_sequence(seq_idx: torch.Tensor, s: int) -> torch.Tensor:
    """[B, L] bool: position t - s exists and carries the label of position t."""
    earlier = F.pad(seq_idx, (s, 0), value=-1)[..., : seq_idx.shape[-1]]
    return (earlier == seq_idx) & (seq_idx >= 0)


# ----------------------------------------------------------------------------------------------------------
# Reference: readable, float64 capable.
# ----------------------------------------------------------------------------------------------------------


def causal_conv1d_ref(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False, *,
                      seq_idx=None):
    """Ground truth: one shifted multiply-add per tap. Shapes as in the module docstring."""
    L, K = x.shape[-1], weight.shape[-1]
    cdt = _compute_dtype(x, weight, bias, initial_state)
    xp = _padded_input(x, initial_state, K)  # [B, D, K-1+L]
    xc = xp.to(cdt)
    y = torch.zeros_like(xc[..., :L])
    for k in range(K):
        if seq_idx is None:
            y = y + weight[:, k, None].to(cdt) * xc[..., k : k + L]
        else:  # the tap reaches K-1-k positions back; it counts only inside the same sequence
            same = _same_sequence(seq_idx, K - 1 - k)[:, None, :]
            y = y + torch.where(same, weight[:, k, None].to(cdt) * xc[..., k : k + L], 0.0)
    if bias is not None:
        y = y + bias[:, None].to(cdt)
    if activation is not None:
        y = F.silu(y)
    if seq_idx is not None:  # padding positions give exactly 0
        y = torch.where(seq_idx[:, None, :] >= 0, y, 0.0)
    y = y.to(x.dtype)
    if return_final_state:
        return y, xp[..., L:]
    return y


def _as_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, D] -> [B, D, 1]; [B, D, T] as it is."""
    return x[..., None] if x.dim() == 2 else x


def causal_conv1d_update_ref(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                             conv_state_indices=None):
    """Streaming step, token by token: x [B, D] or [B, D, T], conv_state [B or N, D, S] (updated in place).

    For each batch row and each token in order: read the K-1 newest inputs of the state (linear: its last K-1
    entries; circular: the K-1 entries before the write position), compute the output, then store the token
    (linear: shift left by one and append; circular: write at the position and advance it).
    """
    xs = _as_tokens(x)
    B, D, T = xs.shape
    K, S = weight.shape[-1], conv_state.shape[-1]
    cdt = _compute_dtype(x, weight, bias, conv_state)
    w = weight.to(cdt)
    slots = range(B) if conv_state_indices is None else conv_state_indices.tolist()
    out = torch.zeros(B, D, T, dtype=cdt, device=x.device)
    for b, slot in enumerate(slots):
        if slot < 0:  # a padding slot: output 0, no state row touched
            continue
        state = conv_state[slot]  # [D, S], a view: written in place
        c = None if cache_seqlens is None else int(cache_seqlens[b]) % max(S, 1)
        for t in range(T):
            x_t = xs[b, :, t].to(state.dtype)
            if c is None:
                window = [state[:, S - (K - 1) + j] for j in range(K - 1)] + [x_t]
            else:
                window = [state[:, (c + t - (K - 1) + j) % S] for j in range(K - 1)] + [x_t]
            y = torch.zeros(D, dtype=cdt, device=x.device)
            for k in range(K):
                y = y + w[:, k] * window[k].to(cdt)
            if bias is not None:
                y = y + bias.to(cdt)
            if activation is not None:
                y = F.silu(y)
            out[b, :, t] = y
            if S == 0:
                continue
            if c is None:
                state.copy_(torch.cat([state[:, 1:], x_t[:, None]], dim=-1))
            else:
                state[:, (c + t) % S] = x_t
    out = out.to(x.dtype)
    return out[..., 0] if x.dim() == 2 else out


# ----------------------------------------------------------------------------------------------------------
# Vectorized CPU path: one grouped conv, gradients by autograd.
# ----------------------------------------------------------------------------------------------------------


def causal_conv1d_torch(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False, *,
                        seq_idx=None):
    """``F.conv1d(xp, weight[:, None, :], groups=D)`` in fp32 (fp64 for fp64 inputs); with seq_idx, a masked
    sum over the unfolded K-wide windows."""
    L, K = x.shape[-1], weight.shape[-1]
    cdt = _compute_dtype(x, weight, bias, initial_state)
    xp = _padded_input(x, initial_state, K)
    b = None if bias is None else bias.to(cdt)
    if seq_idx is None:
        y = F.conv1d(xp.to(cdt), weight.to(cdt).unsqueeze(1), b, groups=x.shape[1])
    else:
        windows = xp.to(cdt).unfold(-1, K, 1)  # [B, D, L, K]: windows[..., t, k] = x[t - (K-1-k)]
        labels = F.pad(seq_idx, (K - 1, 0), value=-1).unfold(-1, K, 1)  # [B, L, K]
        same = (labels == seq_idx[..., None]) & (seq_idx[..., None] >= 0)
        y = torch.einsum("bdlk,dk->bdl", windows * same[:, None].to(cdt), weight.to(cdt))
        if b is not None:
            y = y + b[:, None]
    if activation is not None:
        y = F.silu(y)
    if seq_idx is not None:
        y = y * (seq_idx[:, None, :] >= 0).to(cdt)
    y = y.to(x.dtype)
    if return_final_state:
        return y, xp[..., L:]
    return y


def _causal_conv1d_update_torch(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                                conv_state_indices=None):
    """All tokens at once: gather the K-1 newest state entries, one windowed sum, one write of the state."""
    xs = _as_tokens(x)
    B, D, T = xs.shape
    K, S = weight.shape[-1], conv_state.shape[-1]
    cdt = _compute_dtype(x, weight, bias, conv_state)
    if conv_state_indices is None:
        rows, state = None, conv_state  # written in place below
    else:
        rows = torch.nonzero(conv_state_indices >= 0).squeeze(1)  # batch rows with a real state slot
        slots = conv_state_indices[rows].long()
        state, xs = conv_state[slots], xs[rows]  # a copy, written back below
    xs = xs.to(conv_state.dtype)
    if cache_seqlens is None or S == 0:
        history = state[..., S - (K - 1) :]  # [B', D, K-1]
    else:
        c = torch.remainder(cache_seqlens if rows is None else cache_seqlens[rows], S).long()
        pos = torch.remainder(c[:, None] + torch.arange(-(K - 1), 0, device=c.device), S)  # [B', K-1]
        history = state.gather(-1, pos[:, None, :].expand(-1, D, -1))
    window = torch.cat([history, xs], dim=-1).unfold(-1, K, 1).transpose(1, 2)  # [B', T, D, K]
    y = (window.to(cdt) * weight.to(cdt)).sum(-1)
    y = y.transpose(1, 2)  # [B', D, T]
    if bias is not None:
        y = y + bias.to(cdt)[:, None]
    if activation is not None:
        y = F.silu(y)
    if S > 0:
        if cache_seqlens is None:
            new_state = torch.cat([state, xs], dim=-1)[..., T:]
            if rows is None:
                conv_state.copy_(new_state)
            else:
                state = new_state
        else:  # only the last min(T, S) tokens survive, each at its own position
            n = min(T, S)
            pos = torch.remainder(c[:, None] + torch.arange(T - n, T, device=c.device), S)  # [B', n]
            state.scatter_(-1, pos[:, None, :].expand(-1, D, -1), xs[..., T - n :])
        if rows is not None:
            conv_state[slots] = state
    y = y.to(x.dtype)
    if rows is not None:
        y = torch.zeros(B, D, T, dtype=x.dtype, device=x.device).index_copy(0, rows, y)
    return y[..., 0] if x.dim() == 2 else y


# ----------------------------------------------------------------------------------------------------------
# Triton kernels. Tiles are [BD channels, BL positions] of one batch row; the conv kernels take contiguous tensors,
# the update kernel strided ones.
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _load_xp(x, s, row, q, mask, L, K: tl.constexpr, HAS_STATE: tl.constexpr, ACC: tl.constexpr):
    """xp[row, q] = initial_state[row, q] for q < K-1, else x[row, q-(K-1)]; zero where masked."""
    b_x = tl.load(x + row * L + (q - (K - 1)), mask=mask & (q >= K - 1), other=0.0).to(ACC)
    if HAS_STATE:
        b_x += tl.load(s + row * (K - 1) + q, mask=mask & (q < K - 1), other=0.0).to(ACC)
    return b_x


@triton.jit
def _load_label(sq, i_b, q, L):
    """seq_idx[i_b, q] for the x positions q, -1 outside [0, L) (a label no real position carries)."""
    return tl.load(sq + i_b.to(tl.int64) * L + q, mask=(q >= 0) & (q < L), other=-1)


@triton.jit
def _causal_conv1d_fwd_kernel(
    x, w, bias, s, sq, y, D, L,
    K: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """With HAS_SEQ a tap counts only where the label of the position it reads equals the current one, and
    positions labelled < 0 give 0."""
    i_t, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_d = i_d * BD + tl.arange(0, BD)
    o_t = (i_t * BL + tl.arange(0, BL))[None, :]
    m_d = o_d < D
    m = m_d[:, None] & (o_t < L)
    row = (i_b * D + o_d).to(tl.int64)[:, None]

    if HAS_SEQ:
        b_cur = _load_label(sq, i_b, o_t, L)  # [1, BL]
    b_z = tl.zeros([BD, BL], dtype=ACC)
    for k in tl.static_range(K):
        b_w = tl.load(w + o_d * K + k, mask=m_d, other=0.0).to(ACC)
        b_xk = _load_xp(x, s, row, o_t + k, m, L, K, HAS_STATE, ACC)
        if HAS_SEQ:
            b_xk = tl.where(_load_label(sq, i_b, o_t + k - (K - 1), L) == b_cur, b_xk, 0.0)
        b_z += b_w[:, None] * b_xk
    if HAS_BIAS:
        b_z += tl.load(bias + o_d, mask=m_d, other=0.0).to(ACC)[:, None]
    if SILU:
        b_z = b_z * tl.sigmoid(b_z)
    if HAS_SEQ:
        b_z = tl.where(b_cur >= 0, b_z, 0.0)
    tl.store(y + row * L + o_t, b_z.to(y.dtype.element_ty), mask=m)


@triton.jit
def _causal_conv1d_bwd_kernel(
    x, w, bias, s, sq, dy, dfs, dx, ds, dw_part, db_part, D, L, PER,
    K: tl.constexpr, KP: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_DFINAL: tl.constexpr,
    SILU: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Gradient with respect to the padded input xp, over padded positions i in [0, L+K-1):

        dxp[i] = sum_k weight[k] * dz[i - k]  (+ d final_state[i - L] for i >= L),

    with dz = dy * act'(z) recomputed from x. Positions i >= K-1 are dx, positions i < K-1 are
    d initial_state. Each program walks PER blocks of BL positions and writes its partial weight and
    bias gradients (sum over its positions of dz[i] * xp[i + k] and of dz[i]) to dw_part / db_part.
    With HAS_SEQ each term keeps the forward's label mask, and dz is 0 at positions labelled < 0.
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
        if HAS_SEQ:
            b_si = _load_label(sq, i_b, o_i - (K - 1), L)  # the label of the input xp[i]
        for k in tl.static_range(K):
            p = o_i - k
            m_p = m_d[:, None] & (p >= 0) & (p < L)
            b_dz = tl.load(dy + row * L + p, mask=m_p, other=0.0).to(ACC)
            if HAS_SEQ:
                b_sp = _load_label(sq, i_b, p, L)  # the label of the output at p
                b_dz = tl.where(b_sp >= 0, b_dz, 0.0)
            if SILU:
                b_z = tl.zeros([BD, BL], dtype=ACC)
                for j in tl.static_range(K):
                    b_wj = tl.load(w + o_d * K + j, mask=m_d, other=0.0).to(ACC)
                    b_xj = _load_xp(x, s, row, p + j, m_p, L, K, HAS_STATE, ACC)
                    if HAS_SEQ:
                        b_xj = tl.where(_load_label(sq, i_b, p + j - (K - 1), L) == b_sp, b_xj, 0.0)
                    b_z += b_wj[:, None] * b_xj
                if HAS_BIAS:
                    b_z += b_bias
                b_sig = tl.sigmoid(b_z)
                b_dz = b_dz * b_sig * (1 + b_z * (1 - b_sig))
            b_wk = tl.load(w + o_d * K + k, mask=m_d, other=0.0).to(ACC)
            if HAS_SEQ:
                b_dxp += tl.where(b_si == b_sp, b_wk[:, None] * b_dz, 0.0)
            else:
                b_dxp += b_wk[:, None] * b_dz
            if k == 0:  # here p == i: these positions also feed the weight and bias gradients
                b_db += tl.sum(b_dz, axis=1)
                for j in tl.static_range(K):
                    b_xj = _load_xp(x, s, row, p + j, m_p, L, K, HAS_STATE, ACC)
                    if HAS_SEQ:
                        b_xj = tl.where(_load_label(sq, i_b, p + j - (K - 1), L) == b_sp, b_xj, 0.0)
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
    x, s, w, bias, cache_seqlens, state_indices, y, D, T, S,
    sx_b, sx_d, sx_t, ss_b, ss_d, ss_l,
    K: tl.constexpr, BD: tl.constexpr, TP: tl.constexpr, SP: tl.constexpr,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, CIRCULAR: tl.constexpr, HAS_INDICES: tl.constexpr,
    ACC: tl.constexpr,
):  # fmt: skip
    """T tokens of one batch row over BD channels. seq = cat(history, x) with history the K-1 newest state
    entries (linear: positions S-K+1 .. S-1; circular: c-K+1 .. c-1 mod S, c = cache_seqlens mod S);
    y[t] = act(bias + sum_k w[k] seq[t + k]). Then the state: linear, new[i] = cat(state, x)[T + i];
    circular, x[t] written at (c + t) mod S for the last min(T, S) tokens. A negative state index: y = 0 and
    the state is not touched. Strided x and state; y is [B, D, T] contiguous."""
    i_d, i_b = tl.program_id(0), tl.program_id(1)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = (o_d < D)[:, None]
    o_t = tl.arange(0, TP)[None, :]
    o_l = tl.arange(0, SP)[None, :]
    if HAS_INDICES:
        slot = tl.load(state_indices + i_b).to(tl.int64)
    else:
        slot = i_b.to(tl.int64)
    live = slot >= 0
    p_x = x + i_b.to(tl.int64) * sx_b + o_d.to(tl.int64)[:, None] * sx_d
    p_s = s + slot * ss_b + o_d.to(tl.int64)[:, None] * ss_d
    if CIRCULAR:
        c = tl.load(cache_seqlens + i_b).to(tl.int64) % S
        c = tl.where(c < 0, c + S, c)
        first = c - (K - 1) + S  # position of history[0], plus S to stay non-negative
    else:
        first = S - (K - 1)

    b_y = tl.zeros([BD, TP], dtype=ACC)
    for k in tl.static_range(K):
        j = o_t + k  # index into seq
        m = m_d & (o_t < T) & live
        if CIRCULAR:
            pos = (first + j) % S
        else:
            pos = first + j  # < S where it is read
        b_h = tl.load(p_s + pos * ss_l, mask=m & (j < K - 1), other=0.0)
        b_x = tl.load(p_x + (j - (K - 1)) * sx_t, mask=m & (j >= K - 1), other=0.0).to(s.dtype.element_ty)
        b_w = tl.load(w + o_d * K + k, mask=o_d < D, other=0.0).to(ACC)[:, None]
        b_y += b_w * tl.where(j < K - 1, b_h, b_x).to(ACC)
    if HAS_BIAS:
        b_y += tl.load(bias + o_d, mask=o_d < D, other=0.0).to(ACC)[:, None]
    if SILU:
        b_y = b_y * tl.sigmoid(b_y)
    b_y = tl.where(live, b_y, 0.0)
    tl.store(y + (i_b * D + o_d).to(tl.int64)[:, None] * T + o_t, b_y.to(y.dtype.element_ty),
             mask=m_d & (o_t < T))

    # the state: every load of the old state happens before the barrier
    if CIRCULAR:
        m_w = m_d & (o_t < T) & (o_t >= T - S) & live  # tokens that survive, at distinct positions
        b_new = tl.load(p_x + o_t * sx_t, mask=m_w, other=0.0).to(s.dtype.element_ty)
        tl.debug_barrier()
        tl.store(p_s + ((c + o_t) % S) * ss_l, b_new, mask=m_w)
    else:
        m_l = m_d & (o_l < S) & live
        src = o_l + T  # index into cat(state, x)
        b_old = tl.load(p_s + src * ss_l, mask=m_l & (src < S), other=0.0)
        b_in = tl.load(p_x + (src - S) * sx_t, mask=m_l & (src >= S), other=0.0).to(s.dtype.element_ty)
        b_new = tl.where(src < S, b_old, b_in)
        tl.debug_barrier()
        tl.store(p_s + o_l * ss_l, b_new, mask=m_l)


def _tl_acc(*tensors: torch.Tensor | None):
    return tl.float64 if _compute_dtype(*tensors) == torch.float64 else tl.float32


def _blocks(device: torch.device, D: int, L: int) -> tuple[int, int]:
    """(channels, positions) per tile: moderate on the GPU; in the CPU interpreter, whose cost is mostly per
    tile, as big as the problem up to [32, 1024]."""
    if device.type == "cuda":
        return 16, 128
    return min(32, triton.next_power_of_2(D)), max(16, min(1024, triton.next_power_of_2(L)))


_MAX_CHUNKS = 32  # position chunks per row in the backward (bounds the partial weight-gradient buffer)


def _causal_conv1d_fwd(x, weight, bias, state, silu, seq=None):
    B, D, L = x.shape
    K = weight.shape[1]
    y = torch.empty_like(x)
    BD, BL = _blocks(x.device, D, L)
    grid = (triton.cdiv(L, BL), triton.cdiv(D, BD), B)
    _causal_conv1d_fwd_kernel[grid](
        x, weight, x if bias is None else bias, x if state is None else state, x if seq is None else seq, y, D, L,
        K=K, BD=BD, BL=BL, HAS_BIAS=bias is not None, HAS_STATE=state is not None, HAS_SEQ=seq is not None,
        SILU=silu, ACC=_tl_acc(x, weight, bias, state),
    )  # fmt: skip
    return y


def _causal_conv1d_bwd(x, weight, bias, state, dy, dfinal, silu, seq=None):
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
        x, weight, x if bias is None else bias, x if state is None else state, x if seq is None else seq, dy,
        x if dfinal is None else dfinal, dx, x if ds is None else ds, dw_part,
        dw_part if db_part is None else db_part, D, L, per,
        K=K, KP=triton.next_power_of_2(K), BD=BD, BL=BL, HAS_BIAS=bias is not None,
        HAS_STATE=state is not None, HAS_SEQ=seq is not None, HAS_DFINAL=dfinal is not None, SILU=silu,
        ACC=_tl_acc(x, weight, bias, state),
    )  # fmt: skip
    dw = dw_part.sum((0, 1)).to(weight.dtype)
    db = None if bias is None else db_part.sum((0, 1)).to(bias.dtype)
    return dx, dw, db, ds


def _causal_conv1d_update_triton(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                                 conv_state_indices=None):
    xs = _as_tokens(x)
    B, D, T = xs.shape
    K, S = weight.shape[1], conv_state.shape[2]
    y = torch.empty(B, D, T, dtype=x.dtype, device=x.device)
    BD = _blocks(x.device, D, 1)[0]
    _causal_conv1d_update_kernel[(triton.cdiv(D, BD), B)](
        xs, conv_state, weight.contiguous(), y if bias is None else bias.contiguous(),
        y if cache_seqlens is None else cache_seqlens.contiguous(),
        y if conv_state_indices is None else conv_state_indices.contiguous(), y, D, T, S,
        *xs.stride(), *conv_state.stride(),
        K=K, BD=BD, TP=triton.next_power_of_2(T), SP=triton.next_power_of_2(max(S, 1)), HAS_BIAS=bias is not None,
        SILU=activation is not None, CIRCULAR=cache_seqlens is not None and S > 0,
        HAS_INDICES=conv_state_indices is not None, ACC=_tl_acc(x, weight, bias, conv_state),
    )  # fmt: skip
    return y[..., 0] if x.dim() == 2 else y


# ----------------------------------------------------------------------------------------------------------
# Autograd Function over the Triton kernels.
# ----------------------------------------------------------------------------------------------------------


class _CausalConv1dTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, silu, seq_idx=None):
        K = weight.shape[1]
        x, weight = x.contiguous(), weight.contiguous()
        bias = None if bias is None else bias.contiguous()
        state = None if initial_state is None or K == 1 else initial_state.contiguous()
        seq = None if seq_idx is None else seq_idx.contiguous()
        y = _causal_conv1d_fwd(x, weight, bias, state, silu, seq)
        final = _padded_input(x, initial_state, K)[..., x.shape[-1] :].contiguous()
        ctx.save_for_backward(x, weight, bias, state, seq)
        ctx.silu = silu
        ctx.has_state = initial_state is not None
        ctx.set_materialize_grads(False)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, weight, bias, state, seq = ctx.saved_tensors
        K = weight.shape[1]
        dy = torch.zeros_like(x) if dy is None else dy.contiguous()
        dfinal = None if dfinal is None or K == 1 else dfinal.contiguous()
        dx, dw, db, ds = _causal_conv1d_bwd(x, weight, bias, state, dy, dfinal, ctx.silu, seq)
        if ctx.has_state and ds is None:  # K == 1: the state is empty
            ds = x.new_zeros(x.shape[0], x.shape[1], 0)
        return dx, dw, db, ds if ctx.has_state else None, None, None


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


def _check_integer(name: str, t: torch.Tensor) -> None:
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor (int32 as in causal-conv1d), got {t.dtype}")


def _check_causal_conv1d(x, weight, bias, activation, initial_state, seq_idx, return_final_state,
                         final_states_out) -> None:
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
    if seq_idx is not None:
        check_tensor("seq_idx", seq_idx, (B, L), "[B, L]")
        _check_integer("seq_idx", seq_idx)
        if initial_state is not None:
            raise ValueError("seq_idx and initial_states cannot be used together (as in causal-conv1d): each "
                             "packed sequence starts from zeros")
        if return_final_state:
            raise ValueError("return_final_states is not available with seq_idx (as in causal-conv1d): a packed "
                             "row holds several sequences and no single final state")
    if return_final_state and final_states_out is not None:
        check_tensor("final_states_out", final_states_out, (B, D, K - 1), "[B, D, K-1]")
    for name, t in (("x", x), ("weight", weight), ("bias", bias), ("initial_state", initial_state),
                    ("final_states_out", final_states_out)):
        if t is not None:
            check_float(name, t)
    _check_same_device("x", x, weight=weight, bias=bias, initial_state=initial_state, seq_idx=seq_idx,
                       final_states_out=final_states_out)
    _check_activation(activation)


def _one_value(name: str, *values):
    """The one value given (not None) for an argument that can arrive under two names or positions."""
    given = [v for v in values if v is not None]
    if len(given) > 1:
        raise TypeError(f"causal_conv1d got multiple values for {name}")
    return given[0] if given else None


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *args,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool | None = None,
    seq_idx: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool | None = None,
    final_states_out: torch.Tensor | None = None,
    impl: str | None = None,
):
    """Depthwise causal conv: x [B, D, L], weight [D, K] -> y [B, D, L] (and final_state [B, D, K-1]).

    ``y[b, d, t] = act(bias[d] + sum_k weight[d, k] * xp[b, d, t + k])`` with xp = cat(initial_state, x);
    ``activation`` is None, "silu" or "swish". With ``return_final_state`` returns ``(y, final_state)``, where
    final_state holds the last K-1 inputs and can seed the next chunk or ``causal_conv1d_update``; it is written
    into ``final_states_out`` [B, D, K-1] (then returned) when that is given. ``seq_idx`` [B, L] (integers)
    labels sequences packed in one row: no tap crosses from one label to another, and positions labelled < 0
    give 0 (see the module docstring; not together with initial_state or return_final_state).

    Positional arguments after bias follow either this package's order ``(activation, initial_state,
    return_final_state)`` or causal-conv1d's ``causal_conv1d_fn`` order ``(seq_idx, initial_states,
    return_final_states, final_states_out, activation)``: a string fourth argument is the activation, a tensor
    is seq_idx. ``initial_states`` and ``return_final_states`` are aliases of the singular names.
    ``impl``: "ref", "torch", "triton" or None (Triton on CUDA, torch elsewhere; if the Triton kernel fails to
    compile or launch, one warning and the torch path from then on).
    """
    if len(args) > 5:
        raise TypeError(f"causal_conv1d takes at most 8 positional arguments ({3 + len(args)} given)")
    first, rest = (args[0] if args else None), list(args[1:]) + [None] * (5 - len(args))
    if first is not None and not isinstance(first, (str, torch.Tensor)):
        raise ValueError(f"the fourth argument of causal_conv1d must be the activation (None, 'silu' or 'swish') "
                         f"or seq_idx (an integer tensor [B, L]), got {first!r}")
    activation = _one_value("activation", activation, first if isinstance(first, str) else None, rest[3])
    seq_idx = _one_value("seq_idx", seq_idx, first if isinstance(first, torch.Tensor) else None)
    initial_state = _one_value("initial_state", initial_state, initial_states, rest[0])
    return_final_state = bool(_one_value("return_final_state", return_final_state, return_final_states, rest[1]))
    final_states_out = _one_value("final_states_out", final_states_out, rest[2])

    _check_causal_conv1d(x, weight, bias, activation, initial_state, seq_idx, return_final_state,
                         final_states_out)
    requested, impl = impl, pick_impl("causal_conv1d", impl, x.device)
    args = (x, weight, bias, activation, initial_state, return_final_state)
    if impl == "ref":
        out = causal_conv1d_ref(*args, seq_idx=seq_idx)
    elif impl == "torch":
        out = causal_conv1d_torch(*args, seq_idx=seq_idx)
    else:
        kwargs = {} if seq_idx is None else {"seq_idx": seq_idx}
        out = run_triton("causal_conv1d", requested, _causal_conv1d_triton, causal_conv1d_torch, *args, **kwargs)
    if return_final_state and final_states_out is not None:
        y, final = out
        final_states_out.copy_(final)
        return y, final_states_out
    return out


def _causal_conv1d_triton(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False, *,
                          seq_idx=None):
    y, final = _CausalConv1dTriton.apply(x, weight, bias, initial_state, activation is not None, seq_idx)
    return (y, final) if return_final_state else y


def _check_update(x, conv_state, weight, bias, activation, cache_seqlens, conv_state_indices) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
        got = shape_str(x) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be [B, D] (one token) or [B, D, T] (T tokens), got {got}")
    B, D = x.shape[:2]
    if x.dim() == 3 and x.shape[2] == 0:
        raise ValueError(f"x must be [B, D, T] with T >= 1 tokens, got {shape_str(x)}")
    check_tensor("weight", weight, (D, None), "[D, K]")
    K = weight.shape[1]
    if K < 1:
        raise ValueError(f"weight must be [D, K] with K >= 1 taps, got {shape_str(weight)}")
    rows = B if conv_state_indices is None else None
    check_tensor("conv_state", conv_state, (rows, D, None), "[B, D, S]" if rows else "[N, D, S]")
    if conv_state.shape[2] < K - 1:
        raise ValueError(f"conv_state must be [B, D, S] with S >= K-1 = {K - 1} (the state holds the last S "
                         f"inputs), got {shape_str(conv_state)}")
    if bias is not None:
        check_tensor("bias", bias, (D,), "[D]")
    for name, t in (("cache_seqlens", cache_seqlens), ("conv_state_indices", conv_state_indices)):
        if t is not None:
            check_tensor(name, t, (B,), "[B]")
            _check_integer(name, t)
    for name, t in (("x", x), ("conv_state", conv_state), ("weight", weight), ("bias", bias)):
        if t is not None:
            check_float(name, t)
    _check_same_device("x", x, conv_state=conv_state, weight=weight, bias=bias, cache_seqlens=cache_seqlens,
                       conv_state_indices=conv_state_indices)
    _check_activation(activation)


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    cache_seqlens: torch.Tensor | None = None,
    conv_state_indices: torch.Tensor | None = None,
    *,
    impl: str | None = None,
) -> torch.Tensor:
    """Decoding step(s): x [B, D] -> [B, D], or x [B, D, T] -> [B, D, T]; conv_state is updated IN PLACE.

    causal-conv1d's ``causal_conv1d_update`` interface and state layout. conv_state [B, D, S], S >= K-1, holds
    the last S inputs, oldest first; the call leaves the last S entries of cat(conv_state, x). A [B, D, K-1]
    state is the one ``causal_conv1d(..., return_final_state=True)`` returns.
    ``cache_seqlens`` [B] (integers) makes each state row a ring buffer written from position
    cache_seqlens[b] mod S; ``conv_state_indices`` [B] picks the state row of each batch row in a larger
    conv_state [N, D, S], a negative index marking a padding row (output 0, no state touched). Details in the
    module docstring. Meant for inference (the Triton path has no backward).
    """
    _check_update(x, conv_state, weight, bias, activation, cache_seqlens, conv_state_indices)
    requested, impl = impl, pick_impl("causal_conv1d_update", impl, x.device)
    args = (x, conv_state, weight, bias, activation)
    general = (cache_seqlens, conv_state_indices)
    if impl == "ref":
        return causal_conv1d_update_ref(*args, *general)
    if impl == "torch":
        return _causal_conv1d_update_torch(*args, *general)
    # a kernel that fails to compile or launch has not written conv_state yet, so the torch path can take over
    return run_triton("causal_conv1d_update", requested, _causal_conv1d_update_triton, _causal_conv1d_update_torch,
                      *args, *general)
