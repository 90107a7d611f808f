"""Losses of MFuser: mask classification with a fixed query <-> class assignment, and the score-map pixel CE.

``MaskClassificationLoss`` follows Mask2Former's set criterion with the matching replaced by the identity (query k
is class k, as in tqdm/MFuser): class CE over K + 1 (no-object weighted 0.1), sigmoid BCE and dice on points chosen
by uncertainty-based importance sampling, for the final prediction and every auxiliary one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MaskClassificationLoss", "get_uncertain_point_coords_with_randomness", "pixel_ce", "point_sample"]


def point_sample(inputs: Tensor, points: Tensor, mode: str = "bilinear") -> Tensor:
    """Sample ``inputs [N, C, H, W]`` at ``points [N, P, 2]`` ((x, y) in [0, 1], 0 and 1 the outer edges;
    zero padding outside) -> ``[N, C, P]``."""
    out = F.grid_sample(inputs, 2.0 * points[:, :, None, :] - 1.0, mode=mode, padding_mode="zeros",
                        align_corners=False)
    return out.squeeze(3)


def get_uncertain_point_coords_with_randomness(logits: Tensor, num_points: int, oversample_ratio: float,
                                               importance_sample_ratio: float,
                                               generator: torch.Generator | None = None) -> Tensor:
    """Mask2Former's point selection for ``logits [N, 1, H, W]`` -> ``[N, num_points, 2]``.

    Draw ``num_points * oversample_ratio`` uniform points, keep the ``importance_sample_ratio * num_points`` most
    uncertain ones (uncertainty = -|logit|) and fill up with fresh uniform points.
    """
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    coords = _rand(n, num_sampled, generator, logits)
    if num_uncertain > 0:
        uncertainty = -point_sample(logits, coords).abs()[:, 0]  # [N, num_sampled]
        idx = uncertainty.topk(num_uncertain, dim=1)[1]
        coords_u = coords.gather(1, idx[..., None].expand(-1, -1, 2))
    else:
        coords_u = coords[:, :0]
    if num_random > 0:
        coords_u = torch.cat([coords_u, _rand(n, num_random, generator, logits)], dim=1)
    return coords_u


def _rand(n: int, p: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Uniform points ``[n, p, 2]`` drawn from ``generator`` (on its own device), moved to ``like``'s device."""
    device = generator.device if generator is not None else like.device
    return torch.rand(n, p, 2, generator=generator, device=device).to(device=like.device, dtype=like.dtype)


class MaskClassificationLoss(nn.Module):
    """Class CE + point-sampled mask BCE + dice, with query k assigned to class k, plus deep supervision.

    Targets per image: one binary mask for each class present in the labels (train ids ``0..K-1``); queries of
    absent classes are trained to predict no-object (index K) and get no mask terms. Ignore pixels belong to no
    mask and do not count: a sampled point whose nearest label pixel is ``ignore_index`` gets weight 0, and a
    point's target is the bilinear average of its valid neighbours only. Without ignore pixels this is the
    official ``point_sample`` of the binary masks except in the outer half-pixel band of the label map, where the
    official zero padding pulls targets towards 0 (so a perfect prediction is penalised there) and this does not.
    Predictions are sampled as in the official code (bilinear, zero padding).
    """

    def __init__(self, num_classes: int, class_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0,
                 no_object_weight: float = 0.1, num_points: int = 12544, oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75, ignore_index: int = 255):
        super().__init__()
        self.num_classes = num_classes
        self.class_weight, self.mask_weight, self.dice_weight = class_weight, mask_weight, dice_weight
        self.num_points, self.oversample_ratio = num_points, oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.ignore_index = ignore_index
        weights = torch.ones(num_classes + 1)
        weights[-1] = no_object_weight
        self.register_buffer("empty_weight", weights, persistent=False)

    def forward(self, outputs: dict, labels: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """outputs: a head's dict (``pred_logits [B, K, K + 1]``, ``pred_masks [B, K, h, w]``, ``aux_outputs``);
        labels ``[B, H, W]`` long train ids. Returns the weighted ``loss_cls``, ``loss_mask``, ``loss_dice`` (each
        summed over the final and auxiliary predictions) and ``loss``, their sum."""
        k = self.num_classes
        if labels.dim() != 3:
            raise ValueError(f"expected labels [B, H, W], got {tuple(labels.shape)}")
        if outputs["pred_logits"].shape[1:] != (k, k + 1):
            raise ValueError(f"expected pred_logits [B, {k}, {k + 1}], got {tuple(outputs['pred_logits'].shape)}")
        labels = labels.to(outputs["pred_masks"].device).long()
        classes = torch.arange(k, device=labels.device)
        onehot = labels[:, None] == classes[None, :, None, None]  # [B, K, H, W]
        present = onehot.flatten(2).any(-1)  # [B, K]
        cls_target = torch.where(present, classes[None], torch.full_like(present, k, dtype=torch.long))
        b_idx, k_idx = present.nonzero(as_tuple=True)
        valid = (labels != self.ignore_index).float()  # [B, H, W]
        mask_target = onehot[b_idx, k_idx].float()[:, None]  # [N, 1, H, W], ignore pixels are 0
        mask_valid = valid[b_idx][:, None]
        num_masks = max(int(b_idx.numel()), 1)

        total = {"loss_cls": 0.0, "loss_mask": 0.0, "loss_dice": 0.0}
        for pred in [outputs, *outputs.get("aux_outputs", [])]:
            logits = pred["pred_logits"]
            loss_cls = F.cross_entropy(logits.flatten(0, 1).float(), cls_target.flatten(),
                                       weight=self.empty_weight.to(logits.device))
            masks = pred["pred_masks"][b_idx, k_idx][:, None].float()  # [N, 1, h, w]
            if masks.shape[0] == 0:
                loss_mask = loss_dice = pred["pred_masks"].sum() * 0.0
            else:
                loss_mask, loss_dice = self._mask_losses(masks, mask_target, mask_valid, num_masks, generator)
            total["loss_cls"] = total["loss_cls"] + self.class_weight * loss_cls
            total["loss_mask"] = total["loss_mask"] + self.mask_weight * loss_mask
            total["loss_dice"] = total["loss_dice"] + self.dice_weight * loss_dice
        total["loss"] = total["loss_cls"] + total["loss_mask"] + total["loss_dice"]
        return total

    def _mask_losses(self, masks: Tensor, target: Tensor, valid: Tensor, num_masks: int,
                     generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(masks, self.num_points, self.oversample_ratio,
                                                                self.importance_sample_ratio, generator)
            # The bilinear average over the valid in-image neighbours (the zero padding and ignore pixels drop out).
            t = point_sample(target, coords)[:, 0] / point_sample(valid, coords)[:, 0].clamp_min(1e-6)
            t = t.clamp(0.0, 1.0)
            w = point_sample(valid, coords, mode="nearest")[:, 0]  # 0 where the point lies on an ignore pixel
        logits = point_sample(masks, coords)[:, 0]  # [N, P]
        bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        loss_mask = (bce * w).sum() / (num_masks * self.num_points)
        p = logits.sigmoid() * w
        tw = t * w
        dice = 1.0 - (2.0 * (p * tw).sum(-1) + 1.0) / (p.sum(-1) + tw.sum(-1) + 1.0)
        return loss_mask, dice.sum() / num_masks


def pixel_ce(score_map: Tensor, labels: Tensor, tau: float = 0.07, ignore_index: int = 255) -> Tensor:
    """The auxiliary score-map loss: ``score_map [B, K, h, w]`` (cosine similarities) / tau, bilinearly upsampled
    to the label size ``[B, H, W]``, cross-entropy averaged over the non-ignored pixels."""
    logits = F.interpolate(score_map.float() / tau, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, labels.long(), ignore_index=ignore_index)
