"""Segmentation heads of MFuser: a Mask2Former head whose queries are the class text embeddings, and a lighter one.

``TextQueriedMaskHead`` is the official (tqdm) head in plain PyTorch:

- pixel decoder: 1x1 conv + GroupNorm on the 3 coarsest maps, sine position encoding + a learned level
  embedding, ``pixel_decoder_layers`` layers of [multi-scale deformable self-attention -> LN -> cross-attention
  from the pixels to the K text tokens -> LN -> FFN -> LN] and a final LN, then an FPN step onto the finest map
  -> mask features;
- transformer decoder: K queries (query k = class k) whose content is an MLP of the text embeddings; each layer
  is masked cross-attention to one level (round-robin coarse to fine) -> LN -> self-attention -> LN -> FFN -> LN;
  class logits (K + 1, the last is no-object) and mask logits after the initial queries and after every layer.

``LightMaskHead`` keeps the decoder but replaces the deformable pixel decoder with a plain FPN (for CPU runs).
``semantic_scores`` turns the last prediction into per-class score maps (the official inference).
Multi-scale deformable attention is ``MSDeformAttn`` (the grid_sample formulation, ``ms_deform_attn_core``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "HEADS",
    "LightMaskHead",
    "MSDeformAttn",
    "TextQueriedMaskHead",
    "ms_deform_attn_core",
    "semantic_scores",
    "sine_position_encoding",
]


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(32) as in the official head; fewer groups when ``channels`` is not a multiple of 32."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def sine_position_encoding(height: int, width: int, num_feats: int, device=None, dtype=None,
                           temperature: float = 10000.0) -> Tensor:
    """Normalised 2-D sine position encoding (DETR / mmdet ``SinePositionalEncoding(normalize=True)``).

    Returns ``[1, 2 * num_feats, height, width]``: the y features first, then the x features, each interleaving
    sin and cos.
    """
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, height + 1, device=device, dtype=torch.float32)
    x = torch.arange(1, width + 1, device=device, dtype=torch.float32)
    y = y / (height + eps) * scale
    x = x / (width + eps) * scale
    dim_t = torch.arange(num_feats, device=device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos_y = y[:, None] / dim_t  # [H, F]
    pos_x = x[:, None] / dim_t  # [W, F]
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat((pos_y[:, None, :].expand(height, width, num_feats),
                     pos_x[None, :, :].expand(height, width, num_feats)), dim=2)
    return pos.permute(2, 0, 1)[None].to(dtype or torch.float32)


class _FFN(nn.Module):
    """Linear -> ReLU -> Dropout -> Linear -> Dropout, with the residual added (mmcv ``FFN``)."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.fc2(self.drop(F.relu(self.fc1(x)))))


class _MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class _ConvNorm(nn.Sequential):
    """Conv2d -> GroupNorm (-> ReLU): mmcv ``ConvModule`` with a GN norm config."""

    def __init__(self, cin: int, cout: int, kernel: int, bias: bool = False, relu: bool = False):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias), _group_norm(cout)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


# ----------------------------------------------------------------------------------------------------------------
# Multi-scale deformable attention (plain PyTorch)
# ----------------------------------------------------------------------------------------------------------------


def ms_deform_attn_core(value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor,
                        attention_weights: Tensor) -> Tensor:
    """Multi-scale deformable attention by bilinear sampling (the "pytorch" path of ``MSDeformAttn``).

    Args:
        value: ``[B, S, M, D]`` per-head values of all levels, flattened row-major and concatenated
            (``S = sum(H_l * W_l)``).
        spatial_shapes: ``[(H_l, W_l)]`` for the L levels, in the order of ``value``.
        sampling_locations: ``[B, Lq, M, L, P, 2]`` (x, y) in [0, 1], 0 and 1 being the outer edges of the map.
        attention_weights: ``[B, Lq, M, L, P]`` (softmax-normalised over L * P by the caller).
    Returns:
        ``[B, Lq, M * D]``.
    """
    b, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        v = values[lvl].flatten(2).transpose(1, 2).reshape(b * m, d, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # [B*M, Lq, P, 2]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(b * m, 1, lq, num_levels * num_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # [B*M, D, Lq]
    return out.view(b, m * d, lq).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR), mmcv ``MultiScaleDeformableAttention`` init.

    Each query predicts, per head, level and point, a 2-D offset (in pixels of that level) from its reference point
    and an attention weight (softmax over levels x points); the output is the weighted sum of the bilinearly
    sampled projected values, projected again. The residual is added by the caller.
    """

    def __init__(self, dim: int = 256, num_heads: int = 8, num_levels: int = 3, num_points: int = 4):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.num_levels, self.num_points = dim, num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Offsets start on a ring of directions, one per head, point i at distance i + 1 (in level pixels).
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        for i in range(self.num_points):
            grid[:, :, i, :] *= i + 1
        self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: Tensor, reference_points: Tensor, value: Tensor,
                spatial_shapes: list[tuple[int, int]]) -> Tensor:
        """query ``[B, Lq, C]`` (with position added), reference_points ``[B, Lq, L, 2]`` (x, y in [0, 1]),
        value ``[B, S, C]`` (all levels flattened), spatial_shapes ``[(H_l, W_l)]`` -> ``[B, Lq, C]``."""
        b, lq, _ = query.shape
        m, nl, p = self.num_heads, self.num_levels, self.num_points
        if len(spatial_shapes) != nl:
            raise ValueError(f"expected {nl} levels, got spatial_shapes {spatial_shapes}")
        v = self.value_proj(value).view(b, value.shape[1], m, self.dim // m)
        offsets = self.sampling_offsets(query).view(b, lq, m, nl, p, 2)
        weights = self.attention_weights(query).view(b, lq, m, nl * p).softmax(-1).view(b, lq, m, nl, p)
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], device=query.device, dtype=query.dtype)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn_core(v, spatial_shapes, locations, weights))


def _reference_points(spatial_shapes: list[tuple[int, int]], batch: int, device, dtype) -> Tensor:
    """Pixel centres of every level, normalised to [0, 1] and repeated for each level: ``[B, S, L, 2]``."""
    refs = []
    for h, w in spatial_shapes:
        ry, rx = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, device=device, dtype=dtype) / h,
                                torch.linspace(0.5, w - 0.5, w, device=device, dtype=dtype) / w, indexing="ij")
        refs.append(torch.stack((rx.reshape(-1), ry.reshape(-1)), -1))
    ref = torch.cat(refs, 0)  # valid ratios are all 1 (no padding), so the same point on every level
    return ref[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)


# ----------------------------------------------------------------------------------------------------------------
# Pixel decoder (tqdm: deformable encoder with text cross-attention, then FPN)
# ----------------------------------------------------------------------------------------------------------------


class _PixelDecoderLayer(nn.Module):
    """Deformable self-attention -> LN -> cross-attention to the text tokens -> LN -> FFN -> LN (post-norm)."""

    def __init__(self, dim: int, num_heads: int, num_levels: int, num_points: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = MSDeformAttn(dim, num_heads, num_levels, num_points)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = _FFN(dim, ffn_dim, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor, ref: Tensor, shapes: list[tuple[int, int]], text: Tensor,
                text_pos: Tensor) -> Tensor:
        x = self.norm1(x + self.drop(self.self_attn(x + pos, ref, x, shapes)))
        attn = self.cross_attn(x + pos, text + text_pos, text, need_weights=False)[0]
        x = self.norm2(x + self.drop(attn))
        return self.norm3(self.ffn(x))


class _DeformablePixelDecoder(nn.Module):
    """tqdm's ``tqdmMSDeformAttnPixelDecoder``: returns mask features (finest level) and the 3 encoded levels."""

    def __init__(self, in_channels: int, text_dim: int, num_classes: int, dim: int, num_heads: int,
                 num_layers: int, ffn_dim: int, num_points: int, dropout: float, num_levels: int = 3):
        super().__init__()
        self.num_levels = num_levels
        self.input_convs = nn.ModuleList(_ConvNorm(in_channels, dim, 1, bias=True) for _ in range(num_levels))
        self.level_embed = nn.Parameter(torch.empty(num_levels, dim))
        self.text_proj = nn.Linear(text_dim, dim)
        self.text_pos = nn.Parameter(torch.empty(num_classes, dim))
        self.layers = nn.ModuleList(_PixelDecoderLayer(dim, num_heads, num_levels, num_points, ffn_dim, dropout)
                                    for _ in range(num_layers))
        self.post_norm = nn.LayerNorm(dim)
        self.lateral_conv = _ConvNorm(in_channels, dim, 1)
        self.output_conv = _ConvNorm(dim, dim, 3, relu=True)
        self.mask_feature = nn.Conv2d(dim, dim, 1)
        nn.init.normal_(self.level_embed)
        nn.init.normal_(self.text_pos)

    def forward(self, features: list[Tensor], text: Tensor) -> tuple[Tensor, list[Tensor]]:
        b = features[0].shape[0]
        coarse = features[::-1][: self.num_levels]  # coarsest first
        srcs, poss, shapes = [], [], []
        for lvl, feat in enumerate(coarse):
            x = self.input_convs[lvl](feat)
            h, w = x.shape[-2:]
            pos = sine_position_encoding(h, w, x.shape[1] // 2, x.device, x.dtype) + self.level_embed[lvl, :, None,
                                                                                                        None]
            srcs.append(x.flatten(2).transpose(1, 2))
            poss.append(pos.flatten(2).transpose(1, 2).expand(b, -1, -1))
            shapes.append((h, w))
        x, pos = torch.cat(srcs, 1), torch.cat(poss, 1)
        ref = _reference_points(shapes, b, x.device, x.dtype)
        t = self.text_proj(text)
        t_pos = self.text_pos[None].expand(b, -1, -1)
        for layer in self.layers:
            x = layer(x, pos, ref, shapes, t, t_pos)
        x = self.post_norm(x)
        outs = [o.transpose(1, 2).reshape(b, -1, h, w) for o, (h, w) in zip(x.split([h * w for h, w in shapes], 1),
                                                                                 shapes)]
        finest = features[0]
        y = self.lateral_conv(finest)
        y = y + F.interpolate(outs[-1], size=y.shape[-2:], mode="bilinear", align_corners=False)
        y = self.output_conv(y)
        return self.mask_feature(y), outs


class _FPNPixelDecoder(nn.Module):
    """Plain top-down FPN over the 4 maps: lateral 1x1 conv + GN, add the upsampled coarser map, 3x3 conv + GN +
    ReLU. Returns mask features (finest level, 1x1 conv) and the 3 coarsest outputs (coarsest first)."""

    def __init__(self, in_channels: int, dim: int, num_maps: int = 4):
        super().__init__()
        self.laterals = nn.ModuleList(_ConvNorm(in_channels, dim, 1) for _ in range(num_maps))
        self.outputs = nn.ModuleList(_ConvNorm(dim, dim, 3, relu=True) for _ in range(num_maps))
        self.mask_feature = nn.Conv2d(dim, dim, 1)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        outs: list[Tensor] = []
        y = None
        for i in range(len(features) - 1, -1, -1):
            lat = self.laterals[i](features[i])
            if y is not None:
                lat = lat + F.interpolate(y, size=lat.shape[-2:], mode="bilinear", align_corners=False)
            y = self.outputs[i](lat)
            outs.append(y)
        return self.mask_feature(y), outs[:3]


# ----------------------------------------------------------------------------------------------------------------
# Transformer decoder with text queries (shared by both heads)
# ----------------------------------------------------------------------------------------------------------------


class _DecoderLayer(nn.Module):
    """Masked cross-attention -> LN -> self-attention -> LN -> FFN -> LN (Mask2Former order, post-norm)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = _FFN(dim, ffn_dim, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, q: Tensor, q_pos: Tensor, memory: Tensor, mem_pos: Tensor, attn_mask: Tensor | None) -> Tensor:
        a = self.cross_attn(q + q_pos, memory + mem_pos, memory, attn_mask=attn_mask, need_weights=False)[0]
        q = self.norm1(q + self.drop(a))
        k = q + q_pos
        q = self.norm2(q + self.drop(self.self_attn(k, k, q, need_weights=False)[0]))
        return self.norm3(self.ffn(q))


class _TextQueryDecoder(nn.Module):
    """Mask2Former transformer decoder whose K queries come from the K class text embeddings."""

    def __init__(self, text_dim: int, num_classes: int, dim: int, num_heads: int, num_layers: int, ffn_dim: int,
                 dropout: float, num_levels: int = 3):
        super().__init__()
        self.num_heads, self.num_levels = num_heads, num_levels
        self.query_mlp = _MLP(text_dim, dim, dim, 2)
        self.query_pos = nn.Parameter(torch.empty(num_classes, dim))
        self.level_embed = nn.Parameter(torch.empty(num_levels, dim))
        self.layers = nn.ModuleList(_DecoderLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.post_norm = nn.LayerNorm(dim)
        self.class_embed = nn.Linear(dim, num_classes + 1)
        self.mask_embed = _MLP(dim, dim, dim, 3)
        nn.init.normal_(self.query_pos)
        nn.init.normal_(self.level_embed)

    def _predict(self, q: Tensor, mask_features: Tensor, next_size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        q = self.post_norm(q)
        logits = self.class_embed(q)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(q), mask_features)
        with torch.no_grad():
            attn = F.interpolate(masks, size=next_size, mode="bilinear", align_corners=False)
            attn = attn.sigmoid().flatten(2) < 0.5  # True = not attended
            attn[attn.all(-1)] = False  # a query masked everywhere attends everywhere
            attn = attn.repeat_interleave(self.num_heads, dim=0)  # [B * heads, K, HW], batch-major like MHA
        return logits, masks, attn

    def forward(self, text: Tensor, memories: list[Tensor], mask_features: Tensor) -> dict:
        """text ``[B, K, text_dim]``, memories: ``num_levels`` maps ``[B, dim, h, w]`` coarsest first,
        mask_features ``[B, dim, H0, W0]``."""
        b = text.shape[0]
        mems, mem_pos = [], []
        for lvl, m in enumerate(memories[: self.num_levels]):
            h, w = m.shape[-2:]
            mems.append(m.flatten(2).transpose(1, 2) + self.level_embed[lvl])
            mem_pos.append(sine_position_encoding(h, w, m.shape[1] // 2, m.device, m.dtype).flatten(2).transpose(1, 2))
        sizes = [m.shape[-2:] for m in memories[: self.num_levels]]
        q = self.query_mlp(text)
        q_pos = self.query_pos[None].expand(b, -1, -1)
        preds = []
        logits, masks, attn = self._predict(q, mask_features, sizes[0])
        preds.append((logits, masks))
        for i, layer in enumerate(self.layers):
            lvl = i % self.num_levels
            q = layer(q, q_pos, mems[lvl], mem_pos[lvl].expand(b, -1, -1), attn)
            logits, masks, attn = self._predict(q, mask_features, sizes[(i + 1) % self.num_levels])
            preds.append((logits, masks))
        return {
            "pred_logits": preds[-1][0],
            "pred_masks": preds[-1][1],
            "aux_outputs": [{"pred_logits": lg, "pred_masks": mk} for lg, mk in preds[:-1]],
        }


def _check_inputs(features: list[Tensor], text: Tensor, num_classes: int) -> None:
    if len(features) != 4:
        raise ValueError(f"expected 4 feature maps (finest first), got {len(features)}")
    if text.dim() != 3 or text.shape[1] != num_classes:
        raise ValueError(f"expected text [B, {num_classes}, text_dim], got {tuple(text.shape)}")


# ----------------------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------------------


class TextQueriedMaskHead(nn.Module):
    """Mask2Former-style head whose K queries are the K class text embeddings (query k always predicts class k).

    Official sizes: ``in_channels=2048, text_dim=768, num_classes=19`` with the defaults (hidden 256, 8 heads,
    6 pixel-decoder layers, 9 decoder layers, FFN 2048, 4 sampling points).
    """

    def __init__(self, in_channels: int, text_dim: int, num_classes: int, hidden_dim: int = 256, num_heads: int = 8,
                 pixel_decoder_layers: int = 6, decoder_layers: int = 9, ffn_dim: int = 2048, num_points: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        if hidden_dim % 2 or hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} must be even and divisible by num_heads {num_heads}")
        self.num_classes = num_classes
        self.pixel_decoder = _DeformablePixelDecoder(in_channels, text_dim, num_classes, hidden_dim, num_heads,
                                                     pixel_decoder_layers, ffn_dim, num_points, dropout)
        self.decoder = _TextQueryDecoder(text_dim, num_classes, hidden_dim, num_heads, decoder_layers, ffn_dim,
                                         dropout)

    def forward(self, features: list[Tensor], text: Tensor) -> dict:
        """features: 4 maps ``[B, in_channels, H_i, W_i]``, finest first; text: ``[B, K, text_dim]``.

        Returns ``{"pred_logits": [B, K, K + 1], "pred_masks": [B, K, H0, W0], "aux_outputs": [...]}`` where
        aux_outputs holds the predictions of the initial queries and of every decoder layer but the last.
        """
        _check_inputs(features, text, self.num_classes)
        mask_features, memories = self.pixel_decoder(features, text)
        return self.decoder(text, memories, mask_features)


class LightMaskHead(nn.Module):
    """A lighter head for CPU runs: a plain FPN over the 4 maps (no deformable encoder) and a short text-queried
    decoder (masked cross-attention to the 3 coarsest FPN levels, self-attention, FFN).

    Same constructor arguments as ``TextQueriedMaskHead`` and the same output dict; ``pixel_decoder_layers`` and
    ``num_points`` are accepted for a common call signature and unused.
    """

    def __init__(self, in_channels: int, text_dim: int, num_classes: int, hidden_dim: int = 128, num_heads: int = 4,
                 pixel_decoder_layers: int = 0, decoder_layers: int = 2, ffn_dim: int = 512, num_points: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        del pixel_decoder_layers, num_points
        if hidden_dim % 2 or hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} must be even and divisible by num_heads {num_heads}")
        self.num_classes = num_classes
        self.pixel_decoder = _FPNPixelDecoder(in_channels, hidden_dim)
        self.decoder = _TextQueryDecoder(text_dim, num_classes, hidden_dim, num_heads, decoder_layers, ffn_dim,
                                         dropout)

    def forward(self, features: list[Tensor], text: Tensor) -> dict:
        """Same inputs and outputs as ``TextQueriedMaskHead.forward``."""
        _check_inputs(features, text, self.num_classes)
        mask_features, memories = self.pixel_decoder(features)
        return self.decoder(text, memories, mask_features)


def semantic_scores(outputs: dict) -> Tensor:
    """Per-class score maps ``[B, K, H0, W0]`` of a head's output (the official semantic inference).

    ``einsum('bqc,bqhw->bchw', softmax(pred_logits)[..., :K], sigmoid(pred_masks))``: the no-object column is
    dropped after the softmax, and every query votes for every class with its class probability.
    """
    probs = outputs["pred_logits"].softmax(-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probs, outputs["pred_masks"].sigmoid())


HEADS = {"mask2former": TextQueriedMaskHead, "light": LightMaskHead}
