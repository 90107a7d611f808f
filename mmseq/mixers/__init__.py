"""mmseq.mixers: sequence mixers behind one interface and one registry (``create_mixer``, ``list_mixers``)."""

from . import attention  # noqa: F401  (registers "attention")
from .base import MIXERS, Mixer, create_mixer, list_mixers, register_mixer, validate_mixer_config

__all__ = ["MIXERS", "Mixer", "create_mixer", "list_mixers", "register_mixer", "validate_mixer_config"]
