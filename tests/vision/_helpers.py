"""A random MFuser small enough to build, train a few steps and run in seconds, for the vision and demo tests.

Test files import it as ``from tests.vision._helpers import TINY_MFUSER``.
"""

TINY_MFUSER = {
    "dinov2": {"model_name": "vit_small_patch14_dinov2", "frozen": False, "embed_dim": 32, "depth": 2,
               "num_heads": 2},
    "clip": {"frozen": False, "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 112, "layers": 2, "width": 32, "head_width": 16, "patch_size": 14},
        "text_cfg": {"context_length": 13, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}},
    "img_size": 112,
    "fuser": {"d_state": 4, "dropout": 0.0},
    "enhancer": {"width": 16, "num_heads": 2, "dropout": 0.0},
    "head": {"name": "light", "hidden_dim": 32, "num_heads": 2},
}
