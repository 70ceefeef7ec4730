"""The decord backend: decodes in the child process, at the output resolution."""

from __future__ import annotations

import numpy as np

from pipelines.decode.errors import BAD_CLIP, TRUNCATED, _Failure
from pipelines.decode.protocol import _Request, _Result
from pipelines.decode.sampling import sample_indices
from pipelines.decode.source import _damaged, _probe

# Containers may count a frame or two more than the decoder can return (edit lists, a final
# frame with no duration); only a larger shortfall means the file lost frames.
_FRAME_SHORTFALL_SLACK = 0.02

# decord 0.6 cannot return frames scaled to a few small widths (8, 12, 16, 24, 48 and 72 here):
# its copy out of the decoder's padded picture fails with this message. One pixel wider works,
# and the centre crop removes it.
_BAD_WIDTH_MESSAGE = "The size must exactly match"
_BAD_WIDTHS: set[int] = set()


def _decode_file(path: str, req: _Request, out: np.ndarray) -> _Result:
    """Decode ``path`` into ``out`` ``[T, S, S, 3]``."""
    import decord

    width, height, claimed = _probe(path)
    size = req.image_size
    # Scale so the shorter side is exactly ``size``; the centre crop then takes the longer side.
    if width <= height:
        out_w, out_h = size, max(size, round(height * size / width))
    else:
        out_w, out_h = max(size, round(width * size / height)), size
    if out_w in _BAD_WIDTHS:
        out_w += 1
    try:
        reader = decord.VideoReader(path, width=out_w, height=out_h, num_threads=req.threads)
    except Exception as err:
        raise _damaged(path, claimed, err) from None
    n = len(reader)
    if n == 0:
        raise _Failure(TRUNCATED, f"decoded 0 of {claimed} frames")
    if claimed - n > max(1, _FRAME_SHORTFALL_SLACK * claimed):
        raise _Failure(TRUNCATED, f"decoded {n} of {claimed} frames")
    times = reader.get_frame_timestamp(np.arange(n))  # [n, 2] start and end of each frame
    starts = times[:, 0]
    duration = float(times[-1, 1])

    first, stop = 0, n
    if req.start_s is not None:
        if req.start_s >= duration:
            raise _Failure(BAD_CLIP, f"start_s {req.start_s:g} is past the end ({duration:g}s)")
        # The frame showing start_s: the last one that starts at or before it.
        first = max(int(np.searchsorted(starts, req.start_s + 1e-6, side="right")) - 1, 0)
    if req.end_s is not None:
        stop = max(first + 1, int(np.searchsorted(starts, req.end_s, side="left")))
    rng = np.random.default_rng(req.seed) if req.seed is not None else None
    indices = first + sample_indices(stop - first, req.frames, sampling=req.sampling, rng=rng)

    unique, inverse = np.unique(indices, return_inverse=True)
    try:
        batch = reader.get_batch(unique.tolist()).asnumpy()  # [U, out_h, out_w, 3]
    except Exception as err:
        if _BAD_WIDTH_MESSAGE in str(err) and out_w not in _BAD_WIDTHS:
            _BAD_WIDTHS.add(out_w)
            return _decode_file(path, req, out)
        raise _damaged(path, claimed or n, err) from None
    if batch.shape[0] != len(unique):
        raise _Failure(TRUNCATED, f"decoded {batch.shape[0]} of {len(unique)} sampled frames")
    top = (batch.shape[1] - size) // 2
    left = (batch.shape[2] - size) // 2
    crop = batch[:, top : top + size, left : left + size]
    np.take(crop, inverse, axis=0, out=out)
    return _Result(
        error="",
        frame_times_s=starts[indices].astype(np.float32),
        duration_s=duration,
    )
