"""Import open_clip without the two heavy modules this project never uses at start-up.

* ``torch._dynamo``, torch's compiler front end: nothing here compiles, yet torchvision's
  ``ops.roi_align`` binds ``torch._dynamo.utils.is_compile_supported`` at import time.
* ``timm``: open_clip imports it eagerly for its timm vision towers, which CenterCLIP's presets do
  not use (their towers are open_clip's own ViT, the one the clustering patches), and timm's own
  import loads ``torch._dynamo`` through its ``torch.compiler.disable`` decorators.

Together they are most of what importing the encoder costs after ``import torch``
(``bench/startup.py``), paid at the start of every process that encodes: each encode actor of an
index job, each job, each Ray Train worker, each search replica.

While :func:`deferred_imports` is open, ``torch._dynamo.utils`` is a stand-in whose
``is_compile_supported`` loads the real module on first call, and ``import timm`` fails, which
open_clip takes as "timm not installed". Afterwards open_clip's ``TimmModel`` imports timm when it
is first built, so every caller of open_clip still gets its timm towers.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.abc
import sys
import types
from collections.abc import Iterator, Sequence
from typing import Any

_UTILS = "torch._dynamo.utils"


def _is_compile_supported(device_type: Any) -> bool:
    from torch._dynamo.utils import is_compile_supported

    return is_compile_supported(device_type)


class _RefuseTimm(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> None:
        if fullname == "timm" or fullname.startswith("timm."):
            raise ModuleNotFoundError(f"{fullname}: deferred while open_clip imports", name="timm")


@contextlib.contextmanager
def deferred_imports() -> Iterator[None]:
    """Within it, importing torchvision and open_clip leaves ``torch._dynamo`` and ``timm``
    unimported (each only where it is not imported already)."""
    stand_in = None
    if "torch._dynamo" not in sys.modules:
        stand_in = types.ModuleType(_UTILS, "stand-in until torch._dynamo is imported")
        stand_in.is_compile_supported = _is_compile_supported  # type: ignore[attr-defined]
        sys.modules[_UTILS] = stand_in
    refuse_timm = None if "timm" in sys.modules else _RefuseTimm()
    if refuse_timm is not None:
        sys.meta_path.insert(0, refuse_timm)
    try:
        yield
    finally:
        if refuse_timm is not None:
            sys.meta_path.remove(refuse_timm)
            _load_timm_at_first_tower()
        if stand_in is not None and sys.modules.get(_UTILS) is stand_in:
            del sys.modules[_UTILS]


def _load_timm_at_first_tower() -> None:
    """Where open_clip's timm adapter was imported without timm, its ``TimmModel`` re-runs the
    adapter's module (which then binds timm) before it first builds a tower; without timm
    installed, open_clip reports it as before."""
    adapter = sys.modules.get("open_clip.timm_model")
    if adapter is None or adapter.timm is not None:
        return
    build = adapter.TimmModel.__init__

    @functools.wraps(build)
    def build_with_timm(self: Any, *args: Any, **kwargs: Any) -> None:
        if adapter.timm is None:
            importlib.reload(adapter)
        build(self, *args, **kwargs)

    adapter.TimmModel.__init__ = build_with_timm
