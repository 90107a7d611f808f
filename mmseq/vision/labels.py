"""The 19 Cityscapes train ids every vision data set is mapped to, their palette, and the id tables.

Train ids 0..18 (below), 255 = ignore. GTA5 and Cityscapes label PNGs hold Cityscapes label ids (0..33),
Mapillary Vistas v1.2 its 66 ids, SYNTHIA its own ids; ``*_TO_TRAIN`` map each to train ids
(everything not listed -> 255). ``lut(table)`` turns a table into a 256- or 65536-entry lookup array.
"""

from __future__ import annotations

import numpy as np

IGNORE = 255

CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
NUM_CLASSES = len(CLASSES)

# RGB per train id (the Cityscapes colours).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
IGNORE_COLOR = (0, 0, 0)

# Cityscapes label id -> train id (Cityscapes gtFine *_labelIds.png, and GTA5's palette-index labels).
CITYSCAPES_TO_TRAIN: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
# Inverse: train id -> Cityscapes label id (the generator writes *_labelIds.png with it).
TRAIN_TO_CITYSCAPES: dict[int, int] = {t: c for c, t in CITYSCAPES_TO_TRAIN.items()}

# Mapillary Vistas v1.2 index -> train id (curb, fence, wall, bike lane, crosswalk, ..., truck).
MAPILLARY_TO_TRAIN: dict[int, int] = {
    2: 1, 3: 4, 6: 3, 7: 0, 8: 0, 9: 1, 10: 0, 11: 1, 13: 0, 14: 0, 15: 1, 17: 2, 19: 11, 20: 12, 21: 12,
    22: 12, 23: 0, 24: 0, 27: 10, 29: 9, 30: 8, 44: 5, 45: 5, 46: 7, 47: 5, 48: 6, 49: 7, 50: 7, 52: 18,
    54: 15, 55: 13, 57: 17, 58: 16, 61: 14,
}

# SYNTHIA-RAND-CITYSCAPES id (last channel of GT/LABELS/*.png, 16-bit) -> train id.
SYNTHIA_TO_TRAIN: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13, 18: 14,
    19: 15, 20: 16, 12: 17, 11: 18,
}


def lut(table: dict[int, int], size: int = 256) -> np.ndarray:
    """A lookup array [size] uint8: ``lut(t)[ids]`` maps an id image to train ids (unlisted -> 255)."""
    out = np.full(size, IGNORE, dtype=np.uint8)
    for src, dst in table.items():
        out[src] = dst
    return out


def palette_array() -> np.ndarray:
    """[256, 3] uint8: the colour of each train id, black for the rest (255 = ignore)."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[: NUM_CLASSES] = np.asarray(PALETTE, dtype=np.uint8)
    pal[IGNORE] = IGNORE_COLOR
    return pal


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """train_ids [H, W] (uint8, 255 = ignore) -> RGB [H, W, 3] uint8 in the Cityscapes colours."""
    return palette_array()[np.asarray(train_ids, dtype=np.uint8)]
