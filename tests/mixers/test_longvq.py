"""LongVQ: codebook attention equals explicit attention over the quantised keys; EMA codebook; streaming state."""

import pytest
import torch
from mmseq.kernels import attention_ref

from mmseq.mixers import create_mixer
from mmseq.mixers.base import stream
from mmseq.mixers.longvq import LongVQ, codebook_attention, lookup, quantize


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
@pytest.mark.parametrize("L,block_len", [(13, 4), (16, 4), (7, 64), (9, 1)])
def test_codebook_attention_equals_explicit_attention_over_quantised_keys(causal, L, block_len):
    torch.manual_seed(0)
    B, H, P, S = 2, 3, 5, 6
    q = torch.randn(B, H, L, P, dtype=torch.float64)
    k = torch.randn(B, H, L, P, dtype=torch.float64)
    v = torch.randn(B, H, L, 4, dtype=torch.float64)
    codebook = torch.randn(H, S, P, dtype=torch.float64)
    z = quantize(k, codebook)
    k_hat = lookup(codebook, z)
    dist = (k[:, :, :, None] - codebook[None, :, None]).square().sum(-1)  # [B, H, L, S]
    torch.testing.assert_close(k_hat, codebook[torch.arange(H)[None, :, None], dist.argmin(-1)])
    out = codebook_attention(q, k_hat, v, z, codebook, causal=causal, block_len=block_len)
    ref = attention_ref(q, k_hat, v, causal=causal)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_codebook_attention_counts_repeated_codes():
    """Two keys on one code weigh twice one key on another: the counts enter the denominator."""
    q = torch.zeros(1, 1, 3, 2, dtype=torch.float64)
    codebook = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    z = torch.tensor([[[0, 0, 1]]])
    v = torch.tensor([[[[1.0], [1.0], [4.0]]]], dtype=torch.float64)
    out = codebook_attention(q, lookup(codebook, z), v, z, codebook, causal=False, block_len=1)
    torch.testing.assert_close(out[0, 0, :, 0], torch.full((3,), 2.0, dtype=torch.float64))


def test_straight_through_gradient_reaches_keys():
    torch.manual_seed(0)
    m = create_mixer("longvq", 16, codebook_size=8, n_heads=2, block_len=4).double()
    m(torch.randn(2, 10, 16, dtype=torch.float64)).sum().backward()
    assert m.qk_gamma.grad[1].abs().sum() > 0 and m.qk_beta.grad[1].abs().sum() > 0
    assert m.last_aux_loss is not None and m.last_aux_loss.item() > 0


def test_ema_codebook_moves_on_training_steps_only():
    torch.manual_seed(0)
    m = create_mixer("longvq", 16, codebook_size=8, n_heads=2, block_len=4, ema_decay=0.5).double()
    assert not any(n == "codebook" for n, _ in m.named_parameters())
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    before = m.codebook.clone()
    m(x)  # forward alone
    torch.testing.assert_close(m.codebook, before)
    m.eval()
    m(x).sum().backward()  # eval: no update
    torch.testing.assert_close(m.codebook, before)
    m.train()
    aux = []
    for _ in range(5):
        y = m(x)
        aux.append(m.last_aux_loss.item())
        (y.sum() + m.last_aux_loss).backward()
    assert not torch.equal(m.codebook, before)
    assert aux[-1] < aux[0]  # the codes move toward the keys


def test_stream_state_is_per_code_not_per_token():
    torch.manual_seed(0)
    m = create_mixer("longvq", 16, codebook_size=8, n_heads=2, block_len=4).double()
    x = torch.randn(2, 21, 16, dtype=torch.float64)
    state = m.init_state(2, dtype=torch.float64)
    streamed, state = stream(m, x, state)
    assert state.phi.shape == (2, 2, 8, 8) and state.n.sum().item() == 2 * 2 * 21
    torch.testing.assert_close(streamed, m(x), rtol=1e-8, atol=1e-8)


def test_longvq_rejects_bad_args():
    with pytest.raises(ValueError, match="codebook_size"):
        create_mixer("longvq", 16, codebook_size=0)
    with pytest.raises(ValueError, match="divisible"):
        create_mixer("longvq", 16, n_heads=3)


def test_commitment_loss_reaches_the_training_loss():
    """aux_loss sums every LongVQ layer's commitment loss; its gradient pulls the keys toward their codes."""
    from mmseq.mixers.base import aux_loss
    from mmseq.mixers.blocks import MixerStack

    torch.manual_seed(0)
    stack = MixerStack(16, 2, {"name": "longvq", **LongVQ.test_hparams, "commitment": 0.5})
    assert aux_loss(stack) == 0.0  # nothing before a forward
    stack(torch.randn(2, 12, 16))
    layers = [b.mixer for b in stack.blocks]
    expected = sum(m.last_aux_loss for m in layers)
    total = aux_loss(stack)
    torch.testing.assert_close(total, expected)
    assert total > 0
    total.backward()
    assert all(m.z_proj.weight.grad is not None and m.z_proj.weight.grad.abs().sum() > 0 for m in layers)
