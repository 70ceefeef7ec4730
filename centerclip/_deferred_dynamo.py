"""Import open_clip without importing ``torch._dynamo``, torch's compiler front end.

This project never compiles, yet two of open_clip's imports load the compiler at import time:
torchvision's ``ops.roi_align`` binds ``torch._dynamo.utils.is_compile_supported``, and timm
(open_clip's timm towers) decorates methods with ``torch.compiler.disable``. That is 1.15 of the
2.02 CPU-seconds importing the encoder costs after ``import torch`` (``bench/startup.py``), paid at
the start of every process that encodes: each encode actor of an index job, each job, each Ray
Train worker, each search replica.

While :func:`dynamo_deferred` is open, both get stand-ins that load the real thing on first call,
so nothing changes for code that calls them; afterwards only the two names bound meanwhile keep
their stand-ins, and ``import torch._dynamo`` loads the real module.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

_UTILS = "torch._dynamo.utils"


def _is_compile_supported(device_type: Any) -> bool:
    from torch._dynamo.utils import is_compile_supported

    return is_compile_supported(device_type)


def _deferred_disable(real_disable: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compiler.disable`` that applies ``real_disable`` at a function's first call."""

    def disable(fn: Any = None, recursive: bool = True, *, reason: str | None = None) -> Any:
        if fn is None:
            return functools.partial(disable, recursive=recursive, reason=reason)
        if isinstance(fn, type):
            return real_disable(fn, recursive, reason=reason)
        disabled: Callable[..., Any] | None = None

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal disabled
            if disabled is None:
                disabled = real_disable(fn, recursive, reason=reason)
            return disabled(*args, **kwargs)

        return call

    return disable


@contextlib.contextmanager
def dynamo_deferred() -> Iterator[None]:
    """Within it, importing torchvision and open_clip leaves ``torch._dynamo`` unimported."""
    if "torch._dynamo" in sys.modules:  # already paid for
        yield
        return
    stand_in = types.ModuleType(_UTILS, "stand-in until torch._dynamo is imported")
    stand_in.is_compile_supported = _is_compile_supported  # type: ignore[attr-defined]
    real_disable = torch.compiler.disable
    sys.modules[_UTILS] = stand_in
    torch.compiler.disable = _deferred_disable(real_disable)
    try:
        yield
    finally:
        torch.compiler.disable = real_disable
        if sys.modules.get(_UTILS) is stand_in:
            del sys.modules[_UTILS]
