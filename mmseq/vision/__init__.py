"""mmseq.vision: MFuser (DINOv2 + CLIP fused by Mamba co-adapters) for domain-generalized semantic segmentation.

Modules: ``labels`` (the 19 Cityscapes train ids, palettes, dataset id tables), ``scenes`` (the built-in
street-scene generator), ``datasets`` (GTA5 / SYNTHIA / Cityscapes / BDD100K / Mapillary readers and
augmentations), ``backbones`` (DINOv2 through timm, CLIP/EVA through open_clip, official weight loading),
``fuser`` (MVFuser, MTEnhancer), ``head`` (text-queried mask head and losses), ``model`` (MFuser),
``evaluate`` (mIoU, sliding-window inference, colorized outputs), ``tasks`` and ``cli``.
"""
