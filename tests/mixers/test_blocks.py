"""MixerBlock and MixerStack with a context, against pre-norm residual blocks written out in float64
(layer norm, GELU MLP and cross attention from the modules' weights)."""

import math

import pytest
import torch

from mmseq.mixers.blocks import MixerBlock, MixerStack
from tests.mixers._attention_ref import merge, project, softmax_attention

MIXER = {"name": "attention", "n_heads": 2}


def _layer_norm(ln, x):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight.double() + ln.bias.double()


def _mlp(mlp, x):
    first, last = mlp.net[0], mlp.net[3]
    h = x @ first.weight.double().T + first.bias.double()
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
    return h @ last.weight.double().T + last.bias.double()


def _block(block, x, ctx):
    """x + cross_attention(norm1(x), ctx), then x + mlp(norm2(x)); the context itself is not normalized."""
    q, k, v = project(block.mixer, _layer_norm(block.norm1, x), context=ctx, rotary=False)
    x = x + merge(block.mixer, softmax_attention(q, k, v, torch.ones(x.shape[1], ctx.shape[1], dtype=torch.bool)))
    return x + _mlp(block.mlp, _layer_norm(block.norm2, x))


def _inputs(L=6, S=10):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, L, 16, generator=g, dtype=torch.float64), torch.randn(2, S, 16, generator=g,
                                                                                  dtype=torch.float64)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_block_with_context_is_the_cross_attention_residual_block(causal):
    torch.manual_seed(0)
    block = MixerBlock(16, MIXER, causal=causal, mlp_ratio=2.0).double()
    x, ctx = _inputs()
    torch.testing.assert_close(block(x, context=ctx), _block(block, x, ctx), rtol=1e-10, atol=1e-10)


def test_stack_with_context_feeds_the_same_context_to_every_block():
    torch.manual_seed(0)
    stack = MixerStack(16, 2, MIXER, mlp_ratio=2.0).double()
    x, ctx = _inputs()
    h = x
    for block in stack.blocks:
        h = _block(block, h, ctx)
    torch.testing.assert_close(stack(x, context=ctx), _layer_norm(stack.norm, h), rtol=1e-10, atol=1e-10)
