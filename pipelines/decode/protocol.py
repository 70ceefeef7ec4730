"""What the stage and its decoder process say to each other."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipelines.storage import StorageOptions


@dataclass(frozen=True)
class _Request:
    uri: str
    frames: int
    image_size: int
    sampling: str
    start_s: float | None
    end_s: float | None
    seed: int | None
    threads: int
    storage: StorageOptions


@dataclass(frozen=True)
class _Result:
    """One video's outcome; on success its frames are in the buffer the request named."""

    error: str
    frame_times_s: np.ndarray | None = None  # [T] float32
    duration_s: float = math.nan
