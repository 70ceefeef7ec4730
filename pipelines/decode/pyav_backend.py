"""The PyAV backend: decodes only the frames the sampled ones need, in one pass per file.

Demuxing (reading packets without decoding them) is cheap, so the file is first demuxed whole to
learn every frame's timestamp and which frames are keyframes; files of intra-only codecs in
containers that list every frame (ProRes and MJPEG in MOV or AVI) are not read for that at all,
their container's list is exact (:func:`_listed_frames`). From that each clip's targets are
chosen (:func:`~pipelines.decode.sampling.choose_targets`, one per chunk of the clip's time),
and one forward pass over the file fetches all of them: it seeks to the keyframe before a target
when that keyframe lies beyond the decoder's position (so groups of pictures holding no target
are never decoded), and otherwise decodes forward. Files without a seek index are sought by byte
position (MPEG-TS, MPEG-PS) or read on with the packets before the keyframe dropped undecoded
(Ogg: :func:`read_past`). Only targets are converted: scaled to the
small output size in their own YUV format, then converted to RGB (:class:`_Thumbnailer`; no
full-size RGB frame exists).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from pipelines.decode.errors import TRUNCATED, _Failure
from pipelines.decode.protocol import _ClipResult, _Request
from pipelines.decode.sampling import (
    SAMPLING_FAST,
    SAMPLING_KEYFRAME,
    Target,
    targets_of_clips,
)
from pipelines.decode.source import _damaged, _lost_frames, _open_video, output_size
from pipelines.display import (
    displayed,
    is_hdr,
    one_field,
    orientation,
    pixel_aspect,
    shown_width,
    tone_mapped,
)

FAST_CODEC_OPTIONS = {"skip_loop_filter": "all"}
SCALER_INTERPOLATION = "AREA"
# Pixel formats (planar and semi-planar YUV, grey) scaled before their conversion to RGB.
_SCALED_IN_OWN_FORMAT = ("yuv", "nv", "gray")
_TIMESTAMP_DISCONTINUITIES = 0x200  # AVFMT_TS_DISCONT: the formats without a seek index
# Of those, the ones sought by byte position: MPEG-TS and MPEG-PS (its demuxer resynchronises
# at the next packet header, and its parser then splits frames right from the next frame on).
_SEEKABLE_BY_BYTE = ("mpegts", "mpeg")
# In those formats, a decoding timestamp that steps back, or forward by more than this, starts a
# new part of the timeline (recordings joined end to end, a broadcast's splice), not a gap:
# FFmpeg's own threshold for them.
_TIMELINE_JUMP_S = 10.0


@dataclass(frozen=True)
class _Timeline:
    """One timeline over a stream whose timestamps restart partway: a file without a seek index
    made of recordings joined end to end (``cat a.ts b.ts``), or a broadcast recording across a
    splice. Players show the parts one after the other, and so do the index's timestamps: each
    part's are moved to start after the last frame before it. Parts are found in decoding order,
    where a decoding timestamp steps back or jumps forward by more than ``jump``."""

    offsets: np.ndarray  # [p] int64 added to each part's timestamps; the first 0
    jump: int  # in the stream's time base

    def unwrapped(self, packets: Iterator[Any]) -> Iterator[Any]:
        """``packets``, read from the stream's start, with their timestamps moved onto the one
        timeline. Such a file is read on rather than sought: which part a packet is in shows
        only in the packets before it."""
        last, part = None, 0
        for packet in packets:
            dts = packet.dts
            if dts is not None:
                restart = last is not None and _restarts(last, dts, self.jump)
                if restart and part + 1 < len(self.offsets):
                    part += 1
                last = dts
            offset = int(self.offsets[part])
            if packet.pts is not None:
                packet.pts += offset
            if dts is not None:
                packet.dts = dts + offset
            yield packet


def _restarts(last_dts: int, dts: int, jump: int) -> bool:
    """Whether decoding timestamp ``dts`` after ``last_dts`` starts a new part of the timeline."""
    return dts < last_dts or dts - last_dts > jump


@dataclass(frozen=True)
class _FrameIndex:
    """Every frame a stream shows, in presentation order, from its packets.

    Frames the container holds but says not to show are left out and counted in ``hidden``: the
    pre-roll of a video cut without re-encoding (``ffmpeg -ss S -c copy``, an editor's trim),
    which starts at the keyframe before the cut and whose edit list hides what precedes it.
    Players start such a video at its first shown frame, and so do its times here; the decoder
    still decodes the pre-roll to reach it, and returns none of it.
    """

    pts: np.ndarray  # [n] int64, sorted
    keyframes: np.ndarray  # [k] int64, indices into pts where decoding can start; the first 0
    time_base: Fraction
    end_pts: int  # where the last frame ends
    hidden: int = 0
    # Whether frame 0 is a keyframe of its own; if not, decoding reaches it from the stream's
    # start (the hidden pre-roll's keyframe, or a stream that starts on a frame not flagged key).
    first_is_key: bool = True
    # [n] int64 byte position in the file from which demuxing reaches each frame's packet whole:
    # that of a packet before it (0 for the first). A seek exactly to a packet's own position can
    # lose it: MPEG-PS's parser then splits the frames a frame late. None from the container's
    # list (taken only where timestamps seek exactly) and where the demuxer gives no positions.
    positions: np.ndarray | None = None
    # Where the timestamps restart partway (files without a seek index): ``pts`` are then on
    # the one timeline players show, and the packets' timestamps are moved onto it to decode.
    timeline: _Timeline | None = None

    @property
    def own_keyframes(self) -> np.ndarray:
        """``[k]`` the frames that are keyframes of their own: reached by decoding nothing
        before them."""
        return self.keyframes if self.first_is_key else self.keyframes[1:]

    @property
    def starts_s(self) -> np.ndarray:
        """Start second of each frame, the first frame at 0."""
        return ((self.pts - self.pts[0]) * float(self.time_base)).astype(np.float64)

    @property
    def duration_s(self) -> float:
        return float((self.end_pts - self.pts[0]) * self.time_base)

    def key_before(self, index: int) -> int:
        """Index of the keyframe at or before frame ``index``."""
        at = max(int(np.searchsorted(self.keyframes, index, side="right")) - 1, 0)
        return int(self.keyframes[at])


def _index_frames(container: Any, stream: Any) -> _FrameIndex:
    listed = _listed_frames(container, stream)
    return listed if listed is not None else _demuxed_frames(container, stream)


def _listed_frames(container: Any, stream: Any) -> _FrameIndex | None:
    """The index from the list of frames the container holds (MOV/MP4's sample tables, AVI's
    index), where that list is exact: for intra-only codecs (ProRes, MJPEG, DNxHD), whose every
    frame is a keyframe shown in the order it is stored, so the decoding timestamps the list gives
    are the presentation timestamps. None where it is not: other codecs (the list has no
    presentation timestamps), containers that list only some frames (Matroska's cues) or
    another count than they claim, and a file cut short of what its list names (demuxing then
    finds where it ends).

    Demuxing a ProRes file to index it reads all of it, a sixth to a fifth of the decode floor
    at 1080p (bench/decode.py); the list costs a microsecond a frame.
    """
    claimed = stream.frames
    if claimed <= 0 or not stream.codec_context.codec.intra_only:
        return None
    entries = stream.index_entries
    if len(entries) != claimed:
        return None
    pts = np.empty(claimed, np.int64)
    end_of_data = 0
    for i, entry in enumerate(entries):
        if entry.size <= 0 or entry.pos < 0 or entry.is_discard or not entry.is_keyframe:
            return None
        pts[i] = entry.timestamp
        end_of_data = max(end_of_data, entry.pos + entry.size)
    if end_of_data > container.size:
        return None
    pts.sort(kind="stable")
    return _FrameIndex(pts, np.arange(claimed), stream.time_base, int(pts[-1]) + _usual_step(pts))


def _usual_step(pts: np.ndarray) -> int:
    """The usual gap between the sorted timestamps ``pts`` (1 for a single frame): how long the
    last frame lasts where nothing says."""
    return int(np.median(np.diff(pts))) if len(pts) > 1 else 1


def _demuxed_frames(container: Any, stream: Any) -> _FrameIndex:
    pts, keys, durations, reach, hidden = [], [], [], [], 0
    before, positioned = 0, False  # the latest known position of a packet read so far
    # Parts of the timeline (_Timeline), in formats without a seek index only.
    may_restart = bool(container.format.flags & _TIMESTAMP_DISCONTINUITIES)
    jump = max(1, round(_TIMELINE_JUMP_S / float(stream.time_base)))
    offsets, last_dts, step, latest = [0], None, 1, None
    for packet in container.demux(stream):
        start = before
        if packet.pos is not None and packet.pos >= 0:
            before, positioned = packet.pos, True
        dts = packet.dts
        if may_restart and dts is not None:
            if last_dts is not None and _restarts(last_dts, dts, jump):
                # The new part starts a frame after the latest frame shown before it.
                offsets.append((latest if latest is not None else 0) + step - dts)
            elif last_dts is not None and dts > last_dts:
                step = dts - last_dts
            last_dts = dts
        stamp = packet.pts if packet.pts is not None else dts
        if stamp is None or packet.size == 0:
            continue
        if packet.is_discard:
            hidden += 1
            continue
        stamp += offsets[-1]
        latest = stamp if latest is None else max(latest, stamp)
        pts.append(stamp)
        keys.append(packet.is_keyframe)
        durations.append(packet.duration or 0)
        reach.append(start)
    if not pts:
        raise _Failure(TRUNCATED, f"decoded 0 of {stream.frames} frames")
    order = np.argsort(np.asarray(pts, np.int64), kind="stable")
    sorted_pts = np.asarray(pts, np.int64)[order]
    keyframes = np.flatnonzero(np.asarray(keys, bool)[order])
    first_is_key = bool(len(keyframes)) and keyframes[0] == 0
    if not first_is_key:
        keyframes = np.concatenate([[0], keyframes]).astype(np.int64)
    last = int(order[-1])
    step = durations[last] or _usual_step(sorted_pts)
    end = int(sorted_pts[-1]) + step
    at = np.asarray(reach, np.int64)[order] if positioned else None
    timeline = _Timeline(np.asarray(offsets, np.int64), jump) if len(offsets) > 1 else None
    return _FrameIndex(
        sorted_pts, keyframes, stream.time_base, end, hidden, first_is_key, at, timeline
    )


def keyframe_packets(container: Any, stream: Any, index: _FrameIndex, key: int) -> Iterator[Any]:
    """``stream``'s packets from frame ``key`` on (a keyframe of ``index``, in presentation
    order), in decoding order.

    Raises:
        ValueError: the container cannot seek there: formats without a seek index other than
            MPEG-TS and MPEG-PS, files whose demuxer gives no byte positions, and files whose
            timestamps restart partway (:class:`_Timeline`).
    """
    if container.format.flags & _TIMESTAMP_DISCONTINUITIES:
        if (
            container.format.name not in _SEEKABLE_BY_BYTE
            or index.positions is None
            or index.timeline is not None  # which part a packet is in shows only reading on
        ):
            raise ValueError(f"{container.format.name} cannot seek to frame {key}")
        # Timestamps cannot be sought in MPEG-TS or MPEG-PS (FFmpeg guesses a byte offset from
        # the bit rate and lands groups of pictures away), but byte positions can.
        container.seek(int(index.positions[key]), unsupported_byte_offset=True)
        return read_past(container.demux(stream), int(index.pts[key]))
    own_key = key > 0 or index.first_is_key
    return packets_from(container, stream, int(index.pts[key]), own_key=own_key)


def packets_from(
    container: Any, stream: Any, key_pts: int, *, own_key: bool = True
) -> Iterator[Any]:
    """``stream``'s packets from its keyframe at ``key_pts`` on, in decoding order.

    The container seeks there; where the seek lands on an earlier keyframe, the packets before
    this one are read past rather than decoded. MP4 indexes keyframes a little after their
    timestamps where the B-frame delay varies (variable frame rates) or an edit list shifts the
    timeline (a cut without re-encoding), so a seek to a keyframe's own timestamp lands a group
    of pictures early there. A seek that lands after it leaves the packets as they come (the
    caller notices the frames start too late). Where the frame at ``key_pts`` is no keyframe of
    its own (``own_key`` false: the first shown frame after a hidden pre-roll), decoding must
    start where the seek lands.
    """
    container.seek(key_pts, stream=stream, backward=True)
    packets = container.demux(stream)
    return read_past(packets, key_pts) if own_key else packets


def read_past(packets: Iterator[Any], key_pts: int) -> Iterator[Any]:
    """``packets`` from the keyframe at ``key_pts`` on, without those shown before it.

    The packets before the keyframe are read and dropped, not decoded: demuxing a group of
    pictures costs a small part of decoding it, so this is how a pass skips what holds no target
    where it cannot seek there (Ogg, timestamps that restart: :meth:`_Pass._read_forward`), where
    a seek lands early (:func:`packets_from`), and past what a byte seek lands on before the
    keyframe (:func:`keyframe_packets`).
    Dropping stops at a packet that decodes at or after the keyframe's time, should the
    keyframe's own packet never come. The packets after the keyframe that are shown before it
    are dropped too: the leading pictures of an open group of pictures (DVD MPEG-2), which
    refer to the group before it, and which no target after the keyframe needs.
    """
    for packet in packets:
        stamp = packet.dts if packet.dts is not None else packet.pts
        if stamp is None:  # a fragment: what a byte seek lands in first
            continue
        if (packet.pts == key_pts and packet.is_keyframe) or stamp >= key_pts:
            yield packet
            break
    # Not ``yield from``: closing this generator would close ``packets``, which a pass reading
    # sequentially goes on reading after abandoning it.
    for packet in packets:
        if packet.pts is None or packet.pts >= key_pts:
            yield packet


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
        index: _FrameIndex,
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
        ``restart``), and drop the packets before the keyframe's undecoded (:func:`read_past`).
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
            index = _index_frames(container, stream)
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
        thumbnail = _Thumbnailer(out.shape[2], aspect=pixel_aspect(stream), threads=req.threads)
        try:
            for target in sorted(slots, key=lambda t: (t.want, t.lo)):
                skip = _skip_for(target, req.sampling, index.own_keyframes)
                frame = decoder.fetch(target, skip)
                pixels = thumbnail(frame)
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


class _Thumbnailer:
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
    times as wide as high: :func:`pipelines.display.pixel_aspect`), so the scaler makes
    anamorphic video's pixels square, and a stream whose size changes midway (video calls and
    browser recordings adapt it to the bandwidth) is not stretched to its first size.

    A frame the container says to show rotated (a phone held upright records landscape frames
    and a quarter turn) is turned as players show it (:func:`pipelines.display.displayed`):
    the centre square of the turned frame is the turned centre square, so only the small result
    is turned. Of an interlaced frame only one field is scaled
    (:func:`pipelines.display.one_field`): the two fields woven show moving things as combs.
    """

    def __init__(self, size: int, *, aspect: Fraction = Fraction(1), threads: int) -> None:
        from av.video.reformatter import VideoReformatter

        self.size, self.aspect, self.threads = size, aspect, threads
        self._scaler, self._converter = VideoReformatter(), VideoReformatter()

    def __call__(self, frame: Any) -> np.ndarray:
        shown = orientation(frame)  # one_field's frame has no display matrix
        # Of the whole frame, even where one field is scaled: a field is the picture, half as high.
        scaled = output_size(shown_width(frame.width, self.aspect), frame.height, self.size)
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
