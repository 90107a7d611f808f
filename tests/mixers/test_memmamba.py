"""MemMamba's note pools, and the memory-fidelity measures on stacks with known answers."""

import pytest
import torch
from torch import nn

from mmseq.mixers import create_mixer
from mmseq.mixers.base import mixer_metrics
from mmseq.mixers.blocks import MixerStack
from mmseq.mixers.memmamba import MemMambaMixer, gather_pools
from mmseq.mixers.memory_fidelity import cross_layer_memory_fidelity, influence_matrix, token_memory_fidelity

D = 8


def _model(**kw) -> MemMambaMixer:
    torch.manual_seed(0)
    hp = {"n_layers": 2, "pool_size": 3, "d_state": 4, "cross_layer_every": 2, **kw}
    return create_mixer("memmamba", D, **hp).double()


@pytest.mark.parametrize("size", [1, 3, 20])
def test_gather_pools_holds_the_last_notes_up_to_each_position(size):
    torch.manual_seed(0)
    noted = torch.rand(2, 17) > 0.6
    notes = torch.randn(2, 17, 5, dtype=torch.float64)
    pool, valid = gather_pools(noted, notes, size)
    for b in range(2):
        for t in range(17):
            taken = [j for j in range(t + 1) if noted[b, j]][-size:]
            assert valid[b, t].sum() == len(taken)
            got = pool[b, t][valid[b, t]]
            torch.testing.assert_close(got, notes[b, taken])


def test_with_nothing_noted_the_pools_answer_with_the_null_slot():
    m = _model()
    for layer in m.layers:
        with torch.no_grad():
            layer.notes.salience.bias.fill_(-50.0)
    x = torch.randn(2, 9, D, dtype=torch.float64)
    m(x)
    assert mixer_metrics(m)["note_rate"] == 0.0
    layer = m.layers[0]
    u = torch.randn(2, 9, D, dtype=torch.float64)
    out = layer.cross_token(u, torch.zeros(2, 9, 3, m.d_note, dtype=torch.float64),
                            torch.zeros(2, 9, 3, dtype=torch.bool))
    want = layer.cross_token.out_proj(layer.cross_token.null[1]).expand(2, 9, D)
    torch.testing.assert_close(out, want)


def test_note_rate_is_reported_and_follows_the_salience():
    m = _model()
    for layer in m.layers:
        with torch.no_grad():
            layer.notes.salience.bias.fill_(50.0)
    model = nn.Sequential(m)
    m(torch.randn(2, 9, D, dtype=torch.float64))
    assert {k: v.item() for k, v in mixer_metrics(model).items()} == {"note_rate": 1.0}


def test_streaming_pool_is_bounded_and_equals_forward_over_long_inputs():
    m = _model()
    x = torch.randn(2, 30, D, dtype=torch.float64)
    state = m.init_state(2, dtype=torch.float64)
    outs = []
    for t in range(30):
        y, state = m.step(x[:, t], state)
        outs.append(y)
        assert all(s.pool.shape[1] == 3 for s in state)
    torch.testing.assert_close(torch.stack(outs, 1), m(x), rtol=1e-9, atol=1e-9)


# -- memory fidelity ----------------------------------------------------------------------------------------


class _Decay(nn.Module):
    """h_t = a h_{t-1} + x_t: the influence of x_t on h_{t+k} is a^k I."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, out = torch.zeros_like(x[:, 0]), []
        for t in range(x.shape[1]):
            h = self.a * h + x[:, t]
            out.append(h)
        return torch.stack(out, 1)


def test_token_memory_fidelity_of_a_decay_is_its_power():
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    etmf = token_memory_fidelity(_Decay(0.7), x, max_lag=5)
    torch.testing.assert_close(etmf, 0.7 ** torch.arange(6, dtype=torch.float64))


def test_cross_layer_memory_fidelity_of_scaling_layers_is_the_product():
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    layers = [lambda h: 0.5 * h, lambda h: 3.0 * h, lambda h: 0.1 * h]
    eclmf = cross_layer_memory_fidelity(layers, x)
    torch.testing.assert_close(eclmf, torch.tensor([1.0, 0.5, 1.5, 0.15], dtype=torch.float64))
    # At a lag the decay shows through the layers too: layer 1 = a decay of 0.5, then a scaling by 2.
    eclmf = cross_layer_memory_fidelity([_Decay(0.5), lambda h: 2.0 * h], x, lag=2)
    torch.testing.assert_close(eclmf, torch.tensor([0.0, 0.25, 0.5], dtype=torch.float64))


def test_influence_is_causal_and_probes_estimate_the_exact_norm():
    torch.manual_seed(0)
    stack = MixerStack(D, 2, {"name": "mamba", "d_state": 4}, mlp_ratio=0).double()
    x = torch.randn(2, 7, D, dtype=torch.float64)
    exact = influence_matrix(stack, x)
    lower = torch.ones(7, 7, dtype=torch.bool).tril()
    assert exact[~lower].abs().max() == 0 and exact[lower].min() > 0
    estimate = influence_matrix(stack, x, probes=48)
    assert ((estimate - exact).abs() / exact)[lower].max() < 0.3
    # Any causal stack: per-layer vertical fidelity of the blocks of a MixerStack.
    eclmf = cross_layer_memory_fidelity(list(stack.blocks), x)
    assert eclmf.shape == (3,) and eclmf[0] == 1.0 and torch.isfinite(eclmf).all()


def test_fidelity_arguments_are_checked():
    x = torch.randn(1, 4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="max_lag"):
        token_memory_fidelity(_Decay(0.5), x, max_lag=4)
    with pytest.raises(ValueError, match="lag"):
        cross_layer_memory_fidelity([_Decay(0.5)], x, lag=-1)
