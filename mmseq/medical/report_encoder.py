"""What the report generator reads from a volume's tokens: code histograms per region and an 18-abnormality
head on them.

The volume's token grid is cut into ``regions`` (d, h, w) cells, as adaptive pooling would cut it, and each cell
becomes the histogram of its token ids (frequencies over the ``2**bits`` codes). A finding changes which codes
occur where: an enlarged heart or a pleural effusion replaces lung codes by soft-tissue and fluid codes in the
lower, dependent cells. Histograms are the same size for every grid, so volumes of any shape batch together.

The head is a linear layer on the batch-normalised histograms of all cells; its thresholded predictions become
the decoder's label prompt (one token per abnormality, present or absent), the diagnosis-driven prompting of
PromptMRG (Jin et al., AAAI 2024): the decoder learns with true labels to write what the prompt says, so a
report's clinical content follows the head. On 1,200 training phantoms (``mmseq data make ct-phantoms --n 1600``,
shipped 10-bit tokenizer) this head reached test AUROC 0.97 for cardiomegaly and 0.93 for pleural effusion,
where a 3D convolutional network over the codes (five layers, 32-128 channels) stayed near chance (0.65 and 0.55)
at the same data size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .lfq import codes_to_indices

MAX_BAG_BITS = 14  # 16,384 bins per region; beyond that a histogram is mostly empty and the head too large


def code_histograms(codes: torch.Tensor, regions: Sequence[int]) -> torch.Tensor:
    """codes [B, bits, d, h, w] (+-1) -> histograms [B, P, 2**bits], P = prod(regions), each row summing to 1.

    Cell i along an axis of size n spans [i*n // r, (i+1)*n // r) (cells of an axis shorter than ``r`` may be
    empty and are all-zero rows).
    """
    bits = codes.shape[1]
    if bits > MAX_BAG_BITS:
        raise ValueError(f"code histograms need tokens of at most {MAX_BAG_BITS} bits, got {bits}")
    ids = codes_to_indices(codes)  # [B, d, h, w]
    b, (d, h, w) = ids.shape[0], ids.shape[1:]
    rd, rh, rw = (int(r) for r in regions)

    def cell(n: int, r: int) -> torch.Tensor:
        return torch.arange(n, device=ids.device) * r // n  # cell index of each position

    which = (cell(d, rd)[:, None, None] * rh + cell(h, rh)[None, :, None]) * rw + cell(w, rw)[None, None, :]
    k = 2**bits
    flat = (which[None] * k + ids).reshape(b, -1)  # [B, d*h*w] bin in [0, P*k)
    hist = torch.zeros(b, rd * rh * rw * k, device=ids.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat, dtype=hist.dtype))
    hist = hist.view(b, rd * rh * rw, k)
    return hist / hist.sum(-1, keepdim=True).clamp_min(1)


class CodeBagEncoder(nn.Module):
    """histograms [B, P, 2**bits] -> (prefix features [B, P, D], label logits [B, n_labels])."""

    def __init__(self, token_bits: int, d_model: int, n_regions: int, *, n_labels: int = 18,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if token_bits > MAX_BAG_BITS:
            raise ValueError(f"the bag encoder takes tokens of at most {MAX_BAG_BITS} bits, got {token_bits}")
        k = 2**token_bits
        self.norm = nn.BatchNorm1d(n_regions * k)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(k, d_model)
        self.label_head = nn.Linear(n_regions * k, n_labels)

    def forward(self, hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, p, k = hist.shape
        z = self.drop(self.norm(hist.reshape(b, p * k).to(self.proj.weight.dtype)))
        return self.proj(z.view(b, p, k)), self.label_head(z)
