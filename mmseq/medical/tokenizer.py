"""BTB3D-style causal 3D tokenizer for CT volumes (refs/btb3d.md sections 1-3; MAGVIT-v2 lineage, own code).

Shapes in letters: B batch, D slices (the causal depth axis, first slice = 0), H, W in-plane, K token bits,
d, h, w latent grid. Volumes are [B, 1, D, H, W] with values in [-1, 1] (HU clipped to [-1000, 1000] / 1000).

    x -> Haar DWT (8 bands, (D + 1) / 2 frames) -> causal conv encoder -> LFQ (K bits: ids, +/-1 codes)
      -> causal conv decoder (adaptive GroupNorm on the codes, depth-to-space upsampling) -> inverse Haar -> x_hat

Compression: the Haar transform halves every axis and each encoder level transition halves H and W and, where
``temporal_downsample`` says so, depth. With t = 2 * 2^(number of temporal downsamples) and
s = 2 * 2^(levels - 1), valid volumes have D = 1 + k t and H, W multiples of s; they map to a latent of
d = 1 + k = 1 + (D - 1) / t frames of h = H / s by w = W / s tokens, and decode back to the same shape. A 2D
image is a 1-slice volume (one latent frame). ``pad_volume`` pads any volume to the next valid shape.

Everything is causal along depth (causal convs, GroupNorm per slice, depth-to-space that drops leading frames),
so latent frame j depends on slices <= j t only and output slices <= j t depend on latent frames <= j only.
That is what ``encode_windowed`` / ``decode_windowed`` use: they walk the depth in chunks, carrying each causal
conv's pending input frames across chunk boundaries, and return what one-piece ``encode`` / ``decode`` return
(equal up to float rounding) while holding the activations of one chunk at a time, so peak memory does not
grow with depth. Unlike the BTB3D release (independent 5-frame windows, refs/btb3d.md section 3.1) this is
exact: every latent sees its full causal receptive field.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmseq.registry import unknown_name_message
from mmseq.runner.pretrained import PretrainedMixin

from .causal3d import (
    AdaptiveGroupNorm,
    CausalCache,
    CausalConv3d,
    DepthToSpaceUpsample,
    ResBlock,
    SliceGroupNorm,
    expand_condition,
)
from .haar import haar_dwt3d, haar_idwt3d, haar_pairs, haar_unpairs
from .lfq import LFQ, indices_to_codes

__all__ = ["CTTokenizer", "CTEncoder", "CTDecoder", "PRESETS", "create_tokenizer", "reconstruction_losses"]

HAAR_BANDS = 8

# Named variants: plain constructor arguments. The two BTB3D configs (refs/btb3d.md section 1.3) and a small
# one that trains in minutes on two CPU cores at 33 x 64 x 64.
PRESETS: dict[str, dict[str, Any]] = {
    "btb3d_8x8x8": {"filters": 96, "channel_multipliers": [1, 2, 4], "temporal_downsample": [True, True],
                    "num_res_blocks": 4, "token_bits": 18, "norm_groups": 32},
    "btb3d_16x16x8": {"filters": 96, "channel_multipliers": [1, 2, 2, 4],
                      "temporal_downsample": [False, True, True], "num_res_blocks": 4, "token_bits": 18,
                      "norm_groups": 32},
    "ct_small_4x4x4": {"filters": 32, "channel_multipliers": [1, 2], "temporal_downsample": [True],
                       "num_res_blocks": 1, "token_bits": 10, "norm_groups": 8},
}


class CTEncoder(nn.Module):
    """Haar bands [B, 8, P, H/2, W/2] -> pre-quantization latent [B, K, d, h, w] (causal along depth).

    conv_in 3^3; per level ``num_res_blocks`` ResBlocks (the first sets the level's width), then between levels
    a causal 3^3 conv with stride (2 or 1, 2, 2); then ``num_res_blocks`` ResBlocks, GN, SiLU, 1x1x1 conv to K.
    """

    def __init__(self, filters: int, channel_multipliers: list[int], temporal_downsample: list[bool],
                 num_res_blocks: int, token_bits: int, norm_groups: int, in_channels: int = HAAR_BANDS) -> None:
        super().__init__()
        widths = [filters * m for m in channel_multipliers]
        self.conv_in = CausalConv3d(in_channels, widths[0], 3)
        self.stages = nn.ModuleList()
        c = widths[0]
        for i, width in enumerate(widths):
            stage = nn.Module()
            stage.blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.blocks.append(ResBlock(c, width, norm_groups))
                c = width
            if i < len(widths) - 1:
                stage.down = CausalConv3d(c, c, 3, stride=(2 if temporal_downsample[i] else 1, 2, 2))
            self.stages.append(stage)
        self.mid = nn.ModuleList(ResBlock(c, c, norm_groups) for _ in range(num_res_blocks))
        self.norm_out = SliceGroupNorm(norm_groups, c)
        self.conv_out = CausalConv3d(c, token_bits, 1)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        h = self.conv_in(x, cache)
        for stage in self.stages:
            for block in stage.blocks:
                h = block(h, cache)
            if hasattr(stage, "down"):
                h = stage.down(h, cache)
        for block in self.mid:
            h = block(h, cache)
        return self.conv_out(F.silu(self.norm_out(h)), cache)


class CTDecoder(nn.Module):
    """Codes [B, K, d, h, w] -> Haar bands [B, 8, P, H/2, W/2] (causal along depth).

    conv_in 3^3 to the top width and ``num_res_blocks`` ResBlocks; then per level from the top: adaptive
    GroupNorm conditioned on the codes, ``num_res_blocks`` ResBlocks, and (except at the bottom level)
    depth-to-space upsampling; then GN, SiLU and a causal 3^3 conv to the 8 bands.

    The condition reaches each level's grid the way depth-to-space moves the features: each latent frame
    repeated t_s times in depth, the volume's first t_s - 1 frames dropped, x2 nearest in H and W (so output
    frame u reads latent frame ceil(u / t)). A plain ``F.interpolate`` to the new depth would not line up
    with the features and could hand a frame a later latent, breaking causality.
    """

    def __init__(self, filters: int, channel_multipliers: list[int], temporal_downsample: list[bool],
                 num_res_blocks: int, token_bits: int, norm_groups: int, out_channels: int = HAAR_BANDS) -> None:
        super().__init__()
        widths = [filters * m for m in channel_multipliers]
        c = widths[-1]
        self.conv_in = CausalConv3d(token_bits, c, 3)
        self.mid = nn.ModuleList(ResBlock(c, c, norm_groups) for _ in range(num_res_blocks))
        self.stages = nn.ModuleList()  # top level first
        for i in reversed(range(len(widths))):
            stage = nn.Module()
            stage.norm = AdaptiveGroupNorm(c, token_bits, norm_groups)
            stage.blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.blocks.append(ResBlock(c, widths[i], norm_groups))
                c = widths[i]
            if i > 0:
                stage.up = DepthToSpaceUpsample(c, 2 if temporal_downsample[i - 1] else 1)
            self.stages.append(stage)
        self.norm_out = SliceGroupNorm(norm_groups, c)
        self.conv_out = CausalConv3d(c, out_channels, 3)

    def forward(self, codes: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        first = cache is None or cache.first
        h = self.conv_in(codes, cache)
        for block in self.mid:
            h = block(h, cache)
        cond = codes
        for stage in self.stages:
            h = stage.norm(h, cond)
            for block in stage.blocks:
                h = block(h, cache)
            if hasattr(stage, "up"):
                h = stage.up(h, cache)
                cond = expand_condition(cond, stage.up.temporal, first)
        return self.conv_out(F.silu(self.norm_out(h)), cache)


class CTTokenizer(PretrainedMixin, nn.Module):
    """Causal 3D CT tokenizer: volume [B, 1, D, H, W] in [-1, 1] <-> token ids [B, d, h, w] (int64, K bits).

    Args:
        filters: base width F; level i has F * channel_multipliers[i] channels.
        channel_multipliers: one per level, e.g. [1, 2, 4].
        temporal_downsample: one flag per level transition (len(channel_multipliers) - 1): whether that
            transition also halves depth. H and W are halved at every transition.
        num_res_blocks: ResBlocks per level (and in the middle block).
        token_bits: K, bits per token (LFQ dimension; codebook 2^K; 18 in BTB3D).
        norm_groups: GroupNorm groups (32 in BTB3D); must divide every width.
        commitment_weight, entropy_weight, diversity_gamma, inv_temperature, entropy_group_bits: LFQ loss
            settings (see ``mmseq.medical.lfq``); ``entropy_weight`` is the default when ``forward`` gets none.
        preprocess: the preprocessing the model was trained with (plain values: spacing, HU window, ...);
            unused by the model, exported with it for inference.

    Presets: ``CTTokenizer.from_preset("btb3d_8x8x8")`` and the names in ``PRESETS``.
    """

    def __init__(self, filters: int = 96, channel_multipliers: list[int] | tuple[int, ...] = (1, 2, 4),
                 temporal_downsample: list[bool] | tuple[bool, ...] = (True, True), num_res_blocks: int = 4,
                 token_bits: int = 18, norm_groups: int = 32, *, commitment_weight: float = 0.25,
                 entropy_weight: float = 0.1, diversity_gamma: float = 1.0, inv_temperature: float = 100.0,
                 entropy_group_bits: int = 12, preprocess: dict[str, Any] | None = None) -> None:
        super().__init__()
        if preprocess is not None and not hasattr(preprocess, "items"):
            raise TypeError(f"preprocess must be a mapping (spacing, HU window, ...), got {type(preprocess).__name__}")
        # How volumes were prepared for this model (spacing, HU window, ...): not used here, carried in the
        # exported config.yaml so that inference prepares volumes the same way (mmseq.medical.tokens).
        self.preprocess = dict(preprocess) if preprocess is not None else None
        mults, tds = list(channel_multipliers), [bool(t) for t in temporal_downsample]
        if not mults or any(not isinstance(m, int) or m < 1 for m in mults):
            raise ValueError(f"channel_multipliers must be a non-empty list of positive ints, got {mults}")
        if len(tds) != len(mults) - 1:
            raise ValueError(f"temporal_downsample needs one flag per level transition "
                             f"(len(channel_multipliers) - 1 = {len(mults) - 1}), got {len(tds)}")
        if filters < 1 or num_res_blocks < 1:
            raise ValueError(f"filters and num_res_blocks must be >= 1, got {filters} and {num_res_blocks}")
        for m in mults:
            if (filters * m) % norm_groups:
                raise ValueError(f"norm_groups={norm_groups} must divide every width filters * multiplier, "
                                 f"got width {filters * m}")
        args = (filters, mults, tds, num_res_blocks, token_bits, norm_groups)
        self.encoder = CTEncoder(*args)
        self.quantizer = LFQ(token_bits, commitment_weight=commitment_weight, entropy_weight=entropy_weight,
                             diversity_gamma=diversity_gamma, inv_temperature=inv_temperature,
                             entropy_group_bits=entropy_group_bits)
        self.decoder = CTDecoder(*args)
        self.token_bits = token_bits
        self.depth_factor = 2 * 2 ** sum(tds)  # t: slices per latent frame (after the first)
        self.spatial_factor = 2 ** len(mults)  # s: pixels per token along H and W

    # -- presets and shapes ----------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> CTTokenizer:
        """Build a named variant (``PRESETS``); keyword arguments override its values."""
        return cls(**{**_preset(name), **overrides})

    def latent_shape(self, depth: int, height: int, width: int) -> tuple[int, int, int]:
        """(d, h, w) of the token grid of a valid [D, H, W] volume."""
        self._check_shape(depth, height, width)
        return 1 + (depth - 1) // self.depth_factor, height // self.spatial_factor, width // self.spatial_factor

    def volume_shape(self, d: int, h: int, w: int) -> tuple[int, int, int]:
        """(D, H, W) of the volume a [d, h, w] token grid decodes to."""
        if d < 1 or h < 1 or w < 1:
            raise ValueError(f"a token grid needs at least one token on each axis, got {(d, h, w)}")
        return 1 + (d - 1) * self.depth_factor, h * self.spatial_factor, w * self.spatial_factor

    def valid_depth(self, depth: int) -> int:
        """The smallest valid depth (1 + k t) that is >= ``depth``."""
        return 1 + math.ceil(max(depth - 1, 0) / self.depth_factor) * self.depth_factor

    def pad_volume(self, x: torch.Tensor, value: float = -1.0) -> torch.Tensor:
        """Pad x [B, 1, D, H, W] after its last slice / row / column with ``value`` (-1 = air) to the next
        valid shape. Crop a decoded result back with ``x_hat[..., :D, :H, :W]``."""
        d, h, w = x.shape[-3:]
        s = self.spatial_factor
        pad_d, pad_h, pad_w = self.valid_depth(d) - d, -h % s, -w % s
        return F.pad(x, (0, pad_w, 0, pad_h, 0, pad_d), value=value)

    def _check_shape(self, depth: int, height: int, width: int) -> None:
        t, s = self.depth_factor, self.spatial_factor
        if depth < 1 or (depth - 1) % t:
            raise ValueError(f"volume depth must be 1 + k*{t} (1, {1 + t}, {1 + 2 * t}, ...), got {depth}; pad it "
                             f"to {self.valid_depth(depth)} with CTTokenizer.pad_volume")
        if height % s or width % s or height < s or width < s:
            raise ValueError(f"volume height and width must be positive multiples of {s}, got {height}x{width}; "
                             "pad with CTTokenizer.pad_volume")

    def _check_volume(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[1] != 1:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a volume [B, 1, D, H, W], got {shape}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point volume in [-1, 1], got {x.dtype}")
        self._check_shape(*x.shape[2:])

    def _as_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """ids [B, d, h, w] (integer) or codes [B, K, d, h, w] (float) -> codes in the model's dtype."""
        p = next(self.parameters())
        if not tokens.is_floating_point():
            if tokens.dim() != 4:
                raise ValueError(f"ids must be [B, d, h, w], got shape {tuple(tokens.shape)}")
            return indices_to_codes(tokens.to(p.device), self.token_bits, p.dtype)
        if tokens.dim() != 5 or tokens.shape[1] != self.token_bits:
            raise ValueError(f"codes must be [B, {self.token_bits}, d, h, w], got shape {tuple(tokens.shape)}")
        return tokens.to(p.device, p.dtype)

    # -- one piece ------------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, D, H, W] -> (ids [B, d, h, w] int64, quantized codes [B, K, d, h, w] in {-1, +1};
        straight-through gradient)."""
        self._check_volume(x)
        quantized, ids, _ = self.quantizer(self.encoder(haar_dwt3d(x)), compute_loss=False)
        return ids, quantized

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """ids [B, d, h, w] or codes [B, K, d, h, w] -> volume [B, 1, 1 + (d - 1) t, h s, w s]."""
        return haar_idwt3d(self.decoder(self._as_codes(tokens)))

    def forward(self, x: torch.Tensor, entropy_weight: float | None = None) -> tuple[torch.Tensor, dict]:
        """x [B, 1, D, H, W] -> (x_hat, aux). aux holds the quantizer's losses and code statistics (``loss`` =
        entropy_weight * entropy + commitment_weight * commitment; see ``LFQ``) and ``ids``. Add
        ``reconstruction_losses(x, x_hat)["loss"]`` and ``aux["loss"]`` for the training loss."""
        self._check_volume(x)
        quantized, ids, aux = self.quantizer(self.encoder(haar_dwt3d(x)), entropy_weight=entropy_weight)
        return haar_idwt3d(self.decoder(quantized)), {**aux, "ids": ids}

    # -- streaming along depth ------------------------------------------------------------------------------
    def encode_step(self, chunk: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """Next slices [B, 1, n, H, W] of a volume -> the pre-quantization latent frames they complete
        [B, K, m, h, w] (m may be 0). Start a volume with a fresh ``CausalCache()``."""
        if cache.first:  # the Haar transform duplicates the volume's first slice
            chunk = torch.cat([chunk[:, :, :1], chunk], dim=2)
            cache.first = False
        pending = cache.frames.get("haar")
        if pending is not None:
            chunk = torch.cat([pending, chunk], dim=2)
        pairs = chunk.shape[2] // 2
        cache.frames["haar"] = chunk[:, :, 2 * pairs:].clone()
        if pairs == 0:
            b, _, _, h, w = chunk.shape
            s = self.spatial_factor
            return chunk.new_zeros(b, self.token_bits, 0, h // s, w // s)
        return self.encoder(haar_pairs(chunk[:, :, :2 * pairs]), cache)

    def decode_step(self, codes: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """Next latent frames [B, K, m, h, w] (codes) -> the volume slices they decode to (1 + (m - 1) t slices
        for the first chunk, m t after). Start a volume with a fresh ``CausalCache()``."""
        x = haar_unpairs(self.decoder(codes, cache))
        if cache.first:
            x = x[:, :, 1:]
            cache.first = False
        return x

    def _encode_chunks(self, x: torch.Tensor, window: int, progress: bool):
        """Yield the pre-quantization latent of x [B, 1, D, H, W], frames in order, ``window`` slices at a time
        (chunks on the model's device and dtype)."""
        self._check_volume(x)
        window = _check_window(window)
        p = next(self.parameters())
        cache = CausalCache()
        for start in _progress(range(0, x.shape[2], window), progress, "encode"):
            yield self.encode_step(x[:, :, start:start + window].to(p.device, p.dtype), cache)

    @torch.no_grad()
    def encode_latent_windowed(self, x: torch.Tensor, window: int, progress: bool = False) -> torch.Tensor:
        """Pre-quantization latent [B, K, d, h, w] of x, computed ``window`` slices at a time (see
        ``encode_windowed``)."""
        b, _, depth, height, width = x.shape
        z = torch.empty(b, self.token_bits, *self.latent_shape(depth, height, width),
                        dtype=next(self.parameters()).dtype, device=x.device)
        filled = 0
        for out in self._encode_chunks(x, window, progress):
            z[:, :, filled:filled + out.shape[2]] = out.to(x.device)
            filled += out.shape[2]
        assert filled == z.shape[2], (filled, z.shape[2])
        return z

    @torch.no_grad()
    def encode_windowed(self, x: torch.Tensor, window: int, progress: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode`` computed ``window`` slices at a time at constant memory; same result up to float rounding.

        x [B, 1, D, H, W] may live on another device than the model (e.g. a long volume in CPU memory): each
        chunk is moved to the model's device and dtype, and the results come back to x's device. Any
        ``window`` >= 1 gives the same result; a multiple of ``depth_factor`` yields whole latent frames per
        chunk. Peak memory is set by the window, not by D (beyond the returned tokens themselves). ``progress``
        shows a tqdm bar. No gradient.
        """
        b, _, depth, height, width = x.shape
        shape = self.latent_shape(depth, height, width)
        ids = torch.empty(b, *shape, dtype=torch.int64, device=x.device)
        codes = torch.empty(b, self.token_bits, *shape, dtype=next(self.parameters()).dtype, device=x.device)
        filled = 0
        for z in self._encode_chunks(x, window, progress):
            q, i, _ = self.quantizer(z, compute_loss=False)
            n = z.shape[2]
            ids[:, filled:filled + n], codes[:, :, filled:filled + n] = i.to(x.device), q.to(x.device)
            filled += n
        assert filled == shape[0], (filled, shape[0])
        return ids, codes

    @torch.no_grad()
    def decode_windowed(self, tokens: torch.Tensor, window: int, progress: bool = False) -> torch.Tensor:
        """``decode`` computed ``window`` latent frames at a time at constant memory; same result up to float
        rounding. tokens: ids [B, d, h, w] or codes [B, K, d, h, w], on any device; the volume is assembled on
        that device. ``progress`` shows a tqdm bar. No gradient."""
        window = _check_window(window)
        if tokens.dim() not in (4, 5):
            raise ValueError(f"tokens must be ids [B, d, h, w] or codes [B, K, d, h, w], got {tuple(tokens.shape)}")
        p = next(self.parameters())
        b, (d, h, w) = tokens.shape[0], tokens.shape[-3:]
        out = torch.empty(b, 1, *self.volume_shape(d, h, w), dtype=p.dtype, device=tokens.device)
        cache, filled = CausalCache(), 0
        for start in _progress(range(0, d, window), progress, "decode"):
            chunk = tokens[:, start:start + window] if tokens.dim() == 4 else tokens[:, :, start:start + window]
            x = self.decode_step(self._as_codes(chunk), cache)
            out[:, :, filled:filled + x.shape[2]] = x.to(out.device)
            filled += x.shape[2]
        assert filled == out.shape[2], (filled, out.shape[2])
        return out

    @torch.no_grad()
    def encode_tiled(self, x: torch.Tensor, roi_hw: tuple[int, int], overlap: float = 0.25, window: int | None = None,
                     mode: str = "gaussian", progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode`` of a volume too wide for memory: in-plane tiles of ``roi_hw`` pixels overlapping by
        ``overlap`` (as MONAI's sliding_window_inference), each encoded windowed along depth (``window`` slices;
        None = whole depth), their pre-quantization latents blended ("gaussian" or "constant" weights, as
        MONAI's blend modes) and then quantized. Not exact, and not only at the seams: GroupNorm takes its
        statistics over the plane it is given, so a tile normalises with its own statistics instead of the whole
        slice's, and each tile sees zero padding at its borders. Depth windowing, by contrast, is exact."""
        self._check_volume(x)
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if mode not in ("gaussian", "constant"):
            raise ValueError(f"mode must be 'gaussian' or 'constant', got {mode!r}")
        b, _, depth, height, width = x.shape
        s = self.spatial_factor
        rh, rw = (min(int(r), full) for r, full in zip(roi_hw, (height, width), strict=True))
        if rh % s or rw % s or rh < s or rw < s:
            raise ValueError(f"roi_hw must be positive multiples of {s}, got {tuple(roi_hw)}")
        d, h, w = self.latent_shape(depth, height, width)
        lh, lw = rh // s, rw // s  # tile size in tokens
        starts_h, starts_w = _tile_starts(h, lh, overlap), _tile_starts(w, lw, overlap)
        dtype = next(self.parameters()).dtype
        weight = _blend_weights(lh, lw, mode, x.device).to(dtype)
        z = torch.zeros(b, self.token_bits, d, h, w, dtype=dtype, device=x.device)
        norm = torch.zeros(h, w, dtype=dtype, device=x.device)
        tiles = [(i, j) for i in starts_h for j in starts_w]
        for i, j in _progress(tiles, progress, "tiles"):
            tile = x[..., i * s:(i + lh) * s, j * s:(j + lw) * s]
            zt = self.encode_latent_windowed(tile, window or depth)
            z[..., i:i + lh, j:j + lw] += zt * weight
            norm[i:i + lh, j:j + lw] += weight
        quantized, ids, _ = self.quantizer(z / norm, compute_loss=False)
        return ids, quantized


def _check_window(window: int) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int (slices or latent frames per chunk), got {window!r}")
    return window


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="chunk" if desc != "tiles" else "tile")


def _tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Tile start positions covering [0, size) with tiles of ``tile`` and the given overlap; last flush right."""
    if tile >= size:
        return [0]
    step = max(1, int(tile * (1 - overlap)))
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def _blend_weights(h: int, w: int, mode: str, device) -> torch.Tensor:
    if mode == "constant":
        return torch.ones(h, w, device=device)
    # MONAI's gaussian importance map: sigma = 0.125 * tile size, peak 1, floored so edges keep some weight.
    gh, gw = (torch.exp(-0.5 * ((torch.arange(n, device=device) - (n - 1) / 2) / (0.125 * n)) ** 2) for n in (h, w))
    return (gh[:, None] * gw[None, :]).clamp_min(1e-3)


def _preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(unknown_name_message("CT tokenizer preset", name, list(PRESETS)))
    return {k: list(v) if isinstance(v, list) else v for k, v in PRESETS[name].items()}


def create_tokenizer(name: str, **overrides: Any) -> CTTokenizer:
    """``CTTokenizer.from_preset(name, **overrides)``."""
    return CTTokenizer.from_preset(name, **overrides)


def reconstruction_losses(x: torch.Tensor, x_hat: torch.Tensor, *, l1_weight: float = 5.0,
                          ssim_weight: float = 1.0, gradient_weight: float = 0.0, lpips: nn.Module | None = None,
                          lpips_weight: float = 0.0, lpips_slices: int = 0, generator: torch.Generator | None = None,
                          data_range: float = 2.0) -> dict[str, torch.Tensor]:
    """Image-space reconstruction losses of volumes [B, 1, D, H, W] in [-1, 1].

    Returns l1 (mean absolute error; weight 5.0 as in BTB3D), ssim (1 - SSIM, MONAI's SSIMLoss: 3D with a
    Gaussian window of up to 7 voxels, per slice in 2D when a volume has fewer than 3 slices), gradient (L1
    between the finite differences of x and x_hat along D, H and W), lpips (the mean 2D LPIPS of the axial
    slices, :func:`mmseq.medical.perceptual.slice_lpips` with ``lpips`` a loaded
    :class:`~mmseq.medical.perceptual.LPIPS`; ``lpips_slices`` > 0 samples that many slices with ``generator``)
    and loss (the weighted sum). A term whose weight is 0 is not computed and returned as 0.
    """
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    if lpips_weight and lpips is None:
        raise ValueError("lpips_weight > 0 needs an LPIPS module (mmseq.medical.perceptual.load_lpips)")
    l1 = (x - x_hat).abs().mean()
    ssim = _ssim_loss(x, x_hat, data_range) if ssim_weight else x.new_zeros(())
    grad = sum((torch.diff(x, dim=k) - torch.diff(x_hat, dim=k)).abs().mean()
               for k in (2, 3, 4) if x.shape[k] > 1) if gradient_weight else x.new_zeros(())
    if lpips_weight:
        from .perceptual import slice_lpips

        perceptual = slice_lpips(lpips, x, x_hat, lpips_slices, generator).to(l1.dtype)
    else:
        perceptual = x.new_zeros(())
    total = l1_weight * l1 + ssim_weight * ssim + gradient_weight * grad + lpips_weight * perceptual
    return {"l1": l1, "ssim": ssim, "gradient": grad, "lpips": perceptual, "loss": total}


def _ssim_loss(x: torch.Tensor, x_hat: torch.Tensor, data_range: float) -> torch.Tensor:
    from monai.losses import SSIMLoss

    d, h, w = x.shape[2:]
    if d >= 3:
        win = min(7, d, h, w)
        win -= 1 - win % 2  # odd
        return SSIMLoss(spatial_dims=3, data_range=data_range, win_size=win)(x_hat, x)
    win = min(7, h, w)
    win -= 1 - win % 2

    def slices(v: torch.Tensor) -> torch.Tensor:  # [B, C, D, H, W] -> [B D, C, H, W]
        return v.transpose(1, 2).reshape(-1, v.shape[1], h, w)

    return SSIMLoss(spatial_dims=2, data_range=data_range, win_size=win)(slices(x_hat), slices(x))
