"""Shared data utilities: resumable sampling, split-based data modules."""

from .sampler import StepSampler, resumable_loader
from .splits import SplitDataModule

__all__ = ["SplitDataModule", "StepSampler", "resumable_loader"]
