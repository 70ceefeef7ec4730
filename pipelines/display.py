"""Which stream is the video, and what a decoded frame shows: HDR tone-mapped to the SDR
BT.709 that CLIP was trained on and browsers show, pixels of their stream's shape (anamorphic
video's are not square), the picture turned and mirrored as its stream's display matrix says,
one moment of an interlaced frame; and SDR frames mastered as HDR (the tests' and benchmark's
HDR footage).

swscale's colour management does both colour conversions. Each of its scalers spends about 2.5
CPU-seconds on its tables when set up, and again for each new frame size, then under a
millisecond on a 224-px frame; so scalers are kept for the life of the process, one per size and
kind of conversion. PyAV is imported on first use: the decode stage's own process never needs it.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import av

# FFmpeg's colour tags (AVColorTransferCharacteristic, AVColorPrimaries): the transfers of HDR
# video, PQ (SMPTE ST 2084) and HLG (ARIB STD-B67), and the two gamuts involved.
TRANSFER_PQ, TRANSFER_HLG = 16, 18
HDR_TRANSFERS = (TRANSFER_PQ, TRANSFER_HLG)
SDR_TRANSFER = 1  # BT.709
PRIMARIES_BT709, PRIMARIES_BT2020 = 1, 9
# The gamuts AVColorPrimaries defines; swscale refuses to convert from the unspecified and
# reserved values.
_PRIMARIES_DEFINED = (1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 22)

_SCALERS: dict[tuple[Any, ...], Any] = {}  # av.video.reformatter.VideoReformatter


def video_stream(container: Any) -> Any | None:
    """``container``'s first video stream that is video, or None: cover art attached to music,
    podcast and some video files is a one-picture video stream (an attached picture), which
    players show as a still picture, not as the video."""
    from av.stream import Disposition

    return next(
        (s for s in container.streams.video if not s.disposition & Disposition.attached_pic),
        None,
    )


def is_hdr(frame: av.VideoFrame) -> bool:
    """Whether ``frame`` is tagged with an HDR transfer (PQ or HLG)."""
    return frame.color_trc in HDR_TRANSFERS


def tone_mapped(rgb: np.ndarray, transfer: int, primaries: int, *, threads: int = 1) -> np.ndarray:
    """``rgb`` ``[H, W, 3]`` uint16, RGB in HDR ``transfer`` and ``primaries``, as SDR BT.709
    ``[H, W, 3]`` uint8. A missing or reserved gamut tag is taken as BT.2020, which is what HDR
    video without one holds in practice."""
    import av

    hdr = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb48le")
    hdr.color_trc = transfer
    hdr.color_primaries = primaries if primaries in _PRIMARIES_DEFINED else PRIMARIES_BT2020
    key = ("to_sdr", rgb.shape[:2], transfer, hdr.color_primaries, threads)
    sdr = _scaler(key).reformat(
        hdr,
        format="rgb24",
        dst_color_trc=SDR_TRANSFER,
        dst_color_primaries=PRIMARIES_BT709,
        threads=threads,
    )
    return sdr.to_ndarray()


def pixel_aspect(stream: Any) -> Fraction:
    """The width of a video stream's pixels over their height, as players take it: the
    container's value, else the codec's, else square. Anamorphic video has wide or narrow pixels
    (DVD and broadcast SD, HDV's 1440x1080 shown as 1920x1080)."""
    for aspect in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if aspect and aspect > 0:
            return Fraction(aspect)
    return Fraction(1)


def shown_width(width: int, aspect: Fraction) -> int:
    """How many square pixels wide a picture ``width`` pixels of ``aspect`` is shown."""
    return max(1, round(width * aspect))


def shown_size(stream: Any) -> tuple[int, int]:
    """``(width, height)`` of a video stream's picture in square pixels (before any turn)."""
    codec = stream.codec_context
    return shown_width(codec.width, pixel_aspect(stream)), codec.height


Orientation = tuple[bool, bool, bool]
"""How a frame's pixels ``[H, W]`` are shown: ``(transposed, rows reversed, columns reversed)``,
transposed first. Turns and mirror images alike: the eight ways a display matrix shows a
picture, to the nearest quarter turn."""

UPRIGHT: Orientation = (False, False, False)


def orientation(frame: av.VideoFrame) -> Orientation:
    """How ``frame`` is shown, from its display matrix (the stream's: phones record upright video
    as landscape frames and a quarter turn; front cameras and editors may mirror it too).

    PyAV's ``frame.rotation`` reads the turn alone, and a mirror image as a mirror image turned
    half a turn: a video mirrored left to right came out upside down.
    """
    for data in frame.side_data:
        if data.type.name == "DISPLAYMATRIX":
            # FFmpeg's 3x3 matrix maps a pixel (x, y) to (a x + c y, b x + d y).
            a, b, _, c, d = np.frombuffer(bytes(data), np.int32)[:5].tolist()
            if abs(a) + abs(d) >= abs(b) + abs(c):
                return False, d < 0, a < 0
            return True, b < 0, c < 0
    return UPRIGHT


def is_mirrored(shown: Orientation) -> bool:
    """Whether ``shown`` makes a mirror image (any turn aside)."""
    transposed, rows_reversed, columns_reversed = shown
    return transposed == (rows_reversed == columns_reversed)


def displayed(pixels: np.ndarray, shown: Orientation) -> np.ndarray:
    """``pixels`` ``[H, W, C]`` as ``shown`` (:func:`orientation`)."""
    transposed, rows_reversed, columns_reversed = shown
    if transposed:
        pixels = pixels.swapaxes(0, 1)
    if rows_reversed:
        pixels = pixels[::-1]
    if columns_reversed:
        pixels = pixels[:, ::-1]
    return pixels


def one_field(frame: av.VideoFrame) -> av.VideoFrame:
    """The top field of an interlaced ``frame`` (its even lines, every plane's): a picture of one
    moment, half as high. Woven, the two fields were taken a field apart, and anything moving
    shows as combs of alternating lines; a field of 480i or more still has more lines than a
    224-px thumbnail keeps. Its colour tags are the frame's."""
    import av

    field = av.VideoFrame(frame.width, (frame.height + 1) // 2, frame.format.name)
    for source, target in zip(frame.planes, field.planes, strict=True):
        rows = np.frombuffer(source, np.uint8).reshape(source.height, source.line_size)
        into = np.frombuffer(target, np.uint8).reshape(target.height, target.line_size)
        width = min(source.line_size, target.line_size)
        into[:, :width] = rows[0::2][: target.height, :width]
    field.colorspace, field.color_range = frame.colorspace, frame.color_range
    field.color_trc, field.color_primaries = frame.color_trc, frame.color_primaries
    return field


def mastered_hdr(frame: av.VideoFrame, transfer: int, pixel_format: str) -> av.VideoFrame:
    """An SDR ``frame`` (tagged BT.709 in place) as HDR: converted to ``transfer`` and BT.2020
    primaries, in ``pixel_format`` with the BT.2020 matrix (to be encoded with those tags)."""
    frame.color_trc, frame.color_primaries = SDR_TRANSFER, PRIMARIES_BT709
    hdr = _scaler(("to_hdr", frame.width, frame.height, transfer)).reformat(
        frame, format="rgb48le", dst_color_trc=transfer, dst_color_primaries=PRIMARIES_BT2020
    )
    return hdr.reformat(format=pixel_format, dst_colorspace="bt2020")


def _scaler(key: tuple[Any, ...]) -> Any:
    if key not in _SCALERS:
        from av.video.reformatter import VideoReformatter

        _SCALERS[key] = VideoReformatter()
    return _SCALERS[key]
