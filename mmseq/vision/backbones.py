"""The frozen image and text towers of MFuser, run block by block so that two towers can advance in lock-step.

``build_dinov2`` makes the vision foundation model (DINOv2 through timm), ``build_clip`` the vision-language
model (CLIP or EVA02-CLIP through open_clip). Both image towers are ``ViTTower``: ``embed(images)`` gives the
token sequence [B, P + h*w, C] (P prefix tokens, then the patches row-major) for any input size (the absolute
position embedding is interpolated to the grid, EVA's rotary embedding is built for it), ``block(i, x, grid)``
runs block i and ``final_norm`` the tower's last norm. Running ``embed``, every block and ``final_norm`` gives
exactly the library's own ``forward_features``.

Weights are read from local files only (nothing is downloaded):

- DINOv2: a timm state dict (safetensors, .pth/.bin) or the official release (``dinov2_vitl14_pretrain.pth``:
  ``mask_token``, a 37x37 ``pos_embed`` and ``ls1.gamma`` naming), both through timm's ``checkpoint_filter_fn``,
  which drops the mask token, maps the ``w12``/``w3`` SwiGLU names, resamples the position embedding to the
  model's grid (37x37 -> 36x36 at 512 px) and the patch kernel to the model's patch size (14 -> 16).
- CLIP / EVA02-CLIP: an open_clip state dict (``open_clip_pytorch_model.bin``/``.safetensors``, or a
  ``.pt``), OpenAI's TorchScript release (``ViT-L-14-336px.pt``, built with QuickGELU as OpenAI trained it),
  and the raw BAAI EVA-CLIP release (``EVA02_CLIP_L_336_psz14_s6B.pt``): its ``visual.*`` keys (``q_bias``,
  ``mlp.w1/w2/w3``, ``ffn_ln``, ``inner_attn_ln``, ``rope.freqs_*``) go through timm's EVA filter, which maps
  them onto the timm trunk and drops the rotary buffers (rebuilt here); its ``text.*`` keys already follow
  open_clip's naming. The position embedding is resampled to the model's grid (24x24 -> 36x36 at 512 px) and
  a patch kernel of another size is resampled (14 -> 16). Not supported: Hugging Face text towers, CoCa
  models, attention-pool image towers and SigLIP's ``.npz`` release.

A file that is missing, unreadable or does not fit the model raises ``UserError`` naming the file and the
mismatch. Without weights a tower starts from random initialisation and one warning says so.
"""

from __future__ import annotations

import copy
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

__all__ = ["CLIPModel", "ViTTower", "build_clip", "build_dinov2"]


# --------------------------------------------------------------------------------------------------- towers
class ViTTower(nn.Module):
    """One image tower as a sequence of blocks.

    Wraps a timm ``VisionTransformer``/``Eva`` (built with ``dynamic_img_size``), an open_clip ``TimmModel``
    (the timm trunk plus its projection head) or an open_clip ``VisionTransformer``.

    Attributes: patch_size, embed_dim, num_blocks, num_prefix_tokens (1 for a CLS token), mean/std (the
    normalisation this tower expects, [1, 3, 1, 1] buffers), frozen.
    """

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], frozen: bool) -> None:
        super().__init__()
        from open_clip.transformer import VisionTransformer as OpenCLIPViT

        self.net = net
        self._openclip = isinstance(net, OpenCLIPViT)
        if self._openclip:
            if net.attn_pool is not None or net.final_ln_after_pool:
                raise ConfigError("open_clip image towers with attention pooling or final_ln_after_pool are not "
                                  "supported (expected a plain ViT: ln_post then proj on every token)")
            if not net.transformer.batch_first:
                raise ConfigError("open_clip image towers must be batch-first")
            patch = net.patch_size
            self.embed_dim = int(net.conv1.out_channels)
            self.num_blocks = len(net.transformer.resblocks)
            self.num_prefix_tokens = 1
        else:
            trunk = self._trunk
            if not getattr(trunk, "dynamic_img_size", False):
                raise ConfigError("timm image towers must be built with dynamic_img_size=True")
            if getattr(trunk, "rope_mixed", False):
                raise ConfigError("timm towers with mixed rotary embeddings are not supported")
            patch = trunk.patch_embed.patch_size
            self.embed_dim = int(trunk.embed_dim)
            self.num_blocks = len(trunk.blocks)
            self.num_prefix_tokens = int(trunk.num_prefix_tokens)
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
        if patch[0] != patch[1]:
            raise ConfigError(f"square patches expected, got {patch}")
        self.patch_size = int(patch[0])
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._rope_cache: dict[tuple, Any] = {}
        self.frozen = frozen
        if frozen:
            _freeze(self)

    @property
    def _trunk(self) -> nn.Module:
        return getattr(self.net, "trunk", self.net)

    def train(self, mode: bool = True) -> ViTTower:
        """A frozen tower stays in eval mode (no dropout, no drop-path, no patch dropout)."""
        return super().train(mode and not self.frozen)

    def normalize(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] RGB in [0, 1] -> normalised with this tower's mean/std."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """images [B, 3, H, W] in [0, 1] (not normalised) -> (tokens [B, P + h*w, C], grid (H // p, W // p))."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {list(images.shape)}")
        if images.shape[-2] < self.patch_size or images.shape[-1] < self.patch_size:
            raise ValueError(f"images must be at least {self.patch_size} px on each side, got {list(images.shape)}")
        p = self.patch_size
        h, w = images.shape[-2] // p, images.shape[-1] // p
        # the rows/columns past the last whole patch are not seen (as with a stride-p conv): 512 px -> 36 * 14
        x = self.normalize(images[..., : h * p, : w * p])
        conv = self.net.conv1 if self._openclip else self._trunk.patch_embed.proj
        x = x.to(conv.weight.dtype)  # a half-precision tower takes float images
        if self._openclip:
            return self._embed_openclip(x)
        trunk = self._trunk
        x = trunk.patch_embed(x)  # [B, h, w, C] (dynamic_img_size)
        grid = (int(x.shape[1]), int(x.shape[2]))
        x = trunk._pos_embed(x)
        if isinstance(x, tuple):  # Eva returns (tokens, rope); the rope is rebuilt per block from the grid
            x = x[0]
        elif getattr(trunk, "patch_drop", None) is not None:
            x = trunk.patch_drop(x)
        x = trunk.norm_pre(x)
        return x, grid

    def _embed_openclip(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        net = self.net
        x = net.conv1(x)
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        x = x.flatten(2).transpose(1, 2)
        cls = net.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        pos = net.positional_embedding
        native = tuple(net.grid_size)
        if grid != native:
            pos = _resample_pos(pos.unsqueeze(0), grid, native, 1)[0]
        x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
        x = net.patch_dropout(x)
        return net.ln_pre(x), grid

    def _rope(self, grid: tuple[int, int]) -> Any:
        rope = self._trunk.rope
        if self.training:
            return rope.get_embed(shape=list(grid))
        key = (tuple(grid), str(self.mean.device))
        if key not in self._rope_cache:
            self._rope_cache[key] = rope.get_embed(shape=list(grid))
        return self._rope_cache[key]

    def block(self, i: int, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """Runs block i on tokens [B, P + h*w, C] of the given grid (the rotary embedding is the grid's)."""
        if self._openclip:
            return self.net.transformer.resblocks[i](tokens)
        trunk = self._trunk
        blk = trunk.blocks[i]
        if getattr(trunk, "rope", None) is not None:
            return blk(tokens, rope=self._rope(grid))
        return blk(tokens)

    def final_norm(self, tokens: Tensor) -> Tensor:
        """The tower's last norm (timm ``norm``, open_clip ``ln_post``) on every token."""
        if self._openclip:
            return self.net.ln_post(tokens)
        return self._trunk.norm(tokens)

    def head(self, tokens: Tensor) -> Tensor:
        """The projection head alone on every (already normed) token; the identity for a headless tower."""
        if self._openclip:
            return tokens @ self.net.proj if self.net.proj is not None else tokens
        trunk = self._trunk
        x = trunk.fc_norm(tokens) if hasattr(trunk, "fc_norm") else tokens
        x = trunk.head(trunk.head_drop(x) if hasattr(trunk, "head_drop") else x)
        if self.net is not trunk:  # open_clip TimmModel: its adapter head (empty for EVA02-CLIP)
            x = self.net.head(x)
        return x

    def forward(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [0, 1] -> final-normed tokens [B, P + h*w, C]."""
        x, grid = self.embed(images)
        for i in range(self.num_blocks):
            x = self.block(i, x, grid)
        return self.final_norm(x)


class _TextParts(nn.Module):
    """The text tower of an open_clip ``CLIP`` (whose text parts sit on the model itself)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.token_embedding = model.token_embedding
        self.positional_embedding = model.positional_embedding
        self.transformer = model.transformer
        self.ln_final = model.ln_final
        self.text_projection = model.text_projection
        self.cls_emb = None


class CLIPModel(nn.Module):
    """An open_clip model split into the image tower ``visual`` (a ``ViTTower``) and the text tower ``text``.

    Attributes: embed_dim E (the joint embedding), text_width W (the text transformer width), context_length
    (the text tower's positional embedding length), visual, text, frozen.
    """

    def __init__(self, model: nn.Module, embed_dim: int, frozen: bool) -> None:
        super().__init__()
        from open_clip.model import CustomTextCLIP

        self.visual = ViTTower(model.visual, CLIP_MEAN, CLIP_STD, frozen)
        text = model.text if isinstance(model, CustomTextCLIP) else _TextParts(model)
        if not isinstance(text, _TextParts) and not hasattr(text, "token_embedding"):
            raise ConfigError("only open_clip's own text transformer is supported (not Hugging Face text towers)")
        if getattr(text, "cls_emb", None) is not None:
            raise ConfigError("text towers with a class token (CoCa) are not supported")
        self.text = text
        self.embed_dim = int(embed_dim)
        self.text_width = int(text.transformer.width)
        self.context_length = int(text.positional_embedding.shape[0])
        self.vocab_size = int(text.token_embedding.num_embeddings)
        self.frozen = frozen
        if frozen:
            _freeze(self)

    def train(self, mode: bool = True) -> CLIPModel:
        """Frozen towers stay in eval mode."""
        return super().train(mode and not self.frozen)

    def head(self, tokens: Tensor) -> Tensor:
        """The image tower's projection alone on normed tokens [B, N, C] -> [B, N, E]."""
        return self.visual.head(tokens)

    def project(self, tokens: Tensor) -> Tensor:
        """Raw block outputs [B, N, C] -> final norm + projection on every token [B, N, E]: token 0 is the
        global embedding (equal to open_clip's ``encode_image``), the rest the dense embedding."""
        return self.visual.head(self.visual.final_norm(tokens))

    def tokenize(self, names: list[str], length: int) -> Tensor:
        """CLIP BPE ids [K, length]: SOT, the name, EOT, zero padding (a name too long is cut, keeping EOT)."""
        if length < 2:
            raise ValueError(f"length must be at least 2 (SOT and EOT), got {length}")
        ids = _tokenizer()(list(names), context_length=length)
        if int(ids.max()) >= self.vocab_size:
            raise ConfigError(f"the text tower's vocabulary ({self.vocab_size}) is smaller than CLIP's BPE "
                              f"({int(ids.max()) + 1}); set text_cfg.vocab_size to 49408")
        return ids

    def encode_text(self, ids: Tensor) -> Tensor:
        """Plain CLIP text encoding of token ids [K, L] (no learned context) -> [K, E]."""
        return self.encode_text_with_context(None, ids)

    def encode_text_with_context(self, context: Tensor | None, name_ids: Tensor) -> Tensor:
        """CoOp: context [n_ctx, W] learnable embeddings, name_ids [K, L0] from ``tokenize`` -> [K, E].

        The sequence is [SOT, context..., name tokens..., EOT, pad] (length n_ctx + L0, the positional
        embedding truncated to it), run with a causal mask; the feature at the EOT position goes through
        ln_final and the text projection. Gradients reach ``context`` through the frozen tower.
        """
        text = self.text
        n_ctx = 0 if context is None else int(context.shape[0])
        k, l0 = name_ids.shape
        length = n_ctx + l0
        if length > self.context_length:
            raise ConfigError(f"{n_ctx} context tokens + {l0} name tokens exceed the text tower's context "
                              f"length {self.context_length}")
        emb = text.token_embedding(name_ids)
        if context is not None:
            if context.dim() != 2 or context.shape[1] != self.text_width:
                raise ValueError(f"context must be [n_ctx, {self.text_width}], got {list(context.shape)}")
            ctx = context.to(emb.dtype).unsqueeze(0).expand(k, -1, -1)
            emb = torch.cat([emb[:, :1], ctx, emb[:, 1:]], dim=1)
        x = emb + text.positional_embedding[:length].to(emb.dtype)
        mask = torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)
        x = text.transformer(x, attn_mask=mask)
        x = text.ln_final(x)
        eot = name_ids.argmax(dim=-1) + n_ctx
        x = x[torch.arange(k, device=x.device), eot]
        proj = text.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Module) else x @ proj.to(x.dtype)


# --------------------------------------------------------------------------------------------------- builders
def build_dinov2(model_name: str = "vit_large_patch14_dinov2", weights: str | None = None, img_size: int = 512,
                 frozen: bool = True, **overrides: Any) -> ViTTower:
    """DINOv2 through timm as a ``ViTTower`` (ImageNet mean/std).

    model_name: a timm ViT (``vit_large_patch14_dinov2``: 24 blocks, width 1024, LayerScale); ``overrides``
    are timm model arguments (embed_dim, depth, num_heads, patch_size, ...). weights: a timm state dict or the
    official DINOv2 checkpoint (see the module docstring); None starts from random initialisation (warned).
    """
    import timm

    overrides = dict(overrides)
    overrides.pop("pretrained", None)
    if overrides.pop("dynamic_img_size", True) is not True:
        raise ConfigError("dinov2: dynamic_img_size must stay True (the position embedding follows the grid)")
    try:
        model = timm.create_model(model_name, pretrained=False, img_size=img_size, num_classes=0,
                                  dynamic_img_size=True, **overrides)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ConfigError(f"dinov2: cannot build timm model {model_name!r} with {overrides}: {_one_line(e)}") from e
    what = f"DINOv2 ({model_name})"
    if weights:
        state = _read_state_dict(weights, what)
        filt = _timm_filter(model)
        if filt is not None:
            try:
                state = filt(state, model)
            except Exception as e:  # a foreign layout makes timm's converters fail in many ways
                raise UserError(f"{weights}: not a DINOv2/timm checkpoint for {what}: {_one_line(e)}") from e
        _load_exact(model, state, weights, what)
    else:
        warnings.warn(f"no weights given for {what}: starting from random initialisation; set dinov2.weights "
                      "to an official checkpoint (dinov2_vitl14_pretrain.pth or a timm state dict)", stacklevel=2)
    model.eval()
    return ViTTower(model, IMAGENET_MEAN, IMAGENET_STD, frozen)


def build_clip(model_name: str = "EVA02-L-14-336", weights: str | None = None, img_size: int = 512,
               frozen: bool = True, model_cfg: dict | None = None) -> CLIPModel:
    """CLIP / EVA02-CLIP through open_clip as a ``CLIPModel`` (CLIP mean/std).

    model_name: an open_clip config (``EVA02-L-14-336``: timm ``eva02_large_patch14_clip_336`` trunk with
    RoPE; ``ViT-L-14-336``: open_clip's ViT). model_cfg: a config dict in open_clip's JSON schema (embed_dim,
    vision_cfg, text_cfg, custom_text, quick_gelu) used instead of the named one; for a timm trunk,
    ``vision_cfg.timm_model_kwargs`` holds timm arguments for it (e.g. a small depth/embed_dim). The image
    size is ``img_size``. weights: see the module docstring; None starts from random initialisation (warned).
    OpenAI's weights need QuickGELU: their TorchScript release switches it on by itself; for an open_clip
    state dict of them use a ``-quickgelu`` config (``ViT-L-14-336-quickgelu``) or ``quick_gelu: true``.
    """
    import open_clip
    from open_clip.model import CLIP, CustomTextCLIP

    what = f"CLIP ({model_name if model_cfg is None else 'custom model_cfg'})"
    cfg = copy.deepcopy(model_cfg) if model_cfg is not None else open_clip.get_model_config(model_name)
    if cfg is None:
        raise ConfigError(f"clip: unknown open_clip model {model_name!r} (give model_cfg for a custom one)")
    state = None
    if weights:
        state, torchscript = _read_clip_weights(weights, what)
        if torchscript:
            cfg["quick_gelu"] = True  # OpenAI's releases were trained with QuickGELU
    if "multimodal_cfg" in cfg:
        raise ConfigError("clip: CoCa models (multimodal_cfg) are not supported")
    vision_cfg = dict(cfg.get("vision_cfg", {}))
    text_cfg = dict(cfg.get("text_cfg", {}))
    if text_cfg.get("hf_model_name"):
        raise ConfigError("clip: Hugging Face text towers (text_cfg.hf_model_name) are not supported")
    trunk_kwargs = dict(vision_cfg.pop("timm_model_kwargs", None) or {})
    vision_cfg["image_size"] = img_size
    timm_trunk = bool(vision_cfg.get("timm_model_name"))
    if timm_trunk:
        vision_cfg["timm_model_pretrained"] = False
    elif trunk_kwargs:
        raise ConfigError("clip: vision_cfg.timm_model_kwargs needs vision_cfg.timm_model_name")
    cfg["vision_cfg"], cfg["text_cfg"] = vision_cfg, text_cfg
    cls = CustomTextCLIP if cfg.pop("custom_text", False) else CLIP
    try:
        model = cls(**cfg)
        if timm_trunk:
            _rebuild_trunk(model.visual, vision_cfg, img_size, trunk_kwargs)
    except (RuntimeError, TypeError, ValueError, AssertionError, KeyError) as e:
        raise ConfigError(f"clip: cannot build {what}: {_one_line(e)}") from e
    if state is not None:
        _load_clip_state(model, state, weights, what)
    else:
        warnings.warn(f"no weights given for {what}: starting from random initialisation; set clip.weights to an "
                      "official checkpoint (EVA02_CLIP_L_336_psz14_s6B.pt, ViT-L-14-336px.pt or an open_clip "
                      "state dict)", stacklevel=2)
    model.eval()
    return CLIPModel(model, cfg["embed_dim"], frozen)


# --------------------------------------------------------------------------------------------------- helpers
def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(e).__name__


def _resample_pos(pos: Tensor, new: tuple[int, int], old: tuple[int, int], num_prefix: int) -> Tensor:
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(pos, new_size=list(new), old_size=list(old), num_prefix_tokens=num_prefix)


_TOKENIZER = None


def _tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        from open_clip.tokenizer import SimpleTokenizer

        _TOKENIZER = SimpleTokenizer()
    return _TOKENIZER


def _timm_filter(model: nn.Module):
    """The ``checkpoint_filter_fn`` of the timm module that defines the model's class, if any."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def _check_file(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{path}: weights file for {what} not found")
    return p


def _unwrap(obj: Any, path: Path, what: str) -> dict[str, Tensor]:
    for key in ("state_dict", "model", "module", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a state dict of tensors (expected weights for {what})")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _read_state_dict(path: str | Path, what: str) -> dict[str, Tensor]:
    p = _check_file(path, what)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p), device="cpu")
        else:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: cannot read weights for {what}: {_one_line(e)}") from e
    return _unwrap(obj, p, what)


def _is_torchscript(p: Path) -> bool:
    if p.suffix == ".safetensors" or not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in z.namelist())


def _read_clip_weights(path: str | Path, what: str) -> tuple[dict[str, Tensor], bool]:
    """A state dict from an open_clip/EVA file, or from OpenAI's TorchScript archive (second value True)."""
    p = _check_file(path, what)
    if _is_torchscript(p):
        try:
            state = torch.jit.load(str(p), map_location="cpu").state_dict()
        except Exception as e:
            raise UserError(f"{path}: cannot read the TorchScript archive for {what}: {_one_line(e)}") from e
        for key in ("input_resolution", "context_length", "vocab_size"):
            state.pop(key, None)
        return dict(state), True
    return _read_state_dict(p, what), False


def _rebuild_trunk(visual: nn.Module, vision_cfg: dict, img_size: int, trunk_kwargs: dict) -> None:
    """open_clip builds its timm trunk at the model's default size; rebuild it at img_size with
    dynamic_img_size (position embedding and rotary embedding follow any grid) and any timm overrides."""
    import timm

    old = visual.trunk
    kwargs = dict(trunk_kwargs)
    if vision_cfg.get("timm_drop_path") is not None:
        kwargs.setdefault("drop_path_rate", vision_cfg["timm_drop_path"])
    if vision_cfg.get("patch_dropout"):
        kwargs.setdefault("patch_drop_rate", vision_cfg["patch_dropout"])
    kwargs.pop("pretrained", None)
    kwargs.update(img_size=img_size, dynamic_img_size=True)
    new = timm.create_model(vision_cfg["timm_model_name"], pretrained=False, num_classes=old.num_classes,
                            global_pool=old.global_pool, **kwargs)
    if len(visual.head) and new.num_features != old.num_features:
        raise ValueError(f"timm_model_kwargs change the trunk width ({old.num_features} -> {new.num_features}) "
                         "but the open_clip head after it is sized for the default; use timm_proj: null")
    visual.trunk = new


def _load_exact(model: nn.Module, state: dict[str, Tensor], path: str | Path, what: str) -> None:
    """load_state_dict(strict) with a one-line ``UserError`` naming the file and the mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es) (file vs model), e.g. {', '.join(wrong[:3])}")
        if missing:
            parts.append(f"{len(missing)} key(s) missing, e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
        raise UserError(f"{path}: does not fit {what}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def _load_clip_state(model: nn.Module, state: dict[str, Tensor], path: str | Path, what: str) -> None:
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = dict(state)
    visual = model.visual
    try:
        if hasattr(visual, "trunk"):
            # open_clip layout: visual.trunk.* (+ visual.head.* for an adapter head); raw EVA-CLIP layout:
            # visual.* in BAAI naming, its visual.head being the trunk's head. timm's filter converts both.
            trunk = visual.trunk
            prefix = "visual.trunk." if any(k.startswith("visual.trunk.") for k in state) else "visual."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            rest = {k: v for k, v in state.items() if not k.startswith(prefix)}
            filt = _timm_filter(trunk)
            trunk_state = filt(sub, trunk) if filt is not None else sub
            state = {**rest, **{"visual.trunk." + k: v for k, v in trunk_state.items()}}
        else:
            _resample_conv1(state, visual)
        if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
            state = convert_to_custom_text_state_dict(state)
        if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
            state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
        if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None:
            state["logit_bias"] = torch.zeros_like(model.logit_bias)
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path}: not a checkpoint for {what}: {_one_line(e)}") from e
    _load_exact(model, state, path, what)


def _resample_conv1(state: dict[str, Tensor], visual: nn.Module) -> None:
    """A patch kernel of another size (OpenAI's 14x14 into a patch-16 tower) is resampled like timm does."""
    key = "visual.conv1.weight"
    w = state.get(key)
    own = getattr(getattr(visual, "conv1", None), "weight", None)
    if w is None or own is None or w.shape[:2] != own.shape[:2] or w.shape[-2:] == own.shape[-2:]:
        return
    from timm.layers import resample_patch_embed

    state[key] = resample_patch_embed(w.float(), list(own.shape[-2:])).to(w.dtype)
