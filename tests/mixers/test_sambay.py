"""SambaY: layout, the gated memory unit, one shared KV cache, and a prefill that runs the top layers once."""

import pytest
import torch
import torch.nn.functional as F

from mmseq.mixers import create_mixer
from mmseq.mixers.base import stream
from mmseq.mixers.mamba import MambaMixer
from mmseq.mixers.sambay import GatedMemoryUnit, SambaYMixer
from mmseq.mixers.swa import SlidingWindowAttention

D = 16


def _model(n_layers: int = 8) -> SambaYMixer:
    torch.manual_seed(0)
    return create_mixer("sambay", D, n_layers=n_layers, n_heads=2, window=4, d_state=4, mlp_ratio=2.0).double()


def test_layout_follows_the_paper():
    m = _model(12)
    kinds = [type(layer.op) for layer in m.self_decoder]
    assert kinds == [MambaMixer, SlidingWindowAttention] * 3
    assert isinstance(m.memory_layer.op, MambaMixer)
    top = [type(layer.op).__name__ for layer in m.cross_decoder]
    assert top == ["GatedMemoryUnit", "_Heads"] * 2
    # Cross-decoder attention layers own queries and outputs only: the keys/values are layer n/2 + 1's.
    assert not any(hasattr(layer.op, "kv_proj") for layer in m.cross_decoder)


def test_gated_memory_unit_formula():
    torch.manual_seed(0)
    gmu = GatedMemoryUnit(4, 6).double()
    x, mem = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 6, dtype=torch.float64)
    want = (F.silu(x @ gmu.in_proj.weight.T) * mem) @ gmu.out_proj.weight.T
    torch.testing.assert_close(gmu(x, mem), want)


def test_the_memory_is_the_memory_layers_readout_before_its_gate():
    m = _model()
    x = torch.randn(2, 9, D, dtype=torch.float64)
    seen = {}
    gmu = m.cross_decoder[0].op
    gmu.register_forward_hook(lambda mod, args, out: seen.update(memory=args[1]))
    m(x)
    h = x
    for layer in m.self_decoder:
        h = layer.finish(h, layer.op(layer.norm(h)))
    # An independent readout: the Mamba scan of the memory layer, D skip included, without the z gate.
    mamba = m.memory_layer.op
    u = m.memory_layer.norm(h)
    xz = mamba.in_proj(u)
    xs = xz[..., : mamba.d_inner].transpose(1, 2)
    xs = F.silu(F.conv1d(F.pad(xs, (mamba.d_conv - 1, 0)), mamba.conv1d.weight, mamba.conv1d.bias,
                         groups=mamba.d_inner))
    dt, Bm, Cm = torch.split(mamba.x_proj(xs.transpose(1, 2)), [mamba.dt_rank, mamba.d_state, mamba.d_state], -1)
    delta = F.softplus(mamba.dt_proj(dt))  # [B, L, E]
    A = -torch.exp(mamba.A_log)
    state = torch.zeros(2, mamba.d_inner, mamba.d_state, dtype=torch.float64)
    outs = []
    for t in range(x.shape[1]):
        state = torch.exp(delta[:, t, :, None] * A) * state + delta[:, t, :, None] * Bm[:, t, None, :] \
            * xs[:, :, t, None]
        outs.append((state * Cm[:, t, None, :]).sum(-1) + mamba.D * xs[:, :, t])
    torch.testing.assert_close(seen["memory"], torch.stack(outs, 1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("L", [1, 6, 11])
def test_prefill_then_step_equals_forward(L):
    m = _model()
    x = torch.randn(2, L + 4, D, dtype=torch.float64)
    full = m(x)
    last, state = m.prefill(x[:, :L])
    torch.testing.assert_close(last, full[:, L - 1], rtol=1e-9, atol=1e-9)
    rest, state = stream(m, x[:, L:], state)
    torch.testing.assert_close(rest, full[:, L:], rtol=1e-9, atol=1e-9)
    # One KV cache for the whole model: every position's keys, in the layer that writes them.
    assert state.k.shape == (2, 2, L + 4, D // 2) and state.t == L + 4


def test_prefill_runs_the_top_layers_for_the_last_position_only():
    m = _model()
    widths = []
    for layer in [m.cache_layer, *m.cross_decoder]:  # queries of the attention layers, inputs of the GMUs
        proj = layer.op.in_proj if isinstance(layer.op, GatedMemoryUnit) else layer.op.q_proj
        proj.register_forward_hook(lambda mod, args, out: widths.append(out.shape[1]))
    m.prefill(torch.randn(2, 50, D, dtype=torch.float64))
    assert widths == [1] * (1 + len(m.cross_decoder))
    widths.clear()
    m(torch.randn(2, 50, D, dtype=torch.float64))
    assert widths == [50] * (1 + len(m.cross_decoder))


def test_streaming_state_holds_no_cache_but_the_shared_one_and_the_windows():
    m = _model()
    _, state = m.prefill(torch.randn(1, 40, D, dtype=torch.float64))
    for s in state.layers:  # the self-decoder: Mamba states and sliding windows of 4
        if hasattr(s, "cache"):
            assert s.cache.k.shape[2] == 4


@pytest.mark.parametrize("n_layers", [4, 10])
def test_n_layers_must_be_a_multiple_of_four_from_eight(n_layers):
    with pytest.raises(ValueError, match="n_layers"):
        create_mixer("sambay", D, n_layers=n_layers)
