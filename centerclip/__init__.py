"""CenterCLIP video encoding on open_clip: multi-segment token clustering inside the ViT.

Knows nothing of Ray or LanceDB. Start with :func:`create_model`.
"""

from centerclip import _deferred_imports

with _deferred_imports.deferred_imports():
    # _torchvision_compat must run before open_clip imports torchvision.
    from centerclip import _torchvision_compat  # noqa: F401, I001
    import open_clip  # noqa: F401

from centerclip.cluster import kmedoids, spectral
from centerclip.config import CenterCLIPConfig, Preset, get_preset, list_presets, register_preset
from centerclip.factory import (
    WeightsUnavailableError,
    create_model,
    has_random_weights,
    save_checkpoint,
)
from centerclip.model import VideoCLIP, segment_tokens

__all__ = [
    "CenterCLIPConfig",
    "Preset",
    "VideoCLIP",
    "WeightsUnavailableError",
    "create_model",
    "get_preset",
    "has_random_weights",
    "kmedoids",
    "list_presets",
    "register_preset",
    "save_checkpoint",
    "segment_tokens",
    "spectral",
]
