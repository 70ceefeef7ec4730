"""What the stage and its decoder process say to each other."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipelines.storage import StorageOptions


@dataclass(frozen=True)
class _Clip:
    """One row's span of its file (None: from the start / to the end) and its sampling seed."""

    start_s: float | None = None
    end_s: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class _Request:
    """Clips of one file, decoded together in one pass; clip ``k``'s frames go to buffer slot
    ``k``."""

    uri: str
    clips: tuple[_Clip, ...]
    frames: int
    image_size: int
    sampling: str
    threads: int
    storage: StorageOptions
    decoder: str


@dataclass(frozen=True)
class _ClipResult:
    """One clip's outcome; on success its frames are in the buffer slot the request gave it."""

    error: str
    frame_times_s: np.ndarray | None = None  # [T] float32
    duration_s: float = math.nan


@dataclass
class _Result:
    """The outcome of one request: one entry per clip, and what the pass cost."""

    clips: list[_ClipResult] = field(default_factory=list)
    cpu_s: float = 0.0
    frames_decoded: int = 0
    decoder: str = ""  # set when another decoder than the requested one decoded the file
