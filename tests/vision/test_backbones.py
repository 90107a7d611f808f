"""The DINOv2 and CLIP/EVA02 towers: block-by-block runs equal the libraries' own forwards, and every supported
checkpoint layout (written here from tiny random models) loads back exactly."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file

from mmseq.errors import UserError
from mmseq.vision.backbones import CLIPModel, ViTTower, build_clip, build_dinov2

DINO = dict(embed_dim=48, depth=2, num_heads=2)
TEXT = dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=2)
VIT_CFG = dict(embed_dim=24, vision_cfg=dict(image_size=56, layers=2, width=48, patch_size=14, head_width=24),
               text_cfg=TEXT)
# EVA02-CLIP-L's block layout (separate q/k/v, sub-LN in attention and SwiGLU MLP, RoPE) at a tiny width.
EVA_TRUNK = dict(embed_dim=48, depth=2, num_heads=2, qkv_fused=False, scale_mlp=True, scale_attn_inner=True)
EVA_CFG = dict(embed_dim=24, custom_text=True, text_cfg=TEXT,
               vision_cfg=dict(image_size=56, timm_model_name="eva02_tiny_patch14_224", timm_pool="token",
                               timm_proj=None, timm_model_kwargs=EVA_TRUNK))


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def dino(img_size=56, **kw):
    return quiet(build_dinov2, img_size=img_size, **DINO, **kw)


def clip(cfg=VIT_CFG, img_size=56, **kw):
    return quiet(build_clip, model_cfg=cfg, img_size=img_size, **kw)


def run(tower: ViTTower, images: torch.Tensor) -> torch.Tensor:
    x, grid = tower.embed(images)
    for i in range(tower.num_blocks):
        x = tower.block(i, x, grid)
    return x


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def images(h=56, w=56, b=2):
    return torch.rand(b, 3, h, w)


# ----------------------------------------------------------------------------------------------- decomposition
def test_dinov2_shapes_and_lockstep_equals_forward_features():
    tower = dino()
    assert (tower.patch_size, tower.embed_dim, tower.num_blocks, tower.num_prefix_tokens) == (14, 48, 2, 1)
    x = images(60, 62)  # not a multiple of the patch: the remainder is dropped
    tokens, grid = tower.embed(x)
    assert grid == (4, 4) and tokens.shape == (2, 1 + 16, 48)
    assert tower.block(0, tokens, grid).shape == tokens.shape
    out = tower.final_norm(run(tower, x))
    ref = tower.net.forward_features(tower.normalize(x[..., :56, :56]))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # the input is [0, 1]: the tower normalises with ImageNet statistics
    assert torch.allclose(tower.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_dinov2_non_square_grid_matches_a_model_built_for_it():
    tower = dino()
    x = images(56, 84)
    tokens, grid = tower.embed(x)
    assert grid == (4, 6) and tokens.shape == (2, 25, 48)
    # a fixed-size timm model built at 56x84, its position embedding resampled from ours, gives the same tokens
    ref_model = timm.create_model("vit_large_patch14_dinov2", img_size=(56, 84), num_classes=0, **DINO).eval()
    from timm.models.vision_transformer import checkpoint_filter_fn

    ref_model.load_state_dict(checkpoint_filter_fn(dict(tower.net.state_dict()), ref_model))
    torch.testing.assert_close(tower.final_norm(run(tower, x)), ref_model.forward_features(tower.normalize(x)),
                               rtol=0, atol=1e-5)


def test_openclip_vit_lockstep_equals_open_clip():
    model = clip()
    assert isinstance(model, CLIPModel) and model.embed_dim == 24 and model.text_width == 32
    tower = model.visual
    assert (tower.patch_size, tower.embed_dim, tower.num_blocks, tower.num_prefix_tokens) == (14, 48, 2, 1)
    net = tower.net
    x = images()
    tokens = run(tower, x)
    ref = net.transformer(net._embeds(tower.normalize(x)))
    torch.testing.assert_close(tower.final_norm(tokens), net.ln_post(ref), rtol=0, atol=1e-6)
    projected = model.project(tokens)
    assert projected.shape == (2, 17, 24)
    torch.testing.assert_close(projected[:, 0], net(tower.normalize(x)), rtol=0, atol=1e-5)
    torch.testing.assert_close(model.head(tower.final_norm(tokens)), projected)


def test_openclip_vit_non_square_grid():
    from open_clip.model import CLIP

    model = clip()
    x = images(56, 84)
    tokens, grid = model.visual.embed(x)
    assert grid == (4, 6) and tokens.shape == (2, 25, 48)
    cfg = {**VIT_CFG, "vision_cfg": {**VIT_CFG["vision_cfg"], "image_size": (56, 84)}}
    ref = CLIP(**cfg).eval()
    from timm.layers import resample_abs_pos_embed

    state = {("visual." + k[len("visual.net."):] if k.startswith("visual.net.") else k): v
             for k, v in model.state_dict().items() if k.startswith("visual.")}
    state["visual.positional_embedding"] = resample_abs_pos_embed(
        state["visual.positional_embedding"][None], new_size=[4, 6], old_size=[4, 4], num_prefix_tokens=1)[0]
    ref.load_state_dict(state, strict=False)
    torch.testing.assert_close(model.project(run(model.visual, x))[:, 0],
                               ref.encode_image(model.visual.normalize(x)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(56, 56), (56, 84)])
def test_eva_lockstep_equals_timm_with_rope_for_the_grid(size):
    model = clip(EVA_CFG)
    tower = model.visual
    assert (tower.patch_size, tower.embed_dim, tower.num_blocks, tower.num_prefix_tokens) == (14, 48, 2, 1)
    assert tower.net.trunk.rope is not None
    x = images(*size)
    tokens = run(tower, x)
    assert tokens.shape == (2, 1 + (size[0] // 14) * (size[1] // 14), 48)
    torch.testing.assert_close(tower.final_norm(tokens), tower.net.trunk.forward_features(tower.normalize(x)),
                               rtol=0, atol=1e-6)
    # a fixed-size timm EVA built for this grid (its RoPE cached for it) gives the same tokens and projection
    ref = timm.create_model("eva02_tiny_patch14_224", img_size=size, num_classes=24, global_pool="token",
                            **EVA_TRUNK).eval()
    from timm.models.eva import checkpoint_filter_fn

    ref.load_state_dict(checkpoint_filter_fn(dict(tower.net.trunk.state_dict()), ref))
    torch.testing.assert_close(tower.final_norm(tokens), ref.forward_features(tower.normalize(x)),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(model.project(tokens)[:, 0], ref(tower.normalize(x)), rtol=0, atol=1e-5)


def test_text_tower_equals_open_clip_encode_text():
    from open_clip.model import CLIP

    model = clip()
    ref = CLIP(**VIT_CFG).eval()
    ref.load_state_dict({k[len("text."):]: v for k, v in model.state_dict().items() if k.startswith("text.")},
                        strict=False)
    ids = model.tokenize(["road", "traffic light", "a very long name that will not fit in sixteen tokens at all"],
                         16)
    torch.testing.assert_close(model.encode_text(ids), ref.encode_text(ids), rtol=0, atol=1e-5)


def test_tokenize_sot_eot_and_truncation():
    model = clip()
    ids = model.tokenize(["road", "traffic light", "a name far too long for five"], 5)
    assert ids.shape == (3, 5) and ids.dtype == torch.long
    sot, eot = 49406, 49407
    assert (ids[:, 0] == sot).all()
    assert ids[0].tolist()[2:] == [eot, 0, 0]
    assert ids[1, 3] == eot and ids[1, 4] == 0
    assert ids[2, -1] == eot and (ids[2] != 0).all()


def test_coop_context_gets_gradient_through_frozen_tower():
    model = clip(EVA_CFG)
    assert all(not p.requires_grad for p in model.parameters())
    ids = model.tokenize(["road", "sky"], 5)
    context = torch.randn(8, model.text_width, requires_grad=True)
    out = model.encode_text_with_context(context, ids)
    assert out.shape == (2, 24)
    out.square().sum().backward()
    assert context.grad is not None and context.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    # the context sits between SOT and the name: changing it changes the output (a random change: a shift of
    # every feature by one constant is what a LayerNorm on the token embeddings removes)
    with torch.no_grad():
        other = model.encode_text_with_context(context + torch.randn(context.shape, generator=torch.Generator()
                                                                     .manual_seed(1)), ids)
    assert not torch.allclose(out, other)
    with pytest.raises(UserError, match="context length"):
        model.encode_text_with_context(torch.randn(12, model.text_width), ids)


# ----------------------------------------------------------------------------------------------- frozen / warnings
def test_frozen_towers_stay_in_eval_and_get_no_grad():
    tower, model = dino(), clip()
    for m in (tower, model):
        m.train()
        assert not any(sub.training for sub in m.modules())
        assert all(not p.requires_grad for p in m.parameters())


def test_unfrozen_towers_train():
    tower = dino(frozen=False)
    tower.train()
    assert tower.training and all(p.requires_grad for p in tower.parameters())
    tower.final_norm(run(tower, images())).sum().backward()
    assert tower.net.blocks[0].attn.qkv.weight.grad is not None


def test_frozen_backward_raises_without_graph():
    tower = dino()
    out = tower.final_norm(run(tower, images()))
    assert not out.requires_grad


def test_no_weights_warns_once_per_tower():
    for build, kwargs in ((build_dinov2, dict(img_size=56, **DINO)), (build_clip, dict(model_cfg=VIT_CFG)),
                          (build_clip, dict(model_cfg=EVA_CFG))):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build(**kwargs)
        ours = [w for w in caught if "no weights given" in str(w.message)]
        assert len(ours) == 1, [str(w.message) for w in caught]
        assert "random initialisation" in str(ours[0].message)


# ----------------------------------------------------------------------------------------------- checkpoint formats
def test_dinov2_timm_safetensors_roundtrip(tmp_path):
    src = dino()
    path = tmp_path / "dinov2.safetensors"
    save_file({k: v.contiguous() for k, v in src.net.state_dict().items()}, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # weights given: no warning
        loaded = build_dinov2(weights=str(path), img_size=56, **DINO)
    for k, v in src.net.state_dict().items():
        torch.testing.assert_close(loaded.net.state_dict()[k], v, rtol=0, atol=0)
    x = images()
    torch.testing.assert_close(loaded(x), src(x), rtol=0, atol=0)


def official_dinov2_state(tower: ViTTower) -> dict[str, torch.Tensor]:
    """The official DINOv2 release layout (dinov2_vitl14_pretrain.pth) from a timm model."""
    state = {k: v.clone() for k, v in tower.net.state_dict().items()}
    assert any(k.endswith("ls1.gamma") for k in state)  # official naming: blocks.N.ls1.gamma
    state["mask_token"] = torch.zeros(1, tower.embed_dim)
    return state


def test_dinov2_official_checkpoint_with_another_grid(tmp_path):
    src = dino(img_size=70)  # a 5x5 position grid in the file (the release has 37x37)
    state = official_dinov2_state(src)
    assert state["pos_embed"].shape == (1, 26, 48)
    path = tmp_path / "dinov2_vitl14_pretrain.pth"
    torch.save(state, path)
    loaded = dino(weights=str(path))  # 4x4 model grid: the position embedding is resampled on load
    assert loaded.net.pos_embed.shape == (1, 17, 48)
    for k, v in src.net.state_dict().items():
        if k != "pos_embed":
            torch.testing.assert_close(loaded.net.state_dict()[k], v, rtol=0, atol=0)
    x = images()  # the source interpolates its 5x5 grid to 4x4 at run time in the same way
    torch.testing.assert_close(loaded(x), src(x), rtol=0, atol=1e-5)


def test_openclip_vit_state_dict_roundtrip(tmp_path):
    from open_clip.model import CLIP

    src = CLIP(**VIT_CFG).eval()
    path = tmp_path / "open_clip_pytorch_model.pt"
    torch.save(src.state_dict(), path)
    model = clip(weights=str(path))
    x = images()
    norm = model.visual.normalize(x)
    torch.testing.assert_close(model.project(run(model.visual, x))[:, 0], src.encode_image(norm), rtol=0, atol=1e-5)
    ids = model.tokenize(["road", "sky"], 16)
    torch.testing.assert_close(model.encode_text(ids), src.encode_text(ids), rtol=0, atol=1e-5)


def test_openai_torchscript_archive(tmp_path):
    from open_clip.model import CLIP

    src = CLIP(**{**VIT_CFG, "quick_gelu": True}).eval()
    class Holder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    holder = Holder()
    for name, tensor in src.state_dict().items():
        *parents, leaf = name.split(".")
        mod = holder
        for part in parents:
            if not hasattr(mod, part):
                mod.add_module(part, torch.nn.Module())
            mod = getattr(mod, part)
        mod.register_buffer(leaf, tensor.clone())
    holder.register_buffer("input_resolution", torch.tensor(56))
    path = tmp_path / "ViT-L-14-336px.pt"
    torch.jit.save(torch.jit.script(holder), str(path))
    model = clip(weights=str(path))  # built with QuickGELU, as OpenAI trained it
    x = images()
    torch.testing.assert_close(model.project(run(model.visual, x))[:, 0],
                               src.encode_image(model.visual.normalize(x)), rtol=0, atol=1e-5)


def openclip_eva_state(model: CLIPModel) -> dict[str, torch.Tensor]:
    """open_clip's layout of an EVA02-CLIP model: visual.trunk.*, text.*, logit_scale."""
    state = {("visual." + k[len("visual.net."):] if k.startswith("visual.net.") else k): v.clone()
             for k, v in model.state_dict().items()}
    state["logit_scale"] = torch.tensor(4.6)
    return state


EVA_RENAMES = (("attn.q_proj.bias", "attn.q_bias"), ("attn.v_proj.bias", "attn.v_bias"), ("mlp.fc1_g", "mlp.w1"),
               ("mlp.fc1_x", "mlp.w2"), ("mlp.fc2", "mlp.w3"), ("mlp.norm", "mlp.ffn_ln"),
               ("attn.norm", "attn.inner_attn_ln"))


def raw_eva_state(model: CLIPModel) -> dict[str, torch.Tensor]:
    """The BAAI EVA-CLIP release layout (EVA02_CLIP_L_336_psz14_s6B.pt): visual.* in EVA naming with the
    rotary buffers saved, text.* as open_clip names them."""
    out = {}
    for k, v in openclip_eva_state(model).items():
        if k.startswith("visual.trunk."):
            k = "visual." + k[len("visual.trunk."):]
            for new, old in EVA_RENAMES:
                k = k.replace(new, old)
        out[k] = v
    n = out["visual.pos_embed"].shape[1] - 1
    out["visual.rope.freqs_cos"] = torch.randn(n, 24)
    out["visual.rope.freqs_sin"] = torch.randn(n, 24)
    out["visual.blocks.0.attn.rope.freqs_cos"] = torch.randn(n, 24)
    return out


def test_eva_openclip_state_dict_roundtrip(tmp_path):
    src = clip(EVA_CFG)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(openclip_eva_state(src), path)
    model = clip(EVA_CFG, weights=str(path))
    for k, v in src.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    x = images()
    torch.testing.assert_close(model.project(run(model.visual, x)), src.project(run(src.visual, x)), rtol=0, atol=0)


def test_eva_raw_release_layout_with_another_grid(tmp_path):
    src = clip(EVA_CFG, img_size=70)  # 5x5 position grid in the file (the release has 24x24)
    state = raw_eva_state(src)
    assert "visual.blocks.0.attn.q_bias" in state and "visual.blocks.0.mlp.ffn_ln.weight" in state
    path = tmp_path / "EVA02_CLIP_L_336_psz14_s6B.pt"
    torch.save(state, path)
    model = clip(EVA_CFG, weights=str(path))
    assert model.visual.net.trunk.pos_embed.shape == (1, 17, 48)
    for k, v in src.state_dict().items():
        if not k.endswith("pos_embed"):
            torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    x = images()
    torch.testing.assert_close(model.project(run(model.visual, x)), src.project(run(src.visual, x)),
                               rtol=0, atol=1e-5)
    ids = model.tokenize(["road"], 5)
    ctx = torch.randn(8, 32)
    torch.testing.assert_close(model.encode_text_with_context(ctx, ids), src.encode_text_with_context(ctx, ids))


# ----------------------------------------------------------------------------------------------- errors
def test_missing_file_is_one_line_error(tmp_path):
    missing = tmp_path / "nope.pth"
    for build in (lambda: dino(weights=str(missing)), lambda: clip(weights=str(missing))):
        with pytest.raises(UserError) as err:
            build()
        msg = str(err.value)
        assert "\n" not in msg and str(missing) in msg and "not found" in msg


def test_wrong_shapes_and_keys_are_one_line_errors(tmp_path):
    wide = quiet(build_dinov2, img_size=56, embed_dim=64, depth=2, num_heads=2)
    path = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in wide.net.state_dict().items()}, str(path))
    with pytest.raises(UserError) as err:
        dino(weights=str(path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "shape mismatch" in msg and "64) vs (" in msg

    junk = tmp_path / "junk.pth"
    torch.save({"foo.weight": torch.zeros(3)}, junk)
    for build in (lambda: dino(weights=str(junk)), lambda: clip(weights=str(junk)),
                  lambda: clip(EVA_CFG, weights=str(junk))):
        with pytest.raises(UserError) as err:
            build()
        msg = str(err.value)
        assert "\n" not in msg and str(junk) in msg

    notdict = tmp_path / "list.pth"
    torch.save([1, 2], notdict)
    with pytest.raises(UserError, match="state dict"):
        dino(weights=str(notdict))


def test_patch_kernel_resampled_to_another_patch_size(tmp_path):
    """MFuser's CLIP variant runs both towers with patch 16 from patch-14 releases."""
    from open_clip.model import CLIP

    src = dino()
    path = tmp_path / "dinov2_vitl14_pretrain.pth"
    torch.save(official_dinov2_state(src), path)
    tower = quiet(build_dinov2, weights=str(path), img_size=64, patch_size=16, **DINO)
    assert tower.patch_size == 16 and tower.net.patch_embed.proj.weight.shape[-2:] == (16, 16)
    assert tower.embed(images(64, 64))[1] == (4, 4)

    oc = CLIP(**VIT_CFG)
    path = tmp_path / "clip.pt"
    torch.save(oc.state_dict(), path)
    cfg = {**VIT_CFG, "vision_cfg": {**VIT_CFG["vision_cfg"], "patch_size": 16}}
    model = clip(cfg, img_size=64, weights=str(path))
    assert model.visual.patch_size == 16 and model.visual.net.conv1.weight.shape[-2:] == (16, 16)
    assert model.project(run(model.visual, images(64, 64))).shape == (2, 17, 24)


def test_unknown_model_names_are_config_errors():
    from mmseq.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown open_clip model"):
        build_clip("No-Such-Model")
    with pytest.raises(ConfigError, match="cannot build timm model"):
        build_dinov2("no_such_timm_model")


def test_eva_rope_is_eva_clips_interpolated_rope():
    """EVA-CLIP builds its RoPE for the pretraining grid (16) and interpolates the frequencies to the run grid
    (intp_freq): t = arange(g) / g * 16. The tower's rotary embedding for a grid is that one."""
    from timm.layers.pos_embed_sincos import apply_rot_embed_cat

    tower = clip(EVA_CFG).visual
    head_dim = 48 // 2
    dim = head_dim // 2
    for g in (4, 6):
        freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        t = torch.arange(g) / g * 16
        f = torch.einsum("i,f->if", t, freqs).repeat_interleave(2, -1)
        f = torch.cat([f[:, None, :].expand(g, g, -1), f[None, :, :].expand(g, g, -1)], -1).reshape(g * g, -1)
        q = torch.randn(1, 2, g * g, head_dim)
        pairs = q.view(*q.shape[:-1], -1, 2)
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), -1).flatten(-2)
        torch.testing.assert_close(apply_rot_embed_cat(q, tower._rope((g, g))), q * f.cos() + rotated * f.sin())
