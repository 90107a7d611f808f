"""mmseq.kernels.causal_conv1d against the interface of causal-conv1d (Dao-AILab, 1.4 to 1.6).

``causal_conv1d`` with ``seq_idx`` (several sequences packed in one row, padding labelled -1) and
``causal_conv1d_update`` with several tokens per call, states longer than K-1, circular states
(``cache_seqlens``) and continuous batching (``conv_state_indices``, padding slots -1). The grids repeat the
parameter values of upstream's tests/test_causal_conv1d.py (test_causal_conv1d_varlen, ..._varlen_padding,
..._update, ..._update_with_batch_gather, ..._update_with_padding) with its tolerances per dtype, on small
dims (upstream's dims and the longest sequences join the slow run). Every result is checked against a
reference written here: a float64 loop over positions, independent of the module's own reference.
"""

import importlib
import itertools
import math

import numpy as np
import pytest
import torch

from tests.kernels._helpers import DEVICE, marked, triton_marks

cc = importlib.import_module("mmseq.kernels.causal_conv1d")  # the module, not the function

TRITON = triton_marks(cc._causal_conv1d_fwd_kernel, cc._causal_conv1d_update_kernel)
PATHS = ["ref", "torch", "triton"]
ITYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _tols(itype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) of upstream's tests for outputs and input gradients."""
    if itype == torch.float32:
        return 3e-4, 1e-3
    if itype == torch.bfloat16:
        return 1e-2, 5e-2
    return 3e-3, 5e-3


RTOLW, ATOLW = 1e-3, 1e-3  # weight and bias gradients (fp32 parameters)


def _path_param(path: str, *values, id: str, marks=()):
    marks = [*marks, *(TRITON if path == "triton" else [])]
    return pytest.param(path, *values, id=f"{path}-{id}", marks=marks)


# ----------------------------------------------------------------------------------------------------------
# References written out: float64 loops over positions.
# ----------------------------------------------------------------------------------------------------------


def _loop_conv(x, weight, bias, seq_idx, silu, dy):
    """Packed causal conv and its gradients, one position at a time in float64.

    y[b, :, t] = act(bias + sum_s weight[:, K-1-s] * x[b, :, t-s]) over the s in [0, K) with t - s >= 0 and
    seq_idx[b, t-s] == seq_idx[b, t]; y[b, :, t] = 0 where seq_idx[b, t] < 0. Returns y, dx, dweight, dbias
    for the cotangent dy (dbias None without bias).
    """
    x = x.detach().double().cpu().numpy()
    w = weight.detach().double().cpu().numpy()
    b = np.zeros(w.shape[0]) if bias is None else bias.detach().double().cpu().numpy()
    g = dy.detach().double().cpu().numpy()
    B, D, L = x.shape
    K = w.shape[1]
    labels = seq_idx.cpu().numpy() if seq_idx is not None else np.zeros((B, L), dtype=np.int64)
    y, dx, dw, db = np.zeros((B, D, L)), np.zeros((B, D, L)), np.zeros((D, K)), np.zeros(D)
    for t in range(L):  # every batch row at once; masks [B, 1] pick the rows where a tap counts
        live = (labels[:, t] >= 0)[:, None]
        taps = [(s, ((labels[:, t - s] == labels[:, t]) & (labels[:, t] >= 0))[:, None]) for s in range(min(K, t + 1))]
        z = np.broadcast_to(b, (B, D)).copy()
        for s, same in taps:
            z += np.where(same, w[:, K - 1 - s] * x[:, :, t - s], 0.0)
        sig = 1.0 / (1.0 + np.exp(-z))
        y[:, :, t] = np.where(live, z * sig if silu else z, 0.0)
        dz = np.where(live, g[:, :, t] * (sig * (1.0 + z * (1.0 - sig)) if silu else 1.0), 0.0)
        db += dz.sum(0)
        for s, same in taps:
            dx[:, :, t - s] += np.where(same, w[:, K - 1 - s] * dz, 0.0)
            dw[:, K - 1 - s] += np.where(same, x[:, :, t - s] * dz, 0.0).sum(0)
    as_t = lambda a: torch.from_numpy(a)
    return as_t(y), as_t(dx), as_t(dw), None if bias is None else as_t(db)


def _loop_update(x, conv_state, weight, bias, silu, cache_seqlens=None, conv_state_indices=None):
    """causal-conv1d's update semantics, one batch row and one position at a time in float64.

    Returns (out [B, D, T], the expected conv_state after the call) for x [B, D, T].
    """
    x = x.detach().double().cpu().numpy()
    state = conv_state.detach().double().cpu().numpy().copy()
    w = weight.detach().double().cpu().numpy()
    b = np.zeros(w.shape[0]) if bias is None else bias.detach().double().cpu().numpy()
    B, D, T = x.shape
    K, S = w.shape[1], state.shape[-1]
    out = np.zeros((B, D, T))
    for i in range(B):
        slot = i if conv_state_indices is None else int(conv_state_indices[i])
        if slot < 0:  # padding slot: output 0, state untouched
            continue
        row = state[slot]
        if cache_seqlens is None:  # the last K-1 entries are the newest inputs
            history = [row[:, S - (K - 1) + j] for j in range(K - 1)]
        else:  # ring buffer: the K-1 entries before the write position, oldest first
            c = int(cache_seqlens[i]) % S
            history = [row[:, (c - (K - 1) + j) % S] for j in range(K - 1)]
        inputs = history + [x[i, :, t] for t in range(T)]
        for t in range(T):
            z = b + sum(w[:, k] * inputs[t + k] for k in range(K))
            out[i, :, t] = z / (1.0 + np.exp(-z)) if silu else z
        if cache_seqlens is None:
            row[:] = np.concatenate([row, x[i]], axis=1)[:, T:]
        else:
            for t in range(T):  # in order: a later token overwrites an earlier one at the same position
                row[:, (c + t) % S] = x[i, :, t]
    return torch.from_numpy(out), torch.from_numpy(state)


def _assert_allclose(name, got, want, rtol, atol):
    got = got.detach().double().cpu()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got - want).abs()
    ok = err <= atol + rtol * want.abs()
    assert bool(ok.all()), (f"{name}: {int((~ok).sum())} of {ok.numel()} entries off (max abs err "
                            f"{err.max().item():.3e}, rtol {rtol}, atol {atol})")


# ----------------------------------------------------------------------------------------------------------
# causal_conv1d with seq_idx: upstream's test_causal_conv1d_varlen and test_causal_conv1d_varlen_padding.
# ----------------------------------------------------------------------------------------------------------

VARLEN_SEQLENS = [8, 16, 32, 64, 128, 151, 256, 372, 512, 784, 1024, 1134, 2048, 4096]
PADDING_SEQLENS = [128, 256, 512, 1024]
WIDTHS = [2, 3, 4]
TRITON_SEQLEN = 16  # by default the Triton path (slow in the CPU interpreter) runs this length, bf16, per width
FULL_UP_TO = 128  # up to this length every combination runs by default; beyond, one per length (others: slow)
SMALL_DIM = 64  # upstream's first dim; its other, 4096 + 32, joins the slow run on a few lengths
BIG_DIM, BIG_DIM_SEQLENS = 4096 + 32, (8, 151, 1134)


def _segments(g: torch.Generator, length: int, max_splits: int) -> list[int]:
    """Lengths of 1 to max_splits - 1 sequences filling ``length`` (upstream's construction)."""
    nsplits = int(torch.randint(1, max_splits, (1,), generator=g))
    eos = torch.randperm(length - 1, generator=g)[:nsplits].sort().values
    return torch.diff(torch.cat([torch.tensor([-1]), eos, torch.tensor([length - 1])])).tolist()


def _varlen_inputs(dim, seqlen, width, has_bias, itype, padding):
    """Channel-last x [3, dim, seqlen] (a slice of a wider tensor, as upstream), fp32 weight and bias, seq_idx
    (labels restart per row without padding; with padding one counter over the batch and a -1 tail per row)
    and a cotangent."""
    g = torch.Generator().manual_seed(seqlen + dim + width)
    batch = 3
    x = torch.randn(batch, seqlen, dim + 8, generator=g).to(itype)[:, :, 4 : 4 + dim].transpose(1, 2)
    weight = torch.randn(dim, width, generator=g)
    bias = torch.randn(dim, generator=g) if has_bias else None
    rows, label = [], 0
    for _ in range(batch):
        if not padding:
            rows.append(torch.cat([torch.full((s,), i, dtype=torch.int32) for i, s in
                                   enumerate(_segments(g, seqlen, 5))]))
            continue
        true_len = int(torch.randint(seqlen // 2, seqlen, (1,), generator=g))  # at least one padding position
        parts = []
        for s in _segments(g, true_len, 4):
            parts.append(torch.full((s,), label, dtype=torch.int32))
            label += 1
        rows.append(torch.cat([*parts, torch.full((seqlen - true_len,), -1, dtype=torch.int32)]))
    seq_idx = torch.stack(rows)
    dy = torch.randn(batch, dim, seqlen, generator=g).to(itype)
    return x, weight, bias, seq_idx, dy


_REFERENCES: dict = {}


def _varlen_reference(key, x, weight, bias, seq_idx, silu, dy):
    if key not in _REFERENCES:  # shared by the paths of one case
        _REFERENCES[key] = _loop_conv(x, weight, bias, seq_idx, silu, dy)
    return _REFERENCES[key]


def _check_varlen(path, dim, seqlen, width, has_bias, silu, itype, padding):
    x, weight, bias, seq_idx, dy = _varlen_inputs(dim, seqlen, width, has_bias, itype, padding)
    key = (dim, seqlen, width, has_bias, silu, itype, padding)
    y_ref, dx_ref, dw_ref, db_ref = _varlen_reference(key, x, weight, bias, seq_idx, silu, dy)
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, weight, bias)]
    xg, wg, bg = leaves
    y = cc.causal_conv1d(xg, wg, bg, seq_idx=seq_idx, activation="silu" if silu else None, impl=path)
    assert y.dtype == itype and y.shape == x.shape
    rtol, atol = _tols(itype)
    _assert_allclose("out", y, y_ref, rtol, atol)
    if padding:
        assert bool((y[(seq_idx < 0)[:, None, :].expand_as(y)] == 0).all()), "padding outputs must be exactly 0"
    y.backward(dy)
    _assert_allclose("dx", xg.grad, dx_ref, rtol, atol)
    _assert_allclose("dweight", wg.grad, dw_ref, RTOLW, ATOLW)
    if has_bias:
        _assert_allclose("dbias", bg.grad, db_ref, RTOLW, ATOLW)


def _varlen_grid(seqlens, big_dim_seqlens, full_up_to=FULL_UP_TO):
    params = []
    for path, seqlen, width, has_bias, silu, (iname, itype) in itertools.product(
        PATHS, seqlens, WIDTHS, [False, True], [False, True], ITYPES.items()
    ):
        # longer rows: the default run keeps one combination per length (bias, silu, bf16: Mamba's; the width
        # rotates). The Triton interpreter is slow on the CPU (about a second a launch), so by default the Triton
        # path runs a few short bf16 cases (padding and tile borders: test_triton_seq_idx_small_tiles_...)
        rotated = WIDTHS[seqlens.index(seqlen) % len(WIDTHS)]
        slow = seqlen > full_up_to and not (has_bias and silu and iname == "bf16" and width == rotated)
        slow = slow or (path == "triton" and not (iname == "bf16" and seqlen == TRITON_SEQLEN and has_bias == silu))
        cid = f"D{SMALL_DIM}-L{seqlen}-K{width}-{'bias' if has_bias else 'nobias'}-{'silu' if silu else 'id'}-{iname}"
        marks = [pytest.mark.slow] if slow else []
        params.append(_path_param(path, SMALL_DIM, seqlen, width, has_bias, silu, itype, id=cid, marks=marks))
    for path, seqlen, width in itertools.product(PATHS, big_dim_seqlens, WIDTHS):
        cid = f"D{BIG_DIM}-L{seqlen}-K{width}-bias-silu-bf16"
        params.append(_path_param(path, BIG_DIM, seqlen, width, True, True, torch.bfloat16, id=cid,
                                  marks=[pytest.mark.slow]))
    return params


@pytest.mark.parametrize("path,dim,seqlen,width,has_bias,silu,itype", _varlen_grid([1, 2, *VARLEN_SEQLENS],
                                                                                  BIG_DIM_SEQLENS))
def test_varlen_grid(path, dim, seqlen, width, has_bias, silu, itype):
    """upstream test_causal_conv1d_varlen (and rows of 1 and 2 positions)."""
    _check_varlen(path, dim, seqlen, width, has_bias, silu, itype, padding=False)


@pytest.mark.parametrize("path,dim,seqlen,width,has_bias,silu,itype", _varlen_grid(PADDING_SEQLENS, (1024,), 128))
def test_varlen_padding_grid(path, dim, seqlen, width, has_bias, silu, itype):
    """upstream test_causal_conv1d_varlen_padding (which checks outputs only; gradients are checked here too)."""
    _check_varlen(path, dim, seqlen, width, has_bias, silu, itype, padding=True)


@pytest.mark.parametrize("path", [_path_param(p, id="packed") for p in PATHS])
def test_packed_row_equals_each_sequence_alone(path):
    """A row packing three sequences (and a padding tail) gives, and backpropagates, what each sequence gives
    alone; the two layouts of x agree."""
    g = torch.Generator().manual_seed(3)
    lengths, D, K = [5, 1, 9], 6, 4
    L = sum(lengths) + 2
    x = torch.randn(1, D, L, generator=g, dtype=torch.float64)
    weight, bias = torch.randn(D, K, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)
    seq_idx = torch.tensor([[7] * 5 + [2] + [0] * 9 + [-1, -1]], dtype=torch.int32)
    dy = torch.randn(1, D, L, generator=g, dtype=torch.float64)

    xg = x.clone().requires_grad_(True)
    y = cc.causal_conv1d(xg, weight, bias, seq_idx, activation="silu", impl=path)  # upstream's positional order
    y.backward(dy)
    xl = x.transpose(1, 2).contiguous().transpose(1, 2)  # channel-last
    torch.testing.assert_close(cc.causal_conv1d(xl, weight, bias, seq_idx=seq_idx, activation="silu", impl=path), y,
                               rtol=0, atol=0)
    start = 0
    for n in lengths:
        part = x[..., start : start + n].clone().requires_grad_(True)
        y_part = cc.causal_conv1d(part, weight, bias, activation="silu", impl=path)
        y_part.backward(dy[..., start : start + n])
        torch.testing.assert_close(y[..., start : start + n], y_part, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(xg.grad[..., start : start + n], part.grad, rtol=1e-12, atol=1e-12)
        start += n
    assert torch.equal(y[..., start:], torch.zeros(1, D, 2, dtype=torch.float64))
    assert torch.equal(xg.grad[..., start:], torch.zeros(1, D, 2, dtype=torch.float64))


def test_labels_compare_for_equality_as_upstream():
    """A label that comes back within K-1 positions continues its sequence (upstream's kernel compares
    labels); the written-out reference and every path agree on it."""
    x, w = torch.randn(1, 3, 6, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    seq_idx = torch.tensor([[0, 1, 0, 0, 1, 1]], dtype=torch.int32)
    want = _loop_conv(x, w, None, seq_idx, False, torch.zeros_like(x))[0]
    for path in ("ref", "torch"):
        torch.testing.assert_close(cc.causal_conv1d(x, w, seq_idx=seq_idx, impl=path), want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# causal_conv1d: upstream's argument order and names, final_states_out, errors.
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [_path_param(p, id="args") for p in PATHS])
def test_upstream_argument_order_and_names(path):
    g = torch.Generator().manual_seed(5)
    x, w, b = torch.randn(2, 4, 9, generator=g), torch.randn(4, 3, generator=g), torch.randn(4, generator=g)
    s0 = torch.randn(2, 4, 2, generator=g)
    y, final = cc.causal_conv1d(x, w, b, "silu", s0, True, impl=path)  # this package's order
    # causal_conv1d_fn(x, weight, bias, seq_idx, initial_states, return_final_states, final_states_out, activation)
    out = torch.full((2, 4, 2), float("nan"))
    y2, final2 = cc.causal_conv1d(x, w, b, None, s0, True, out, "silu", impl=path)
    assert final2 is out
    y3, final3 = cc.causal_conv1d(x, w, b, initial_states=s0, return_final_states=True, final_states_out=None,
                                  activation="swish", impl=path)
    for got in (y2, y3):
        torch.testing.assert_close(got, y, rtol=0, atol=0)
    for got in (final2, final3):
        torch.testing.assert_close(got, final, rtol=0, atol=0)
    # final_states_out is ignored without return_final_states, as upstream
    assert isinstance(cc.causal_conv1d(x, w, b, final_states_out=out, impl=path), torch.Tensor)


def test_final_states_out_carries_the_gradient():
    x, w = torch.randn(1, 3, 5, requires_grad=True), torch.randn(3, 4)
    out = torch.zeros(1, 3, 3)
    _, final = cc.causal_conv1d(x, w, return_final_states=True, final_states_out=out, impl="torch")
    final.sum().backward()
    assert torch.equal(x.grad[..., 2:], torch.ones(1, 3, 3)) and torch.equal(x.grad[..., :2], torch.zeros(1, 3, 2))


def _fn_args():
    return {"x": torch.randn(2, 8, 10), "weight": torch.randn(8, 4), "seq_idx": torch.zeros(2, 10, dtype=torch.int32)}


FN_ERRORS = {
    "seq_idx-with-initial_states": (
        {"initial_states": torch.zeros(2, 8, 3)}, ValueError, "seq_idx and initial_states cannot be used together"),
    "seq_idx-with-return_final_states": (
        {"return_final_states": True}, ValueError, "return_final_states is not available with seq_idx"),
    "seq_idx-float": ({"seq_idx": torch.zeros(2, 10)}, ValueError, "seq_idx must be an integer tensor"),
    "seq_idx-shape": ({"seq_idx": torch.zeros(2, 9, dtype=torch.int32)}, ValueError,
                      "seq_idx must be [B, L] = [2, 10], got [2, 9]"),
    "final_states_out-shape": (
        {"seq_idx": None, "return_final_states": True, "final_states_out": torch.zeros(2, 8, 4)}, ValueError,
        "final_states_out must be [B, D, K-1] = [2, 8, 3], got [2, 8, 4]"),
    "two-initial-states": (
        {"seq_idx": None, "initial_state": torch.zeros(2, 8, 3), "initial_states": torch.zeros(2, 8, 3)},
        TypeError, "multiple values for initial_state"),
}


@pytest.mark.parametrize("change,error,message", list(FN_ERRORS.values()), ids=list(FN_ERRORS))
def test_causal_conv1d_errors(change, error, message):
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        cc.causal_conv1d(**{**_fn_args(), **change})


def test_positional_conflicts_are_refused():
    x, w = torch.randn(1, 2, 4), torch.randn(2, 2)
    with pytest.raises(TypeError, match="multiple values for activation"):
        cc.causal_conv1d(x, w, None, "silu", None, False, None, "silu")
    with pytest.raises(ValueError, match="fourth argument"):
        cc.causal_conv1d(x, w, None, 3)


# ----------------------------------------------------------------------------------------------------------
# causal_conv1d_update: upstream's test_causal_conv1d_update, ..._with_batch_gather, ..._with_padding.
# ----------------------------------------------------------------------------------------------------------

UPDATE_SEQLENS = [1, 4, 5]
UPDATE_DIM, UPDATE_BATCH = 20, 4  # upstream: dims 2048, 2064, 4096 (slow run) and batch 64
UPDATE_BIG_DIMS = [2048, 2048 + 16, 4096]
STATE_EXTRA = [0, 1, 5, 11]  # state_len - (width - 1): upstream draws it from [0, 11]; both ends and two inside


def _update_inputs(mode, dim, width, seqlen, has_cache, has_bias, itype, extra, seed):
    """Upstream's inputs: channel-last x [B, D, T] and conv_state, fp32 weight and bias, cache_seqlens in
    [0, 1024); 'gather' draws conv_state_indices from 10 x batch rows, 'padding' sets half of them to -1."""
    g = torch.Generator().manual_seed(seed)
    batch = UPDATE_BATCH
    state_len = width - 1 + extra
    x = torch.randn(batch, seqlen, dim, generator=g).to(itype).transpose(-1, -2)
    rows = batch if mode == "plain" else 10 * batch
    conv_state = torch.randn(rows, state_len, dim, generator=g).to(itype).transpose(-1, -2)
    weight = torch.randn(dim, width, generator=g)
    bias = torch.randn(dim, generator=g) if has_bias else None
    cache_seqlens = torch.randint(0, 1024, (batch,), generator=g, dtype=torch.int32) if has_cache else None
    indices = None
    if mode != "plain":
        indices = torch.randperm(rows, generator=g)[:batch].to(torch.int32)
        if mode == "padding":
            indices[batch // 2 :] = -1
            indices = indices[torch.randperm(batch, generator=g)]
    return x, conv_state, weight, bias, cache_seqlens, indices


def _update_grid(mode):
    """One test per (path, width, tokens, cache, bias, silu) runs the three itypes, each with its own state length
    (the lengths rotate through STATE_EXTRA over the grid)."""
    params, n = [], 0
    for width, seqlen, has_cache, has_bias, silu in itertools.product(
        WIDTHS, UPDATE_SEQLENS, [False, True], [False, True], [False, True]
    ):
        cases = [(itype, STATE_EXTRA[(n + j) % len(STATE_EXTRA)]) for j, itype in enumerate(ITYPES.values())]
        cid = (f"D{UPDATE_DIM}-K{width}-T{seqlen}-{'cache' if has_cache else 'nocache'}-"
               f"{'bias' if has_bias else 'nobias'}-{'silu' if silu else 'id'}-"
               + ",".join(f"{name}:S{width - 1 + extra}" for name, (_, extra) in zip(ITYPES, cases)))
        for path in PATHS:
            if path == "triton":  # the interpreter is slow: by default a quarter of the grid, one itype each
                default = n % 4 == (n // 8) % 4  # every (cache, bias, silu) pattern over the (width, tokens) blocks
                params.append(_path_param(path, UPDATE_DIM, width, seqlen, has_cache, has_bias, silu,
                                          [cases[n % 3]], id=f"{cid}-{list(ITYPES)[n % 3]}-only",
                                          marks=[] if default else [pytest.mark.slow]))
                params.append(_path_param(path, UPDATE_DIM, width, seqlen, has_cache, has_bias, silu, cases, id=cid,
                                          marks=[pytest.mark.slow]))
                continue
            params.append(_path_param(path, UPDATE_DIM, width, seqlen, has_cache, has_bias, silu, cases, id=cid))
        n += 1
    for dim, width, has_cache in itertools.product(UPDATE_BIG_DIMS, WIDTHS, [False, True]):
        cid = f"D{dim}-K{width}-T5-{'cache' if has_cache else 'nocache'}-bias-silu-bf16:S{width + 10}"
        for path in PATHS:
            params.append(_path_param(path, dim, width, 5, has_cache, True, True, [(torch.bfloat16, 11)], id=cid,
                                      marks=[pytest.mark.slow]))
    return params


def _check_update(path, mode, dim, width, seqlen, has_cache, has_bias, silu, cases):
    for itype, extra in cases:
        x, conv_state, weight, bias, cache_seqlens, indices = _update_inputs(
            mode, dim, width, seqlen, has_cache, has_bias, itype, extra, seed=dim + 7 * width + seqlen)
        want, want_state = _loop_update(x, conv_state, weight, bias, silu, cache_seqlens, indices)
        out = cc.causal_conv1d_update(x, conv_state, weight, bias, "silu" if silu else None,
                                      cache_seqlens=cache_seqlens, conv_state_indices=indices, impl=path)
        label = f"{itype} S={width - 1 + extra}"
        assert out.dtype == itype and out.shape == x.shape, label
        assert torch.equal(conv_state.double(), want_state), f"{label}: conv_state differs from the expected update"
        _assert_allclose(f"{label} out", out, want, *_tols(itype))
        if indices is not None:
            assert bool((out[indices < 0] == 0).all()), f"{label}: padding rows must give exactly 0"


GRID_ARGS = "path,dim,width,seqlen,has_cache,has_bias,silu,cases"


@pytest.mark.parametrize(GRID_ARGS, _update_grid("plain"))
def test_update_grid(path, dim, width, seqlen, has_cache, has_bias, silu, cases):
    """upstream test_causal_conv1d_update."""
    _check_update(path, "plain", dim, width, seqlen, has_cache, has_bias, silu, cases)


@pytest.mark.parametrize(GRID_ARGS, _update_grid("gather"))
def test_update_with_batch_gather_grid(path, dim, width, seqlen, has_cache, has_bias, silu, cases):
    """upstream test_causal_conv1d_update_with_batch_gather."""
    _check_update(path, "gather", dim, width, seqlen, has_cache, has_bias, silu, cases)


@pytest.mark.parametrize(GRID_ARGS, _update_grid("padding"))
def test_update_with_padding_grid(path, dim, width, seqlen, has_cache, has_bias, silu, cases):
    """upstream test_causal_conv1d_update_with_padding (cache_seqlens False there; both here)."""
    _check_update(path, "padding", dim, width, seqlen, has_cache, has_bias, silu, cases)


# ----------------------------------------------------------------------------------------------------------
# causal_conv1d_update: streaming properties.
# ----------------------------------------------------------------------------------------------------------


def _interpreted_once(params: list, keep: str) -> list:
    """On the CPU the Triton interpreter takes a while per launch: its cases other than ``keep`` join the slow
    run."""
    out = []
    for p in params:
        slow = p.values[0] == "triton" and DEVICE.type == "cpu" and keep not in p.id
        out.append(pytest.param(*p.values, id=p.id, marks=[*p.marks, *([pytest.mark.slow] if slow else [])]))
    return out


STREAM_PARAMS = [_path_param(p, extra, silu, id=f"stream-S=K-1+{extra}-{'silu' if silu else 'id'}")
                 for p in PATHS for extra in (0, 1, 6) for silu in (False, True)]


@pytest.mark.parametrize("path,extra,silu", _interpreted_once(STREAM_PARAMS, "S=K-1+1-silu"))
def test_token_by_token_equals_multi_token_equals_full_conv(path, extra, silu):
    """From the same state: single tokens ([B, D] and [B, D, 1]), chunks of several tokens and the full causal
    conv (seeded with the state's K-1 newest inputs) give the same outputs, and the state ends as the last S
    inputs."""
    g = torch.Generator().manual_seed(11 + extra)
    B, D, L, K = 3, 5, 9, 4
    S = K - 1 + extra
    x = torch.randn(B, D, L, generator=g)
    w, b = torch.randn(D, K, generator=g), torch.randn(D, generator=g)
    s0 = torch.randn(B, D, S, generator=g)
    act = "silu" if silu else None
    y_full = cc.causal_conv1d(x, w, b, act, s0[..., S - (K - 1) :], impl="ref")
    want_state = torch.cat([s0, x], dim=-1)[..., -S:]

    one, shaped, chunked = s0.clone(), s0.clone(), s0.clone()
    y_one = torch.stack([cc.causal_conv1d_update(x[..., t], one, w, b, act, impl=path) for t in range(L)], dim=-1)
    y_shaped = torch.cat([cc.causal_conv1d_update(x[..., t : t + 1], shaped, w, b, act, impl=path)
                          for t in range(L)], dim=-1)
    bounds = [0, 1, 4, 9]  # chunks of 1, 3 and 5 tokens
    y_chunks = torch.cat([cc.causal_conv1d_update(x[..., lo:hi], chunked, w, b, act, impl=path)
                          for lo, hi in zip(bounds, bounds[1:])], dim=-1)
    for name, got in (("one token", y_one), ("[B, D, 1]", y_shaped), ("chunks", y_chunks)):
        torch.testing.assert_close(got, y_full, rtol=1e-5, atol=1e-6, msg=name)
    for state in (one, shaped, chunked):
        assert torch.equal(state, want_state)


RING_PARAMS = [_path_param(p, extra, id=f"ring-S=K-1+{extra}") for p in PATHS for extra in (0, 2, 7)]


@pytest.mark.parametrize("path,extra", _interpreted_once(RING_PARAMS, "S=K-1+2"))
def test_circular_state_equals_linear_state(path, extra):
    """A ring buffer holding the same inputs (the newest just before position cache_seqlens mod S) gives the
    linear state's outputs, call after call, and stays the linear state rotated; chunks longer than S
    included."""
    g = torch.Generator().manual_seed(23 + extra)
    B, D, K = 4, 3, 3
    S = K - 1 + extra
    w, b = torch.randn(D, K, generator=g), torch.randn(D, generator=g)
    linear = torch.randn(B, D, S, generator=g)
    cache_seqlens = torch.tensor([0, 5, 1000, S + 1], dtype=torch.int32)
    ring = torch.empty_like(linear)
    for i in range(B):  # ring[(c + j) mod S] = linear[j]: the oldest entry sits at the write position
        c = int(cache_seqlens[i]) % S
        ring[i] = linear[i].roll(c, dims=-1)
    for T in (1, 3, S + 2, 1, 2 * S + 1):
        x = torch.randn(B, D, T, generator=g)
        y_lin = cc.causal_conv1d_update(x, linear, w, b, "silu", impl=path)
        y_ring = cc.causal_conv1d_update(x, ring, w, b, "silu", cache_seqlens=cache_seqlens, impl=path)
        torch.testing.assert_close(y_ring, y_lin, rtol=0, atol=0)
        cache_seqlens = cache_seqlens + T
        for i in range(B):
            assert torch.equal(ring[i].roll(-(int(cache_seqlens[i]) % S), dims=-1), linear[i])


@pytest.mark.parametrize("path", [_path_param(p, id="indices") for p in PATHS])
def test_state_indices_equal_gathered_rows(path):
    """conv_state_indices on a big state equals the update of the gathered rows; other rows stay untouched."""
    g = torch.Generator().manual_seed(31)
    D, K, S = 4, 4, 5
    big = torch.randn(9, D, S, generator=g)
    idx = torch.tensor([6, -1, 0, 3], dtype=torch.int32)
    x, w = torch.randn(4, D, 2, generator=g), torch.randn(D, K, generator=g)
    valid = idx >= 0
    rows = big[idx[valid].long()].clone()
    want = cc.causal_conv1d_update(x[valid], rows, w, None, "silu", impl=path)
    before = big.clone()
    got = cc.causal_conv1d_update(x, big, w, None, "silu", conv_state_indices=idx, impl=path)
    torch.testing.assert_close(got[valid], want, rtol=0, atol=0)
    assert torch.equal(got[~valid], torch.zeros(1, D, 2))
    assert torch.equal(big[idx[valid].long()], rows)
    untouched = [r for r in range(9) if r not in idx.tolist()]
    assert torch.equal(big[untouched], before[untouched])


def _update_args():
    return {"x": torch.randn(2, 8, 3), "conv_state": torch.zeros(2, 8, 5), "weight": torch.randn(8, 4)}


UPDATE_ERRORS = {
    "state-shorter-than-K-1": ({"conv_state": torch.zeros(2, 8, 2)}, "conv_state must be [B, D, S] with S >= K-1 = 3"),
    "state-rows-without-indices": ({"conv_state": torch.zeros(5, 8, 5)}, "conv_state must be [B, D, S] = [2, 8, *]"),
    "cache_seqlens-shape": ({"cache_seqlens": torch.zeros(3, dtype=torch.int32)}, "cache_seqlens must be [B] = [2]"),
    "cache_seqlens-float": ({"cache_seqlens": torch.zeros(2)}, "cache_seqlens must be an integer tensor"),
    "indices-float": ({"conv_state_indices": torch.zeros(2)}, "conv_state_indices must be an integer tensor"),
    "indices-shape": ({"conv_state_indices": torch.zeros(1, dtype=torch.int32)}, "conv_state_indices must be [B]"),
    "activation": ({"activation": "relu"}, "activation must be one of"),
}


@pytest.mark.parametrize("change,message", list(UPDATE_ERRORS.values()), ids=list(UPDATE_ERRORS))
def test_update_errors(change, message):
    with pytest.raises(ValueError) as err:
        cc.causal_conv1d_update(**{**_update_args(), **change})
    assert message in str(err.value)


@pytest.mark.parametrize("width", [pytest.param(2, marks=pytest.mark.slow), 4])
@marked(TRITON)
def test_triton_seq_idx_small_tiles_cross_every_boundary(width, monkeypatch):
    """Tiles of 4 channels x 8 positions and at most 3 position chunks per row in the backward, so that sequence
    borders, padding and taps cross tile edges; float64 against the written-out loop."""
    monkeypatch.setattr(cc, "_blocks", lambda device, D, L: (4, 8))
    monkeypatch.setattr(cc, "_MAX_CHUNKS", 3)
    g = torch.Generator().manual_seed(41 + width)
    B, D, L = 2, 6, 30
    x = torch.randn(B, D, L, generator=g, dtype=torch.float64)
    w, b = torch.randn(D, width, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)
    seq_idx = torch.tensor([[0] * 7 + [1] * 9 + [2] * 12 + [-1] * 2, [3] * 15 + [4] * 15], dtype=torch.int32)
    dy = torch.randn(B, D, L, generator=g, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    y = cc.causal_conv1d(*leaves, seq_idx, activation="silu", impl="triton")
    y.backward(dy)
    want = _loop_conv(x, w, b, seq_idx, True, dy)
    for name, got, ref in zip(("out", "dx", "dweight", "dbias"), (y, *(t.grad for t in leaves)), want):
        _assert_allclose(name, got, ref, 1e-12, 1e-12)


@marked(TRITON)
def test_triton_update_kernel_reads_and_writes_strided_tensors(monkeypatch):
    """The update kernel itself (not the torch path) serves every update: channel-last x and state, ring
    buffers, state indices with a padding slot, several tokens."""
    calls = []
    real = cc._causal_conv1d_update_triton
    monkeypatch.setattr(cc, "_causal_conv1d_update_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    g = torch.Generator().manual_seed(43)
    D, K, S = 6, 4, 8
    w, b = torch.randn(D, K, generator=g), torch.randn(D, generator=g)
    state = torch.randn(5, S, D, generator=g).transpose(1, 2)
    state_torch = state.clone()
    xs = torch.randn(3, 7, D, generator=g).transpose(1, 2)
    cs, idx = torch.tensor([2, 9, 4], dtype=torch.int32), torch.tensor([3, -1, 0], dtype=torch.int32)
    got = cc.causal_conv1d_update(xs, state, w, b, "silu", cs, idx, impl="triton")
    want = cc.causal_conv1d_update(xs, state_torch, w, b, "silu", cs, idx, impl="torch")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(state, state_torch) and calls == [1]


def test_silu_reference_is_the_textbook_formula():
    """The written-out references use z * sigmoid(z) (a check of the test's own helper)."""
    z = 0.7
    y = _loop_conv(torch.full((1, 1, 1), z, dtype=torch.float64), torch.ones(1, 1), None, None, True,
                   torch.ones(1, 1, 1))[0]
    assert math.isclose(float(y), z / (1 + math.exp(-z)), rel_tol=1e-15)
