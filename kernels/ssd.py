"""SSD (state-space duality): the Mamba-2 scan with one scalar decay per head, plus its one-token decoding step.

Shapes in letters: B batch, L sequence length, H heads, P head dim, G groups of B/C (G divides H), N state size.

    x, z                  [B, L, H, P]   input, gate
    dt                    [B, L, H]      step size (before dt_bias/softplus)
    A                     [H]            one decay rate per head (negative for a decaying state)
    B, C                  [B, L, G, N]   input and output projections; head h uses group h // (H // G)
    D                     [H] or [H, P]  skip weight
    dt_bias               [H]            step-size bias
    initial_states        [B, H, P, N]   the state before position 0 (zeros when None)
    y                     [B, L, H, P]   in x's dtype
    final_states          [B, H, P, N]   float32 (float64 when any input is float64)

With dt' = softplus(dt + dt_bias) (bias and softplus optional) and a_t = exp(dt'_t A_h), per batch row and head h:

    h_t = a_t h_{t-1} + dt'_t x_t B_t^T          (h_t is [P, N]; h_{-1} = initial_states)
    y_t = h_t C_t + D x_t
    out_t = y_t * silu(z_t)

The argument names, order and shapes follow ``mamba_chunk_scan_combined`` of state-spaces/mamba, so either can be
used (seq_idx, cu_seqlens and dt_limit are not taken). Unlike it, ``final_states`` is differentiable here: a
cotangent on it flows back to every input. Everything is accumulated in float32 (float64 when any input is
float64); y comes back in x's dtype and each gradient in its input's dtype.

Windowed output (Stuffed Mamba's sliding window by state difference): with ``window=r``, y_t reads the state of
the last r inputs only,

    h_t^(r) = sum_{j in (t-r, t]} (prod_{k=j+1..t} a_k) dt'_j x_j B_j^T  =  h_t - (prod_{k=t-r+1..t} a_k) h_{t-r},

and y_t = h_t^(r) C_t + D x_t. The windowed state cannot be continued from itself (it needs the last r inputs),
so ``window`` takes no ``initial_states`` and returns no ``final_states``.

Decoding: ``ssd_state_update(state, x, dt, A, B, C, ...)`` advances ``state`` [B, H, P, N] in place by one token
(x, z [B, H, P]; dt [B, H]; B, C [B, G, N]) and returns y [B, H, P]; stepping through a sequence from
``initial_states`` reproduces ``ssd`` (the ``selective_state_update`` form of mamba_ssm, with A [H]).

Paths (``impl=``): "ref" loops over L in plain PyTorch (the ground truth, autograd through the loop; with a
window, a sum over the last r positions for every t). "torch" is the chunked SSD algorithm: the sequence is cut
into chunks of ``chunk_size`` positions; inside a chunk the output is the quadratic (attention-like) form
Y = (exp(segsum(dt' A)) * C B^T) (dt' X); each chunk's end state is a product of the same decays with B and X; a
scan over the chunk states gives every chunk its start state, whose contribution C h exp(cumsum(dt' A)) is then
added. Any L works (the tail is padded with dt' = 0, which neither decays nor feeds the state); the backward is
autograd's. With a window r the chunks stay ``chunk_size`` long: a block of chunk pairs whose distances are all
under r goes through the chunk states (summed over the last r // chunk_size chunks only), the (at most two) blocks
that straddle distance r are masked quadratic forms, the rest is skipped. "triton" runs one program per (batch
row, head, block of P) that walks L with the [P, N] state in registers, saving the state every ``chunk_size``
positions; the backward kernel replays each chunk from its saved state and walks it in reverse. It takes no window
(``impl=None`` picks "torch" for one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import check_float, check_tensor, load_triton, pick_impl, run_triton, shape_str

triton, tl = load_triton()  # stand-ins without Triton: the module imports, impl="triton" is refused

__all__ = ["ssd", "ssd_ref", "ssd_state_update", "ssd_state_update_ref", "ssd_torch"]


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 when any input is float64, else float32 (half-precision inputs are upcast)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _step_size(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool, dtype: torch.dtype):
    """dt' = softplus(dt + dt_bias) in ``dtype`` (bias and softplus optional); dt: [..., H], dt_bias: [H]."""
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    return F.softplus(dt) if dt_softplus else dt


def _skip_and_gate(y, x, D, z, dtype):
    """y + D x, then * silu(z); y, x, z: [..., H, P]; D: [H] or [H, P]."""
    if D is not None:
        Dv = D.to(dtype)
        y = y + (Dv[:, None] if Dv.dim() == 1 else Dv) * x.to(dtype)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y


def _heads(t: torch.Tensor, H: int) -> torch.Tensor:
    """B or C [..., G, N] -> [..., H, N]: head h gets group h // (H // G)."""
    return t.repeat_interleave(H // t.shape[-2], dim=-2)


# ----------------------------------------------------------------------------------------------------------
# Reference: one step per position, readable, float64 capable.
# ----------------------------------------------------------------------------------------------------------


def ssd_ref(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_states=None,
            return_final_states=False, chunk_size=64, window=None):
    """Ground truth: the recurrence of the module docstring, one position at a time (``chunk_size`` is unused).

    x, z: [B, L, H, P]; dt: [B, L, H]; A: [H]; B, C: [B, L, G, N]; D: [H] or [H, P]; dt_bias: [H];
    initial_states: [B, H, P, N]. Returns y [B, L, H, P] (x's dtype), and final_states [B, H, P, N]
    (float32/float64) with ``return_final_states``. With ``window=r``, y_t reads the sum over the last r
    positions, computed term by term.
    """
    cdt = _compute_dtype(x, dt, A, B, C, D, z, dt_bias, initial_states)
    batch, L, H, P = x.shape
    N = B.shape[-1]
    dtp = _step_size(dt, dt_bias, dt_softplus, cdt)  # [B, L, H]
    xc = x.to(cdt)
    Bh, Ch = _heads(B.to(cdt), H), _heads(C.to(cdt), H)  # [B, L, H, N]
    dA = dtp * A.to(cdt)  # [B, L, H]
    ys = []
    if window is None:
        h = initial_states.to(cdt) if initial_states is not None else x.new_zeros(batch, H, P, N, dtype=cdt)
        # unbind (not indexing) keeps the backward linear in L
        for dA_t, dt_t, x_t, B_t, C_t in zip(dA.unbind(1), dtp.unbind(1), xc.unbind(1), Bh.unbind(1), Ch.unbind(1)):
            h = torch.exp(dA_t)[..., None, None] * h + (dt_t[..., None] * x_t)[..., None] * B_t[:, :, None, :]
            ys.append(torch.einsum("bhpn,bhn->bhp", h, C_t))
    else:
        for t in range(L):
            h = x.new_zeros(batch, H, P, N, dtype=cdt)
            for j in range(max(0, t - window + 1), t + 1):
                decay = torch.exp(dA[:, j + 1:t + 1].sum(1))  # [B, H]: prod_{k=j+1..t} a_k
                h = h + (decay * dtp[:, j])[..., None, None] * xc[:, j, :, :, None] * Bh[:, j, :, None, :]
            ys.append(torch.einsum("bhpn,bhn->bhp", h, Ch[:, t]))
    y = _skip_and_gate(torch.stack(ys, dim=1), x, D, z, cdt).to(x.dtype)
    return (y, h) if return_final_states else y


def ssd_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decoding step: state [B, H, P, N] advanced in place; x, z [B, H, P]; dt [B, H]; A [H]; B, C
    [B, G, N]. Returns y [B, H, P] in x's dtype; equals one position of ``ssd_ref``."""
    cdt = _compute_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    H = x.shape[1]
    dtp = _step_size(dt, dt_bias, dt_softplus, cdt)  # [B, H]
    xc = x.to(cdt)
    Bh, Ch = _heads(B.to(cdt), H), _heads(C.to(cdt), H)  # [B, H, N]
    h = torch.exp(dtp * A.to(cdt))[..., None, None] * state.to(cdt) + (dtp[..., None] * xc)[..., None] * Bh[:, :, None]
    state.copy_(h)
    y = torch.einsum("bhpn,bhn->bhp", h, Ch)
    return _skip_and_gate(y, x, D, z, cdt).to(x.dtype)


# ----------------------------------------------------------------------------------------------------------
# Chunked CPU path (the SSD algorithm), autograd backward.
# ----------------------------------------------------------------------------------------------------------

_SCAN_MATRIX_MAX = 64  # chunks up to which the scan over chunk states is one [nc+1, nc+1] product, not a loop


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """a [..., T] -> [..., T, T] with out[i, j] = sum_{k=j+1..i} a_k for i >= j and -inf above the diagonal.

    Each entry is a cumulative sum over a masked copy of a (not a difference of two cumulative sums), so a
    long chunk loses no precision to cancellation and exp(out) is at most 1 for a decaying a.
    """
    T = a.shape[-1]
    rep = a[..., :, None].expand(*a.shape, T)  # rep[..., i, j] = a_i
    below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)  # i > j
    out = rep.masked_fill(~below, 0).cumsum(dim=-2)
    return out.masked_fill(~torch.ones_like(below).tril(), float("-inf"))


def _group_heads(M: torch.Tensor, G: int) -> torch.Tensor:
    """[B, H, ...] -> [B, G, H // G, ...] (head h = g * (H // G) + k)."""
    return M.view(M.shape[0], G, M.shape[1] // G, *M.shape[2:])


def _ssd_chunked(x, dtp, A, B, C, h0, Q, window):
    """The chunked core on compute-dtype tensors: y [B, L, H, P] (no D, no gate) and the final state (None with a
    window). x [B, L, H, P], dtp [B, L, H] (final step size), A [H], B, C [B, L, G, N], h0 [B, H, P, N] or None.

    Block (c, c - d) of the L x L decay matrix couples position i of chunk c with position j of chunk c - d, at
    distance d Q + i - j. Without a window, block 0 is computed as a quadratic form and every earlier block
    through the chunk states. With window r, a block whose distances are all under r (1 <= d <= r // Q - 1) goes
    through the chunk states as well, one that straddles r (at most two) is computed as a masked quadratic form,
    and one beyond r is skipped: O(L (Q + r / Q * P N / Q)) work for any r.
    """
    batch, L, H, P = x.shape
    G, N = B.shape[-2:]
    nc = -(-L // Q)
    pad = nc * Q - L
    if pad:  # dt' = 0 past the end: a = 1 and no input, so the state carries through unchanged
        x, dtp, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dtp, B, C))
    x, B, C = x.view(batch, nc, Q, H, P), B.view(batch, nc, Q, G, N), C.view(batch, nc, Q, G, N)
    dtp = dtp.view(batch, nc, Q, H)
    dA = (dtp * A).permute(0, 3, 1, 2)  # [B, H, nc, Q]
    decay = torch.exp(_segsum(dA))  # [B, H, nc, Q(i), Q(j)]: prod_{k=j+1..i} a_k, 0 above the diagonal
    xdt = x * dtp[..., None]  # [B, nc, Q, H, P]
    xdt_g = xdt.view(batch, nc, Q, G, H // G, P)
    o_q = torch.arange(Q, device=x.device)
    dist = o_q[:, None] - o_q[None, :]  # i - j

    def quadratic(W, d):
        """Block (c, c - d) for chunks c >= d as a quadratic form: W [B, H, nc - d, Q, Q] are its decays."""
        CB = torch.einsum("bclgn,bcsgn->bgcls", C[:, d:], B[:, :nc - d])  # [B, G, nc - d, Q, Q]
        y_d = torch.einsum("bgkcls,bcsgkp->bclgkp", _group_heads(W, G) * CB[:, :, None], xdt_g[:, :nc - d])
        return F.pad(y_d.reshape(batch, nc - d, Q, H, P), (0, 0, 0, 0, 0, 0, d, 0))  # zeros for chunks < d

    # 1. inside each chunk: the quadratic form (C B^T masked by the decays) applied to dt' x
    y = quadratic(decay if window is None or window >= Q else decay.masked_fill(dist >= window, 0), 0)

    # 2. each chunk's end state from its own inputs: decay from j to the chunk end (the last row of `decay`)
    to_end = decay[..., -1, :]  # [B, H, nc, Q]
    w = xdt_g * _group_heads(to_end, G).permute(0, 3, 4, 1, 2)[..., None]  # [B, nc, Q, G, H/G, P]
    states = torch.einsum("bcsgn,bcsgkp->bcgkpn", B, w).reshape(batch, nc, H, P, N)
    chunk_dA = dA.sum(-1)  # [B, H, nc]: the decay across a whole chunk is exp of this
    from_start = torch.exp(dA.cumsum(-1))  # [B, H, nc, Q]: prod_{k<=i} a_k inside the chunk

    if window is None:
        # 3. scan over the chunks: start[c] = state entering chunk c
        h0 = h0 if h0 is not None else x.new_zeros(batch, H, P, N)
        if nc <= _SCAN_MATRIX_MAX:
            all_states = torch.cat([h0[:, None], states], dim=1)  # [B, nc+1, H, P, N]
            across = torch.exp(_segsum(F.pad(chunk_dA, (1, 0))))  # [B, H, nc+1, nc+1]
            carried = torch.einsum("bhzc,bchpn->bzhpn", across, all_states)
            start, final = carried[:, :-1], carried[:, -1]
        else:
            chunk_decay = torch.exp(chunk_dA)[..., None, None]  # [B, H, nc, 1, 1]
            starts, h = [], h0
            for c in range(nc):
                starts.append(h)
                h = chunk_decay[:, :, c] * h + states[:, c]
            start, final = torch.stack(starts, dim=1), h
    else:
        # 3w. blocks d >= 1. between[c] = prod of the chunk decays strictly between chunks c - d and c, built up
        # one d at a time (products of values <= 1, never a quotient)
        final, start = None, torch.zeros_like(states)
        between = torch.ones_like(chunk_dA)
        chunk_decay = torch.exp(chunk_dA)
        d = 1
        while d < nc and d * Q - (Q - 1) < window:  # some distance of block d is under r
            if d > 1:
                between = between * F.pad(chunk_decay[..., :nc - d + 1], (d - 1, 0), value=1.0)
            if d * Q + Q - 1 < window:  # whole block inside the window: through the chunk states
                start = start + F.pad(between[..., d:].permute(0, 2, 1)[..., None, None] * states[:, :nc - d],
                                      (0, 0, 0, 0, 0, 0, d, 0))
            else:  # straddles r: the masked quadratic form
                W = from_start[:, :, d:, :, None] * between[:, :, d:, None, None] * to_end[:, :, :nc - d, None, :]
                y = y + quadratic(W.masked_fill(d * Q + dist >= window, 0), d)
            d += 1

    # 4. the start state's contribution: C h decayed from the chunk start to position i
    y_off = torch.einsum("bclgn,bcgkpn->bclgkp", C, start.reshape(batch, nc, G, H // G, P, N))
    y = y + y_off.reshape(batch, nc, Q, H, P) * from_start.permute(0, 2, 3, 1)[..., None]
    return y.reshape(batch, nc * Q, H, P)[:, :L], final


def ssd_torch(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_states=None,
              return_final_states=False, chunk_size=64, window=None):
    """The chunked SSD path (any device): same arguments and returns as ``ssd_ref``; autograd backward.

    Memory is O(B * H * L * chunk_size) for the in-chunk decay masks plus O(B * L / chunk_size * H * P * N) for the
    chunk states, with or without a window (a window >= L is no window).
    """
    cdt = _compute_dtype(x, dt, A, B, C, D, z, dt_bias, initial_states)
    L = x.shape[1]
    if window is not None and window >= L:  # every position sees the whole prefix: no window
        window = None
    dtp = _step_size(dt, dt_bias, dt_softplus, cdt)
    h0 = initial_states.to(cdt) if initial_states is not None else None
    Q = min(chunk_size, L)
    y, final = _ssd_chunked(x.to(cdt), dtp, A.to(cdt), B.to(cdt), C.to(cdt), h0, Q, window)
    y = _skip_and_gate(y, x, D, z, cdt).to(x.dtype)
    return (y, final) if return_final_states else y


# ----------------------------------------------------------------------------------------------------------
# Triton kernels. One program owns BLOCK_P rows of one head's state in one batch row and walks L with the
# [BLOCK_P, BLOCK_N] state in registers. They take the final step size dt' (bias and softplus applied outside, so
# autograd handles those elementwise pieces, D and the gate). Tensors are contiguous, in the compute dtype.
#   x, y, dx [B, L, H, P]; dt [B, L, H]; B, C [B, L, G, N]; states [B, H, P, N]; chunk_states [B, H, NCHUNK, P, N]
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _ssd_fwd_kernel(
    x, dt, A, B, C, h0, y, hL, chunk_states,
    L, H, P, N, G, NCHUNK,
    CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, HAS_H0: tl.constexpr,
):
    i_p, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_g = i_h // (H // G)
    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P)
    o_n = tl.arange(0, BLOCK_N)
    m_p, m_n = o_p < P, o_n < N
    m_pn = m_p[:, None] & m_n[None, :]
    p_state = (i_bh * P + o_p[:, None]) * N + o_n[None, :]  # [BLOCK_P, BLOCK_N] in a [B, H, P, N] tensor
    b_A = tl.load(A + i_h)
    if HAS_H0:
        b_h = tl.load(h0 + p_state, mask=m_pn, other=0)
    else:
        b_h = tl.zeros([BLOCK_P, BLOCK_N], dtype=b_A.dtype)
    p_cs = ((i_bh * NCHUNK) * P + o_p[:, None]) * N + o_n[None, :]
    i_c = 0
    while i_c < NCHUNK:  # a while loop: the interpreter cannot range() over a runtime int
        tl.store(chunk_states + p_cs + i_c * P * N, b_h, mask=m_pn)
        for i_i in range(CHUNK):
            i_t = i_c * CHUNK + i_i
            m_t = i_t < L
            p_x = ((i_b * L + i_t) * H + i_h) * P + o_p
            p_bc = ((i_b * L + i_t) * G + i_g) * N + o_n
            b_x = tl.load(x + p_x, mask=m_p & m_t, other=0)
            b_dt = tl.load(dt + (i_b * L + i_t) * H + i_h, mask=m_t, other=0)  # 0 past L: the state carries
            b_B = tl.load(B + p_bc, mask=m_n & m_t, other=0)
            b_C = tl.load(C + p_bc, mask=m_n & m_t, other=0)
            b_h = tl.exp(b_dt * b_A) * b_h + (b_dt * b_x)[:, None] * b_B[None, :]
            b_y = tl.sum(b_h * b_C[None, :], axis=1)
            tl.store(y + p_x, b_y, mask=m_p & m_t)
        i_c += 1
    tl.store(hL + p_state, b_h, mask=m_pn)


@triton.jit
def _ssd_bwd_kernel(
    x, dt, A, B, C, dy, dhL, chunk_states, scratch,
    dx, ddt_part, dA_part, dB_part, dC_part, dh0,
    L, H, P, N, G, NCHUNK, NPB,
    CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, HAS_DHL: tl.constexpr,
):
    """g_t = dL/dh_t = dy_t C_t^T + a_{t+1} g_{t+1} (g_{L-1} starts from dhL), walked backwards chunk by chunk:
    each chunk's states are replayed from its saved start state into ``scratch`` (slot i holds the state before
    position i of the chunk, slot CHUNK the one after the last), then read in reverse."""
    i_p, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_g = i_h // (H // G)
    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P)
    o_n = tl.arange(0, BLOCK_N)
    m_p, m_n = o_p < P, o_n < N
    m_pn = m_p[:, None] & m_n[None, :]
    p_state = (i_bh * P + o_p[:, None]) * N + o_n[None, :]
    p_cs = ((i_bh * NCHUNK) * P + o_p[:, None]) * N + o_n[None, :]
    p_scr = ((i_bh * NPB + i_p) * (CHUNK + 1)) * BLOCK_P * BLOCK_N \
        + tl.arange(0, BLOCK_P)[:, None] * BLOCK_N + o_n[None, :]
    p_part = (i_bh * NPB + i_p) * L  # row of this program in the [B, H, NPB, L, ...] partials
    b_A = tl.load(A + i_h)
    if HAS_DHL:
        b_g = tl.load(dhL + p_state, mask=m_pn, other=0)
    else:
        b_g = tl.zeros([BLOCK_P, BLOCK_N], dtype=b_A.dtype)
    b_dA = b_A * 0
    i_c = NCHUNK - 1
    while i_c >= 0:
        b_h = tl.load(chunk_states + p_cs + i_c * P * N, mask=m_pn, other=0)
        tl.store(scratch + p_scr, b_h)
        for i_i in range(CHUNK):  # replay the chunk forward
            i_t = i_c * CHUNK + i_i
            m_t = i_t < L
            b_x = tl.load(x + ((i_b * L + i_t) * H + i_h) * P + o_p, mask=m_p & m_t, other=0)
            b_dt = tl.load(dt + (i_b * L + i_t) * H + i_h, mask=m_t, other=0)
            b_B = tl.load(B + ((i_b * L + i_t) * G + i_g) * N + o_n, mask=m_n & m_t, other=0)
            b_h = tl.exp(b_dt * b_A) * b_h + (b_dt * b_x)[:, None] * b_B[None, :]
            tl.store(scratch + p_scr + (i_i + 1) * BLOCK_P * BLOCK_N, b_h)
        tl.debug_barrier()
        for i_r in range(CHUNK):  # and walk it backwards
            i_i = CHUNK - 1 - i_r
            i_t = i_c * CHUNK + i_i
            m_t = i_t < L
            p_x = ((i_b * L + i_t) * H + i_h) * P + o_p
            p_bc = ((i_b * L + i_t) * G + i_g) * N + o_n
            b_x = tl.load(x + p_x, mask=m_p & m_t, other=0)
            b_dy = tl.load(dy + p_x, mask=m_p & m_t, other=0)
            b_dt = tl.load(dt + (i_b * L + i_t) * H + i_h, mask=m_t, other=0)
            b_B = tl.load(B + p_bc, mask=m_n & m_t, other=0)
            b_C = tl.load(C + p_bc, mask=m_n & m_t, other=0)
            b_prev = tl.load(scratch + p_scr + i_i * BLOCK_P * BLOCK_N)
            b_h = tl.load(scratch + p_scr + (i_i + 1) * BLOCK_P * BLOCK_N)
            b_g += b_dy[:, None] * b_C[None, :]
            b_a = tl.exp(b_dt * b_A)
            b_dC = tl.sum(b_dy[:, None] * b_h, axis=0)
            b_gB = tl.sum(b_g * b_B[None, :], axis=1)  # [BLOCK_P]
            b_gx = tl.sum(b_g * b_x[:, None], axis=0)  # [BLOCK_N]
            b_gh = tl.sum(tl.sum(b_g * b_prev, axis=1), axis=0) * b_a  # d/d(dA) of this step
            b_ddt = tl.sum(b_gB * b_x, axis=0) + b_gh * b_A
            b_dA += b_gh * b_dt
            tl.store(dx + p_x, b_dt * b_gB, mask=m_p & m_t)
            tl.store(dB_part + (p_part + i_t) * N + o_n, b_dt * b_gx, mask=m_n & m_t)
            tl.store(dC_part + (p_part + i_t) * N + o_n, b_dC, mask=m_n & m_t)
            tl.store(ddt_part + p_part + i_t, b_ddt, mask=m_t)
            b_g = b_a * b_g
        tl.debug_barrier()
        i_c -= 1
    tl.store(dh0 + p_state, b_g, mask=m_pn)
    tl.store(dA_part + i_bh * NPB + i_p, b_dA)


def _triton_config(P, N, L, chunk_size):
    """(BLOCK_P, BLOCK_N, CHUNK, NCHUNK): state rows per program, padded N, positions between saved states."""
    block_n = triton.next_power_of_2(N)
    block_p = min(triton.next_power_of_2(P), max(1, 2048 // block_n))
    chunk = max(1, min(chunk_size, L))
    return block_p, block_n, chunk, triton.cdiv(L, chunk)


def _ssd_fwd(x, dtp, A, B, C, h0, chunk_size):
    batch, L, H, P = x.shape
    G, N = B.shape[-2:]
    block_p, block_n, chunk, nchunk = _triton_config(P, N, L, chunk_size)
    y = torch.empty_like(x)
    hL = x.new_empty(batch, H, P, N)
    chunk_states = x.new_empty(batch, H, nchunk, P, N)
    _ssd_fwd_kernel[(triton.cdiv(P, block_p), batch * H)](
        x, dtp, A, B, C, h0, y, hL, chunk_states, L, H, P, N, G, nchunk,
        CHUNK=chunk, BLOCK_P=block_p, BLOCK_N=block_n, HAS_H0=h0 is not None,
    )
    return y, hL, chunk_states


def _ssd_bwd(x, dtp, A, B, C, chunk_states, dy, dhL, chunk_size):
    """Launch the backward kernel; returns dx, ddt', dA, dB, dC, dh0 (compute dtype)."""
    batch, L, H, P = x.shape
    G, N = B.shape[-2:]
    block_p, block_n, chunk, nchunk = _triton_config(P, N, L, chunk_size)
    npb = triton.cdiv(P, block_p)
    scratch = x.new_empty(batch * H * npb, chunk + 1, block_p, block_n)
    dx = torch.empty_like(x)
    ddt_part = x.new_empty(batch, H, npb, L)
    dA_part = x.new_empty(batch, H, npb)
    dB_part = x.new_empty(batch, H, npb, L, N)
    dC_part = x.new_empty(batch, H, npb, L, N)
    dh0 = x.new_empty(batch, H, P, N)
    _ssd_bwd_kernel[(npb, batch * H)](
        x, dtp, A, B, C, dy, dhL, chunk_states, scratch, dx, ddt_part, dA_part, dB_part, dC_part, dh0,
        L, H, P, N, G, nchunk, npb,
        CHUNK=chunk, BLOCK_P=block_p, BLOCK_N=block_n, HAS_DHL=dhL is not None,
    )
    # sum the partials: over P blocks, and over the heads of a group for B and C
    ddt = ddt_part.sum(2).transpose(1, 2)  # [B, L, H]
    dB = dB_part.sum(2).view(batch, G, H // G, L, N).sum(2).transpose(1, 2)  # [B, L, G, N]
    dC = dC_part.sum(2).view(batch, G, H // G, L, N).sum(2).transpose(1, 2)
    return dx, ddt, dA_part.sum((0, 2)), dB, dC, dh0


class _SsdTritonFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dtp, A, B, C, h0, chunk_size):
        x, dtp, A, B, C = (t.contiguous() for t in (x, dtp, A, B, C))
        h0 = h0.contiguous() if h0 is not None else None
        y, hL, chunk_states = _ssd_fwd(x, dtp, A, B, C, h0, chunk_size)
        ctx.save_for_backward(x, dtp, A, B, C, chunk_states)
        ctx.chunk_size, ctx.has_h0 = chunk_size, h0 is not None
        return y, hL

    @staticmethod
    def backward(ctx, dy, dhL):
        x, dtp, A, B, C, chunk_states = ctx.saved_tensors
        dy = torch.zeros_like(x) if dy is None else dy.contiguous()
        dhL = dhL.contiguous() if dhL is not None else None
        dx, ddt, dA, dB, dC, dh0 = _ssd_bwd(x, dtp, A, B, C, chunk_states, dy, dhL, ctx.chunk_size)
        return dx, ddt, dA, dB, dC, dh0 if ctx.has_h0 else None, None


def _ssd_triton(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_states=None,
                return_final_states=False, chunk_size=64, window=None):
    if window is not None:
        raise ValueError("ssd: impl='triton' takes no window; use impl='torch' (or impl=None, which picks it)")
    cdt = _compute_dtype(x, dt, A, B, C, D, z, dt_bias, initial_states)
    dtp = _step_size(dt, dt_bias, dt_softplus, cdt)
    h0 = initial_states.to(cdt) if initial_states is not None else None
    y, final = _SsdTritonFn.apply(x.to(cdt), dtp, A.to(cdt), B.to(cdt), C.to(cdt), h0, chunk_size)
    y = _skip_and_gate(y, x, D, z, cdt).to(x.dtype)
    return (y, final) if return_final_states else y


# ----------------------------------------------------------------------------------------------------------
# Public functions.
# ----------------------------------------------------------------------------------------------------------


def _check_bc(name, t, lead, H, letters):
    """B or C: [*lead, G, N] with G dividing H."""
    check_tensor(name, t, (*lead, None, None), letters)
    if t.shape[-2] == 0 or H % t.shape[-2] != 0:
        raise ValueError(f"{name} has G={t.shape[-2]} groups, which must divide H={H} ({name} is {letters}, "
                         f"got {shape_str(t)})")
    check_float(name, t)


def _check_common(x, dt, A, B, C, D, z, dt_bias, lead, H, P, x_letters, dt_letters, bc_letters):
    check_tensor("dt", dt, (*lead, H), dt_letters)
    check_tensor("A", A, (H,), "[H]")
    _check_bc("B", B, lead, H, bc_letters)
    check_tensor("C", C, tuple(B.shape), f"{bc_letters} (the shape of B)")
    check_float("C", C)
    if D is not None:
        if D.dim() == 2:
            check_tensor("D", D, (H, P), "[H, P]")
        else:
            check_tensor("D", D, (H,), "[H] or [H, P]")
    for name, t, shape, letters in (("z", z, tuple(x.shape), x_letters), ("dt_bias", dt_bias, (H,), "[H]")):
        if t is not None:
            check_tensor(name, t, shape, letters)
    for name, t in (("x", x), ("dt", dt), ("A", A), ("D", D), ("z", z), ("dt_bias", dt_bias)):
        if t is not None:
            check_float(name, t)
    for name, t in (("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z), ("dt_bias", dt_bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} must be on x's device ({x.device}), got {t.device}")


def _check_ssd(x, dt, A, B, C, D, z, dt_bias, initial_states, return_final_states, chunk_size, window):
    check_tensor("x", x, (None, None, None, None), "[B, L, H, P]")
    batch, L, H, P = x.shape
    if L == 0:
        raise ValueError(f"x must be [B, L, H, P] with L >= 1, got {shape_str(x)}")
    _check_common(x, dt, A, B, C, D, z, dt_bias, (batch, L), H, P, "[B, L, H, P]", "[B, L, H]", "[B, L, G, N]")
    if initial_states is not None:
        check_tensor("initial_states", initial_states, (batch, H, P, B.shape[-1]), "[B, H, P, N]")
        check_float("initial_states", initial_states)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be None or an int >= 1, got {window!r}")
        if initial_states is not None or return_final_states:
            raise ValueError("window takes no initial_states and returns no final_states (the windowed state "
                             "needs the last `window` inputs to be continued); pass window=None for those")


def ssd(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_states=None,
        return_final_states=False, chunk_size=64, *, window=None, impl=None):
    """The SSD scan of Mamba-2: the recurrence of the module docstring, batched over B and H.

    Args:
        x: [B, L, H, P] input. dt: [B, L, H] step size before bias and softplus.
        A: [H] decay rate per head (negative for a decaying state).
        B, C: [B, L, G, N] with G dividing H (head h uses group h // (H // G)).
        D: optional [H] or [H, P] skip weight. z: optional [B, L, H, P] gate (out * silu(z)).
        dt_bias: optional [H], added to dt. dt_softplus: apply softplus to the step size.
        initial_states: optional [B, H, P, N], the state before position 0.
        return_final_states: also return the state after position L-1 (differentiable).
        chunk_size: positions per chunk ("torch": the quadratic blocks; "triton": positions between the states
            saved for the backward). Any L works, whether or not chunk_size divides it.
        window: optional r >= 1: y_t reads only the last r inputs' state (see the module docstring); no
            initial_states or final_states with it; "torch" and "ref" only.
        impl: "ref", "torch", "triton" or None (Triton on CUDA without a window, torch otherwise; if the Triton
            kernel fails to compile or launch, one warning and the torch path from then on).

    Returns:
        y [B, L, H, P] in x's dtype; with ``return_final_states`` the pair (y, final_states), final_states
        [B, H, P, N] in float32 (float64 when any input is float64).

    Example:
        >>> x, dt = torch.randn(2, 100, 4, 16), torch.rand(2, 100, 4) * 0.1
        >>> A, B, C = -torch.rand(4), torch.randn(2, 100, 1, 8), torch.randn(2, 100, 1, 8)
        >>> y, h = ssd(x, dt, A, B, C, return_final_states=True, chunk_size=32)
        >>> y.shape, h.shape
        (torch.Size([2, 100, 4, 16]), torch.Size([2, 4, 16, 8]))
    """
    _check_ssd(x, dt, A, B, C, D, z, dt_bias, initial_states, return_final_states, chunk_size, window)
    if impl == "triton" and window is not None:
        raise ValueError("ssd: impl='triton' takes no window; use impl='torch' (or impl=None, which picks it)")
    requested, impl = impl, pick_impl("ssd", impl, x.device)
    if impl == "triton" and window is not None:
        impl = "torch"
    args = (x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_states, return_final_states, chunk_size, window)
    if impl == "triton":
        return run_triton("ssd", requested, _ssd_triton, ssd_torch, *args)
    return {"ref": ssd_ref, "torch": ssd_torch}[impl](*args)


def ssd_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, *, impl=None):
    """Advance ``state`` [B, H, P, N] in place by one token and return y [B, H, P] in x's dtype.

    Args:
        state: [B, H, P, N] SSM state (any float dtype; kept in its dtype). x, z: [B, H, P]. dt: [B, H].
        A: [H]. B, C: [B, G, N] with G dividing H. D: [H] or [H, P]. dt_bias: [H].
        dt_softplus: apply softplus to dt + dt_bias. impl: as for ``ssd`` (one step is a few elementwise ops
            and two small contractions, so every path runs the same PyTorch code).

    Stepping from ``initial_states`` through x[:, t] reproduces ``ssd`` position by position.
    """
    check_tensor("state", state, (None, None, None, None), "[B, H, P, N]")
    batch, H, P, N = state.shape
    check_tensor("x", x, (batch, H, P), "[B, H, P]")
    _check_common(x, dt, A, B, C, D, z, dt_bias, (batch,), H, P, "[B, H, P]", "[B, H]", "[B, G, N]")
    if B.shape[-1] != N:
        raise ValueError(f"B must be [B, G, N] with N={N} (the state's last axis), got {shape_str(B)}")
    check_float("state", state)
    pick_impl("ssd_state_update", impl, state.device)
    return ssd_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
