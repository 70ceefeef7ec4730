"""Decoded frames made into the small square RGB frames the encoder takes."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np

from pipelines.decode.source import output_size
from pipelines.display import displayed, is_hdr, one_field, orientation, shown_width, tone_mapped

SCALER_INTERPOLATION = "AREA"
# Pixel formats (planar and semi-planar YUV, grey) scaled before their conversion to RGB.
_SCALED_IN_OWN_FORMAT = ("yuv", "nv", "gray")


class Thumbnailer:
    """Decoded frames scaled so their shorter shown side is ``size``, in RGB, then their centre
    ``size x size`` ``[S, S, 3]``, on the decoder's ``threads`` (swscale's own default is a thread
    per core).

    A YUV frame is scaled in its own format first and only the small result converted to RGB:
    swscale scales into RGB on a slow path, and scaling then converting costs a quarter to a half
    as much at 480p to 720p; chroma is then scaled at half the output's resolution, which tiny
    frames with saturated colour texture show. Frames of more than 8 bits (10-bit HEVC, ProRes)
    are scaled into 8-bit planar RGB instead: cheaper than scaling them in their own format, and
    closer. The scaler averages areas (``AREA``): cheaper than bilinear when shrinking, and closer
    to what CLIP's own preprocessing sees (PIL's bicubic resize of the full-size RGB frame;
    bench/decode.py measures cost and distance of each way). Each step keeps its own scaler: a
    frame's own reformat() sets up a new one each time, which costs more than scaling a 360p
    frame.

    HDR frames (PQ or HLG) are tone-mapped to SDR BT.709, which is what CLIP was trained on:
    scaled to 16-bit RGB in their own transfer, then their centre converted by swscale's colour
    management (:func:`pipelines.display.tone_mapped`).

    The output size follows each frame's own size in square pixels (its pixels are ``aspect``
    times as wide as high, :func:`pipelines.display.pixel_aspect` of its stream), so the scaler
    makes anamorphic video's pixels square, and a stream whose size changes midway (video calls and
    browser recordings adapt it to the bandwidth) is not stretched to its first size.

    A frame the container says to show rotated (a phone held upright records landscape frames
    and a quarter turn) is turned as players show it (:func:`pipelines.display.displayed`):
    the centre square of the turned frame is the turned centre square, so only the small result
    is turned. Of an interlaced frame only one field is scaled
    (:func:`pipelines.display.one_field`): the two fields woven show moving things as combs.
    """

    def __init__(self, size: int, *, threads: int) -> None:
        from av.video.reformatter import VideoReformatter

        self.size, self.threads = size, threads
        self._scaler, self._converter = VideoReformatter(), VideoReformatter()

    def __call__(self, frame: Any, aspect: Fraction = Fraction(1)) -> np.ndarray:
        shown = orientation(frame)  # one_field's frame has no display matrix
        # Of the whole frame, even where one field is scaled: a field is the picture, half as high.
        scaled = output_size(shown_width(frame.width, aspect), frame.height, self.size)
        if frame.interlaced_frame:
            frame = one_field(frame)
        if is_hdr(frame):
            wide = self._scale(frame, scaled, "rgb48le").to_ndarray()
            pixels = tone_mapped(
                self._centre(wide), frame.color_trc, frame.color_primaries, threads=self.threads
            )
        elif frame.format.name.startswith(_SCALED_IN_OWN_FORMAT):
            small = self._scale(frame, scaled, _scaled_format(frame.format))
            rgb = self._converter.reformat(small, format="rgb24", threads=self.threads)
            pixels = self._centre(rgb.to_ndarray())
        else:
            pixels = self._centre(self._scale(frame, scaled, "rgb24").to_ndarray())
        return displayed(pixels, shown)

    def _scale(self, frame: Any, size: tuple[int, int], pixel_format: str | None) -> Any:
        """``frame`` at ``size`` (width, height) in ``pixel_format`` (None: its own)."""
        return self._scaler.reformat(
            frame,
            width=size[0],
            height=size[1],
            format=pixel_format,
            interpolation=SCALER_INTERPOLATION,
            threads=self.threads,
        )

    def _centre(self, pixels: np.ndarray) -> np.ndarray:
        """The centre ``size x size`` of ``pixels`` ``[H, W, C]``."""
        top, left = (pixels.shape[0] - self.size) // 2, (pixels.shape[1] - self.size) // 2
        return pixels[top : top + self.size, left : left + self.size]


def _scaled_format(pixel_format: Any) -> str | None:
    """The format a YUV or grey frame of ``pixel_format`` (an ``av.VideoFormat``) is scaled
    into: its own (``None``) at 8 bits; 8-bit planar RGB (or grey) at more bits."""
    if max(c.bits for c in pixel_format.components) <= 8:
        return None
    return "gray" if len(pixel_format.components) == 1 else "gbrp"
