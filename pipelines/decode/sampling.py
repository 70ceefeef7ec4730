"""Which frames of a clip to sample."""

from __future__ import annotations

import numpy as np

SAMPLING_UNIFORM = "uniform"
SAMPLING_RANDOM = "random"


def sample_indices(
    num_frames: int,
    frames: int,
    *,
    sampling: str = SAMPLING_UNIFORM,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Indices ``[T]`` (``T = frames``) of the frames to sample from a clip of ``num_frames``.

    The clip is cut into ``T`` equal chunks ``[i * n / T, (i + 1) * n / T)``. ``uniform`` takes the
    frame at each chunk's centre; ``random`` (TSN-style, for training) a frame at a uniformly
    random position inside each chunk. Clips shorter than ``T`` frames repeat frames.
    """
    if num_frames <= 0 or frames <= 0:
        raise ValueError(f"need num_frames > 0 and frames > 0, got {num_frames}, {frames}")
    if sampling == SAMPLING_UNIFORM:
        offsets = np.full(frames, 0.5)
    elif sampling == SAMPLING_RANDOM:
        offsets = (rng or np.random.default_rng()).random(frames)
    else:
        raise ValueError(f"sampling must be {SAMPLING_UNIFORM!r} or {SAMPLING_RANDOM!r}")
    # (i + offset) * n / T rather than i * w + offset * w: exact for chunk centres on whole frames.
    positions = (np.arange(frames) + offsets) * num_frames / frames
    return np.minimum(np.floor(positions).astype(np.int64), num_frames - 1)
