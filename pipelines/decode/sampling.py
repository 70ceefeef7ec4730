"""Which frames of a clip to sample."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipelines.decode.errors import BAD_CLIP, _Failure
from pipelines.decode.protocol import _ClipResult, _Request

SAMPLING_UNIFORM = "uniform"
SAMPLING_RANDOM = "random"
SAMPLING_FAST = "fast"
SAMPLING_KEYFRAME = "keyframe"

# The policies an index or evaluation may use (``random`` is training's own).
INDEX_SAMPLINGS = (SAMPLING_UNIFORM, SAMPLING_FAST, SAMPLING_KEYFRAME)
SAMPLINGS = (*INDEX_SAMPLINGS, SAMPLING_RANDOM)


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


@dataclass(frozen=True, order=True)
class Target:
    """One frame to fetch, by presentation-order index into the file's frames.

    ``exact``: frame ``want`` itself. Otherwise any *reference* frame of ``[lo, hi)`` will do
    (the first one at or after ``want``, else the last one before it), which lets the decoder skip
    every non-reference frame on its way there.
    """

    want: int
    lo: int
    hi: int
    exact: bool


def clip_range(
    starts_s: np.ndarray, duration_s: float, start_s: float | None, end_s: float | None
) -> tuple[int, int]:
    """``[first, stop)``: the frames (indices into ``starts_s``, sorted start times) of a clip."""
    first, stop = 0, len(starts_s)
    if start_s is not None:
        if start_s >= duration_s:
            raise _Failure(BAD_CLIP, f"start_s {start_s:g} is past the end ({duration_s:g}s)")
        # The frame showing start_s: the last one that starts at or before it.
        first = max(int(np.searchsorted(starts_s, start_s + 1e-6, side="right")) - 1, 0)
    if end_s is not None:
        stop = max(first + 1, int(np.searchsorted(starts_s, end_s, side="left")))
    return first, stop


def choose_targets(
    first: int,
    stop: int,
    frames: int,
    *,
    sampling: str,
    keyframes: np.ndarray,
    rng: np.random.Generator | None = None,
) -> list[Target]:
    """The ``T = frames`` targets of the clip ``[first, stop)``, one per chunk, in chunk order.

    ``keyframes`` is the sorted presentation-order indices of the file's keyframes. ``uniform``
    and ``random`` take :func:`sample_indices`' frames exactly. ``fast`` takes, per chunk, the
    keyframe nearest its centre when the chunk holds one (reaching it costs one frame after a
    seek), else a reference frame near the centre, or the chunk's first reference frame where
    no later target shares its group of pictures. ``keyframe`` takes the keyframe nearest each
    chunk's centre anywhere in the clip (several chunks may share one), and ``fast``'s choice
    where the clip holds no keyframe.
    """
    n = stop - first
    if sampling in (SAMPLING_UNIFORM, SAMPLING_RANDOM):
        wanted = first + sample_indices(n, frames, sampling=sampling, rng=rng)
        return [Target(int(w), int(w), int(w) + 1, True) for w in wanted]
    if sampling not in (SAMPLING_FAST, SAMPLING_KEYFRAME):
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    centres = first + sample_indices(n, frames)
    in_clip = keyframes[(keyframes >= first) & (keyframes < stop)]
    targets = []
    for i, centre in enumerate(centres.tolist()):
        lo = first + math.ceil(i * n / frames)
        hi = first + math.ceil((i + 1) * n / frames)
        pool = (
            in_clip if sampling == SAMPLING_KEYFRAME else in_clip[(in_clip >= lo) & (in_clip < hi)]
        )
        if len(pool):
            key = int(pool[np.argmin(np.abs(pool - centre))])
            targets.append(Target(key, key, key + 1, True))
        elif lo <= centre < hi and hi - lo > 1:
            targets.append(Target(centre, lo, hi, False))
        else:
            targets.append(Target(centre, centre, centre + 1, True))
    return _cheapest_last_of_gop(targets, keyframes)


def _cheapest_last_of_gop(targets: list[Target], keyframes: np.ndarray) -> list[Target]:
    """Reference targets that are the last to decode in their group of pictures take the first
    reference frame of their chunk instead of the one at its centre: decoding stops there, and
    nothing between the chunk's start and centre is decoded for the group. Targets that later
    ones in the group follow keep the centre, which the decoder passes anyway."""

    def gop(index: int) -> int:
        return int(np.searchsorted(keyframes, index, side="right"))

    cheaper = list(targets)
    for i, target in enumerate(targets):
        later = targets[i + 1].want if i + 1 < len(targets) else None
        if not target.exact and (later is None or gop(later) != gop(target.want)):
            cheaper[i] = Target(target.lo, target.lo, target.hi, False)
    return cheaper


def frames_to_reach(wanted: np.ndarray, keyframes: np.ndarray) -> int:
    """Frames a decoder must produce to reach every frame in ``wanted`` (presentation indices):
    from the keyframe before each to it, continuing forward within a group of pictures and
    skipping the groups that hold none. This is the floor of exact sampling."""
    count, position = 0, -1
    for want in np.unique(wanted).tolist():
        key = int(keyframes[max(int(np.searchsorted(keyframes, want, side="right")) - 1, 0)])
        if key > position:
            count += want - key + 1
        else:
            count += want - position
        position = want
    return count


def frames_of_clips(
    req: _Request, starts: np.ndarray, duration: float, keyframes: np.ndarray
) -> tuple[list[_ClipResult], list[np.ndarray]]:
    """For decoders that fetch frames by index: each clip's outcome (its sampled frames' times,
    or the clip's error) and ``[T]`` the frame indices it wants (empty for a failed clip).

    Args:
        starts: ``[n]`` start time of every frame of the file, in seconds.
        duration: the file's length in seconds.
        keyframes: indices of the file's keyframes, ascending, the first one 0.
    """
    results: list[_ClipResult] = []
    wanted: list[np.ndarray] = []
    for clip in req.clips:
        try:
            first, stop = clip_range(starts, duration, clip.start_s, clip.end_s)
        except _Failure as failure:
            results.append(_ClipResult(error=str(failure)))
            wanted.append(np.zeros(0, np.int64))
            continue
        rng = np.random.default_rng(clip.seed) if clip.seed is not None else None
        targets = choose_targets(
            first, stop, req.frames, sampling=req.sampling, keyframes=keyframes, rng=rng
        )
        indices = np.array([t.want for t in targets], np.int64)
        wanted.append(indices)
        results.append(_ClipResult("", starts[indices].astype(np.float32), duration))
    return results, wanted


def spread_frames(
    frames: np.ndarray, inverse: np.ndarray, wanted: list[np.ndarray], out: np.ndarray
) -> None:
    """Copy each clip's frames into its slot of ``out`` ``[C, T, S, S, 3]``.

    Args:
        frames: ``[U, S, S, 3]`` the decoded unique frames.
        inverse: ``[sum of T]`` for every wanted frame of every clip in order, its row in
            ``frames`` (``np.unique(..., return_inverse=True)`` of the concatenated ``wanted``).
        wanted: per clip, the frame indices it wants, as :func:`frames_of_clips` gives them.
    """
    at = 0
    for k, indices in enumerate(wanted):
        if len(indices):
            np.take(frames, inverse[at : at + len(indices)], axis=0, out=out[k])
        at += len(indices)
