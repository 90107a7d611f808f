"""Softmax attention in the four CAB patterns, plus sliding-window and chunked (block-local) variants.

Shapes (letters used throughout):

    q                 [B, H, Lq, P]    queries
    k                 [B, H, Lk, P]    keys
    v                 [B, H, Lk, Pv]   values (Pv may differ from P)
    key_padding_mask  [B, Lk] bool     True = KEEP this key, False = padding (ignored)
    out               [B, H, Lq, Pv]

    out[b, h, i] = sum_j softmax_j(scale * q[b, h, i] . k[b, h, j] over allowed j) * v[b, h, j]

``scale`` defaults to 1 / sqrt(P). A query row with no allowed key (everything padded) gives zeros, not NaN,
and passes no gradient.

Which keys a query i may see (all patterns also drop keys where key_padding_mask is False):

    pattern (CAB name)        arguments                      allowed keys j
    noncausal self (NS)       causal=False                   all j
    causal self (CS)          causal=True                    j <= i                    (needs Lq == Lk)
    noncausal cross (NC)      cross=True, causal=False       all j                     (Lq, Lk free)
    causal cross (CC)         cross=True, causal=True        all j                     (Lq, Lk free)
    sliding window, causal    window=W, causal=True          i - W < j <= i            (W keys, i included)
    sliding window, symmetric window=W, causal=False         |i - j| < W               (2W - 1 keys)
    chunked                   chunk=C, causal=False          j // C == i // C
    chunked, causal           chunk=C, causal=True           j // C == i // C and j <= i

CAB's causal cross: every target query sees the WHOLE source; causality binds only the target (query)
side, i.e. output at target step i must not change when target steps after i are removed. Queries never
mix in attention, so this holds for the unmasked cross pattern, and ``cross=True, causal=True`` computes
exactly what ``cross=True, causal=False`` computes. It must not be implemented with SDPA's ``is_causal``,
which aligns the triangle top-left on an Lq x Lk matrix and would hide source keys j > i; no path here
passes ``is_causal`` unless Lq == Lk in a self pattern. A "monotonic" cross (query i sees the source up
to an aligned position) is a different pattern and is not provided here.

``window`` and ``chunk`` are self patterns (Lq == Lk, positions aligned); they cannot be combined with
each other or with ``cross=True``.

Paths (``impl=``):

- ``"ref"``: ``attention_ref``, an explicit L x L masked softmax, computed in float64 when given float64
  and float32 otherwise. Ground truth for tests; memory O(Lq * Lk).
- ``"torch"``: ``attention_torch``. Full patterns call ``torch.nn.functional.scaled_dot_product_attention``
  (SDPA; flash/memory-efficient kernels on CUDA, the tiled flash kernel on CPU). Sliding window splits the
  queries into blocks of ``blk = max(W, 16)`` rows (at most L); each block attends to the ``blk + W - 1``
  keys that can reach it (``blk + 2W - 2`` when symmetric), gathered with ``unfold``, under a small
  [blk, span] local mask, in one batched SDPA call: memory O(L * W), never an L x L mask. Chunked reshapes
  to [B * L/C, H, C, P] (tail padded) and runs SDPA on every chunk at once: memory O(L * C).
- ``"triton"``: a flash-attention style kernel (online softmax over key blocks for each block of queries,
  skipping key blocks outside the causal / window / chunk range), with a backward pass computing dq, dk and
  dv in two kernels (one over key blocks for dk/dv, one over query blocks for dq; no atomics). Runs on CUDA,
  and on CPU tensors under ``TRITON_INTERPRET=1``. Supports float16 / bfloat16 / float32.

Default (``impl=None``): on CUDA, full patterns use SDPA (its flash kernel is faster than anything written
here) and windowed / chunked patterns use the Triton kernel, which skips key blocks outside the window or
chunk in place (O(L * W) work) instead of gathering overlapping copies of k and v as the torch path does.
torch's flex_attention would also skip blocks but needs torch.compile (slow first call, a compiler
toolchain), so it is not used. Everywhere else, and for float64, the default is ``"torch"``.

``KVCache`` serves incremental decoding: ``step`` appends one token's key/value and attends its query to
the cache, reproducing the causal (or causal sliding-window) forward token by token.
"""


import torch
import torch.nn.functional as F

from ._dispatch import check_float, check_tensor, kernel_runnable, load_triton, pick_impl, run_triton, shape_str

triton, tl = load_triton()  # stand-ins without Triton: the module imports, impl="triton" is refused

__all__ = ["KVCache", "attention", "attention_mask", "attention_ref", "attention_torch", "attention_triton"]


# ----------------------------------------------------------------------------------------------------------
# reference
# ----------------------------------------------------------------------------------------------------------


def attention_mask(
    Lq: int,
    Lk: int,
    *,
    causal: bool = False,
    cross: bool = False,
    window: int | None = None,
    chunk: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The [Lq, Lk] bool matrix of allowed (query i, key j) pairs for a pattern (True = may attend).

    Key padding is not included (it is per batch element). Materialises Lq x Lk: for tests and the ref.
    """
    i = torch.arange(Lq, device=device)[:, None]
    j = torch.arange(Lk, device=device)[None, :]
    allowed = torch.ones(Lq, Lk, dtype=torch.bool, device=device)
    if causal and not cross:
        allowed &= j <= i
    if window is not None:
        allowed &= (i - j < window) & (j - i < window)
    if chunk is not None:
        allowed &= (i // chunk) == (j // chunk)
    return allowed


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    cross: bool = False,
    window: int | None = None,
    chunk: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Explicit masked softmax: q [B, H, Lq, P], k [B, H, Lk, P], v [B, H, Lk, Pv] -> [B, H, Lq, Pv].

    Computes in float64 for float64 inputs and float32 otherwise; returns the input dtype.
    """
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = q.to(dtype), k.to(dtype), v.to(dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    Lq, Lk = q.shape[2], k.shape[2]

    allowed = attention_mask(Lq, Lk, causal=causal, cross=cross, window=window, chunk=chunk, device=q.device)
    allowed = allowed[None, None]  # [1, 1, Lq, Lk]
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]  # [B, 1, Lq, Lk]
    row_ok = allowed.any(-1, keepdim=True)  # rows with at least one key

    scores = torch.einsum("bhip,bhjp->bhij", qf, kf) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    scores = scores.masked_fill(~row_ok, 0.0)  # an empty row softmaxes over zeros, then is zeroed below
    probs = torch.softmax(scores, dim=-1).masked_fill(~allowed, 0.0)
    out = torch.einsum("bhij,bhjd->bhid", probs, vf)
    return out.to(q.dtype)


# ----------------------------------------------------------------------------------------------------------
# torch (SDPA-based) path
# ----------------------------------------------------------------------------------------------------------


def _sdpa_masked(q, k, v, allowed, scale, maybe_empty_rows=True):
    """SDPA under a bool ``allowed`` mask (broadcastable to the scores); rows with no allowed key -> 0.

    Such rows are given every key (so no softmax over nothing happens, on any backend or version) and their
    output is zeroed, which also stops their gradient. Callers that know every row has a key skip this.
    """
    if not maybe_empty_rows:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
    row_ok = allowed.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | ~row_ok, scale=scale)
    return out.masked_fill(~row_ok, 0.0)


def _keep_all(B: int, L: int, device) -> torch.Tensor:
    return torch.ones(B, L, dtype=torch.bool, device=device)


def _window_block(window: int, L: int) -> int:
    """Query block size for the sliding-window path: at least the window, not tiny, not above L."""
    return max(1, min(max(window, 16), L))


def _blocks(x: torch.Tensor, size: int, step: int, pad_front: int, pad_back: int) -> torch.Tensor:
    """[B, H, L, D] -> [B * n, H, size, D]: the rows [b * step, b * step + size) of x padded with zero rows.

    Blocks go to the batch axis so that a per-block mask [B * n, 1, ., .] broadcasts over heads and SDPA sees
    4-D inputs (which keeps it on its fused CPU / CUDA kernels).
    """
    B, H, _, D = x.shape
    w = F.pad(x, (0, 0, pad_front, pad_back)).unfold(2, size, step)  # [B, H, n, D, size]
    return w.permute(0, 2, 1, 4, 3).reshape(-1, H, size, D)


def _unblock(out: torch.Tensor, B: int, L: int) -> torch.Tensor:
    """[B * n, H, size, Pv] (non-overlapping blocks) -> [B, H, L, Pv]."""
    n, H, size, Pv = out.shape[0] // B, out.shape[1], out.shape[2], out.shape[3]
    return out.view(B, n, H, size, Pv).transpose(1, 2).reshape(B, H, n * size, Pv)[:, :, :L]


def _attention_window_torch(q, k, v, window, causal, key_padding_mask, scale):
    """Sliding window with memory O(L * W): query blocks attend to the keys that can reach them."""
    B, H, L, P = q.shape
    blk = _window_block(window, L)
    n = -(-L // blk)
    left = window - 1
    right = 0 if causal else window - 1
    span = blk + left + right  # keys that can reach a block of blk queries
    pad_back = n * blk - L + right

    qb = _blocks(q, blk, blk, 0, n * blk - L)  # [B * n, H, blk, P]
    kb = _blocks(k, span, blk, left, pad_back)  # block b: keys b * blk - left .. b * blk + blk - 1 + right
    vb = _blocks(v, span, blk, left, pad_back)

    r = torch.arange(blk, device=q.device)[:, None]
    c = torch.arange(span, device=q.device)[None, :]
    d = r + left - c  # i - j for query row r and key column c of any block
    local = (d < window) & (d >= 0) if causal else (d < window) & (d > -window)  # [blk, span]

    keep = _keep_all(B, L, q.device) if key_padding_mask is None else key_padding_mask
    keep = F.pad(keep, (left, 0), value=False)
    # Causal: no real query reaches the tail padding, so letting tail rows see it keeps every row non-empty
    # (each real row sees itself) and the empty-row guard can be skipped when nothing is padded.
    keep = F.pad(keep, (0, pad_back), value=causal).unfold(1, span, blk)  # [B, n, span]
    allowed = (local & keep[:, :, None, :]).view(B * n, 1, blk, span)
    maybe_empty = key_padding_mask is not None or not causal
    return _unblock(_sdpa_masked(qb, kb, vb, allowed, scale, maybe_empty), B, L)


def _attention_chunk_torch(q, k, v, chunk, causal, key_padding_mask, scale):
    """Block-local attention with memory O(L * C): SDPA on [B * L/C, H, C, P] (tail padded)."""
    B, H, L, P = q.shape
    n = -(-L // chunk)
    pad = n * chunk - L
    qc, kc, vc = (_blocks(x, chunk, chunk, 0, pad) for x in (q, k, v))  # [B * n, H, C, .]
    if key_padding_mask is None and (causal or pad == 0):
        # Padded tail keys sit after every real query of their chunk, so the triangle already hides them.
        out = F.scaled_dot_product_attention(qc, kc, vc, is_causal=causal, scale=scale)
    else:
        keep = _keep_all(B, L, q.device) if key_padding_mask is None else key_padding_mask
        allowed = F.pad(keep, (0, pad), value=False).view(B * n, 1, 1, chunk)
        if causal:
            allowed = allowed & torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
        out = _sdpa_masked(qc, kc, vc, allowed, scale)
    return _unblock(out, B, L)


def attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    cross: bool = False,
    window: int | None = None,
    chunk: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """SDPA-based path; windowed / chunked patterns in O(L * W) / O(L * C) memory. Shapes as ``attention``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if window is not None:
        return _attention_window_torch(q, k, v, window, causal, key_padding_mask, scale)
    if chunk is not None:
        return _attention_chunk_torch(q, k, v, chunk, causal, key_padding_mask, scale)
    causal_self = causal and not cross  # Lq == Lk was checked: top-left alignment is the right one
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal_self, scale=scale)
    allowed = key_padding_mask[:, None, None, :]  # [B, 1, 1, Lk]
    if causal_self:
        L = q.shape[2]
        allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    return _sdpa_masked(q, k, v, allowed, scale)


# ----------------------------------------------------------------------------------------------------------
# triton kernels
# ----------------------------------------------------------------------------------------------------------


# Two workarounds keep these kernels runnable under Triton 3.6's CPU interpreter (TRITON_INTERPRET=1):
# - Loops over key (or query) blocks are `while x < hi`, not `for x in range(lo, hi, step)`: the interpreter
#   turns runtime loop bounds into ints with int(ndarray), which NumPy >= 2.4 rejects
#   (triton-lang/triton#9171). Compiled Triton lowers `while` to scf.while with the same loop-carried values
#   (without software pipelining).
# - _dot upcasts its operands when DOT_F32 is set (interpreter only): the interpreter multiplies the raw
#   uint16 bits of bfloat16 operands.


@triton.jit
def _dot(a, b, PREC: tl.constexpr, DOT_F32: tl.constexpr):
    """a @ b accumulated in fp32; DOT_F32 (set on the interpreter only) upcasts the operands first."""
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _attn_allowed(o_m, o_n, Lq, Lk, window, chunk,
                  CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CHUNK: tl.constexpr):
    """[BLOCK_M, BLOCK_N] bool: query o_m may see key o_n (bounds and pattern; no key padding)."""
    b_ok = (o_m[:, None] < Lq) & (o_n[None, :] < Lk)
    if CAUSAL:
        b_ok = b_ok & (o_n[None, :] <= o_m[:, None])
    if HAS_WINDOW:
        b_d = o_m[:, None] - o_n[None, :]
        b_ok = b_ok & (b_d < window) & (b_d > -window)
    if HAS_CHUNK:
        b_ok = b_ok & ((o_m[:, None] // chunk) == (o_n[None, :] // chunk))
    return b_ok


@triton.jit
def _attn_key_range(m0, Lk, window, chunk, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                    HAS_CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Keys [lo, hi) that queries m0 .. m0 + BLOCK_M - 1 can see; lo rounded down to a key block."""
    lo = m0 * 0
    hi = m0 * 0 + Lk
    if CAUSAL:
        hi = tl.minimum(hi, m0 + BLOCK_M)
    if HAS_WINDOW:
        lo = tl.maximum(lo, m0 - window + 1)
        if not CAUSAL:
            hi = tl.minimum(hi, m0 + BLOCK_M + window - 1)
    if HAS_CHUNK:
        lo = tl.maximum(lo, (m0 // chunk) * chunk)
        hi = tl.minimum(hi, ((m0 + BLOCK_M - 1) // chunk + 1) * chunk)
    lo = (lo // BLOCK_N) * BLOCK_N
    return lo, hi


@triton.jit
def _attn_query_range(n0, Lq, window, chunk, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                      HAS_CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Queries [lo, hi) that can see keys n0 .. n0 + BLOCK_N - 1; lo rounded down to a query block."""
    lo = n0 * 0
    hi = n0 * 0 + Lq
    if CAUSAL:
        lo = tl.maximum(lo, n0)
    if HAS_WINDOW:
        hi = tl.minimum(hi, n0 + BLOCK_N + window - 1)
        if not CAUSAL:
            lo = tl.maximum(lo, n0 - window + 1)
    if HAS_CHUNK:
        lo = tl.maximum(lo, (n0 // chunk) * chunk)
        hi = tl.minimum(hi, ((n0 + BLOCK_N - 1) // chunk + 1) * chunk)
    lo = (lo // BLOCK_M) * BLOCK_M
    return lo, hi


@triton.jit
def _attn_fwd_kernel(
    q, k, v, o, lse, kpm, scale,
    H, Lq, Lk, P, PV, window, chunk,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CHUNK: tl.constexpr, HAS_KPM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    PREC: tl.constexpr, DOT_F32: tl.constexpr,
):
    """One block of BLOCK_M queries of one (batch, head): online softmax over the reachable key blocks.

    Writes o [B, H, Lq, Pv] and lse [B, H, Lq] (log-sum-exp of the scaled scores; +inf for empty rows).
    """
    i_m, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)  # int64: B*H*L*P may pass 2^31
    i_b = i_bh // H
    m0 = i_m * BLOCK_M
    o_m = m0 + tl.arange(0, BLOCK_M)
    o_k = tl.arange(0, BLOCK_K)
    o_v = tl.arange(0, BLOCK_V)
    m_m = o_m < Lq

    p_q = q + i_bh * Lq * P + o_m[:, None] * P + o_k[None, :]
    b_q = tl.load(p_q, mask=m_m[:, None] & (o_k[None, :] < P), other=0.0)

    b_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    b_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    b_acc = tl.zeros([BLOCK_M, BLOCK_V], dtype=tl.float32)

    lo, hi = _attn_key_range(m0, Lk, window, chunk, CAUSAL, HAS_WINDOW, HAS_CHUNK, BLOCK_M, BLOCK_N)
    n0 = lo
    while n0 < hi:  # not range(): see the note above _dot
        o_n = n0 + tl.arange(0, BLOCK_N)
        m_n = o_n < Lk
        p_k = k + i_bh * Lk * P + o_n[:, None] * P + o_k[None, :]
        p_v = v + i_bh * Lk * PV + o_n[:, None] * PV + o_v[None, :]
        b_k = tl.load(p_k, mask=m_n[:, None] & (o_k[None, :] < P), other=0.0)
        b_v = tl.load(p_v, mask=m_n[:, None] & (o_v[None, :] < PV), other=0.0)

        b_s = _dot(b_q, tl.trans(b_k), PREC, DOT_F32) * scale
        b_ok = _attn_allowed(o_m, o_n, Lq, Lk, window, chunk, CAUSAL, HAS_WINDOW, HAS_CHUNK)
        if HAS_KPM:
            b_keep = tl.load(kpm + i_b * Lk + o_n, mask=m_n, other=0)
            b_ok = b_ok & (b_keep[None, :] != 0)
        b_s = tl.where(b_ok, b_s, float("-inf"))

        b_max_new = tl.maximum(b_max, tl.max(b_s, 1))
        b_ref = tl.where(b_max_new == float("-inf"), 0.0, b_max_new)  # keeps exp() finite on empty rows
        b_alpha = tl.exp(b_max - b_ref)
        b_p = tl.exp(b_s - b_ref[:, None])
        b_sum = b_sum * b_alpha + tl.sum(b_p, 1)
        b_acc = b_acc * b_alpha[:, None] + _dot(b_p.to(b_v.dtype), b_v, PREC, DOT_F32)
        b_max = b_max_new
        n0 += BLOCK_N

    b_nonempty = b_sum > 0
    b_o = b_acc / tl.where(b_nonempty, b_sum, 1.0)[:, None]
    b_lse = tl.where(b_nonempty, b_max + tl.log(tl.where(b_nonempty, b_sum, 1.0)), float("inf"))

    p_o = o + i_bh * Lq * PV + o_m[:, None] * PV + o_v[None, :]
    tl.store(p_o, b_o.to(o.dtype.element_ty), mask=m_m[:, None] & (o_v[None, :] < PV))
    tl.store(lse + i_bh * Lq + o_m, b_lse, mask=m_m)


@triton.jit
def _attn_bwd_dkdv_kernel(
    q, k, v, do, lse, delta, kpm, dk, dv, scale,
    H, Lq, Lk, P, PV, window, chunk,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CHUNK: tl.constexpr, HAS_KPM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    PREC: tl.constexpr, DOT_F32: tl.constexpr,
):
    """dk, dv for one block of BLOCK_N keys, looping over the query blocks that can see them.

    With p = exp(s - lse) and ds = p * (do . v - delta):  dv = p^T do,  dk = scale * ds^T q.
    """
    i_n, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)  # int64: B*H*L*P may pass 2^31
    i_b = i_bh // H
    n0 = i_n * BLOCK_N
    o_n = n0 + tl.arange(0, BLOCK_N)
    o_k = tl.arange(0, BLOCK_K)
    o_v = tl.arange(0, BLOCK_V)
    m_n = o_n < Lk

    p_k = k + i_bh * Lk * P + o_n[:, None] * P + o_k[None, :]
    p_v = v + i_bh * Lk * PV + o_n[:, None] * PV + o_v[None, :]
    b_k = tl.load(p_k, mask=m_n[:, None] & (o_k[None, :] < P), other=0.0)
    b_v = tl.load(p_v, mask=m_n[:, None] & (o_v[None, :] < PV), other=0.0)
    if HAS_KPM:
        b_keep = tl.load(kpm + i_b * Lk + o_n, mask=m_n, other=0) != 0

    b_dk = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    b_dv = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)

    lo, hi = _attn_query_range(n0, Lq, window, chunk, CAUSAL, HAS_WINDOW, HAS_CHUNK, BLOCK_M, BLOCK_N)
    m0 = lo
    while m0 < hi:  # not range(): see the note above _dot
        o_m = m0 + tl.arange(0, BLOCK_M)
        m_m = o_m < Lq
        p_q = q + i_bh * Lq * P + o_m[:, None] * P + o_k[None, :]
        p_do = do + i_bh * Lq * PV + o_m[:, None] * PV + o_v[None, :]
        b_q = tl.load(p_q, mask=m_m[:, None] & (o_k[None, :] < P), other=0.0)
        b_do = tl.load(p_do, mask=m_m[:, None] & (o_v[None, :] < PV), other=0.0)
        b_lse = tl.load(lse + i_bh * Lq + o_m, mask=m_m, other=float("inf"))
        b_delta = tl.load(delta + i_bh * Lq + o_m, mask=m_m, other=0.0)

        b_s = _dot(b_q, tl.trans(b_k), PREC, DOT_F32) * scale
        b_ok = _attn_allowed(o_m, o_n, Lq, Lk, window, chunk, CAUSAL, HAS_WINDOW, HAS_CHUNK)
        if HAS_KPM:
            b_ok = b_ok & b_keep[None, :]
        b_p = tl.where(b_ok, tl.exp(b_s - b_lse[:, None]), 0.0)  # [BLOCK_M, BLOCK_N]

        b_dv += _dot(tl.trans(b_p.to(b_do.dtype)), b_do, PREC, DOT_F32)
        b_dp = _dot(b_do, tl.trans(b_v), PREC, DOT_F32)
        b_ds = b_p * (b_dp - b_delta[:, None])
        b_dk += _dot(tl.trans(b_ds.to(b_q.dtype)), b_q, PREC, DOT_F32)
        m0 += BLOCK_M

    p_dk = dk + i_bh * Lk * P + o_n[:, None] * P + o_k[None, :]
    p_dv = dv + i_bh * Lk * PV + o_n[:, None] * PV + o_v[None, :]
    tl.store(p_dk, (b_dk * scale).to(dk.dtype.element_ty), mask=m_n[:, None] & (o_k[None, :] < P))
    tl.store(p_dv, b_dv.to(dv.dtype.element_ty), mask=m_n[:, None] & (o_v[None, :] < PV))


@triton.jit
def _attn_bwd_dq_kernel(
    q, k, v, do, lse, delta, kpm, dq, scale,
    H, Lq, Lk, P, PV, window, chunk,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CHUNK: tl.constexpr, HAS_KPM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    PREC: tl.constexpr, DOT_F32: tl.constexpr,
):
    """dq = scale * ds k for one block of BLOCK_M queries, looping over the reachable key blocks."""
    i_m, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)  # int64: B*H*L*P may pass 2^31
    i_b = i_bh // H
    m0 = i_m * BLOCK_M
    o_m = m0 + tl.arange(0, BLOCK_M)
    o_k = tl.arange(0, BLOCK_K)
    o_v = tl.arange(0, BLOCK_V)
    m_m = o_m < Lq

    p_q = q + i_bh * Lq * P + o_m[:, None] * P + o_k[None, :]
    p_do = do + i_bh * Lq * PV + o_m[:, None] * PV + o_v[None, :]
    b_q = tl.load(p_q, mask=m_m[:, None] & (o_k[None, :] < P), other=0.0)
    b_do = tl.load(p_do, mask=m_m[:, None] & (o_v[None, :] < PV), other=0.0)
    b_lse = tl.load(lse + i_bh * Lq + o_m, mask=m_m, other=float("inf"))
    b_delta = tl.load(delta + i_bh * Lq + o_m, mask=m_m, other=0.0)
    b_dq = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)

    lo, hi = _attn_key_range(m0, Lk, window, chunk, CAUSAL, HAS_WINDOW, HAS_CHUNK, BLOCK_M, BLOCK_N)
    n0 = lo
    while n0 < hi:  # not range(): see the note above _dot
        o_n = n0 + tl.arange(0, BLOCK_N)
        m_n = o_n < Lk
        p_k = k + i_bh * Lk * P + o_n[:, None] * P + o_k[None, :]
        p_v = v + i_bh * Lk * PV + o_n[:, None] * PV + o_v[None, :]
        b_k = tl.load(p_k, mask=m_n[:, None] & (o_k[None, :] < P), other=0.0)
        b_v = tl.load(p_v, mask=m_n[:, None] & (o_v[None, :] < PV), other=0.0)

        b_s = _dot(b_q, tl.trans(b_k), PREC, DOT_F32) * scale
        b_ok = _attn_allowed(o_m, o_n, Lq, Lk, window, chunk, CAUSAL, HAS_WINDOW, HAS_CHUNK)
        if HAS_KPM:
            b_keep = tl.load(kpm + i_b * Lk + o_n, mask=m_n, other=0)
            b_ok = b_ok & (b_keep[None, :] != 0)
        b_p = tl.where(b_ok, tl.exp(b_s - b_lse[:, None]), 0.0)
        b_dp = _dot(b_do, tl.trans(b_v), PREC, DOT_F32)
        b_ds = b_p * (b_dp - b_delta[:, None])
        b_dq += _dot(b_ds.to(b_k.dtype), b_k, PREC, DOT_F32)
        n0 += BLOCK_N

    p_dq = dq + i_bh * Lq * P + o_m[:, None] * P + o_k[None, :]
    tl.store(p_dq, (b_dq * scale).to(dq.dtype.element_ty), mask=m_m[:, None] & (o_k[None, :] < P))


def _triton_ready(device: torch.device) -> bool:
    """Whether the Triton kernels of this module can run on ``device`` in this process."""
    return kernel_runnable(_attn_fwd_kernel, device)


def _launch_config(q, v):
    """Constexpr arguments shared by the three kernels: pattern flags are added by the caller."""
    P, PV = q.shape[-1], v.shape[-1]
    block_k = max(16, triton.next_power_of_2(P))
    block_v = max(16, triton.next_power_of_2(PV))
    if q.device.type != "cuda":
        block_m = block_n = 16  # interpreter: small blocks so small test shapes still cross block edges
        num_warps = 1
    elif max(block_k, block_v) > 128:
        block_m = block_n = 32
        num_warps = 4
    else:
        block_m = block_n = 64
        num_warps = 4
    prec = "ieee" if q.dtype == torch.float32 else "tf32"  # fp32 inputs keep full precision in tl.dot
    dot_f32 = q.device.type != "cuda"  # the interpreter: see _dot
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_V=block_v, PREC=prec,
                DOT_F32=dot_f32, num_warps=num_warps)


def _pattern_args(causal, cross, window, chunk, key_padding_mask):
    return dict(
        CAUSAL=bool(causal and not cross), HAS_WINDOW=window is not None, HAS_CHUNK=chunk is not None,
        HAS_KPM=key_padding_mask is not None,
    )


def _attn_fwd(q, k, v, kpm, causal, cross, window, chunk, scale):
    """Forward launcher: q, k, v contiguous; kpm [B, Lk] uint8 or None. Returns o, lse [B, H, Lq] fp32."""
    B, H, Lq, P = q.shape
    Lk, PV = k.shape[2], v.shape[-1]
    o = torch.empty(B, H, Lq, PV, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, Lq, dtype=torch.float32, device=q.device)
    cfg = _launch_config(q, v)
    grid = (triton.cdiv(Lq, cfg["BLOCK_M"]), B * H)
    _attn_fwd_kernel[grid](
        q, k, v, o, lse, q if kpm is None else kpm, scale,
        H, Lq, Lk, P, PV, window or 0, chunk or 0,
        **_pattern_args(causal, cross, window, chunk, kpm), **cfg,
    )
    return o, lse


def _attn_bwd(q, k, v, o, lse, do, kpm, causal, cross, window, chunk, scale):
    """Backward launcher: returns dq, dk, dv in the input dtype."""
    B, H, Lq, P = q.shape
    Lk, PV = k.shape[2], v.shape[-1]
    delta = (do.float() * o.float()).sum(-1).contiguous()  # [B, H, Lq] = rowsum(dO * O)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    cfg = _launch_config(q, v)
    pattern = _pattern_args(causal, cross, window, chunk, kpm)
    kpm_arg = q if kpm is None else kpm
    common = (H, Lq, Lk, P, PV, window or 0, chunk or 0)
    grid_n = (triton.cdiv(Lk, cfg["BLOCK_N"]), B * H)
    _attn_bwd_dkdv_kernel[grid_n](q, k, v, do, lse, delta, kpm_arg, dk, dv, scale, *common, **pattern, **cfg)
    grid_m = (triton.cdiv(Lq, cfg["BLOCK_M"]), B * H)
    _attn_bwd_dq_kernel[grid_m](q, k, v, do, lse, delta, kpm_arg, dq, scale, *common, **pattern, **cfg)
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------------------
# autograd Function
# ----------------------------------------------------------------------------------------------------------


class AttentionFunction(torch.autograd.Function):
    """Triton forward / backward; saves q, k, v, o and the row log-sum-exp (no L x L matrix)."""

    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, causal, cross, window, chunk, scale):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        kpm = None if key_padding_mask is None else key_padding_mask.to(torch.uint8).contiguous()
        o, lse = _attn_fwd(q, k, v, kpm, causal, cross, window, chunk, scale)
        ctx.save_for_backward(q, k, v, o, lse, kpm)
        ctx.pattern = (causal, cross, window, chunk, scale)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, kpm = ctx.saved_tensors
        causal, cross, window, chunk, scale = ctx.pattern
        dq, dk, dv = _attn_bwd(q, k, v, o, lse, do.contiguous(), kpm, causal, cross, window, chunk, scale)
        return dq, dk, dv, None, None, None, None, None, None


def attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    cross: bool = False,
    window: int | None = None,
    chunk: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Triton flash-attention path (float16 / bfloat16 / float32). Shapes as ``attention``."""
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(
            f"attention: impl='triton' supports float16/bfloat16/float32, got {q.dtype}; "
            "use impl='torch' or impl='ref' for float64"
        )
    if not _triton_ready(q.device):
        raise RuntimeError(
            "attention: impl='triton' on CPU tensors needs TRITON_INTERPRET=1 set before "
            "mmseq.kernels.attention is first imported"
        )
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return AttentionFunction.apply(q, k, v, key_padding_mask, causal, cross, window, chunk, scale)


# ----------------------------------------------------------------------------------------------------------
# public function
# ----------------------------------------------------------------------------------------------------------

_PATHS = {"ref": attention_ref, "torch": attention_torch, "triton": attention_triton}


def _check_size(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")


def _check_inputs(q, k, v, causal, cross, window, chunk, key_padding_mask, scale) -> None:
    check_tensor("q", q, (None, None, None, None), "[B, H, Lq, P]")
    B, H, Lq, P = q.shape
    check_tensor("k", k, (B, H, None, P), "[B, H, Lk, P]")
    Lk = k.shape[2]
    check_tensor("v", v, (B, H, Lk, None), "[B, H, Lk, Pv]")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(name, t)
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if Lq == 0 or Lk == 0 or P == 0 or v.shape[-1] == 0:
        raise ValueError(
            f"attention needs Lq, Lk, P, Pv >= 1: q is [B, H, Lq, P] = {shape_str(q)}, "
            f"k is [B, H, Lk, P] = {shape_str(k)}, v is [B, H, Lk, Pv] = {shape_str(v)}"
        )
    _check_size("window", window)
    _check_size("chunk", chunk)
    if window is not None and chunk is not None:
        raise ValueError(f"pass at most one of window and chunk, got window={window}, chunk={chunk}")
    if cross and (window is not None or chunk is not None):
        raise ValueError(
            f"window and chunk are self-attention patterns and cannot be used with cross=True "
            f"(got window={window}, chunk={chunk})"
        )
    if not cross and Lq != Lk and (causal or window is not None or chunk is not None):
        raise ValueError(
            f"k must be [B, H, Lk, P] with Lk == Lq = {Lq} for causal / windowed / chunked self-attention, "
            f"got {shape_str(k)}; for CAB causal cross (every query sees the whole source) pass cross=True"
        )
    if key_padding_mask is not None:
        check_tensor("key_padding_mask", key_padding_mask, (B, Lk), "[B, Lk]")
        if key_padding_mask.dtype != torch.bool:
            raise ValueError(
                f"key_padding_mask must be a bool tensor (True = keep the key), got {key_padding_mask.dtype}"
            )
        if key_padding_mask.device != q.device:
            raise ValueError(f"key_padding_mask must be on {q.device}, got {key_padding_mask.device}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int | float)):
        raise ValueError(f"scale must be a float or None, got {scale!r}")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    cross: bool = False,
    window: int | None = None,
    chunk: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """Softmax attention: q [B, H, Lq, P], k [B, H, Lk, P], v [B, H, Lk, Pv] -> [B, H, Lq, Pv].

    Args:
        causal: self (Lq == Lk): query i sees keys j <= i. With ``cross=True``: CAB causal cross, every
            target query sees the whole source (see the module docstring); Lq and Lk are free.
        cross: q comes from another sequence than k / v (target attends to source). Changes the meaning
            of ``causal`` as above; not allowed with ``window`` or ``chunk``.
        window: sliding window W >= 1 (self, Lq == Lk). Causal: keys i - W < j <= i. Non-causal:
            |i - j| < W.
        chunk: block-local C >= 1 (self, Lq == Lk): keys with j // C == i // C, and j <= i if causal.
        key_padding_mask: [B, Lk] bool, True = keep the key, False = padding. Rows left with no key give 0.
        scale: score scale, default 1 / sqrt(P).
        impl: "ref" | "torch" | "triton" | None (None: see the module docstring; a Triton kernel that fails to
            compile or launch gives one warning and the torch path from then on).

    Raises ValueError naming the argument and the expected shape for bad shapes, dtypes or patterns.
    """
    _check_inputs(q, k, v, causal, cross, window, chunk, key_padding_mask, scale)
    requested, impl = impl, pick_impl("attention", impl, q.device)
    if requested is None and impl == "triton":
        # by default Triton only for sliding-window / chunked patterns, which SDPA cannot skip blocks of
        local = window is not None or chunk is not None
        impl = "triton" if local and q.dtype != torch.float64 else "torch"
    kwargs = dict(causal=causal, cross=cross, window=window, chunk=chunk, key_padding_mask=key_padding_mask,
                  scale=scale)
    if impl == "triton":
        return run_triton("attention", requested, attention_triton, attention_torch, q, k, v, **kwargs)
    return _PATHS[impl](q, k, v, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# incremental decoding
# ----------------------------------------------------------------------------------------------------------


class KVCache:
    """Preallocated key/value cache for token-by-token decoding of causal or sliding-window attention.

    Buffers: k [B, H, S, P] and v [B, H, S, Pv], with S = max_len, or S = window for a sliding window (a
    ring buffer: slot t % window holds token t, so decoding may run past max_len, which may then be None).
    Key order does not matter to softmax attention, so the ring needs no reordering; positional encodings
    (e.g. rotary) must be applied to q and k before they reach the cache.

    ``step(q_t, k_t, v_t)`` with q_t / k_t [B, H, 1, P], v_t [B, H, 1, Pv] returns out_t [B, H, 1, Pv] equal
    to row t of ``attention(q, k, v, causal=True, window=window)`` over the whole sequence.
    ``prefill(q, k, v)`` runs that forward over a prompt and fills the cache. Key padding is not supported.
    """

    def __init__(
        self,
        batch: int,
        heads: int,
        head_dim: int,
        *,
        max_len: int | None = None,
        window: int | None = None,
        v_head_dim: int | None = None,
        scale: float | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        impl: str | None = None,
    ):
        _check_size("max_len", max_len)
        _check_size("window", window)
        if max_len is None and window is None:
            raise ValueError("KVCache needs max_len (full causal attention) or window (sliding window)")
        for name, value in (("batch", batch), ("heads", heads), ("head_dim", head_dim)):
            _check_size(name, value)
        _check_size("v_head_dim", v_head_dim)
        self.window = window
        self.max_len = max_len
        self.scale = scale
        self.impl = impl
        self.capacity = window if window is not None else max_len
        pv = head_dim if v_head_dim is None else v_head_dim
        self.k = torch.zeros(batch, heads, self.capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros(batch, heads, self.capacity, pv, dtype=dtype, device=device)
        self.length = 0  # tokens appended so far

    def reset(self) -> None:
        """Forget every cached token (buffers are kept)."""
        self.length = 0

    def _check_kv(self, k_t: torch.Tensor, v_t: torch.Tensor) -> None:
        B, H, _, P = self.k.shape
        check_tensor("k", k_t, (B, H, None, P), "[B, H, T, P]")
        check_tensor("v", v_t, (B, H, k_t.shape[2], self.v.shape[-1]), "[B, H, T, Pv]")

    def append(self, k_t: torch.Tensor, v_t: torch.Tensor) -> None:
        """Append T tokens: k_t [B, H, T, P], v_t [B, H, T, Pv]."""
        self._check_kv(k_t, v_t)
        T = k_t.shape[2]
        if self.window is None and self.length + T > self.capacity:
            raise ValueError(
                f"KVCache is full: max_len={self.max_len}, holds {self.length} tokens, cannot append {T}"
            )
        if self.window is not None and T > self.capacity:  # only the last `window` tokens can matter
            k_t, v_t = k_t[:, :, T - self.capacity:], v_t[:, :, T - self.capacity:]
            self.length += T - self.capacity
            T = self.capacity
        slots = (self.length + torch.arange(T, device=self.k.device)) % self.capacity
        self.k[:, :, slots] = k_t.to(self.k.dtype)
        self.v[:, :, slots] = v_t.to(self.v.dtype)
        self.length += T

    def cached(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The visible keys and values: [B, H, n, P], [B, H, n, Pv] with n = min(length, capacity)."""
        n = min(self.length, self.capacity)
        return self.k[:, :, :n], self.v[:, :, :n]

    def step(self, q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
        """Append one token and attend its query to the cache: q_t [B, H, 1, P] -> out_t [B, H, 1, Pv]."""
        B, H, _, P = self.k.shape
        check_tensor("q_t", q_t, (B, H, 1, P), "[B, H, 1, P]")
        check_tensor("k_t", k_t, (B, H, 1, P), "[B, H, 1, P]")
        self.append(k_t, v_t)
        k, v = self.cached()
        # The cache holds exactly the keys token t may see, so no mask is needed.
        return attention(q_t, k, v, scale=self.scale, impl=self.impl)

    def prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal (sliding-window) forward over a prompt on an empty cache, then cache its keys and values."""
        if self.length != 0:
            raise ValueError(f"prefill needs an empty KVCache, it holds {self.length} tokens; call reset()")
        self._check_kv(k, v)
        out = attention(q, k, v, causal=True, window=self.window, scale=self.scale, impl=self.impl)
        self.append(k, v)
        return out
