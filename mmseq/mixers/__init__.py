"""mmseq.mixers: sequence mixers behind one interface and one registry (``create_mixer``, ``list_mixers``).

Every module in this package that defines a mixer registers it with ``@register_mixer``; they are all
imported here so that the registry is complete after ``import mmseq.mixers``.
"""

import importlib
import pkgutil

from .base import MIXERS, Mixer, create_mixer, list_mixers, register_mixer, validate_mixer_config

_NOT_MIXERS = {"base", "blocks", "rotary"}
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _NOT_MIXERS and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["MIXERS", "Mixer", "create_mixer", "list_mixers", "register_mixer", "validate_mixer_config"]
