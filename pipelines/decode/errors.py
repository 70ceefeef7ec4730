"""Error categories of the decode stage: the text before the first ":" of every ``error`` value."""

from __future__ import annotations

import re

MISSING_FILE = "missing file"
NOT_A_REGULAR_FILE = "not a regular file"
PERMISSION_DENIED = "permission denied"
SYMLINK_LOOP = "symlink loop"
EMPTY_FILE = "empty file"
NOT_A_VIDEO = "not a video"
NO_VIDEO_STREAM = "no video stream"
TRUNCATED = "truncated"
BAD_CLIP = "bad clip"
READ_FAILED = "read failed"
DECODE_FAILED = "decode failed"
TIMEOUT = "timeout"
DECODER_CRASHED = "decoder crashed"

ERROR_CATEGORIES = (
    MISSING_FILE,
    NOT_A_REGULAR_FILE,
    PERMISSION_DENIED,
    SYMLINK_LOOP,
    EMPTY_FILE,
    NOT_A_VIDEO,
    NO_VIDEO_STREAM,
    TRUNCATED,
    BAD_CLIP,
    READ_FAILED,
    DECODE_FAILED,
    TIMEOUT,
    DECODER_CRASHED,
)

_MAX_DETAIL = 300


def error_category(error: str) -> str:
    """The category of an ``error`` value (``""`` for a video that decoded)."""
    return error.split(":", 1)[0]


class _Failure(Exception):
    """A video-level failure, raised in the child and returned as the row's error string."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(f"{category}: {detail}")


class PyavFallback(Exception):
    """The chosen decoder cannot decode this file as PyAV does; the message says why. The
    decoder process then decodes it with PyAV, and the row's ``decoder`` column says so."""


# decord prefixes its messages with "[12:00:00] /path/to/source.cc:151: ".
_DECORD_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")
# torchcodec's C++ errors start with the function and source line that raised them.
_TORCHCODEC_PREFIX = re.compile(r"^\w+, \S+:\d+, ")


def _short(err: BaseException) -> str:
    """The first line of an exception's message, without decord's or torchcodec's source
    location, capped."""
    lines = str(err).strip().splitlines()
    line = type(err).__name__
    if lines:
        line = _TORCHCODEC_PREFIX.sub("", _DECORD_PREFIX.sub("", lines[0]))
    return line if len(line) <= _MAX_DETAIL else line[: _MAX_DETAIL - 3] + "..."
