"""The PyAV backend: decodes only the frames the sampled ones need, in one pass per file.

The file is first indexed (:func:`~pipelines.decode.frame_index.index_frames`: every frame's
timestamp, and which are keyframes). From that each clip's targets are chosen
(:func:`~pipelines.decode.sampling.choose_targets`, one per chunk of the clip's time), and one
forward pass over the file fetches all of them: it seeks to the keyframe before a target when
that keyframe lies beyond the decoder's position (so groups of pictures holding no target are
never decoded), and otherwise decodes forward. Files without a seek index are sought by byte
position (MPEG-TS, MPEG-PS) or read on with the packets before the keyframe dropped undecoded
(Ogg: :func:`~pipelines.decode.frame_index.read_past`). Only targets are converted: scaled to
the small output size in their own YUV format, then converted to RGB
(:class:`~pipelines.decode.thumbnails.Thumbnailer`; no full-size RGB frame exists).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from pipelines.decode.errors import TRUNCATED, _Failure
from pipelines.decode.frame_index import FrameIndex, index_frames, keyframe_packets, read_past
from pipelines.decode.protocol import _ClipResult, _Request
from pipelines.decode.sampling import (
    SAMPLING_FAST,
    SAMPLING_KEYFRAME,
    Target,
    targets_of_clips,
)
from pipelines.decode.source import _damaged, _lost_frames, _open_video
from pipelines.decode.thumbnails import Thumbnailer
from pipelines.display import pixel_aspect

FAST_CODEC_OPTIONS = {"skip_loop_filter": "all"}


# What the decoder may skip on its way to a target (FFmpeg's ``skip_frame`` levels).
SKIP_NOTHING = "DEFAULT"
SKIP_NONREF = "NONREF"  # frames no other frame references: nothing else decodes differently
SKIP_NONKEY = "NONKEY"  # all but keyframes: the frames after one decode wrongly until a seek


class _Pass:
    """One forward pass over a file's frames, fetching targets in increasing order.

    ``frames_decoded`` counts the frames the decoder produced (skipped frames excluded).
    """

    def __init__(
        self,
        path: str,
        container: Any,
        stream: Any,
        index: FrameIndex,
        configure: Callable[[Any], None],
    ) -> None:
        self.path = path
        self.container = container
        self.stream = stream
        self.codec = stream.codec_context
        self.index = index
        self.frames_decoded = 0
        self._configure = configure
        self._frames: Iterator[Any] | None = None
        self._held: Any = None  # a frame read past one target, which the next one may want
        self._position: int | None = None  # pts of the last frame the decoder produced
        self._skipped = False  # whether frames were skipped since the last seek
        # Whether the file is read on from its start instead of sought: once a seek misses its
        # keyframe or cannot be made (keyframe_packets); groups of pictures that hold no target
        # are then read past (_read_forward).
        self._sequential = False
        self._packets: Iterator[Any] | None = None  # reading sequentially: the file's packets
        self._fed_pts: int | None = None  # the latest pts fed to the decoder since it started
        # Reading sequentially past a keyframe the decoder already has: packets shown before
        # this pts are left out (the leading pictures of its open group of pictures).
        self._shown_from: int | None = None
        self._reads_past = True  # false once reading past a keyframe's packet missed it
        self._reopened: list[Any] = []

    def close(self) -> None:
        for container in self._reopened:
            container.close()

    def fetch(self, target: Target, skip: str) -> Any:
        """The frame ``target`` names (an ``av.VideoFrame``), skipping what ``skip`` allows."""
        if skip == SKIP_NONKEY and not self._sequential:
            return self._keyframe(target.want)
        if target.exact:
            return self._exact(target.want, skip)
        return self._reference(target)

    def _keyframe(self, want: int) -> Any:
        """Keyframe ``want`` alone: its packet decoded, then the decoder drained. Fed the packets
        after it instead, a decoder that reorders B-frames holds the keyframe back until the
        next decoded frame, which skipping everything but keyframes puts a GOP away."""
        key_pts = int(self.index.pts[want])
        self._frames, self._held, self._position = None, None, None
        try:
            packets = keyframe_packets(self.container, self.stream, self.index, want)
        except ValueError:
            packets = iter(())
        for packet in packets:
            if packet.pts is None or packet.size == 0:
                continue
            if packet.pts != key_pts:
                break
            frames = [*self.codec.decode(packet), *self.codec.decode(None)]
            self.frames_decoded += len(frames)
            found = next((f for f in frames if f.pts == key_pts), None)
            if found is not None:
                return found
            break
        # The seek missed the keyframe: decode towards it the ordinary way.
        self._sequential = True
        return self._exact(want, SKIP_NOTHING)

    def _exact(self, want: int, skip: str) -> Any:
        want_pts = int(self.index.pts[want])
        self._start(want, want_pts, skip=skip)
        for frame in self._next_frames():
            if frame.pts < want_pts:
                continue
            if frame.pts > want_pts:
                if self._skipped and skip != SKIP_NOTHING:
                    # The wanted frame was skipped on the way to an earlier target (its packet
                    # went in while the decoder was still reordering): go back for it.
                    self._seek(self.index.key_before(want))
                    return self._exact(want, SKIP_NOTHING)
                # The decoder never produced the wanted frame (a damaged or odd stream): the
                # next one stands in, and stays available to the next target.
                self._held = frame
            return frame
        raise _Failure(TRUNCATED, f"the file ends before frame {want} of {len(self.index.pts)}")

    def _reference(self, target: Target) -> Any:
        lo, want = int(self.index.pts[target.lo]), int(self.index.pts[target.want])
        hi = int(self.index.pts[target.hi]) if target.hi < len(self.index.pts) else None
        self._start(target.want, want, skip=SKIP_NONREF)
        before = None
        for frame in self._next_frames():
            if frame.pts < lo:
                continue
            if frame.pts < want:
                before = frame
                continue
            if hi is None or frame.pts < hi:
                return frame
            self._held = frame
            break
        if before is not None:
            return before
        # No reference frame in the chunk (a chunk shorter than the gap between references).
        return self._exact(target.want, SKIP_NOTHING)

    def _start(self, want: int, want_pts: int, *, skip: str) -> None:
        """Position the decoder so its next frames lead to frame ``want``: seek to the keyframe
        before it when that lies beyond the decoder's position, when ``want`` was passed, or
        when frames that later ones need were skipped."""
        next_pts = self._held.pts if self._held is not None else None
        if next_pts is None and self._position is not None:
            next_pts = self._position + 1
        key = self.index.key_before(want)
        broken = self.codec.skip_frame == SKIP_NONKEY and skip != SKIP_NONKEY
        behind = next_pts is None or want_pts < next_pts or broken
        if behind or self.index.pts[key] >= next_pts:
            self._seek(key, forward_only=not behind)
        self.codec.skip_frame = skip
        self._skipped |= skip != SKIP_NOTHING

    def _seek(self, key: int, *, forward_only: bool = False) -> None:
        """Make the next frames start at keyframe ``key`` (or, reading sequentially where the
        keyframe's packet cannot be found, anywhere before it: the targets skip what precedes
        them)."""
        if self._sequential:
            self._read_forward(key, restart=not forward_only)
            return
        try:
            packets = keyframe_packets(self.container, self.stream, self.index, key)
        except ValueError:
            self._sequential = True
            self._read_forward(key, restart=True)
            return
        if not self._lands_on(key, packets):
            self._sequential = True
            self._read_forward(key, restart=True)

    def _read_forward(self, key: int, *, restart: bool) -> None:
        """Seek to keyframe ``key`` where the file cannot seek: read on (from its first frame if
        ``restart``), and drop the packets before the keyframe's undecoded
        (:func:`~pipelines.decode.frame_index.read_past`).
        Where the keyframe's packet went to the decoder already, decodes on, without the packets
        still to come that are shown before it. Decodes on where frame 0 is no keyframe of its
        own, and once a read past missed its keyframe."""
        if restart:
            self._restart()
        key_pts = int(self.index.pts[key])
        if not self._reads_past or (key == 0 and not self.index.first_is_key):
            return
        if self._fed_pts is not None and self._fed_pts >= key_pts:
            self._shown_from = key_pts
            return
        assert self._packets is not None
        self.codec.flush_buffers()  # what it holds precedes the keyframe
        if not self._lands_on(key, read_past(self._packets, key_pts)):
            self._reads_past = False
            self._restart()

    def _lands_on(self, key: int, packets: Iterator[Any]) -> bool:
        """Start decoding ``packets``; whether their first frame is at or before keyframe
        ``key`` (the frames then lead to it; otherwise they passed it)."""
        self._start_decoding(packets)
        assert self._frames is not None
        landing = next((f for f in self._frames if f.pts is not None), None)
        if landing is None or landing.pts > self.index.pts[key]:
            return False
        self._held = landing
        return True

    def _restart(self) -> None:
        """Decode from the first frame, with a freshly opened file."""
        container, stream = _open_video(self.path)
        self._reopened.append(container)
        self._configure(stream)
        stream.codec_context.skip_frame = self.codec.skip_frame
        self.container, self.stream, self.codec = container, stream, stream.codec_context
        self._packets = self.container.demux(self.stream)
        if self.index.timeline is not None:
            self._packets = self.index.timeline.unwrapped(self._packets)
        self._start_decoding(self._packets)

    def _start_decoding(self, packets: Iterator[Any]) -> None:
        self._frames = self._decode(packets)
        self._held = None
        self._position = None
        self._fed_pts = None
        self._shown_from = None
        self._skipped = False

    def _next_frames(self) -> Iterator[Any]:
        if self._held is not None:
            frame, self._held = self._held, None
            self._position = frame.pts
            yield frame
        assert self._frames is not None
        for frame in self._frames:
            if frame.pts is None:
                continue
            self._position = frame.pts
            yield frame

    def _decode(self, packets: Iterator[Any]) -> Iterator[Any]:
        for packet in packets:
            if packet.pts is not None:
                if self._shown_from is not None and packet.pts < self._shown_from:
                    continue
                if self._fed_pts is None or packet.pts > self._fed_pts:
                    self._fed_pts = packet.pts
            for frame in self.codec.decode(packet):
                self.frames_decoded += 1
                yield frame


def _skip_for(target: Target, sampling: str, keyframes: np.ndarray) -> str:
    """What the decoder may skip on its way to ``target`` under ``sampling``."""
    if not target.exact:
        return SKIP_NONREF
    if sampling == SAMPLING_FAST:
        # fast's exact targets are keyframes (nothing before them is decoded) or centres of
        # chunks too short to hold a reference frame (decoded exactly, see _Pass._exact).
        return SKIP_NONREF
    if sampling == SAMPLING_KEYFRAME and _is_keyframe(target.want, keyframes):
        return SKIP_NONKEY
    return SKIP_NOTHING


def _is_keyframe(index: int, keyframes: np.ndarray) -> bool:
    at = int(np.searchsorted(keyframes, index))
    return at < len(keyframes) and int(keyframes[at]) == index


def decode_file(path: str, req: _Request, out: np.ndarray) -> tuple[list[_ClipResult], int]:
    """Decode the clips of ``req`` from ``path`` into ``out`` ``[C, T, S, S, 3]``.

    Returns each clip's result and the frames the decoder produced for all of them together.
    """
    container, stream = _open_video(path)
    with container:

        def configure(stream: Any) -> None:
            stream.thread_type = "AUTO" if req.threads > 1 else "SLICE"
            stream.codec_context.thread_count = req.threads
            if req.sampling == SAMPLING_FAST:
                # Deblocking is a fifth of H.264 decoding; without it a 224-px frame differs
                # from the deblocked one by under one level on average (bench/decode.py).
                stream.codec_context.options = FAST_CODEC_OPTIONS

        configure(stream)
        claimed = stream.frames
        try:
            index = index_frames(container, stream)
        except _Failure:
            raise
        except Exception as err:  # a demuxer error: the file is damaged
            raise _damaged(path, claimed, err) from None
        n = len(index.pts)
        if _lost_frames(claimed, n + index.hidden):
            raise _Failure(TRUNCATED, f"decoded {n + index.hidden} of {claimed} frames")
        starts, duration = index.starts_s, index.duration_s

        results: list[_ClipResult] = []
        # target -> every (clip, frame slot) it fills; clips of one file often share frames.
        slots: dict[Target, list[tuple[int, int]]] = {}
        chosen = targets_of_clips(req, starts, duration, index.own_keyframes)
        for k, targets in enumerate(chosen):
            if isinstance(targets, str):
                results.append(_ClipResult(error=targets))
                continue
            for t, target in enumerate(targets):
                slots.setdefault(target, []).append((k, t))
            results.append(_ClipResult(error="", frame_times_s=np.zeros(req.frames, np.float32)))

        decoder = _Pass(path, container, stream, index, configure)
        thumbnail = Thumbnailer(out.shape[2], threads=req.threads)
        try:
            for target in sorted(slots, key=lambda t: (t.want, t.lo)):
                skip = _skip_for(target, req.sampling, index.own_keyframes)
                frame = decoder.fetch(target, skip)
                # Read once a frame is decoded: H.264 outside MP4 states it in its own headers.
                pixels = thumbnail(frame, pixel_aspect(decoder.stream))
                time_s = float((frame.pts - index.pts[0]) * index.time_base)
                for k, t in slots[target]:
                    out[k, t] = pixels
                    results[k].frame_times_s[t] = time_s
        except _Failure:
            raise
        except Exception as err:
            raise _damaged(path, claimed or n, err) from None
        finally:
            decoder.close()
    return [
        _ClipResult(r.error, r.frame_times_s, duration) if not r.error else r for r in results
    ], decoder.frames_decoded
