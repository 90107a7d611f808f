"""The text-queried mask heads, multi-scale deformable attention and the mask-classification losses."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmseq.vision.head import (
    HEADS,
    LightMaskHead,
    MSDeformAttn,
    TextQueriedMaskHead,
    ms_deform_attn_core,
    semantic_scores,
)
from mmseq.vision.losses import MaskClassificationLoss, pixel_ce

K = 5
TINY = dict(in_channels=32, text_dim=24, num_classes=K, hidden_dim=32, num_heads=2, pixel_decoder_layers=1,
            decoder_layers=2, ffn_dim=64, num_points=2)


def _inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, 32, s, s, generator=g) for s in (16, 8, 4, 2)]
    return feats, torch.randn(batch, K, 24, generator=g)


def _bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Bilinear sample of ``img [C, H, W]`` at normalised (x, y), pixel centres at (i + 0.5) / size, zero outside."""
    _, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(img.shape[0], dtype=img.dtype)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[:, yy, xx]
    return out


# ---------------------------------------------------------------------------------------------------------------- heads


@pytest.mark.parametrize("name", ["mask2former", "light"])
@pytest.mark.parametrize("layers", [1, 2])
def test_output_shapes_and_aux_count(name, layers):
    torch.manual_seed(0)
    head = HEADS[name](**{**TINY, "decoder_layers": layers})
    feats, text = _inputs()
    out = head(feats, text)
    assert out["pred_logits"].shape == (2, K, K + 1)
    assert out["pred_masks"].shape == (2, K, 16, 16)
    assert len(out["aux_outputs"]) == layers  # initial queries + every layer but the last
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, K, K + 1) and aux["pred_masks"].shape == (2, K, 16, 16)
    assert torch.isfinite(out["pred_masks"]).all()


def test_heads_registry_and_input_checks():
    assert HEADS == {"mask2former": TextQueriedMaskHead, "light": LightMaskHead}
    head = LightMaskHead(**TINY)
    feats, text = _inputs()
    with pytest.raises(ValueError, match="4 feature maps"):
        head(feats[:3], text)
    with pytest.raises(ValueError, match="text"):
        head(feats, text[:, :3])


@pytest.mark.parametrize("name", ["mask2former", "light"])
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    head = HEADS[name](**TINY)
    feats, text = _inputs()
    labels = torch.randint(0, K, (2, 32, 32), generator=torch.Generator().manual_seed(1))
    loss = MaskClassificationLoss(K, num_points=64)(head(feats, text), labels, torch.Generator().manual_seed(0))
    loss["loss"].backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


def test_official_size_parameter_count():
    head = TextQueriedMaskHead(in_channels=2048, text_dim=768, num_classes=19)
    n = sum(p.numel() for p in head.parameters())
    assert 26.5e6 < n < 27.0e6  # ~26.8M computed from the official code


def test_fully_masked_queries_attend_everywhere():
    head = LightMaskHead(**TINY)
    dec = head.decoder
    with torch.no_grad():
        dec.mask_embed.layers[-1].weight.zero_()
        dec.mask_embed.layers[-1].bias.fill_(1.0)
    q = torch.randn(2, K, 32)
    mask_features = -torch.ones(2, 32, 8, 8)
    mask_features[1, :, :2, :2] = 1.0  # image 1: every query's mask is positive on a 2x2 corner only
    _, masks, attn = dec._predict(q, mask_features, (4, 4))
    assert masks.shape == (2, K, 8, 8) and attn.shape == (2 * 2, K, 16) and attn.dtype == torch.bool
    assert not attn[:2].any()  # image 0: masked everywhere -> unmasked
    assert (attn[2:].sum(-1) == 15).all()  # image 1: only the corner cell of the 4x4 level is attended


def test_semantic_scores_against_loop():
    g = torch.Generator().manual_seed(0)
    out = {"pred_logits": torch.randn(2, K, K + 1, generator=g), "pred_masks": torch.randn(2, K, 3, 4, generator=g)}
    got = semantic_scores(out)
    probs = out["pred_logits"].softmax(-1)
    want = torch.zeros(2, K, 3, 4)
    for b in range(2):
        for c in range(K):
            for q in range(K):
                want[b, c] += probs[b, q, c] * out["pred_masks"][b, q].sigmoid()
    torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------------------------ deformable attention


def test_ms_deform_attn_core_against_point_loop():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 2)]
    b, lq, m, d, p = 2, 3, 2, 4, 3
    value = torch.randn(b, sum(h * w for h, w in shapes), m, d, generator=g)
    loc = torch.rand(b, lq, m, len(shapes), p, 2, generator=g) * 1.4 - 0.2  # some points fall outside
    attn = torch.rand(b, lq, m, len(shapes), p, generator=g)
    got = ms_deform_attn_core(value, shapes, loc, attn)
    levels = value.split([h * w for h, w in shapes], dim=1)
    want = torch.zeros(b, lq, m, d)
    for bi in range(b):
        for qi in range(lq):
            for mi in range(m):
                for li, (h, w) in enumerate(shapes):
                    img = levels[li][bi, :, mi].T.reshape(d, h, w)
                    for pi in range(p):
                        x, y = loc[bi, qi, mi, li, pi].tolist()
                        want[bi, qi, mi] += attn[bi, qi, mi, li, pi] * _bilinear(img, x, y)
    torch.testing.assert_close(got, want.reshape(b, lq, m * d))


def test_ms_deform_attn_zero_offsets_sample_reference_points():
    torch.manual_seed(0)
    shapes = [(4, 4), (2, 3)]
    attn = MSDeformAttn(dim=8, num_heads=2, num_levels=2, num_points=1)
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.zero_()
        attn.attention_weights.weight.normal_()
    b, s = 1, sum(h * w for h, w in shapes)
    value_in = torch.randn(b, s, 8)
    query = torch.randn(b, 5, 8)
    ref = torch.rand(b, 5, 2, 2)
    got = attn(query, ref, value_in, shapes)
    v = attn.value_proj(value_in).view(b, s, 2, 4)
    weights = attn.attention_weights(query).view(b, 5, 2, 2).softmax(-1)  # [B, Lq, heads, levels * 1 point]
    levels = v.split([h * w for h, w in shapes], dim=1)
    want = torch.zeros(b, 5, 2, 4)
    for qi in range(5):
        for mi in range(2):
            for li, (h, w) in enumerate(shapes):
                img = levels[li][0, :, mi].T.reshape(4, h, w)
                x, y = ref[0, qi, li].tolist()
                want[0, qi, mi] += weights[0, qi, mi, li] * _bilinear(img, x, y)
    torch.testing.assert_close(got, attn.output_proj(want.reshape(b, 5, 8)), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------- loss


def _perfect(labels: torch.Tensor, scale: float = 20.0) -> dict:
    """Mask logits +-scale from the labels and class logits that put all mass on the identity targets."""
    b = labels.shape[0]
    masks = torch.stack([(labels == k).float() for k in range(K)], 1) * 2 * scale - scale
    present = masks.flatten(2).amax(-1) > 0
    logits = torch.full((b, K, K + 1), -scale)
    for bi in range(b):
        for k in range(K):
            logits[bi, k, k if present[bi, k] else K] = scale
    return {"pred_logits": logits, "pred_masks": masks, "aux_outputs": []}


def test_loss_identity_assignment_perfect_is_near_zero():
    labels = torch.stack([torch.full((8, 8), 1), torch.full((8, 8), 3)])
    loss = MaskClassificationLoss(K, num_points=256)(_perfect(labels), labels, torch.Generator().manual_seed(0))
    assert loss["loss_cls"] < 1e-6
    assert loss["loss_mask"] < 0.05 and loss["loss_dice"] < 0.05


def test_loss_swapped_masks_are_penalised():
    labels = torch.full((1, 8, 8), 1)
    labels[:, :, 4:] = 3
    crit = MaskClassificationLoss(K, num_points=512)
    perfect = _perfect(labels)
    swapped = {**perfect, "pred_masks": perfect["pred_masks"][:, [0, 3, 2, 1, 4]]}
    lp = crit(perfect, labels, torch.Generator().manual_seed(0))
    ls = crit(swapped, labels, torch.Generator().manual_seed(0))
    # Perfect masks still pay the soft-target entropy on the boundary points (importance sampling finds them).
    assert ls["loss_mask"] > 5 * lp["loss_mask"] and ls["loss_dice"] > 5 * lp["loss_dice"]
    # Swapped class logits (query 1 says class 3) are penalised too.
    logits = perfect["pred_logits"].clone()
    logits[:, [1, 3]] = logits[:, [3, 1]]
    assert crit({**perfect, "pred_logits": logits}, labels)["loss_cls"] > 10


def test_absent_classes_only_in_class_term_with_no_object_weight():
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[:, 4:] = 2  # classes 0 and 2 present, 1, 3, 4 absent
    masks = torch.randn(1, K, 8, 8, generator=g, requires_grad=True)
    logits = torch.randn(1, K, K + 1, generator=g)
    crit = MaskClassificationLoss(K, class_weight=1.0, num_points=64)
    loss = crit({"pred_logits": logits, "pred_masks": masks}, labels, torch.Generator().manual_seed(0))
    (loss["loss_mask"] + loss["loss_dice"]).backward()
    assert masks.grad[0, [1, 3, 4]].abs().sum() == 0
    assert masks.grad[0, [0, 2]].abs().sum() > 0
    targets = torch.tensor([0, K, 2, K, K])
    weights = torch.tensor([1.0, 0.1, 1.0, 0.1, 0.1])
    ce = -logits[0].log_softmax(-1)[torch.arange(K), targets]
    torch.testing.assert_close(loss["loss_cls"], (weights * ce).sum() / weights.sum())


def test_ignore_pixels_are_excluded():
    labels = torch.full((1, 16, 16), 1)
    labels[:, :, :8] = 255
    out = _perfect(torch.where(labels == 255, torch.full_like(labels, 1), labels))
    garbage = out["pred_masks"].clone()
    garbage[:, :, :, :7] = torch.randn(1, K, 16, 7, generator=torch.Generator().manual_seed(0)) * 20
    crit = MaskClassificationLoss(K, num_points=512, importance_sample_ratio=0.0)
    clean = crit(out, labels, torch.Generator().manual_seed(0))
    dirty = crit({**out, "pred_masks": garbage}, labels, torch.Generator().manual_seed(0))
    torch.testing.assert_close(clean["loss_mask"], dirty["loss_mask"])
    torch.testing.assert_close(clean["loss_dice"], dirty["loss_dice"])
    assert clean["loss_mask"] < 0.05
    # Were those pixels labelled, the garbage would count.
    labelled = torch.full_like(labels, 1)
    assert crit({**out, "pred_masks": garbage}, labelled, torch.Generator().manual_seed(0))["loss_mask"] > 1.0
    # An all-ignore batch has no mask terms but a finite class term.
    empty = crit(out, torch.full_like(labels, 255))
    assert empty["loss_mask"] == 0 and empty["loss_dice"] == 0 and torch.isfinite(empty["loss"])


def test_point_sampling_deterministic_under_generator():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, K, (2, 16, 16), generator=g)
    out = {"pred_logits": torch.randn(2, K, K + 1, generator=g), "pred_masks": torch.randn(2, K, 8, 8, generator=g)}
    crit = MaskClassificationLoss(K, num_points=32)
    a = crit(out, labels, torch.Generator().manual_seed(7))
    b = crit(out, labels, torch.Generator().manual_seed(7))
    c = crit(out, labels, torch.Generator().manual_seed(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["loss_mask"], c["loss_mask"])


def test_deep_supervision_sums_every_prediction():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, K, (2, 8, 8), generator=g)
    main = {"pred_logits": torch.randn(2, K, K + 1, generator=g), "pred_masks": torch.randn(2, K, 8, 8, generator=g)}
    crit = MaskClassificationLoss(K, num_points=16)
    single = crit(main, labels)
    triple = crit({**main, "aux_outputs": [dict(main), dict(main)]}, labels)
    torch.testing.assert_close(triple["loss_cls"], 3 * single["loss_cls"])
    torch.testing.assert_close(triple["loss"], triple["loss_cls"] + triple["loss_mask"] + triple["loss_dice"])


def test_pixel_ce_hand_built():
    score = torch.tensor([[[[0.9, 0.1], [0.2, -0.3]], [[0.1, 0.5], [0.7, 0.0]], [[-0.2, 0.4], [0.3, 0.6]]]])
    labels = torch.tensor([[[0, 2], [255, 1]]])
    got = pixel_ce(score, labels, tau=0.07)
    terms = []
    for (i, j), c in (((0, 0), 0), ((0, 1), 2), ((1, 1), 1)):
        z = score[0, :, i, j] / 0.07
        terms.append(-(z[c] - torch.logsumexp(z, 0)))
    torch.testing.assert_close(got, torch.stack(terms).mean())
    # Upsampled to the label size first.
    big = torch.randint(0, 3, (1, 4, 4))
    up = F.interpolate(score / 0.07, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(pixel_ce(score, big), F.cross_entropy(up, big))


# ------------------------------------------------------------------------------------------------------------- overfit


@pytest.mark.parametrize("name", ["mask2former", "light"])
def test_overfit_one_batch(name):
    torch.manual_seed(0)
    head = HEADS[name](**TINY)
    feats, text = _inputs(batch=1)
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[:, 8:] = 2
    labels[:, :, 12:] = 4
    crit = MaskClassificationLoss(K, num_points=128)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        loss = crit(head(feats, text), labels, torch.Generator().manual_seed(0))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
