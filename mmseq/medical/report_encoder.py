"""What the report generator reads from a volume's tokens: a 3D convolutional encoder over the LFQ codes and an
18-abnormality head on its features.

The codes ``[B, bits, d, h, w]`` (values +-1) are centre-cropped or zero-padded to a fixed grid (0 means "no
token" to the convolutions), run through 3D convolutions and pooled to the prefix grid; the head reads the
same features pooled over the whole volume. Its predictions become the decoder's label prompt (one token per
abnormality, present or absent), the diagnosis-driven prompting of PromptMRG (Jin et al., AAAI 2024): the
decoder learns to write what the prompt says, with true labels while training, so the clinical content of a
report follows the head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def fit_codes(codes: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """codes [B, C, d, h, w] -> [B, C, *grid]: centre crop where larger, zero padding where smaller."""
    out = codes.new_zeros(*codes.shape[:2], *grid)
    src, dst = [slice(None)] * 2, [slice(None)] * 2
    for have, want in zip(codes.shape[2:], grid):
        if have >= want:
            a = (have - want) // 2
            src.append(slice(a, a + want))
            dst.append(slice(None))
        else:
            a = (want - have) // 2
            src.append(slice(None))
            dst.append(slice(a, a + have))
    out[tuple(dst)] = codes[tuple(src)]
    return out


def _block(c_in: int, c_out: int, stride: int | tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.GELU())


class CodeEncoder(nn.Module):
    """codes [B, bits, *code_grid] -> (prefix features [B, P, D], label logits [B, n_labels]).

    Six 3x3x3 convolutions (``channels``, twice as many after an in-plane stride 2, four times after a stride
    2 in all three axes), adaptive average pooling to ``prefix_grid`` for the prefix, mean and max over the
    whole volume for the head.
    """

    def __init__(self, token_bits: int, d_model: int, prefix_grid: Sequence[int], *, channels: int = 32,
                 n_labels: int = 18) -> None:
        super().__init__()
        c = channels
        if c % 8:
            raise ValueError(f"encoder_channels must be a multiple of 8 (GroupNorm groups), got {c}")
        self.prefix_grid = tuple(int(g) for g in prefix_grid)
        self.features = nn.Sequential(_block(token_bits, c, 1), _block(c, c, 1), _block(c, 2 * c, (1, 2, 2)),
                                      _block(2 * c, 2 * c, 1), _block(2 * c, 4 * c, 2), _block(4 * c, 4 * c, 1))
        self.proj = nn.Linear(4 * c, d_model)
        self.label_head = nn.Linear(8 * c, n_labels)

    def forward(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.features(codes.to(self.proj.weight.dtype))
        pooled = F.adaptive_avg_pool3d(z, self.prefix_grid).flatten(2).transpose(1, 2)  # [B, P, 4c]
        logits = self.label_head(torch.cat([z.mean((2, 3, 4)), z.amax((2, 3, 4))], dim=1))
        return self.proj(pooled), logits
