"""Shared data utilities: resumable sampling, loaders, splits."""

from .sampler import StepSampler, resumable_loader

__all__ = ["StepSampler", "resumable_loader"]
