"""The decord backend: decodes in the child process, at the output resolution.

decord has no frame skipping, so ``fast`` takes keyframes where a chunk holds one and the
chunk's centre otherwise. ``frames_decoded`` is what decord's ``get_batch`` decodes by design
(from the keyframe before each wanted frame to it, skipping groups of pictures that hold none),
counted from its keyframe list rather than reported by decord.
"""

from __future__ import annotations

import numpy as np

from pipelines.decode.errors import TRUNCATED, PyavFallback, _Failure
from pipelines.decode.protocol import _ClipResult, _Request
from pipelines.decode.sampling import (
    _SAME_MOMENT_S,
    frames_of_clips,
    frames_to_reach,
    spread_frames,
)
from pipelines.decode.source import _damaged, _lost_frames, _probe, output_size
from pipelines.display import is_mirrored

# decord 0.6 cannot return frames scaled to a few small widths (8, 12, 16, 24, 48 and 72 here):
# its copy out of the decoder's padded picture fails with this message. One pixel wider works,
# and the centre crop removes it.
_BAD_WIDTH_MESSAGE = "The size must exactly match"
_BAD_WIDTHS: set[int] = set()


def decode_file(path: str, req: _Request, out: np.ndarray) -> tuple[list[_ClipResult], int]:
    """Decode the clips of ``req`` from ``path`` into ``out`` ``[C, T, S, S, 3]``.

    Returns each clip's result and the frames decoded for all of them together.
    """
    import decord

    probed = _probe(path)
    if probed.container_format == "mpegts":
        raise PyavFallback("decord returns other frames than those it names in MPEG-TS")
    if is_mirrored(probed.shown):
        raise PyavFallback("decord turns but does not mirror what the display matrix mirrors")
    width, height, claimed = probed.width, probed.height, probed.claimed
    size = req.image_size
    out_w, out_h = output_size(width, height, size)
    if out_w in _BAD_WIDTHS:
        out_w += 1
    try:
        reader = decord.VideoReader(path, width=out_w, height=out_h, num_threads=req.threads)
    except Exception as err:
        raise _damaged(path, claimed, err) from None
    n = len(reader)
    if n == 0:
        raise _Failure(TRUNCATED, f"decoded 0 of {claimed} frames")
    if _lost_frames(claimed, n):
        raise _Failure(TRUNCATED, f"decoded {n} of {claimed} frames")
    times = reader.get_frame_timestamp(np.arange(n))  # [n, 2] start and end of each frame
    if times[0, 0] < -_SAME_MOMENT_S:
        # A pre-roll an edit list hides (a video cut without re-encoding): decord times it
        # before 0 but leaves it out of the frames it returns, so its frame numbers name other
        # frames than its times do.
        raise PyavFallback("decord misnumbers the frames after a hidden pre-roll")
    starts = times[:, 0]
    if (np.diff(starts) < _SAME_MOMENT_S).any():
        # Frames of one moment: timestamps that restart partway (recordings joined end to end),
        # whose parts decord sorts into each other.
        raise PyavFallback("decord lays the parts of a timeline that restarts over each other")
    duration = float(times[-1, 1])
    keyframes = np.asarray(reader.get_key_indices(), np.int64)
    if not len(keyframes) or keyframes[0] != 0:
        keyframes = np.concatenate([[0], keyframes]).astype(np.int64)

    results, wanted = frames_of_clips(req, starts, duration, keyframes)

    every = np.concatenate(wanted)
    if not len(every):
        return results, 0
    unique, inverse = np.unique(every, return_inverse=True)
    try:
        batch = reader.get_batch(unique.tolist()).asnumpy()  # [U, out_h, out_w, 3]
    except Exception as err:
        if _BAD_WIDTH_MESSAGE in str(err) and out_w not in _BAD_WIDTHS:
            _BAD_WIDTHS.add(out_w)
            return decode_file(path, req, out)
        raise _damaged(path, claimed or n, err) from None
    if batch.shape[0] != len(unique):
        raise _Failure(TRUNCATED, f"decoded {batch.shape[0]} of {len(unique)} sampled frames")
    top = (batch.shape[1] - size) // 2
    left = (batch.shape[2] - size) // 2
    crop = batch[:, top : top + size, left : left + size]
    spread_frames(crop, inverse, wanted, out)
    return results, frames_to_reach(unique, keyframes)
