"""MFuser: DINOv2 and CLIP image towers run block by block, an MVFuser after every block, MTEnhancer-refined class
text as the queries of a mask head.

    images [B, 3, H, W] in [0, 1]
      -> per block i: clip block i, dinov2 block i, MVFuser_i over [dinov2 tokens, clip tokens], added back
      -> taps after ``out_indices``: patch tokens of both towers as maps, concatenated on channels [B, C, h, w]
         -> simple pyramid (x4, x2, x1, /2)                                      4 maps [B, C, h*s, w*s]
      -> visual embedding: clip_head(norm_clip(x_clip) + norm_dino(x_dino))                 [B, 1 + h*w, E]
      -> class text: CoOp context + class names through the CLIP text tower               [K, E]
         -> MTEnhancer(text, visual embedding)                                            [B, K, E]
      -> score map: cos(dense embedding, text) / tau                                      [B, K, h, w]
      -> head(pyramid, text) -> mask classification outputs; semantic_scores -> [B, K, 4h, 4w]

``fusion`` picks the towers: "both" (MFuser), "dinov2" or "clip" (one tower with the same per-block adapters,
pyramid, enhancer and head: the single-backbone baselines of the same budget). The DINOv2-only baseline still
reads the class names through the CLIP text tower and maps its tokens to the text width with ``dino_proj``.
With towers of different widths, "both" maps the DINOv2 tokens to the CLIP width with ``dino_proj`` before the sum.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmseq.runner.pretrained import PretrainedMixin

from .fuser import MTEnhancer, MVFuser
from .head import HEADS, semantic_scores
from .labels import CLASSES

FUSIONS = ("both", "dinov2", "clip")


def default_out_indices(depth: int) -> list[int]:
    """The blocks whose outputs feed the pyramid: 7, 11, 15, 23 for 24 blocks (the official taps), scaled (a shallow
    tower taps some block twice)."""
    return [max(0, round(depth * f) - 1) for f in (8 / 24, 12 / 24, 16 / 24, 1.0)]


class SimplePyramid(nn.Module):
    """ViTDet-style pyramid from one stride-s map: x4 (two transposed convs), x2, x1, /2; channels kept."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.up4 = nn.Sequential(nn.ConvTranspose2d(channels, channels, 2, 2), nn.BatchNorm2d(channels), nn.GELU(),
                                 nn.ConvTranspose2d(channels, channels, 2, 2))
        self.up2 = nn.ConvTranspose2d(channels, channels, 2, 2)
        self.down2 = nn.MaxPool2d(2)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """maps: 4 maps [B, C, h, w] (one per tap) -> [B, C, 4h, 4w], [B, C, 2h, 2w], [B, C, h, w], [B, C, h/2, w/2]."""
        return [self.up4(maps[0]), self.up2(maps[1]), maps[2], self.down2(maps[3])]


class PromptLearner(nn.Module):
    """CoOp context shared by all classes: ``n_ctx`` learnable token embeddings [n_ctx, W] before the class name."""

    def __init__(self, n_ctx: int, width: int) -> None:
        super().__init__()
        self.context = nn.Parameter(torch.empty(n_ctx, width))
        nn.init.trunc_normal_(self.context, std=1.0)


class MFuser(PretrainedMixin, nn.Module):
    """Domain-generalized semantic segmentation from fused DINOv2 and CLIP features.

    Args:
        class_names: the K classes (their names are read by the CLIP text tower).
        fusion: "both" | "dinov2" | "clip" (see the module docstring).
        dinov2: ``build_dinov2`` arguments (model_name, weights, frozen, timm overrides such as depth/embed_dim).
        clip: ``build_clip`` arguments (model_name, weights, frozen, model_cfg).
        img_size: the training crop (the towers' position embeddings are interpolated to any grid).
        fuser: MVFuser arguments (d_state, d_conv, expand, dropout, scale_init, mixer).
        out_indices: blocks tapped for the pyramid (None: the official 7, 11, 15, 23 scaled to the depth).
        n_ctx: learnable context tokens; name_length: BPE length of the class names (SOT, name, EOT, pad).
        enhancer: MTEnhancer arguments (width, num_heads, num_layers, d_state, dropout, gamma_init), or None.
        head: {"name": "mask2former" | "light", **arguments}.
        tau: temperature of the score map.
        train_text: train the CLIP text tower too (the official recipe keeps it frozen, lr_mult 0, even when the
            image towers train; the learned context adapts to it).
        load_weights: read the towers' weight files named in ``dinov2``/``clip``; an exported model stores
            False (its weights are in model.safetensors).
    """

    def __init__(self, class_names: list[str] | None = None, fusion: str = "both",
                 dinov2: dict[str, Any] | None = None, clip: dict[str, Any] | None = None, img_size: int = 512,
                 fuser: dict[str, Any] | None = None, out_indices: list[int] | None = None, n_ctx: int = 8,
                 name_length: int = 5, enhancer: dict[str, Any] | None = None,
                 head: dict[str, Any] | None = None, tau: float = 0.07, train_text: bool = False,
                 load_weights: bool = True) -> None:
        super().__init__()
        from .backbones import build_clip, build_dinov2

        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        self.class_names = list(class_names or CLASSES)
        self.num_classes = len(self.class_names)
        self.fusion, self.tau, self.img_size = fusion, tau, img_size
        dinov2 = dict(dinov2 or {})
        clip = dict(clip or {})
        if not load_weights:
            dinov2["weights"] = clip["weights"] = None
        with warnings.catch_warnings():
            if not load_weights:
                warnings.simplefilter("ignore")
            # The CLIP text tower is needed in every mode (the class queries); its image tower only with "clip"/"both".
            self.clip = build_clip(img_size=img_size, **clip)
            self.dino = build_dinov2(img_size=img_size, **dinov2) if fusion in ("both", "dinov2") else None
        towers = self.towers()
        depths = {t.num_blocks for t in towers}
        patches = {t.patch_size for t in towers}
        if len(depths) != 1 or len(patches) != 1:
            raise ValueError(f"the image towers must have the same depth and patch size to run in lock-step, got "
                             f"depths {sorted(depths)} and patch sizes {sorted(patches)}")
        if self.dino is not None and self.dino.num_prefix_tokens != 1:
            raise ValueError("DINOv2 towers with register tokens are not supported (expected one CLS token)")
        if fusion == "both" and self.dino.num_prefix_tokens != self.clip.visual.num_prefix_tokens:
            raise ValueError("the two towers must both have a CLS token (their final tokens are summed)")
        self.depth = depths.pop()
        self.patch_size = patches.pop()
        self.out_indices = list(out_indices) if out_indices is not None else default_out_indices(self.depth)
        if (len(self.out_indices) != 4 or not all(0 <= i < self.depth for i in self.out_indices)
                or self.out_indices != sorted(self.out_indices)):
            raise ValueError(f"out_indices must be 4 ascending block indices in 0..{self.depth - 1}, "
                             f"got {self.out_indices}")

        widths = [t.embed_dim for t in towers]
        fuser_args = dict(fuser or {})
        # Towers of different widths meet in the fuser at the widest one (per-block projections in and out).
        d_fuse = max(widths)
        self.fusers = nn.ModuleList(MVFuser(d_fuse, **fuser_args) for _ in range(self.depth))
        self.adapt_in = nn.ModuleList(
            nn.ModuleList(nn.Identity() if w == d_fuse else nn.Linear(w, d_fuse) for w in widths)
            for _ in range(self.depth))
        self.adapt_out = nn.ModuleList(
            nn.ModuleList(nn.Identity() if w == d_fuse else nn.Linear(d_fuse, w) for w in widths)
            for _ in range(self.depth))
        channels = sum(widths)
        self.pyramid = SimplePyramid(channels)

        if not train_text:
            self.clip.text.requires_grad_(False)
        text_dim = self.clip.embed_dim
        self.prompt = PromptLearner(n_ctx, self.clip.text_width)
        self.register_buffer("name_ids", self.clip.tokenize(self.class_names, name_length), persistent=False)
        self.dino_proj = None
        if fusion == "dinov2":
            self.dino_proj = nn.Linear(self.dino.embed_dim, text_dim)
        elif fusion == "both" and self.dino.embed_dim != self.clip.visual.embed_dim:
            self.dino_proj = nn.Linear(self.dino.embed_dim, self.clip.visual.embed_dim)
        self.enhancer = MTEnhancer(text_dim, text_dim, **(enhancer or {})) if enhancer is not False else None
        head_args = dict(head or {"name": "mask2former"})
        head_name = head_args.pop("name", "mask2former")
        if head_name not in HEADS:
            raise ValueError(f"head.name must be one of {', '.join(HEADS)}, got {head_name!r}")
        self.head = HEADS[head_name](in_channels=channels, text_dim=text_dim, num_classes=self.num_classes,
                                     **head_args)
        self.train()  # the builders hand back towers in eval mode; trainable ones train (frozen ones stay in eval)

    def export_config(self) -> dict[str, Any]:
        config = super().export_config()
        config["args"]["load_weights"] = False
        return config

    def towers(self) -> list[nn.Module]:
        """The image towers in scan order: DINOv2 first, then CLIP (the official concatenation order)."""
        return [t for t in (self.dino, self.clip.visual if self.fusion != "dinov2" else None) if t is not None]

    def encode_image(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, tuple[int, int]]:
        """images [B, 3, H, W] in [0, 1] -> (4 pyramid maps, visual embedding [B, 1 + h*w, E], grid (h, w))."""
        towers = self.towers()
        embedded = [t.embed(images) for t in towers]
        tokens = [e[0] for e in embedded]
        grid = embedded[0][1]
        taps: dict[int, torch.Tensor] = {}
        for i in range(self.depth):
            tokens = [t.block(i, x, grid) for t, x in zip(towers, tokens, strict=True)]
            fused = [a(x) for a, x in zip(self.adapt_in[i], tokens, strict=True)]
            update = self.fusers[i](torch.cat(fused, dim=1)).split([x.shape[1] for x in fused], dim=1)
            tokens = [x + a(u) for x, a, u in zip(tokens, self.adapt_out[i], update, strict=True)]
            if i in self.out_indices:
                taps[i] = torch.cat([self._as_map(t, x, grid) for t, x in zip(towers, tokens, strict=True)], 1)
        pyramid = self.pyramid([taps[i] for i in self.out_indices])
        if self.fusion == "clip":
            visual = self.clip.project(tokens[0])
        elif self.fusion == "dinov2":
            visual = self.dino_proj(self.dino.final_norm(tokens[0]))
        else:  # the official sum of both final norms through the frozen CLIP projection
            dino = self.dino.final_norm(tokens[0])
            dino = dino if self.dino_proj is None else self.dino_proj(dino)
            visual = self.clip.head(self.clip.visual.final_norm(tokens[1]) + dino)
        return pyramid, visual, grid

    @staticmethod
    def _as_map(tower: nn.Module, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        patches = tokens[:, tower.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)

    def class_text(self) -> torch.Tensor:
        """The class embeddings [K, E] from the learned context and the class names."""
        return self.clip.encode_text_with_context(self.prompt.context, self.name_ids)

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        """images [B, 3, H, W] in [0, 1] -> head outputs plus "score_map" [B, K, h, w] (cosine similarities)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {list(images.shape)}")
        pyramid, visual, grid = self.encode_image(images)
        text = self.class_text().unsqueeze(0).expand(images.shape[0], -1, -1)
        if self.enhancer is not None:
            text = self.enhancer(text, visual)
        dense = visual[:, -math.prod(grid):]
        score = torch.einsum("bnc,bkc->bkn", F.normalize(dense, dim=-1), F.normalize(text, dim=-1))
        outputs = self.head(pyramid, text)
        outputs["score_map"] = score.reshape(score.shape[0], score.shape[1], *grid)
        return outputs

    @torch.no_grad()
    def predict_scores(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> class scores [B, K, H, W] (the official inference, upsampled)."""
        scores = semantic_scores(self(images))
        return F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)
