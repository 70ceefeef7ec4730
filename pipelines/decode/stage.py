"""The decode stage itself: a plain callable over numpy batches that drives the decoder process."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import numpy as np

from pipelines import schema
from pipelines.decode.child import DECODER_PYAV, DECODERS, _DecoderProcess, _frame_view
from pipelines.decode.errors import DECODER_CRASHED, TIMEOUT
from pipelines.decode.protocol import _Clip, _ClipResult, _Request, _Result
from pipelines.decode.sampling import SAMPLING_RANDOM, SAMPLING_UNIFORM, SAMPLINGS
from pipelines.decode.torchcodec_backend import resolve_decoder
from pipelines.storage import StorageOptions

# decord leaks memory on some inputs (large frames especially); a fresh child now and then
# bounds what a long job can accumulate, at the price of one process start.
_VIDEOS_PER_PROCESS = 2000
# Clips of one file decoded in one pass at most; more rows of one uri take further passes.
MAX_CLIPS_PER_PASS = 64
DEFAULT_DECODER = DECODER_PYAV


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


def _passes(uris: np.ndarray) -> list[list[int]]:
    """Row indices grouped by uri, in order of first appearance, at most
    :data:`MAX_CLIPS_PER_PASS` rows a group: each group is one pass over one file."""
    groups: dict[str, list[int]] = {}
    for i, uri in enumerate(uris):
        groups.setdefault(str(uri), []).append(i)
    return [
        rows[at : at + MAX_CLIPS_PER_PASS]
        for rows in groups.values()
        for at in range(0, len(rows), MAX_CLIPS_PER_PASS)
    ]


def _failed(req: _Request, error: str) -> _Result:
    return _Result(clips=[_ClipResult(error=error)] * len(req.clips))


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
        sampling: which frame of each of the ``T`` chunks: ``"uniform"`` (the chunk's centre, for
            indexing and evaluation), ``"fast"`` (the frame cheapest to reach near the centre),
            ``"keyframe"`` (the nearest keyframe; cheapest, fewest distinct frames) or
            ``"random"`` (a random frame inside each chunk, for training; fresh on every call).
        timeout_s: longest time one video may take (reading included) before it is abandoned;
            a pass over several clips of one file may take this long per clip.
        seed: seeds the ``random`` sampling; successive calls draw different frames.
        threads: decoder threads per video (keep 1 where parallelism comes from many stages).
        storage: how to reach ``s3://`` videos. Pass the driver's
            (:meth:`StorageOptions.from_env` there): a Ray actor's own environment is the
            cluster's, which is what the default reads.
        decoder: the library decoding in the child, ``"pyav"`` (default), ``"decord"``,
            ``"nvdec"`` (the GPU, through torchcodec) or ``"torchcodec"`` (torchcodec on the CPU:
            the GPU path without a GPU); PyAV where the last two cannot run, see
            ``torchcodec_backend``.

    Input batch: at least ``video_id`` and ``uri`` (``[B]``), optionally ``start_s`` / ``end_s``
    (``[B]`` float, NaN or None for the whole video) and ``sample_seed`` (``[B]`` int: seeds that
    row's ``random`` sampling instead of the stage's own generator, so a row's frames do not
    depend on which actor decodes it); every input column is passed through. Rows of a batch that
    share a ``uri`` (clips of one long video) are decoded together: one read of the file, one
    pass over it.

    Added columns:
        ``frames``: ``[B, T, H, W, 3]`` uint8 RGB, zeros where decoding failed.
        ``error``: ``[B]`` str, ``""`` or ``"<category>: <detail>"``.
        ``duration_s``: ``[B]`` float32, the whole video's length (NaN on failure).
        ``frame_times_s``: ``[B, T]`` float32, start time of each sampled frame (NaN on failure).
        ``decode_s``: ``[B]`` float32, wall seconds spent on each video.
        ``decode_cpu_s``: ``[B]`` float32, CPU seconds the decoder process spent on it.
        ``frames_decoded``: ``[B]`` int32, frames the decoder produced for it.
        ``decoder``: ``[B]`` str, what decoded it, with the reason where that is not the
        decoder asked for (``"pyav (nvdec unavailable: ...)"``).
        Clips decoded in one pass share its cost equally.
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
        decoder: str = DEFAULT_DECODER,
    ) -> None:
        if frames <= 0 or image_size <= 0:
            raise ValueError(f"frames and image_size must be positive, got {frames}, {image_size}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.frames = frames
        self.image_size = image_size
        self.sampling = sampling
        self.timeout_s = timeout_s
        self.threads = threads
        # NVDEC falls back to CPU decoding where it cannot run; the label says why.
        self.decoder, self.decoder_label = resolve_decoder(decoder, DECODER_PYAV)
        self.storage = storage if storage is not None else StorageOptions.from_env()
        self._rng = np.random.default_rng(seed)
        # Passes over files so far: one per distinct uri of a batch (tests count them).
        self.passes = 0
        # Started now rather than on the first video, and not waited for until then: its
        # interpreter imports the decoders while this actor finishes starting (a DecodeEncodeStage
        # builds its model; in a decode pool, Ray Data starts the encode pool once this pool is
        # ready), instead of during the first batch or before the actor counts as ready.
        self._decoder: _DecoderProcess | None = _DecoderProcess(self._buffer_bytes)
        self._decoded_by_child = 0

    @property
    def _buffer_bytes(self) -> int:
        # Untouched pages of the shared file cost no memory, so room for a full pass is cheap.
        return MAX_CLIPS_PER_PASS * self.frames * self.image_size**2 * 3

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
        cpu_seconds = np.zeros(size, dtype=np.float32)
        decoded = np.zeros(size, dtype=np.int32)
        decoders = np.full(size, self.decoder_label, dtype=object)
        starts, ends = batch.get(schema.START_S), batch.get(schema.END_S)
        row_seeds = batch.get(schema.SAMPLE_SEED)
        for rows in _passes(uris):
            clips = tuple(
                _Clip(
                    start_s=_optional_float(starts[i]) if starts is not None else None,
                    end_s=_optional_float(ends[i]) if ends is not None else None,
                    seed=self._sample_seed(row_seeds, i),
                )
                for i in rows
            )
            req = _Request(
                uri=str(uris[rows[0]]),
                clips=clips,
                frames=t,
                image_size=s,
                sampling=self.sampling,
                threads=self.threads,
                storage=self.storage,
                decoder=self.decoder,
            )
            began = time.perf_counter()
            result = self._decode(req)
            self.passes += 1
            for k, (i, clip) in enumerate(zip(rows, result.clips, strict=True)):
                errors[i] = clip.error
                if not clip.error:
                    frames[i] = self._clip_frames(len(rows), k)
                    times[i] = clip.frame_times_s
                    durations[i] = clip.duration_s
            share = len(rows)
            seconds[rows] = (time.perf_counter() - began) / share
            cpu_seconds[rows] = result.cpu_s / share
            # Whole frames per clip, the remainder to the first clips, so they sum to the pass.
            decoded[rows] = result.frames_decoded // share
            decoded[rows[: result.frames_decoded % share]] += 1
            if result.decoder:
                decoders[rows] = result.decoder
        out = {name: _list_cells(column) for name, column in batch.items()}
        out[schema.FRAMES] = frames
        out[schema.ERROR] = errors
        out[schema.DURATION_S] = durations
        out[schema.FRAME_TIMES_S] = times
        out[schema.DECODE_S] = seconds
        out[schema.DECODE_CPU_S] = cpu_seconds
        out[schema.DECODER] = decoders
        out[schema.FRAMES_DECODED] = decoded
        return out

    def _clip_frames(self, clips: int, k: int) -> np.ndarray:
        """Clip ``k``'s frames in the shared buffer (a view). No view may outlive the call that
        copies it: the buffer cannot be closed, nor a dead child replaced, while one exists."""
        assert self._decoder is not None
        return _frame_view(self._decoder.buffer, clips, self.frames, self.image_size)[k]

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
                decoder.wait_started()
            except RuntimeError:  # the next call starts another process
                self._discard(kill=True)
                raise
            try:
                decoder.conn.send(req)
                break
            except OSError:
                # The child died while idle (OOM killer, a stray signal): not this video's fault.
                self._discard()
                if attempt:
                    raise
        self._decoded_by_child += 1
        timeout_s = self.timeout_s * len(req.clips)
        try:
            if not decoder.conn.poll(timeout_s):
                self._discard(kill=True)
                error = f"{TIMEOUT}: no result after {timeout_s:g}s; decoder process killed"
                return _failed(req, error)
            return decoder.conn.recv()
        except (EOFError, OSError):
            reason = decoder.exit_reason()
            self._discard()
            return _failed(req, f"{DECODER_CRASHED}: {reason}")

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
