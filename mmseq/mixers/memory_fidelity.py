"""How much of a token survives: horizontal (along the sequence) and vertical (through layers) memory fidelity.

MemMamba (Wang et al., 2025) names two measures of forgetting: ETMF, the expected token memory fidelity
along the sequence within a layer, and ECLMF, the expected cross-layer memory fidelity. Here both are
measured through the model's Jacobian, which needs nothing but a differentiable causal function:

    I[tau, t] = ||d y_tau / d x_t||_F             (the influence of input token t on output position tau)
    ETMF(k)   = mean_t I[t + k, t] / I[t, t]       (1 at k = 0; a^k for a linear recurrence h_t = a h_{t-1} + x_t)
    ECLMF(l)  = mean_t ||d h^(l)_{t+k} / d x_t||_F / sqrt(D)
                                                   (layer 0 is the input itself, so ECLMF(0) = 1 at k = 0;
                                                    c^l for a stack of layers that each scale by c)

Both are defined on expectations over positions (and the batch), as the paper's are; the Jacobian form is
this module's reading of "how much of token t is still in the representation", not the paper's formula.
Frobenius norms are exact with ``probes=None`` (one backward pass per output channel and position) or
estimated from ``probes`` Gaussian cotangents (E ||v^T J||^2 = ||J||_F^2), which is cheaper for wide models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

Fn = Callable[[torch.Tensor], torch.Tensor]


def _influence_rows(out: torch.Tensor, x: torch.Tensor, probes: int | None, seed: int) -> torch.Tensor:
    """out [B, L, Do] computed from x [B, L, D] (with grad) -> I [L, L], I[tau, t] = ||d out_tau / d x_t||_F
    (the root of the squared norm averaged over the batch)."""
    B, L, Do = out.shape
    gen = torch.Generator().manual_seed(seed)
    sq = torch.zeros(L, L, dtype=torch.float64)
    for tau in range(L):
        cotangents = (torch.eye(Do, dtype=out.dtype)[:, None, :].expand(Do, B, Do) if probes is None else
                      torch.randn(probes, B, Do, generator=gen, dtype=torch.float64).to(out.dtype))
        for v in cotangents:  # [B, Do]
            (g,) = torch.autograd.grad(out[:, tau], x, grad_outputs=v.to(out.device), retain_graph=True)
            sq[tau] += g.double().square().sum(-1).mean(0).cpu()  # [L]: one squared Jacobian block per source
        if probes is not None:
            sq[tau] /= probes
    return sq.sqrt()


def influence_matrix(fn: Fn, x: torch.Tensor, *, probes: int | None = None, seed: int = 0) -> torch.Tensor:
    """I [L, L] with I[tau, t] = ||d fn(x)_tau / d x_t||_F for x [B, L, D]; zero above the diagonal when fn is
    causal. ``probes``: None for exact norms, else the number of random cotangents per position."""
    x = x.detach().requires_grad_(True)
    return _influence_rows(fn(x), x, probes, seed)


def token_memory_fidelity(fn: Fn, x: torch.Tensor, max_lag: int, *, probes: int | None = None,
                          seed: int = 0) -> torch.Tensor:
    """ETMF(k) for k = 0 .. max_lag: [max_lag + 1], the mean over positions t of I[t + k, t] / I[t, t].

    fn: a causal map x [B, L, D] -> [B, L, Do] (one layer, or a whole stack). Needs max_lag < L."""
    L = x.shape[1]
    if not 0 <= max_lag < L:
        raise ValueError(f"max_lag must be in [0, L - 1] = [0, {L - 1}], got {max_lag}")
    infl = influence_matrix(fn, x, probes=probes, seed=seed)
    diag = infl.diagonal()
    out = []
    for k in range(max_lag + 1):
        t = torch.arange(L - k)
        out.append((infl[t + k, t] / diag[t].clamp_min(1e-300)).mean())
    return torch.stack(out)


def cross_layer_memory_fidelity(layers: Sequence[Fn], x: torch.Tensor, *, lag: int = 0,
                                probes: int | None = None, seed: int = 0) -> torch.Tensor:
    """ECLMF(l) for l = 0 .. len(layers): [len(layers) + 1], the mean over positions t of
    ||d h^(l)_{t+lag} / d x_t||_F / sqrt(D), with h^(0) = x and h^(l) = layers[l-1](h^(l-1)).

    layers: causal maps [B, L, D] -> [B, L, D] applied in order (e.g. the blocks of a ``MixerStack``)."""
    B, L, D = x.shape
    if not 0 <= lag < L:
        raise ValueError(f"lag must be in [0, L - 1] = [0, {L - 1}], got {lag}")
    x = x.detach().requires_grad_(True)
    t = torch.arange(L - lag)
    out = [torch.tensor(1.0 if lag == 0 else 0.0, dtype=torch.float64)]
    h = x
    for layer in layers:
        h = layer(h)
        infl = _influence_rows(h, x, probes, seed)
        out.append(infl[t + lag, t].mean() / math.sqrt(D))
    return torch.stack(out)
