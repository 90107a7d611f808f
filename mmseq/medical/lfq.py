"""Lookup-free quantization (LFQ, MAGVIT-v2), as BTB3D uses it (refs/btb3d.md section 1.4).

Shapes in letters: B batch, K bits per token (``bits``; 18 in the paper, a codebook of 2^18), and any number of
position axes after the channel axis (d, h, w for the CT tokenizer).

- Each of the K channels is quantized to sign(x) in {-1, +1} (x > 0 gives +1, x <= 0 gives -1), with a
  straight-through gradient. No codebook is stored and nothing is projected.
- A token id is the bit-packed code, most significant bit first: channel 0 is bit K - 1, a bit is 1 where
  the code is +1. ``codes_to_indices`` / ``indices_to_codes`` convert between the two.
- Commitment loss: mean squared error between x and its (detached) code, weight 0.25.
- Entropy loss: the distribution of a token over all 2^K codes is softmax(inv_temperature * 2 <x, c>), with
  inverse temperature 100. The loss is the mean per-token entropy minus ``diversity_gamma`` times the entropy
  of the batch-averaged distribution. Because <x, c> is a sum over bits, that softmax is exactly a product of
  K independent bits with P(bit k = +1) = sigmoid(4 inv_temperature x_k), so the per-token entropy is exactly the
  sum of K binary entropies (no 2^K tensor). The batch-averaged distribution is a mixture and does not factor:
  it is computed over all 2^K codes when K <= ``entropy_group_bits`` (exact), else the bits are split into
  contiguous groups of at most ``entropy_group_bits`` and the group entropies are summed (18 bits -> two groups
  of 9 -> 2 x 512 codes). The sum is an upper bound on the exact batch entropy (entropy is subadditive); it is
  exact when the groups are independent under the batch average.
- ``entropy_weight_schedule``: the entropy weight falls linearly from 0.3 to 0.1 over the first 2,000 steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LFQ", "codes_to_indices", "indices_to_codes", "lfq_entropy", "code_usage", "entropy_weight_schedule"]

MAX_BITS = 62  # ids are int64


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an int in [1, {MAX_BITS}] (ids are int64), got {bits!r}")


def codes_to_indices(codes: torch.Tensor) -> torch.Tensor:
    """Codes [B, K, ...] (sign decides: > 0 is bit 1) -> int64 ids [B, ...], most significant bit = channel 0."""
    bits = codes.shape[1]
    _check_bits(bits)
    ids = torch.zeros(codes.shape[:1] + codes.shape[2:], dtype=torch.int64, device=codes.device)
    for k in range(bits):  # bit by bit: no [B, K, ...] int64 temporary
        ids.mul_(2).add_(codes[:, k] > 0)
    return ids


def indices_to_codes(ids: torch.Tensor, bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """int64 ids [B, ...] -> codes [B, K, ...] in {-1, +1} (inverse of ``codes_to_indices``)."""
    _check_bits(bits)
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"ids must be an integer tensor, got {ids.dtype}")
    ids = ids.to(torch.int64)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= 2**bits):
        raise ValueError(f"ids must lie in [0, 2**{bits}), got values in [{int(ids.min())}, {int(ids.max())}]")
    shifts = torch.arange(bits - 1, -1, -1, device=ids.device, dtype=torch.int64)
    bit = (ids.unsqueeze(1) >> shifts.view(1, bits, *([1] * (ids.dim() - 1)))) & 1
    return (bit * 2 - 1).to(dtype)


def _bit_table(bits: int, like: torch.Tensor) -> torch.Tensor:
    """[2^bits, bits] 0/1 table, row i = the bits of i, most significant first."""
    shifts = torch.arange(bits - 1, -1, -1, device=like.device)
    return ((torch.arange(2**bits, device=like.device)[:, None] >> shifts) & 1).to(like.dtype)


def lfq_entropy(z: torch.Tensor, inv_temperature: float = 100.0,
                group_bits: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """z [N, K] (pre-quantization values) -> (mean per-token entropy, entropy of the batch-averaged
    distribution), both in nats, for the distribution softmax(inv_temperature * 2 <z, c>) over codes c in
    {-1, +1}^K. Per-token entropy is exact; batch entropy is exact for K <= group_bits, else the sum over groups
    of at most ``group_bits`` bits (an upper bound; see the module docstring)."""
    if z.dim() != 2:
        raise ValueError(f"z must be [N, K], got shape {tuple(z.shape)}")
    if group_bits < 1:
        raise ValueError(f"group_bits must be >= 1, got {group_bits}")
    a = 4.0 * inv_temperature * z  # logit of P(bit = +1)
    log_p, log_q = F.logsigmoid(a), F.logsigmoid(-a)  # log P(+1), log P(-1)
    per_token = -(log_p.exp() * log_p + log_q.exp() * log_q).sum(dim=1).mean()
    k = z.shape[1]
    n_groups = math.ceil(k / group_bits)
    edges = [round(i * k / n_groups) for i in range(n_groups + 1)]  # near-equal contiguous groups
    batch = z.new_zeros(())
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        table = _bit_table(hi - lo, z)  # [2^g, g]
        log_probs = log_p[:, lo:hi] @ table.T + log_q[:, lo:hi] @ (1 - table).T  # [N, 2^g]
        avg = log_probs.exp().mean(dim=0)
        batch = batch - (avg * avg.clamp_min(torch.finfo(avg.dtype).tiny).log()).sum()
    return per_token, batch


@torch.no_grad()
def code_usage(ids: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """Statistics of the ids in a batch for logging: perplexity (exp of the entropy of the empirical code
    histogram), usage (fraction of the 2^bits codes seen), unique (count) and bit_balance (mean fraction of
    1 bits; 0.5 is balanced)."""
    flat = ids.reshape(-1)
    _, counts = torch.unique(flat, return_counts=True)
    p = counts.double() / max(flat.numel(), 1)
    shifts = torch.arange(bits, device=ids.device, dtype=torch.int64)
    ones = ((flat[:, None] >> shifts) & 1).double().mean() if flat.numel() else torch.tensor(0.0)
    return {"perplexity": torch.exp(-(p * p.log()).sum()).float(), "usage": torch.tensor(counts.numel() / 2**bits),
            "unique": torch.tensor(counts.numel()), "bit_balance": ones.float()}


def entropy_weight_schedule(step: int, start: float = 0.3, end: float = 0.1, steps: int = 2000) -> float:
    """Entropy-loss weight at ``step``: linear from ``start`` to ``end`` over ``steps`` steps, then ``end``."""
    if steps <= 0:
        return float(end)
    frac = min(max(step, 0) / steps, 1.0)
    return float(start + (end - start) * frac)


class LFQ(nn.Module):
    """Lookup-free quantizer: z [B, K, ...] -> (quantized [B, K, ...] in {-1, +1}, ids int64 [B, ...], aux).

    ``aux`` (when ``compute_loss``): commitment (MSE), per_token_entropy, batch_entropy, entropy
    (per_token - diversity_gamma * batch), loss (entropy_weight * entropy + commitment_weight * commitment),
    and the code statistics of ``code_usage``. Half-precision inputs are quantized in float32.
    """

    def __init__(self, bits: int = 18, *, commitment_weight: float = 0.25, entropy_weight: float = 0.1,
                 diversity_gamma: float = 1.0, inv_temperature: float = 100.0, entropy_group_bits: int = 12) -> None:
        super().__init__()
        _check_bits(bits)
        self.bits = bits
        self.commitment_weight = commitment_weight
        self.entropy_weight = entropy_weight
        self.diversity_gamma = diversity_gamma
        self.inv_temperature = inv_temperature
        self.entropy_group_bits = entropy_group_bits

    @property
    def codebook_size(self) -> int:
        return 2**self.bits

    def indices_to_codes(self, ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return indices_to_codes(ids, self.bits, dtype)

    def forward(self, z: torch.Tensor, *, entropy_weight: float | None = None,
                compute_loss: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        if z.dim() < 2 or z.shape[1] != self.bits:
            raise ValueError(f"z must be [B, {self.bits}, ...] ({self.bits} bits on axis 1), got {tuple(z.shape)}")
        in_dtype = z.dtype
        if in_dtype in (torch.float16, torch.bfloat16):
            z = z.float()
        codes = torch.where(z > 0, 1.0, -1.0).to(z.dtype)
        quantized = z + (codes - z).detach()  # straight-through: forward = codes, gradient = identity
        ids = codes_to_indices(codes)
        aux: dict[str, torch.Tensor] = {}
        if compute_loss:
            w_ent = self.entropy_weight if entropy_weight is None else entropy_weight
            commitment = F.mse_loss(z, codes.detach())
            flat = z.movedim(1, -1).reshape(-1, self.bits)
            per_token, batch = lfq_entropy(flat, self.inv_temperature, self.entropy_group_bits)
            entropy = per_token - self.diversity_gamma * batch
            aux = {"commitment": commitment, "per_token_entropy": per_token, "batch_entropy": batch,
                   "entropy": entropy, "loss": w_ent * entropy + self.commitment_weight * commitment}
            aux.update(code_usage(ids, self.bits))
        return quantized.to(in_dtype), ids, aux
