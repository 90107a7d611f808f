"""MFuser's two Mamba modules: MVFuser (the co-adapter between the image towers) and MTEnhancer (text refinement).

Shapes in letters: B batch, L tokens, D d_model, E = expand * D, H = E // 2 (the bottleneck), N d_state,
R dt_rank, K class count, T text width.

MVFuser (one after every backbone block, on the concatenated DINOv2 and CLIP tokens, DINOv2 first):

    [x | z] = in_proj(tokens)                                  [B, L, E] -> two halves of H channels
    x = silu(conv_x(x));  z = silu(conv_z(z))                  depthwise k=3, 'same' padding (non-causal)
    y = scan(x)                                                one forward selective scan (or a registry mixer)
    out = scale * dropout(out_proj(rms_norm(y) * silu(z)))     scale starts at 1e-3

``scan`` is the selective scan of Mamba-1 with x_proj / dt_proj / A_log / D as in ``mamba_ssm``, run by
``mmseq.kernels.selective_scan``. The official code scans once, forward, over [DINOv2 tokens, CLIP tokens], so
the CLIP half sees the DINOv2 context and the DINOv2 half only its own; that order is kept. ``mixer`` names any
``mmseq.mixers`` mixer to put in the scan's place (e.g. attention for the quadratic baseline).

MTEnhancer (pre-norm, residual; text tokens t [B, K, W], visual memory m [B, M, W]):

    t = t + dropout(self_attention(ln1(t)))
    o = MVFuser([ln2(t), m, ln2(t)]);  t = t + o[:, :K] + o[:, -K:]     the text is read before and after the image
    t = t + dropout(mlp(ln3(t)))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmseq.kernels import selective_scan
from mmseq.mixers import create_mixer


class GatedRMSNorm(nn.Module):
    """y = rms_norm(x) * weight * silu(z) (normalise before the gate, as mamba_ssm's RMSNorm(norm_before_gate))."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x, z: [..., dim] -> [..., dim]."""
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return (y * F.silu(z.float())).to(x.dtype)


class SelectiveScanBranch(nn.Module):
    """The SSM of the x branch: x [B, L, H] -> y [B, L, H], Mamba-1's selective scan with its own projections.

    Parameter names and init follow ``mamba_ssm``: x_proj [R + 2N, H], dt_proj [H, R] (+ bias: inverse softplus
    of a log-uniform step in [dt_min, dt_max]), A_log = log(1..N) per channel, D = 1.
    """

    def __init__(self, d_inner: int, dt_rank: int, d_state: int = 16, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, impl: str | None = None) -> None:
        super().__init__()
        self.d_state, self.dt_rank, self.impl = d_state, dt_rank, impl
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        nn.init.uniform_(self.dt_proj.weight, -dt_rank**-0.5, dt_rank**-0.5)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(d_inner))
        self.D._no_weight_decay = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # [B, H, L]; the bias goes in as delta_bias
        A = -torch.exp(self.A_log)
        with torch.autocast(x.device.type, enabled=False):
            y = selective_scan(x.transpose(1, 2), dt, A, B.transpose(1, 2), C.transpose(1, 2), self.D,
                               delta_bias=self.dt_proj.bias, delta_softplus=True, impl=self.impl)
        return y.transpose(1, 2)


class MVFuser(nn.Module):
    """Mamba co-adapter: tokens [B, L, D] -> the update [B, L, D] to add back into the streams the tokens came from.

    Args:
        d_model: token width D. d_state: N. d_conv: taps of the two depthwise convs ('same' padding).
        expand: E = expand * D, split into the x and z halves (the official bottleneck is D / 2 at expand 1).
        dt_rank: R ("auto": ceil(D / 16)). dropout: on the output. scale_init: the learnable output scale's start
            (near zero, so a new fuser leaves the pretrained towers' features almost unchanged).
        mixer: None for the official selective scan, or ``{"name": ..., **hparams}`` of any ``mmseq.mixers``
            mixer, built at width H with ``causal`` (for mixers that support both).
        impl: kernel path for the scan ("ref" | "torch" | "triton"; None picks by device).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 3, expand: float = 1, dt_rank: int | str = "auto",
                 dropout: float = 0.1, scale_init: float = 1e-3, mixer: dict | None = None, causal: bool = True,
                 impl: str | None = None) -> None:
        super().__init__()
        d_inner = int(expand * d_model)
        if d_inner < 2 or d_inner % 2:
            raise ValueError(f"expand * d_model must be an even number >= 2, got {d_inner}")
        if d_conv < 1 or d_conv % 2 == 0:
            raise ValueError(f"d_conv must be odd (a centred 'same' conv), got {d_conv}")
        half = d_inner // 2
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        self.d_model, self.d_inner = d_model, d_inner
        self.in_proj = nn.Linear(d_model, d_inner, bias=False)
        self.conv_x = nn.Conv1d(half, half, d_conv, padding=d_conv // 2, groups=half, bias=False)
        self.conv_z = nn.Conv1d(half, half, d_conv, padding=d_conv // 2, groups=half, bias=False)
        if mixer is None or mixer.get("name") in (None, "scan"):
            self.ssm: nn.Module = SelectiveScanBranch(half, int(dt_rank), d_state, impl=impl)
        else:
            spec = dict(mixer)
            name = spec.pop("name")
            self.ssm = create_mixer(name, half, causal=causal, **spec)
        self.norm = GatedRMSNorm(half)
        self.out_proj = nn.Linear(half, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: [B, L, D] -> update [B, L, D]."""
        x, z = self.in_proj(tokens).transpose(1, 2).chunk(2, dim=1)  # [B, H, L] each
        x = F.silu(self.conv_x(x)).transpose(1, 2)
        z = F.silu(self.conv_z(z)).transpose(1, 2)
        y = self.norm(self.ssm(x), z)
        return self.scale * self.dropout(self.out_proj(y))

    def fuse(self, *streams: torch.Tensor) -> list[torch.Tensor]:
        """Scan over the concatenation of streams [B, L_i, D] (in the order given) and add each its part back."""
        update = self(torch.cat(streams, dim=1))
        return [s + u for s, u in zip(streams, update.split([s.shape[1] for s in streams], dim=1), strict=True)]


class MTEnhancerLayer(nn.Module):
    """One MTEnhancer layer: text t [B, K, W] refined by self-attention, an MVFuser over [t, memory, t], an MLP."""

    def __init__(self, width: int = 256, num_heads: int = 4, d_state: int = 16, dropout: float = 0.1,
                 mlp_ratio: float = 4.0, mixer: dict | None = None, impl: str | None = None) -> None:
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, num_heads, dropout=0.0, bias=False, batch_first=True)
        self.attn_drop = nn.Dropout(dropout)
        # The fuser's own output scale starts at 1: the enhancer as a whole starts small through `gamma`.
        self.fuser = MVFuser(width, d_state=d_state, dropout=dropout, scale_init=1.0, mixer=mixer, impl=impl)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width))
        self.mlp_drop = nn.Dropout(dropout)

    def forward(self, text: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """text [B, K, W], memory [B, M, W] -> text [B, K, W]."""
        h = self.ln1(text)
        text = text + self.attn_drop(self.attn(h, h, h, need_weights=False)[0])
        h = self.ln2(text)
        k = text.shape[1]
        out = self.fuser(torch.cat([h, memory, h], dim=1))
        text = text + out[:, :k] + out[:, -k:]
        return text + self.mlp_drop(self.mlp(self.ln3(text)))


class MTEnhancer(nn.Module):
    """Class text embeddings conditioned on the image: text [B, K, T], visual [B, M, V] -> text [B, K, T].

    Visual memory and text are projected to ``width`` (LN -> Linear -> LN, and LN -> Linear), run through
    ``num_layers`` MTEnhancerLayers, projected back (LN -> Linear) and added as ``text + gamma * out``.
    The official wrapper re-initialises every Linear inside (the fuser's step-size bias included, zeroing it) and
    then draws ``gamma`` from N(0, 1); here the wrapper's own Linears get trunc_normal(0.02), the fuser keeps
    Mamba's init, and ``gamma`` starts at ``gamma_init`` (1e-4, the value the official code writes first), so
    the enhancer starts as a small correction.
    """

    def __init__(self, text_dim: int, visual_dim: int, width: int = 256, num_heads: int = 4, num_layers: int = 1,
                 d_state: int = 16, dropout: float = 0.1, gamma_init: float = 1e-4, mixer: dict | None = None,
                 impl: str | None = None) -> None:
        super().__init__()
        self.memory_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, width), nn.LayerNorm(width))
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, width))
        self.layers = nn.ModuleList(
            MTEnhancerLayer(width, num_heads, d_state, dropout, mixer=mixer, impl=impl) for _ in range(num_layers))
        self.out_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, text_dim))
        for seq in (self.memory_proj, self.text_proj, self.out_proj):
            for m in seq.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)
        self.gamma = nn.Parameter(torch.full((text_dim,), float(gamma_init)))

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """text [B, K, T], visual [B, M, V] -> enhanced text [B, K, T]."""
        memory = self.memory_proj(visual)
        t = self.text_proj(text)
        for layer in self.layers:
            t = layer(t, memory)
        return text + self.gamma * self.out_proj(t)
