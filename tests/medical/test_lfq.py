"""Lookup-free quantizer: id packing, straight-through gradient, entropy loss against a brute-force softmax over
every code (float64), the grouped approximation, code statistics and the entropy-weight schedule."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from mmseq.medical.lfq import (
    LFQ,
    code_usage,
    codes_to_indices,
    entropy_weight_schedule,
    indices_to_codes,
    lfq_entropy,
)


def all_codes(bits: int) -> torch.Tensor:
    """[2^bits, bits] in {-1, +1}, row i = code of id i (most significant bit first), written out."""
    return torch.tensor(list(itertools.product([-1.0, 1.0], repeat=bits)), dtype=torch.float64)


def brute_force_entropies(z: torch.Tensor, inv_temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token and batch entropy from softmax(inv_temperature * 2 <z, c>) over every code c."""
    probs = F.softmax(inv_temperature * 2 * z @ all_codes(z.shape[1]).T, dim=-1)  # [N, 2^K]
    per_token = -(probs * probs.clamp_min(1e-300).log()).sum(-1).mean()
    avg = probs.mean(0)
    return per_token, -(avg * avg.clamp_min(1e-300).log()).sum()


@pytest.mark.parametrize("bits", [1, 5, 18, 40])
def test_ids_and_codes_round_trip(bits):
    torch.manual_seed(bits)
    ids = torch.randint(0, 2**bits, (2, 3, 4, 5))
    codes = indices_to_codes(ids, bits)
    assert codes.shape == (2, bits, 3, 4, 5)
    assert set(codes.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(codes_to_indices(codes), ids)


def test_ids_are_most_significant_bit_first():
    assert_close(indices_to_codes(torch.tensor([[0, 1, 2**5]]), 6)[0, :, 2], torch.tensor([1.0, -1, -1, -1, -1, -1]))
    table = all_codes(4).T.reshape(1, 4, 16)  # row i of the written-out table is the code of id i
    assert torch.equal(codes_to_indices(table), torch.arange(16)[None])


def test_ids_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 2\*\*3\)"):
        indices_to_codes(torch.tensor([8]), 3)
    with pytest.raises(TypeError, match="integer"):
        indices_to_codes(torch.tensor([1.0]), 3)
    with pytest.raises(ValueError, match="bits must be"):
        LFQ(63)


def test_quantize_is_sign_with_straight_through_gradient():
    torch.manual_seed(0)
    z = torch.randn(2, 6, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    q, ids, aux = LFQ(6)(z, compute_loss=False)
    assert aux == {}
    assert torch.equal(q.detach(), torch.where(z > 0, 1.0, -1.0).to(z.dtype))
    assert torch.equal(ids, codes_to_indices(z.detach()))
    g = torch.randn_like(q)
    q.backward(g)
    assert torch.equal(z.grad, g)


@pytest.mark.parametrize("bits, inv_temperature", [(1, 100.0), (3, 1.0), (6, 100.0), (8, 3.0)])
def test_entropy_matches_brute_force(bits, inv_temperature):
    torch.manual_seed(bits)
    z = (0.05 * torch.randn(37, bits, dtype=torch.float64)).requires_grad_()
    per_token, batch = lfq_entropy(z, inv_temperature, group_bits=12)
    z_ref = z.detach().clone().requires_grad_()
    ref_token, ref_batch = brute_force_entropies(z_ref, inv_temperature)
    assert_close(per_token, ref_token, atol=1e-12, rtol=1e-10)
    assert_close(batch, ref_batch, atol=1e-12, rtol=1e-10)
    (per_token - batch).backward()
    (ref_token - ref_batch).backward()
    assert_close(z.grad, z_ref.grad, atol=1e-10, rtol=1e-8)


def test_grouped_batch_entropy_is_the_sum_over_groups_and_an_upper_bound():
    torch.manual_seed(4)
    z = 0.02 * torch.randn(50, 6, dtype=torch.float64) + 0.01
    _, exact = lfq_entropy(z, 100.0, group_bits=6)
    per_token, grouped = lfq_entropy(z, 100.0, group_bits=3)
    expected = brute_force_entropies(z[:, :3], 100.0)[1] + brute_force_entropies(z[:, 3:], 100.0)[1]
    assert_close(grouped, expected, atol=1e-12, rtol=1e-10)
    assert grouped >= exact - 1e-12
    assert_close(per_token, brute_force_entropies(z, 100.0)[0], atol=1e-12, rtol=1e-10)


def test_eighteen_bits_needs_no_full_codebook():
    torch.manual_seed(5)
    z = torch.randn(4, 18, 3, 8, 8, requires_grad=True)
    _, ids, aux = LFQ(18)(z)  # two groups of 9 bits: [N, 512] twice, never [N, 2^18]
    aux["loss"].backward()
    assert ids.max() < 2**18 and torch.isfinite(z.grad).all()
    n_tokens = 4 * 3 * 8 * 8
    # each group's mixture of n_tokens distributions has at most log(n_tokens) + their mean entropy
    bound = 2 * math.log(n_tokens) + aux["per_token_entropy"]
    assert 0 <= aux["batch_entropy"] <= min(18 * math.log(2), bound) + 1e-5


def test_losses_and_weights():
    torch.manual_seed(6)
    z = torch.randn(2, 4, 5, 3, 3, dtype=torch.float64)
    lfq = LFQ(4, commitment_weight=0.25, diversity_gamma=1.0)
    _, _, aux = lfq(z, entropy_weight=0.3)
    assert_close(aux["commitment"], ((z - z.sign()) ** 2).mean())
    assert_close(aux["entropy"], aux["per_token_entropy"] - aux["batch_entropy"])
    assert_close(aux["loss"], 0.3 * aux["entropy"] + 0.25 * aux["commitment"])
    _, _, default = lfq(z)  # constructor default entropy_weight = 0.1
    assert_close(default["loss"], 0.1 * aux["entropy"] + 0.25 * aux["commitment"])


def test_half_precision_is_quantized_in_float32():
    z = torch.randn(1, 5, 2, 2, 2).bfloat16()
    q, ids, aux = LFQ(5)(z)
    assert q.dtype == torch.bfloat16 and aux["commitment"].dtype == torch.float32
    assert torch.equal(ids, codes_to_indices(z.float()))


def test_code_usage():
    stats = code_usage(torch.tensor([[0, 0, 1, 1]]), bits=2)
    assert_close(stats["perplexity"], torch.tensor(2.0))
    assert stats["usage"] == 0.5 and stats["unique"] == 2
    assert_close(stats["bit_balance"], torch.tensor(0.25))  # one 1 bit out of four per two tokens
    assert_close(code_usage(torch.arange(16), bits=4)["perplexity"], torch.tensor(16.0))


def test_entropy_weight_schedule():
    assert entropy_weight_schedule(0) == pytest.approx(0.3)
    assert entropy_weight_schedule(1000) == pytest.approx(0.2)
    assert entropy_weight_schedule(2000) == pytest.approx(0.1)
    assert entropy_weight_schedule(10_000) == pytest.approx(0.1)
    assert entropy_weight_schedule(50, start=1.0, end=0.0, steps=100) == pytest.approx(0.5)
