"""The decode stage: video files in, ``T`` sampled, resized, centre-cropped uint8 frames out.

:class:`DecodeStage` is a plain callable over numpy batches, so Ray Data can run it with
``map_batches(DecodeStage, fn_constructor_kwargs=..., batch_format="numpy")`` and tests can call it
directly. A bad video never raises: it becomes a row whose ``error`` starts with one of the stable
categories below (``"truncated: decoded 7 of 24 frames"``), so failures can be grouped by
``error.split(":")[0]``.

Decoders can hang on a stalled read or crash the process on hostile input, so the actual decoding
runs in a child process owned by the stage (started on first use). A video that takes longer than
``timeout_s`` gets the child killed and a ``timeout`` row; a child that dies gives a
``decoder crashed`` row; either way a fresh child decodes the next video.

Cost: the default decoder (PyAV, :mod:`~pipelines.decode.pyav_backend`) decodes exactly what
the sampled frames need: from the keyframe before each to it, skipping groups of pictures that
hold none, and converts only those frames, straight to the output size. ``fast`` and ``keyframe``
sampling pick, per chunk, frames that are cheaper to reach and let the decoder skip frames on the
way. Rows of a batch that share a ``uri`` are decoded in one pass over the file. Each row reports
what it cost: ``decode_cpu_s`` and ``frames_decoded``. decord (``decoder="decord"``) remains
selectable, and so does torchcodec, on the GPU (``"nvdec"``) or the CPU (``"torchcodec"``).
"""

from pipelines.decode.child import DECODER_DECORD, DECODER_PYAV, DECODERS, _child_main
from pipelines.decode.errors import (
    BAD_CLIP,
    DECODE_FAILED,
    DECODER_CRASHED,
    EMPTY_FILE,
    ERROR_CATEGORIES,
    MISSING_FILE,
    NO_VIDEO_STREAM,
    NOT_A_REGULAR_FILE,
    NOT_A_VIDEO,
    PERMISSION_DENIED,
    READ_FAILED,
    SYMLINK_LOOP,
    TIMEOUT,
    TRUNCATED,
    error_category,
)
from pipelines.decode.sampling import (
    INDEX_SAMPLINGS,
    SAMPLING_FAST,
    SAMPLING_KEYFRAME,
    SAMPLING_RANDOM,
    SAMPLING_UNIFORM,
    SAMPLINGS,
    sample_frames,
)
from pipelines.decode.source import unreadable_file_error
from pipelines.decode.stage import DEFAULT_DECODER, MAX_CLIPS_PER_PASS, DecodeStage
from pipelines.decode.torchcodec_backend import DECODER_NVDEC, DECODER_TORCHCODEC

__all__ = [
    "BAD_CLIP",
    "DECODERS",
    "DECODER_CRASHED",
    "DECODER_DECORD",
    "DECODER_NVDEC",
    "DECODER_PYAV",
    "DECODER_TORCHCODEC",
    "DECODE_FAILED",
    "DEFAULT_DECODER",
    "EMPTY_FILE",
    "ERROR_CATEGORIES",
    "INDEX_SAMPLINGS",
    "MAX_CLIPS_PER_PASS",
    "MISSING_FILE",
    "NOT_A_REGULAR_FILE",
    "NOT_A_VIDEO",
    "NO_VIDEO_STREAM",
    "PERMISSION_DENIED",
    "READ_FAILED",
    "SAMPLINGS",
    "SAMPLING_FAST",
    "SAMPLING_KEYFRAME",
    "SAMPLING_RANDOM",
    "SAMPLING_UNIFORM",
    "SYMLINK_LOOP",
    "TIMEOUT",
    "TRUNCATED",
    "DecodeStage",
    "_child_main",
    "error_category",
    "sample_frames",
    "unreadable_file_error",
]
