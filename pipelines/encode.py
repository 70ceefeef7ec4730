"""Encode stage: one model replica turns decoded frames into unit embeddings."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

import centerclip
from pipelines import schema
from pipelines.decode import DEFAULT_DECODER, SAMPLING_UNIFORM, DecodeStage
from pipelines.model_files import local_model_file
from pipelines.storage import StorageOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build the same model in any process, and to feed it frames.

    ``sampling`` (``pipelines.decode``: ``uniform``, ``fast``, ``keyframe``) chooses the frames
    the embeddings are made of, so it is part of the built model's ``model_id`` (as a
    ``/sampling-<policy>`` suffix, absent for the default ``uniform``): changing it re-indexes
    instead of mixing. ``decoder`` (``pyav``, ``decord``) is not: both give the same frames.
    """

    model: str
    weights: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict, hash=False)
    sampling: str = SAMPLING_UNIFORM
    decoder: str = DEFAULT_DECODER
    # Reaches an ``s3://`` model: read in the driver, it travels to every process that builds.
    storage: StorageOptions = field(default_factory=StorageOptions)

    def build(self, device: str | torch.device = "cpu") -> centerclip.VideoCLIP:
        """The model; an ``s3://`` checkpoint is loaded from a local cached copy
        (:func:`pipelines.model_files.local_model_file`)."""
        name = local_model_file(self.model, self.storage)
        model = centerclip.create_model(name, self.weights, device=device, **self.overrides)
        if self.sampling != SAMPLING_UNIFORM:
            model.model_id = f"{model.model_id}/sampling-{self.sampling}"
        return model


def worker_label() -> str:
    """Where this process runs: host, Ray node id and assigned GPU ids (when under Ray)."""
    label = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            context = ray.get_runtime_context()
            gpus = context.get_accelerator_ids().get("GPU", [])
            label = f"node={context.get_node_id()[:12]} gpus={','.join(gpus) or '-'}"
    except ImportError:
        pass
    return f"{label} pid={os.getpid()}"


class EncodeStage:
    """Frames ``[B, T, H, W, 3]`` uint8 in, ``vector`` and ``segment_embeddings`` out.

    Rows that arrive with an ``error`` pass through without a vector. A batch that fails to
    encode is retried row by row so one bad input cannot take its neighbours down; a row that
    still fails gets an ``encode`` error. The ``frames`` column is dropped so the big arrays
    travel no further than this stage.
    """

    def __init__(self, spec: ModelSpec, *, torch_threads: int | None = None) -> None:
        if torch_threads:
            # The plan counts the cluster's CPUs; an actor computes on its own node's.
            torch.set_num_threads(min(torch_threads, os.cpu_count() or torch_threads))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = spec.build(self.device)
        self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None
        self.worker = worker_label()
        # On stderr, which Ray keeps in the actor's log file (and shows on the driver): where each
        # replica runs is on record even for an actor the pool never gave a batch.
        print(
            f"encode actor {self.worker}: {self.model.model_id} on {self.device}",
            file=sys.stderr,
            flush=True,
        )

    def _encode(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with (
            torch.inference_mode(),
            torch.autocast(
                self.device.type,
                dtype=self.autocast_dtype or torch.bfloat16,
                enabled=self.autocast_dtype is not None,
            ),
        ):
            video, segments = self.model.encode_video(
                self.model.preprocess(frames), return_segments=True
            )
        return (
            video.float().cpu().numpy(),  # [B, D]
            segments.float().cpu().numpy(),  # [B, S, D]
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        count = len(batch[schema.VIDEO_ID])
        dim, segments = self.model.embed_dim, self.model.num_segments
        errors = [str(e) for e in batch[schema.ERROR]]
        stages = [schema.STAGE_DECODE if e else "" for e in errors]
        vectors = np.zeros((count, dim), np.float32)
        segment_vectors = np.zeros((count, segments, dim), np.float32)
        good = [i for i, e in enumerate(errors) if not e]
        started = time.perf_counter()
        if good:
            try:
                vectors[good], segment_vectors[good] = self._encode(batch[schema.FRAMES][good])
            except Exception:  # isolate the culprit row by row
                log.exception("encode failed for a batch of %d; retrying row by row", len(good))
                for i in good:
                    try:
                        vectors[i], segment_vectors[i] = self._encode(
                            batch[schema.FRAMES][i : i + 1]
                        )
                    except Exception as err:  # recorded as the row's error
                        errors[i] = f"encode failed: {type(err).__name__}: {err}"
                        stages[i] = schema.STAGE_ENCODE
        table = self._to_table(batch, vectors, segment_vectors, errors, stages)
        seconds_per_row = (time.perf_counter() - started) / max(count, 1)
        return table.append_column(
            schema.ENCODE_S, pa.array([seconds_per_row] * count, pa.float32())
        )

    def _to_table(
        self,
        batch: dict[str, np.ndarray],
        vectors: np.ndarray,
        segment_vectors: np.ndarray,
        errors: list[str],
        stages: list[str],
    ) -> pa.Table:
        count, dim = vectors.shape
        segments = segment_vectors.shape[1]
        failed = pa.array([bool(e) for e in errors])
        vector = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
        times = np.asarray(batch[schema.FRAME_TIMES_S], np.float32).reshape(count, -1)
        durations = np.asarray(batch[schema.DURATION_S], np.float32)
        # An end_s past the video's end (the manifest cannot know the duration) means its end:
        # the stored clip and segment times are the ones the frames came from.
        clip_end_s = np.fmin(_column_or(batch, schema.END_S, durations), durations)
        starts, ends = segment_spans(
            times,
            segments,
            clip_start_s=_column_or(batch, schema.START_S, np.zeros(count, np.float32)),
            clip_end_s=clip_end_s,
        )
        columns: dict[str, Any] = {
            name: _to_arrow(values)
            for name, values in batch.items()
            if name not in (schema.FRAMES, schema.FRAME_TIMES_S, schema.ERROR)
        }
        if schema.END_S in batch:
            given = np.asarray(batch[schema.END_S], np.float64)
            clamped = np.where(np.isnan(given), given, np.fmin(given, durations))
            columns[schema.END_S] = pa.array(clamped, pa.float64(), mask=np.isnan(given))
        columns.update(
            {
                schema.VECTOR: pc.if_else(failed, pa.scalar(None, vector.type), vector),
                schema.SEGMENT_EMBEDDINGS: schema.multivectors(segment_vectors),
                schema.SEGMENT_START_S: pa.FixedSizeListArray.from_arrays(
                    pa.array(starts.reshape(-1)), segments
                ),
                schema.SEGMENT_END_S: pa.FixedSizeListArray.from_arrays(
                    pa.array(ends.reshape(-1)), segments
                ),
                schema.ERROR: pa.array(errors),
                schema.STAGE: pa.array(stages),
                schema.WORKER: pa.array([self.worker] * count),
            }
        )
        return pa.table(columns)


class DecodeEncodeStage:
    """:class:`DecodeStage` then :class:`EncodeStage` in one process: manifest rows in, the
    encode stage's table out.

    For CPU-only plans (``ResourcePlan.decode_in_encode_actors``): decoding and encoding share
    the CPUs anyway, and this way the frames go from the decoder child to the model without
    crossing Ray's object store. Arguments are those of the two stages.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        frames: int,
        image_size: int,
        sampling: str = SAMPLING_UNIFORM,
        decoder: str = DEFAULT_DECODER,
        timeout_s: float = 60.0,
        storage: StorageOptions | None = None,
        torch_threads: int | None = None,
    ) -> None:
        self.decode = DecodeStage(
            frames=frames,
            image_size=image_size,
            sampling=sampling,
            decoder=decoder,
            timeout_s=timeout_s,
            storage=storage,
        )
        self.encode = EncodeStage(spec, torch_threads=torch_threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return self.encode(self.decode(batch))


def segment_spans(
    frame_times_s: np.ndarray,
    segments: int,
    *,
    clip_start_s: np.ndarray,
    clip_end_s: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end second of each segment from the sampled frames' times.

    Args:
        frame_times_s: times of the T sampled frames ``[B, T]``.
        segments: S, dividing T (one segment per frame without clustering).
        clip_start_s, clip_end_s: the span the frames were sampled from ``[B]``.
    Returns:
        ``(starts [B, S], ends [B, S])`` float32: the first segment starts at the clip's start,
        the last ends at the clip's end, and neighbours meet half-way between the last frame of
        one and the first frame of the next.
    """
    count, frames = frame_times_s.shape
    per = max(frames // segments, 1)
    edges = np.concatenate(
        [
            np.asarray(clip_start_s, np.float32).reshape(count, 1),
            (frame_times_s[:, per - 1 : -1 : per] + frame_times_s[:, per::per]) / 2,
            np.asarray(clip_end_s, np.float32).reshape(count, 1),
        ],
        axis=1,
    )
    return edges[:, :-1].astype(np.float32), edges[:, 1:].astype(np.float32)


def _column_or(batch: dict[str, np.ndarray], name: str, default: np.ndarray) -> np.ndarray:
    if name not in batch:
        return default
    values = np.asarray(batch[name], np.float32)
    return np.where(np.isnan(values), default, values)


def _to_arrow(values: np.ndarray) -> pa.Array:
    if values.dtype == object:
        return pa.array(list(values))
    if values.ndim > 1:
        flat = pa.array(values.reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, int(np.prod(values.shape[1:])))
    return pa.array(values)
