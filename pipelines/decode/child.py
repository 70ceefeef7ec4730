"""The decoder process: decoding runs in a child Python process the stage owns.

Decoders can hang on a stalled read or crash the process on hostile input. The stage sends one
request per video over a socket pair and waits at most its timeout; frames come back through a
shared-memory buffer rather than the socket, which saves pickling and two copies per video.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from typing import IO

import numpy as np

from pipelines.decode import decord_backend, pyav_backend, torchcodec_backend
from pipelines.decode.environment import decoder_environment
from pipelines.decode.errors import DECODE_FAILED, PyavFallback, _Failure, _short
from pipelines.decode.protocol import _ClipResult, _Request, _Result
from pipelines.decode.source import _local_file

# A child that cannot even import decord within this long is an installation problem, not a
# property of one video, so it raises instead of producing error rows.
_STARTUP_TIMEOUT_S = 120.0


DECODER_PYAV = "pyav"
DECODER_DECORD = "decord"
_BACKENDS = {
    DECODER_PYAV: pyav_backend.decode_file,
    DECODER_DECORD: decord_backend.decode_file,
    torchcodec_backend.DECODER_NVDEC: torchcodec_backend.decode_file,
    torchcodec_backend.DECODER_TORCHCODEC: torchcodec_backend.decode_file,
}
DECODERS = tuple(_BACKENDS)


def _decode_request(req: _Request, out: np.ndarray) -> _Result:
    """Decode the clips of one file into ``out`` ``[C, T, S, S, 3]``; every failure becomes an
    error (the whole file's, or one clip's)."""
    began = time.process_time()
    result = _Result()
    try:
        with _local_file(req.uri, req.storage) as path:
            try:
                result.clips, result.frames_decoded = _BACKENDS[req.decoder](path, req, out)
            except PyavFallback as fallback:
                result.clips, result.frames_decoded = pyav_backend.decode_file(path, req, out)
                result.decoder = f"{DECODER_PYAV} ({fallback})"
    except _Failure as failure:
        result.clips = [_ClipResult(error=str(failure))] * len(req.clips)
    except Exception as err:
        error = f"{DECODE_FAILED}: {type(err).__name__}: {_short(err)}"
        result.clips = [_ClipResult(error=error)] * len(req.clips)
    # The child's own CPU time, decoder threads included: what this file cost.
    result.cpu_s = time.process_time() - began
    return result


def _frame_view(buffer: mmap.mmap, clips: int, frames: int, size: int) -> np.ndarray:
    """The shared buffer as ``[clips, frames, size, size, 3]`` uint8."""
    count = clips * frames * size * size * 3
    return np.frombuffer(buffer, np.uint8, count=count).reshape(clips, frames, size, size, 3)


def _child_main(fd: int, buffer_fd: int, buffer_bytes: int) -> None:
    """Entry point of the decoder process: answer requests on socket ``fd`` until EOF.

    Frames go into the memory shared through ``buffer_fd`` rather than through the socket, which
    saves pickling and two copies of ``T * S * S * 3`` bytes per clip.
    """
    import av
    import decord

    # Both libraries log every damaged file to stderr; the message lands in the error row.
    decord.logging.set_level(decord.logging.QUIET)
    av.logging.set_level(av.logging.PANIC)
    buffer = mmap.mmap(buffer_fd, buffer_bytes)
    conn = Connection(fd)
    try:
        conn.send(os.getpid())
    except OSError:  # the stage was closed before it needed this process
        return
    while True:
        try:
            req = conn.recv()
        except EOFError:
            return
        out = _frame_view(buffer, len(req.clips), req.frames, req.image_size)
        conn.send(_decode_request(req, out))


def _shareable_file() -> IO[bytes]:
    """An unnamed file to map in both processes: anonymous memory where the OS offers it."""
    if hasattr(os, "memfd_create"):
        return os.fdopen(os.memfd_create("decoded-frames"), "r+b")
    return tempfile.TemporaryFile()


class _DecoderProcess:
    """One child Python process running :func:`_child_main`, talking over a socket pair."""

    def __init__(self, buffer_bytes: int) -> None:
        env = decoder_environment()
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
        self._started = False

    def wait_started(self) -> None:
        """Returns once the child has announced itself (at once after the first time); not done
        in ``__init__``, so the owner carries on starting (an actor loading its model) while the
        child's interpreter imports the decoders.

        Raises:
            RuntimeError: the child exited, or did not start within ``_STARTUP_TIMEOUT_S``; the
                owner then kills it (:meth:`kill`).
        """
        if self._started:
            return
        if not self.conn.poll(_STARTUP_TIMEOUT_S):
            raise RuntimeError(f"decoder process did not start within {_STARTUP_TIMEOUT_S:g}s")
        try:
            self.conn.recv()
        except EOFError:
            code = self.process.wait()
            raise RuntimeError(f"decoder process failed to start (exit status {code})") from None
        self._started = True

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
