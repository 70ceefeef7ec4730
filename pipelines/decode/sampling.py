"""Which frames of a clip to sample."""

from __future__ import annotations

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


# A frame that starts this little after a sampled moment counts as shown at it: timestamps turned
# into seconds are rounded, which would otherwise move a moment that falls on a frame's start to
# the frame before.
_SAME_MOMENT_S = 1e-6


def sample_frames(
    starts: np.ndarray,
    end_s: float,
    frames: int,
    *,
    sampling: str = SAMPLING_UNIFORM,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Indices ``[T]`` (``T = frames``) into ``starts`` of the frames a clip shows at its ``T``
    sampled moments.

    The clip's time, from its first frame's start to ``end_s`` (where its last frame ends), is
    cut into ``T`` equal chunks. ``uniform`` takes the frame shown at each chunk's centre;
    ``random`` (TSN-style, for training) the frame shown at a uniformly random moment of each
    chunk. Chunks of time, not of frames: a variable-frame-rate video (phones, screen recordings)
    is sampled evenly over what it shows, not crowded into its busiest seconds. At a constant
    rate of ``n`` frames, ``uniform`` takes frame ``floor((i + 0.5) * n / T)`` for chunk ``i``.
    Clips shorter than ``T`` frames repeat frames.

    Args:
        starts: ``[n]`` start second of each of the clip's frames, ascending.
        end_s: the second the clip's last frame ends, after ``starts[-1]``.
    """
    if len(starts) == 0 or frames <= 0:
        raise ValueError(f"need a frame and frames > 0, got {len(starts)} frames, {frames}")
    if sampling == SAMPLING_UNIFORM:
        offsets = np.full(frames, 0.5)
    elif sampling == SAMPLING_RANDOM:
        offsets = (rng or np.random.default_rng()).random(frames)
    else:
        raise ValueError(f"sampling must be {SAMPLING_UNIFORM!r} or {SAMPLING_RANDOM!r}")
    moments = _chunk_moments(starts, end_s, frames, offsets)
    shown = np.searchsorted(starts, moments + _SAME_MOMENT_S, side="right") - 1
    return np.clip(shown, 0, len(starts) - 1).astype(np.int64)


def _chunk_moments(
    starts: np.ndarray, end_s: float, frames: int, offsets: np.ndarray
) -> np.ndarray:
    """``[T]`` the second at ``offsets`` (fractions) into each of the clip's ``T`` chunks."""
    first_s = float(starts[0])
    return first_s + (np.arange(frames) + offsets) * ((end_s - first_s) / frames)


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
        first = max(int(np.searchsorted(starts_s, start_s + _SAME_MOMENT_S, side="right")) - 1, 0)
    if end_s is not None:
        stop = max(first + 1, int(np.searchsorted(starts_s, end_s, side="left")))
    return first, stop


def choose_targets(
    starts: np.ndarray,
    duration_s: float,
    first: int,
    stop: int,
    frames: int,
    *,
    sampling: str,
    keyframes: np.ndarray,
    rng: np.random.Generator | None = None,
) -> list[Target]:
    """The ``T = frames`` targets of the clip ``[first, stop)``, one per chunk, in chunk order.

    ``starts`` is the start second of each of the file's frames (ascending), ``duration_s`` where
    its last frame ends, and ``keyframes`` the sorted presentation-order indices of its frames
    that are keyframes of their own. ``uniform`` and ``random`` take :func:`sample_frames`'
    frames exactly. ``fast`` takes, per chunk, the keyframe nearest its centre when the chunk
    holds one (reaching it costs one frame after a seek), else a reference frame near the
    centre, or the chunk's first reference frame where no later target shares its group of
    pictures. ``keyframe`` takes the keyframe nearest each chunk's centre anywhere in the clip
    (several chunks may share one), and ``fast``'s choice where the clip holds no keyframe. A
    chunk holds the frames that start inside it.
    """
    clip_starts = starts[first:stop]
    end_s = float(starts[stop]) if stop < len(starts) else duration_s
    if sampling in (SAMPLING_UNIFORM, SAMPLING_RANDOM):
        wanted = first + sample_frames(clip_starts, end_s, frames, sampling=sampling, rng=rng)
        return [Target(int(w), int(w), int(w) + 1, True) for w in wanted]
    if sampling not in (SAMPLING_FAST, SAMPLING_KEYFRAME):
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    centres = first + sample_frames(clip_starts, end_s, frames)
    chunk_starts = _chunk_moments(clip_starts, end_s, frames, np.zeros(frames))
    bounds = first + np.searchsorted(clip_starts, chunk_starts - _SAME_MOMENT_S, side="left")
    bounds = np.append(bounds, stop)
    in_clip = keyframes[(keyframes >= first) & (keyframes < stop)]
    targets = []
    for i, centre in enumerate(centres.tolist()):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        pool = (
            in_clip if sampling == SAMPLING_KEYFRAME else in_clip[(in_clip >= lo) & (in_clip < hi)]
        )
        if len(pool):
            key = _nearest(pool, centre, starts)
            targets.append(Target(key, key, key + 1, True))
        elif lo <= centre < hi and hi - lo > 1:
            targets.append(Target(centre, lo, hi, False))
        else:
            targets.append(Target(centre, centre, centre + 1, True))
    return _cheapest_last_of_gop(targets, keyframes)


def _nearest(pool: np.ndarray, frame: int, starts: np.ndarray) -> int:
    """The frame of ``pool`` (indices into ``starts``) that starts nearest to ``frame``'s start,
    the earliest of a tie."""
    distances = np.abs(starts[pool] - starts[frame])
    return int(pool[np.flatnonzero(distances <= distances.min() + _SAME_MOMENT_S)[0]])


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


def targets_of_clips(
    req: _Request, starts: np.ndarray, duration: float, keyframes: np.ndarray
) -> list[list[Target] | str]:
    """Per clip of ``req``, its ``T`` targets (:func:`choose_targets`), or the error it fails
    with (a span outside the file).

    Args:
        starts: ``[n]`` start time of every frame of the file, in seconds, ascending.
        duration: the file's length in seconds.
        keyframes: indices of the frames that are keyframes of their own (reached by decoding
            nothing before them), ascending.
    """
    chosen: list[list[Target] | str] = []
    for clip in req.clips:
        try:
            first, stop = clip_range(starts, duration, clip.start_s, clip.end_s)
        except _Failure as failure:
            chosen.append(str(failure))
            continue
        rng = np.random.default_rng(clip.seed) if clip.seed is not None else None
        chosen.append(
            choose_targets(
                starts,
                duration,
                first,
                stop,
                req.frames,
                sampling=req.sampling,
                keyframes=keyframes,
                rng=rng,
            )
        )
    return chosen


def frames_of_clips(
    req: _Request, starts: np.ndarray, duration: float, keyframes: np.ndarray
) -> tuple[list[_ClipResult], list[np.ndarray]]:
    """For decoders that fetch frames by index: each clip's outcome (its sampled frames' times,
    or the clip's error) and ``[T]`` the frame indices it wants (empty for a failed clip); the
    arguments are :func:`targets_of_clips`'."""
    results: list[_ClipResult] = []
    wanted: list[np.ndarray] = []
    for targets in targets_of_clips(req, starts, duration, keyframes):
        if isinstance(targets, str):
            results.append(_ClipResult(error=targets))
            wanted.append(np.zeros(0, np.int64))
            continue
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
