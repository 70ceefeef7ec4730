"""Make ``import open_clip`` work beside a CPU build of torch.

open_clip imports torchvision for its image transforms. The torchvision wheel that matches
torch 2.13 on PyPI is compiled for CUDA; next to a CPU torch its compiled operators fail to load
and ``import torchvision`` raises ``operator torchvision::nms does not exist`` while registering
Python fallbacks for them. Declaring the schemas of the two operators it looks up (``nms`` and
``qnms``) lets the pure-Python parts import. Nothing in this project calls those operators.

On a torch where torchvision's operators load (any matching CUDA or CPU pair) this does nothing.
Import this module before anything that imports torchvision or open_clip.
"""

from __future__ import annotations

import importlib.util

import torch


def _torchvision_ops_missing() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        _ = torch.ops.torchvision.nms
    except (AttributeError, RuntimeError):
        return True
    return False


def ensure_torchvision_importable() -> None:
    """Declare torchvision's ``nms``/``qnms`` schemas if its compiled library did not load."""
    if not _torchvision_ops_missing():
        return
    try:
        import torchvision  # noqa: F401

        return
    except RuntimeError as err:
        if "torchvision::nms does not exist" not in str(err):
            raise
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
    _KEEP_ALIVE.append(library)


_KEEP_ALIVE: list[torch.library.Library] = []
ensure_torchvision_importable()
