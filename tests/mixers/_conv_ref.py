"""Convolutions written out one term at a time: the references the long-convolution mixer tests compare with."""

from __future__ import annotations

import torch


def two_sided_sum(k0: torch.Tensor, k1: torch.Tensor, D: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """y[t] = sum_{s<=t} k0[t-s] u[s] + sum_{s>t} k1[s-t-1] u[s] + D u[t]; u: [B, C, L], k0, k1: [C, L], D: [C].

    The future kernel is delayed one step, so u[t] is counted once (by k0[0] and D)."""
    L = u.shape[-1]
    y = u * D[:, None]
    for t in range(L):
        for s in range(L):
            if s <= t:
                y[..., t] = y[..., t] + k0[:, t - s] * u[..., s]
            else:
                y[..., t] = y[..., t] + k1[:, s - t - 1] * u[..., s]
    return y
