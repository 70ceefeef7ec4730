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

Cost: frames are decoded with decord at the output resolution (the decoder scales, so no full-size
RGB frame is materialised) and fetched with one ``get_batch`` over the sorted unique indices, which
decodes forward through each group of pictures once and skips whole GOPs that hold no wanted
frame. With far-apart keyframes (x264's default GOP is 250) sparse sampling still decodes nearly
every frame up to the last wanted one; that is inherent to the codec, not to this stage.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import IO, Any

import numpy as np

from pipelines import schema
from pipelines.storage import StorageOptions

# Error categories: the text before the first ":" of every ``error`` value.
MISSING_FILE = "missing file"
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

SAMPLING_UNIFORM = "uniform"
SAMPLING_RANDOM = "random"

# A child that cannot even import decord within this long is an installation problem, not a
# property of one video, so it raises instead of producing error rows.
_STARTUP_TIMEOUT_S = 120.0
# Containers may count a frame or two more than the decoder can return (edit lists, a final
# frame with no duration); only a larger shortfall means the file lost frames.
_FRAME_SHORTFALL_SLACK = 0.02
_MAX_DETAIL = 300
# decord leaks memory on some inputs (large frames especially); a fresh child now and then
# bounds what a long job can accumulate, at the price of one process start.
_VIDEOS_PER_PROCESS = 2000


def error_category(error: str) -> str:
    """The category of an ``error`` value (``""`` for a video that decoded)."""
    return error.split(":", 1)[0]


def sample_indices(
    num_frames: int,
    frames: int,
    *,
    sampling: str = SAMPLING_UNIFORM,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Indices ``[T]`` (``T = frames``) of the frames to sample from a clip of ``num_frames``.

    The clip is cut into ``T`` equal chunks ``[i * n / T, (i + 1) * n / T)``. ``uniform`` takes the
    frame at each chunk's centre; ``random`` (TSN-style, for training) a frame at a uniformly
    random position inside each chunk. Clips shorter than ``T`` frames repeat frames.
    """
    if num_frames <= 0 or frames <= 0:
        raise ValueError(f"need num_frames > 0 and frames > 0, got {num_frames}, {frames}")
    if sampling == SAMPLING_UNIFORM:
        offsets = np.full(frames, 0.5)
    elif sampling == SAMPLING_RANDOM:
        offsets = (rng or np.random.default_rng()).random(frames)
    else:
        raise ValueError(f"sampling must be {SAMPLING_UNIFORM!r} or {SAMPLING_RANDOM!r}")
    # (i + offset) * n / T rather than i * w + offset * w: exact for chunk centres on whole frames.
    positions = (np.arange(frames) + offsets) * num_frames / frames
    return np.minimum(np.floor(positions).astype(np.int64), num_frames - 1)


@dataclass(frozen=True)
class _Request:
    uri: str
    frames: int
    image_size: int
    sampling: str
    start_s: float | None
    end_s: float | None
    seed: int | None
    threads: int
    storage: StorageOptions


@dataclass(frozen=True)
class _Result:
    """One video's outcome; on success its frames are in the buffer the request named."""

    error: str
    frame_times_s: np.ndarray | None = None  # [T] float32
    duration_s: float = math.nan


class _Failure(Exception):
    """A video-level failure, raised in the child and returned as the row's error string."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(f"{category}: {detail}")


# decord prefixes its messages with "[12:00:00] /path/to/source.cc:151: ".
_DECORD_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


def _short(err: BaseException) -> str:
    """The first line of an exception's message, without decord's source location, capped."""
    lines = str(err).strip().splitlines()
    line = _DECORD_PREFIX.sub("", lines[0]) if lines else type(err).__name__
    return line if len(line) <= _MAX_DETAIL else line[: _MAX_DETAIL - 3] + "..."


# --- child process side ------------------------------------------------------------------------


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@contextlib.contextmanager
def _local_file(uri: str, storage: StorageOptions) -> Iterator[str]:
    """A local path holding ``uri``'s bytes; remote objects are copied to a temporary file."""
    if _SCHEME.match(uri) and not uri.startswith("file:"):
        yield from _remote_copy(uri, storage)
        return
    import pyarrow.fs as pafs

    path = pafs.FileSystem.from_uri(uri)[1] if uri.startswith("file:") else uri
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _Failure(MISSING_FILE, path) from None
    except OSError as err:
        raise _Failure(READ_FAILED, f"{path}: {_short(err)}") from None
    if os.path.isdir(path):
        raise _Failure(NOT_A_VIDEO, f"{path} is a directory")
    # Only regular files have a meaningful size; a pipe or device is left to the decoder (and
    # to the timeout, should it never deliver data).
    if os.path.isfile(path) and st.st_size == 0:
        raise _Failure(EMPTY_FILE, f"{path} has 0 bytes")
    yield path


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
        raise _Failure(NOT_A_VIDEO, f"{uri} is a directory")
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
            for _ in container.decode(video=0):
                count += 1
    except Exception:
        pass
    return count


def _damaged(path: str, claimed: int, err: BaseException) -> _Failure:
    """Classify a decoder failure on a file whose container opened: frames lost, or other."""
    decoded = _count_decodable_frames(path)
    if claimed > 0 and decoded < claimed:
        return _Failure(TRUNCATED, f"decoded {decoded} of {claimed} frames ({_short(err)})")
    return _Failure(DECODE_FAILED, _short(err))


def _probe(path: str) -> tuple[int, int, int]:
    """``(width, height, claimed frame count or 0)`` of the first video stream."""
    import av

    try:
        container = av.open(path, metadata_errors="ignore")
    except Exception as err:
        family = _container_magic(path)
        if family is not None:
            detail = f"{family} container cannot be opened ({_short(err)})"
            raise _Failure(TRUNCATED, detail) from None
        raise _Failure(NOT_A_VIDEO, _short(err)) from None
    with container:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise _Failure(NO_VIDEO_STREAM, f"streams found: {kinds}")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        claimed = stream.frames
    if width <= 0 or height <= 0:
        raise _Failure(NOT_A_VIDEO, f"video stream has no picture size ({width}x{height})")
    return width, height, claimed


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


def _decode_request(req: _Request, out: np.ndarray) -> _Result:
    """Decode one video into ``out`` ``[T, S, S, 3]``; every failure becomes the error."""
    try:
        with _local_file(req.uri, req.storage) as path:
            return _decode_file(path, req, out)
    except _Failure as failure:
        return _Result(error=str(failure))
    except Exception as err:
        return _Result(error=f"{DECODE_FAILED}: {type(err).__name__}: {_short(err)}")


def _frame_view(buffer: mmap.mmap, frames: int, size: int) -> np.ndarray:
    return np.frombuffer(buffer, np.uint8, count=frames * size * size * 3).reshape(
        frames, size, size, 3
    )


def _child_main(fd: int, buffer_fd: int, buffer_bytes: int) -> None:
    """Entry point of the decoder process: answer requests on socket ``fd`` until EOF.

    Frames go into the memory shared through ``buffer_fd`` rather than through the socket, which
    saves pickling and two copies of ``T * S * S * 3`` bytes per video.
    """
    import av
    import decord

    # Both libraries log every damaged file to stderr; the message lands in the error row.
    decord.logging.set_level(decord.logging.QUIET)
    av.logging.set_level(av.logging.PANIC)
    buffer = mmap.mmap(buffer_fd, buffer_bytes)
    conn = Connection(fd)
    conn.send(os.getpid())
    while True:
        try:
            req = conn.recv()
        except EOFError:
            return
        conn.send(_decode_request(req, _frame_view(buffer, req.frames, req.image_size)))


# --- parent side -------------------------------------------------------------------------------


def _shareable_file() -> IO[bytes]:
    """An unnamed file to map in both processes: anonymous memory where the OS offers it."""
    if hasattr(os, "memfd_create"):
        return os.fdopen(os.memfd_create("decoded-frames"), "r+b")
    return tempfile.TemporaryFile()


class _DecoderProcess:
    """One child Python process running :func:`_child_main`, talking over a socket pair."""

    def __init__(self, buffer_bytes: int) -> None:
        env = dict(os.environ)
        # The child must import this package exactly as the parent did (Ray's working_dir,
        # an uninstalled checkout...): hand it the parent's import path.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        parent_sock, child_sock = socket.socketpair()
        with _shareable_file() as shared, child_sock:
            os.ftruncate(shared.fileno(), buffer_bytes)
            self.buffer = mmap.mmap(shared.fileno(), buffer_bytes)
            code = (
                "import pipelines.decode as d; "
                f"d._child_main({child_sock.fileno()}, {shared.fileno()}, {buffer_bytes})"
            )
            # A fresh interpreter rather than multiprocessing: no re-import of the caller's main
            # script (a Ray worker, a notebook), and nothing inherited but these two descriptors.
            self.process = subprocess.Popen(
                [sys.executable, "-c", code],
                pass_fds=(child_sock.fileno(), shared.fileno()),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self.conn = Connection(parent_sock.detach())
        if not self.conn.poll(_STARTUP_TIMEOUT_S):
            self.kill()
            raise RuntimeError(f"decoder process did not start within {_STARTUP_TIMEOUT_S:g}s")
        try:
            self.conn.recv()
        except EOFError:
            code = self.process.wait()
            raise RuntimeError(f"decoder process failed to start (exit status {code})") from None

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_reason(self) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "decoder process stopped answering"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"decoder process killed by {signal.Signals(-code).name}"
        return f"decoder process exited with status {code}"

    def kill(self) -> None:
        self.conn.close()
        self.buffer.close()
        self.process.kill()
        self.process.wait()

    def close(self) -> None:
        self.conn.close()
        self.buffer.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _list_cells(column: np.ndarray) -> np.ndarray:
    """``column`` with array cells (Ray's numpy form of ``list<string>``) turned into lists.

    Ray converts a column of Python lists back to an Arrow list, but pickles a column of ragged
    string arrays as opaque objects, which the stages downstream could not write as a list.
    """
    if column.dtype != object or not any(isinstance(v, np.ndarray) for v in column):
        return column
    out = np.empty(len(column), dtype=object)
    out[:] = [v.tolist() if isinstance(v, np.ndarray) else v for v in column]
    return out


def _optional_float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


class DecodeStage:
    """Decode a batch of videos into ``[B, T, H, W, 3]`` uint8 frames, one child process deep.

    Args:
        frames: ``T``, frames sampled per video.
        image_size: ``H = W``; the decoder scales the shorter side to it, then the centre is cut.
        sampling: ``"uniform"`` (chunk centres, for indexing and evaluation) or ``"random"``
            (a random frame inside each chunk, for training; fresh on every call).
        timeout_s: longest time one video may take (reading included) before it is abandoned.
        seed: seeds the ``random`` sampling; successive calls draw different frames.
        threads: decoder threads per video (keep 1 where parallelism comes from many stages).
        storage: how to reach ``s3://`` videos. Pass the driver's
            (:meth:`StorageOptions.from_env` there): a Ray actor's own environment is the
            cluster's, which is what the default reads.

    Input batch: at least ``video_id`` and ``uri`` (``[B]``), optionally ``start_s`` / ``end_s``
    (``[B]`` float, NaN or None for the whole video) and ``sample_seed`` (``[B]`` int: seeds that
    row's ``random`` sampling instead of the stage's own generator, so a row's frames do not
    depend on which actor decodes it); every input column is passed through.

    Added columns:
        ``frames``: ``[B, T, H, W, 3]`` uint8 RGB, zeros where decoding failed.
        ``error``: ``[B]`` str, ``""`` or ``"<category>: <detail>"``.
        ``duration_s``: ``[B]`` float32, the whole video's length (NaN on failure).
        ``frame_times_s``: ``[B, T]`` float32, start time of each sampled frame (NaN on failure).
        ``decode_s``: ``[B]`` float32, wall seconds spent on each video.
    """

    def __init__(
        self,
        *,
        frames: int,
        image_size: int,
        sampling: str = SAMPLING_UNIFORM,
        timeout_s: float = 60.0,
        seed: int = 0,
        threads: int = 1,
        storage: StorageOptions | None = None,
    ) -> None:
        if frames <= 0 or image_size <= 0:
            raise ValueError(f"frames and image_size must be positive, got {frames}, {image_size}")
        if sampling not in (SAMPLING_UNIFORM, SAMPLING_RANDOM):
            raise ValueError(f"sampling must be {SAMPLING_UNIFORM!r} or {SAMPLING_RANDOM!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.frames = frames
        self.image_size = image_size
        self.sampling = sampling
        self.timeout_s = timeout_s
        self.threads = threads
        self.storage = storage if storage is not None else StorageOptions.from_env()
        self._rng = np.random.default_rng(seed)
        # Started now rather than on the first video: under Ray this is actor start-up, which
        # overlaps the encode actors loading their models, instead of the first batch's time.
        self._decoder: _DecoderProcess | None = _DecoderProcess(self._buffer_bytes)
        self._decoded_by_child = 0

    @property
    def _buffer_bytes(self) -> int:
        return self.frames * self.image_size**2 * 3

    @property
    def decoder_pid(self) -> int | None:
        """Process id of the current decoder child, or None before first use or after a kill."""
        return self._decoder.pid if self._decoder is not None else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        uris = batch[schema.URI]
        size = len(uris)
        t, s = self.frames, self.image_size
        frames = np.zeros((size, t, s, s, 3), dtype=np.uint8)
        errors = np.full(size, "", dtype=object)
        durations = np.full(size, np.nan, dtype=np.float32)
        times = np.full((size, t), np.nan, dtype=np.float32)
        seconds = np.zeros(size, dtype=np.float32)
        starts, ends = batch.get(schema.START_S), batch.get(schema.END_S)
        row_seeds = batch.get(schema.SAMPLE_SEED)
        for i in range(size):
            req = _Request(
                uri=str(uris[i]),
                frames=t,
                image_size=s,
                sampling=self.sampling,
                start_s=_optional_float(starts[i]) if starts is not None else None,
                end_s=_optional_float(ends[i]) if ends is not None else None,
                seed=self._sample_seed(row_seeds, i),
                threads=self.threads,
                storage=self.storage,
            )
            began = time.perf_counter()
            result = self._decode(req)
            errors[i] = result.error
            if not result.error:
                frames[i] = _frame_view(self._decoder.buffer, t, s)
                times[i] = result.frame_times_s
                durations[i] = result.duration_s
            seconds[i] = time.perf_counter() - began
        out = {name: _list_cells(column) for name, column in batch.items()}
        out[schema.FRAMES] = frames
        out[schema.ERROR] = errors
        out[schema.DURATION_S] = durations
        out[schema.FRAME_TIMES_S] = times
        out[schema.DECODE_S] = seconds
        return out

    def _sample_seed(self, row_seeds: np.ndarray | None, i: int) -> int | None:
        if self.sampling != SAMPLING_RANDOM:
            return None
        return int(row_seeds[i]) if row_seeds is not None else int(self._rng.integers(2**63))

    def _decode(self, req: _Request) -> _Result:
        if self._decoded_by_child >= _VIDEOS_PER_PROCESS:
            self._discard()
        for attempt in range(2):
            if self._decoder is None:
                self._decoder = _DecoderProcess(self._buffer_bytes)
                self._decoded_by_child = 0
            decoder = self._decoder
            try:
                decoder.conn.send(req)
                break
            except OSError:
                # The child died while idle (OOM killer, a stray signal): not this video's fault.
                self._discard()
                if attempt:
                    raise
        self._decoded_by_child += 1
        try:
            if not decoder.conn.poll(self.timeout_s):
                self._discard(kill=True)
                return _Result(
                    error=f"{TIMEOUT}: no result after {self.timeout_s:g}s; decoder process killed"
                )
            return decoder.conn.recv()
        except (EOFError, OSError):
            reason = decoder.exit_reason()
            self._discard()
            return _Result(error=f"{DECODER_CRASHED}: {reason}")

    def _discard(self, *, kill: bool = False) -> None:
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            if kill:
                decoder.kill()
            else:
                decoder.close()

    def close(self) -> None:
        """Stop the decoder process; the stage starts a new one if called again."""
        self._discard()

    def __enter__(self) -> DecodeStage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._discard(kill=True)

    def __getstate__(self) -> dict[str, Any]:
        # A copy (Ray ships stages to workers by pickling) starts its own decoder process.
        state = dict(self.__dict__)
        state["_decoder"] = None
        return state
