"""Which frames a stream shows and where decoding can start: the index a pass plans from.

Demuxing (reading packets without decoding them) is cheap, so a file is demuxed whole to learn
every frame's timestamp and which frames are keyframes (:func:`demuxed_frames`); files of
intra-only codecs in containers that list every frame (ProRes and MJPEG in MOV or AVI) are not
read for that at all, their container's list is exact (:func:`listed_frames`). The packets from
a keyframe on are reached by seeking where the container can (:func:`keyframe_packets`: by
timestamp, or by byte position in MPEG-TS and MPEG-PS) and by reading past the packets before it
(:func:`read_past`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from pipelines.decode.errors import DECODE_FAILED, TRUNCATED, _Failure

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
class FrameIndex:
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


def index_frames(container: Any, stream: Any) -> FrameIndex:
    listed = listed_frames(container, stream)
    return listed if listed is not None else demuxed_frames(container, stream)


def listed_frames(container: Any, stream: Any) -> FrameIndex | None:
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
    return FrameIndex(pts, np.arange(claimed), stream.time_base, int(pts[-1]) + usual_step(pts))


def usual_step(pts: np.ndarray) -> int:
    """The usual gap between the sorted timestamps ``pts`` (1 for a single frame): how long the
    last frame lasts where nothing says."""
    return int(np.median(np.diff(pts))) if len(pts) > 1 else 1


def demuxed_frames(container: Any, stream: Any) -> FrameIndex:
    pts, keys, durations, reach, hidden = [], [], [], [], 0
    before, positioned = 0, False  # the latest known position of a packet read so far
    # Parts of the timeline (_Timeline), in formats without a seek index only.
    may_restart = bool(container.format.flags & _TIMESTAMP_DISCONTINUITIES)
    jump = max(1, round(_TIMELINE_JUMP_S / float(stream.time_base)))
    offsets, last_dts, step, latest = [0], None, 1, None
    unstamped = 0  # packets with data and no timestamp
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
            unstamped += stamp is None and packet.size > 0
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
    if not pts and unstamped:
        # A raw H.264 or HEVC stream (.h264, .264: no container) times nothing; FFmpeg guesses
        # 25 fps for it, which would sample the wrong moments of most such videos.
        detail = (
            f"none of its {unstamped} frames has a timestamp (a raw stream without a container):"
            " put it in one at its frame rate, e.g. ffmpeg -framerate 30 -i in.h264 -c copy out.mp4"
        )
        raise _Failure(DECODE_FAILED, detail)
    if not pts:
        raise _Failure(TRUNCATED, f"decoded 0 of {stream.frames} frames")
    order = np.argsort(np.asarray(pts, np.int64), kind="stable")
    sorted_pts = np.asarray(pts, np.int64)[order]
    keyframes = np.flatnonzero(np.asarray(keys, bool)[order])
    first_is_key = bool(len(keyframes)) and keyframes[0] == 0
    if not first_is_key:
        keyframes = np.concatenate([[0], keyframes]).astype(np.int64)
    last = int(order[-1])
    step = durations[last] or usual_step(sorted_pts)
    end = int(sorted_pts[-1]) + step
    at = np.asarray(reach, np.int64)[order] if positioned else None
    timeline = _Timeline(np.asarray(offsets, np.int64), jump) if len(offsets) > 1 else None
    return FrameIndex(
        sorted_pts, keyframes, stream.time_base, end, hidden, first_is_key, at, timeline
    )


def keyframe_packets(container: Any, stream: Any, index: FrameIndex, key: int) -> Iterator[Any]:
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
    where it cannot seek there (Ogg, timestamps that restart: a pass reading on), where
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
