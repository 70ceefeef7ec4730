"""Video bytes and frames for the browser: byte ranges of a file and JPEG thumbnails, for local
paths and ``s3://`` URIs alike (through :class:`pipelines.storage.StorageOptions`)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import pyarrow.fs as pafs
from PIL import Image

from pipelines import display
from pipelines.storage import StorageOptions

# The most bytes one range response carries: a browser asks for ``bytes=0-`` and then for what
# it still needs, so an open-ended range is answered with at most this much (a 206 for a shorter
# range than asked is what HTTP allows and what browsers expect from video servers).
MAX_RANGE_BYTES = 4 << 20
STREAM_CHUNK_BYTES = 1 << 20
THUMBNAIL_MAX_SIDE = 320
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiableError(ValueError):
    """A ``Range`` header that selects no byte of the file."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int
    """Inclusive, as in ``Content-Range``."""
    size: int
    """Of the whole file."""

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"


def parse_range(header: str, size: int, *, max_bytes: int = MAX_RANGE_BYTES) -> ByteRange:
    """The single byte range ``header`` (``bytes=a-b``, ``bytes=a-`` or ``bytes=-n``) asks of a
    ``size``-byte file, clipped to the file and to ``max_bytes``.

    Raises:
        RangeNotSatisfiableError: a malformed header, several ranges, or a range past the end.
    """
    found = _RANGE.match(header.strip())
    if found is None or found[1] == found[2] == "":
        raise RangeNotSatisfiableError(f"unsupported Range {header!r}: one bytes=a-b range only")
    if found[1] == "":  # the last n bytes
        start = max(size - int(found[2]), 0)
        end = size - 1
    else:
        start = int(found[1])
        end = min(int(found[2]) if found[2] else size - 1, size - 1)
    if start >= size or end < start:
        raise RangeNotSatisfiableError(f"Range {header!r} is outside the {size}-byte file")
    return ByteRange(start, min(end, start + max_bytes - 1), size)


class MediaReader:
    """Opens the videos a table points at: sizes, byte ranges, whole-file streams, frames."""

    def __init__(self, storage: StorageOptions | None = None) -> None:
        self.storage = storage if storage is not None else StorageOptions.from_env()

    def _open(self, uri: str) -> tuple[pafs.FileSystem, str]:
        return self.storage.filesystem(uri)

    def size(self, uri: str) -> int:
        """Bytes in the file.

        Raises:
            FileNotFoundError: nothing at ``uri``.
        """
        filesystem, path = self._open(uri)
        info = filesystem.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"{uri} does not exist")
        return int(info.size)

    def read(self, uri: str, byte_range: ByteRange) -> bytes:
        filesystem, path = self._open(uri)
        with filesystem.open_input_file(path) as file:
            return file.read_at(byte_range.length, byte_range.start)

    def stream(self, uri: str) -> Iterator[bytes]:
        """The whole file, in chunks."""
        filesystem, path = self._open(uri)
        with filesystem.open_input_stream(path) as file:
            while chunk := file.read(STREAM_CHUNK_BYTES):
                yield chunk

    def thumbnail(self, uri: str, t: float, *, max_side: int = THUMBNAIL_MAX_SIDE) -> bytes:
        """A JPEG of the frame shown at ``t`` seconds (the last frame beyond the end), scaled
        down to at most ``max_side`` pixels on its longer side (never up); HDR frames are
        tone-mapped to SDR, as the decode stage shows them to the model.

        Raises:
            FileNotFoundError: nothing at ``uri``.
            ValueError: the file holds no decodable video frame.
        """
        filesystem, path = self._open(uri)
        if filesystem.get_file_info(path).type != pafs.FileType.File:
            raise FileNotFoundError(f"{uri} does not exist")
        with filesystem.open_input_file(path) as file:
            image = _image_at(file, t, max_side)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
        return out.getvalue()


def _image(frame: av.VideoFrame, aspect: Fraction, max_side: int) -> Image.Image:
    """``frame`` as shown: its pixels of ``aspect`` made square, turned as its display matrix
    says, one field of an interlaced frame, SDR; at most ``max_side`` pixels on its longer side
    (never scaled up)."""
    width, height, shown = (
        display.shown_width(frame.width, aspect),
        frame.height,
        display.orientation(frame),
    )
    scale = min(1.0, max_side / max(width, height))
    width, height = max(1, round(width * scale)), max(1, round(height * scale))
    if frame.interlaced_frame:
        frame = display.one_field(frame)
    if display.is_hdr(frame):
        # Scaled first: tone mapping sets swscale up for each frame size, and the thumbnail's
        # is one a serving process meets again.
        wide = frame.reformat(width=width, height=height, format="rgb48le", interpolation="AREA")
        pixels = display.tone_mapped(wide.to_ndarray(), frame.color_trc, frame.color_primaries)
    else:
        small = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA")
        pixels = small.to_ndarray()
    return Image.fromarray(display.displayed(pixels, shown))


def _image_at(file: object, t: float, max_side: int) -> Image.Image:
    """The frame on screen at ``t`` seconds (the last one starting at or before ``t``), as
    :func:`_image` makes it."""
    try:
        with av.open(file, "r") as container:
            stream = display.video_stream(container)
            if stream is None:
                raise ValueError("no video stream")
            if t > 0 and stream.time_base is not None:
                # Lands on the keyframe at or before t; decoding forward from it reaches t.
                container.seek(int(t / stream.time_base), stream=stream, backward=True)
            shown = None
            for frame in container.decode(stream):
                if shown is not None and frame.time is not None and frame.time > t:
                    break
                shown = frame
            if shown is None:
                raise ValueError("no decodable frame")
            return _image(shown, display.pixel_aspect(stream), max_side)
    except av.FFmpegError as err:
        raise ValueError(f"cannot decode: {err}") from err
