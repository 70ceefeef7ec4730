"""The data side: captioned splits, the schedule of every training row drawn up front, and the
Ray Data pipelines that decode them for the workers."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from centerclip.train import TrainConfig
from pipelines import schema
from pipelines.decode import SAMPLING_RANDOM, DecodeStage
from pipelines.finetune.config import FinetuneConfig, WorkerSetup
from pipelines.resources import TrainingPlan

log = logging.getLogger(__name__)

VAL_BATCH_SIZE = 32


def captioned_split(manifest: pa.Table, split: str) -> pa.Table:
    """The rows of ``split`` that have at least one non-empty caption; a video without a caption
    cannot be trained or validated on."""
    for column in (schema.SPLIT, schema.CAPTION):
        if column not in manifest.column_names:
            raise ValueError(f"the manifest has no '{column}' column; fine-tuning needs both")
    rows = manifest.filter(pc.equal(manifest[schema.SPLIT], split))
    captions = [
        [c for c in (own or []) if c and c.strip()] for own in rows[schema.CAPTION].to_pylist()
    ]
    keep = pa.array([bool(own) for own in captions])
    rows = rows.set_column(
        rows.column_names.index(schema.CAPTION),
        schema.CAPTION,
        pa.array(captions, pa.list_(pa.string())),
    )
    return rows.filter(keep)


def training_schedule(
    rows: pa.Table, config: TrainConfig, *, start_step: int, stop_step: int
) -> pa.Table:
    """Every training row from ``start_step`` to ``stop_step`` (exclusive), in stream order.

    Epoch ``e`` is a permutation of ``rows`` drawn from ``(config.seed, e)``, cut to whole
    global batches (the remainder waits for a later epoch's permutation). Each row gets one of
    its captions and a frame-sampling seed from the same generator.

    Args:
        rows: the training videos (``video_id``, ``uri``, ``caption``, optional clip bounds),
            at least one global batch of them.
    Returns:
        columns ``video_id``, ``uri``, [``start_s``, ``end_s``], ``step`` (int64),
        ``train_caption`` (string) and ``sample_seed`` (int64); ``batch_size`` rows per step.
    """
    batch = config.batch_size
    steps_per_epoch = rows.num_rows // batch
    carried = [
        c
        for c in (schema.VIDEO_ID, schema.URI, schema.START_S, schema.END_S)
        if c in rows.column_names
    ]
    captions = rows[schema.CAPTION].to_pylist()
    parts = []
    for epoch in range(start_step // steps_per_epoch, -(-stop_step // steps_per_epoch)):
        rng = np.random.default_rng([config.seed, epoch])
        order = rng.permutation(rows.num_rows)[: steps_per_epoch * batch]
        chosen = [captions[i][rng.integers(len(captions[i]))] for i in order]
        seeds = rng.integers(np.iinfo(np.int64).max, size=len(order), dtype=np.int64)
        steps = epoch * steps_per_epoch + np.arange(len(order)) // batch
        part = rows.select(carried).take(order)
        part = part.append_column(schema.STEP, pa.array(steps, pa.int64()))
        part = part.append_column(schema.TRAIN_CAPTION, pa.array(chosen, pa.string()))
        part = part.append_column(schema.SAMPLE_SEED, pa.array(seeds, pa.int64()))
        wanted = (steps >= start_step) & (steps < stop_step)
        parts.append(part.filter(pa.array(wanted)))
    return pa.concat_tables(parts)


def validation_rows(manifest: pa.Table, config: FinetuneConfig) -> pa.Table | None:
    if config.val_split is None:
        return None
    rows = captioned_split(manifest, config.val_split)
    if rows.num_rows == 0:
        log.warning("no captioned videos in the '%s' split: no validation", config.val_split)
        return None
    return rows.slice(0, config.val_max_videos)


def train_dataset(
    schedule: pa.Table, setup: WorkerSetup, model: Any, plan: TrainingPlan, config: FinetuneConfig
) -> Any:
    """Schedule rows -> random-sampled frames, one block (and decode call) per local batch."""
    return _decoded(schedule, SAMPLING_RANDOM, setup.local_batch, model, plan, config)


def val_dataset(rows: pa.Table, model: Any, plan: TrainingPlan, config: FinetuneConfig) -> Any:
    """Validation rows -> frames sampled as indexing will (``config.model.sampling``)."""
    carried = [schema.VIDEO_ID, schema.URI, schema.CAPTION, schema.START_S, schema.END_S]
    rows = rows.select([c for c in carried if c in rows.column_names])
    return _decoded(rows, config.model.sampling, VAL_BATCH_SIZE, model, plan, config)


def _decoded(
    rows: pa.Table,
    sampling: str,
    batch_size: int,
    model: Any,
    plan: TrainingPlan,
    config: FinetuneConfig,
) -> Any:
    """``rows`` in blocks of ``batch_size`` (one decode call each) -> their frames, decoded by
    the plan's pool of decode actors."""
    import ray

    blocks = [rows.slice(start, batch_size) for start in range(0, rows.num_rows, batch_size)]
    return _quiet(ray.data.from_arrow(blocks)).map_batches(
        DecodeStage,
        fn_constructor_kwargs={
            "frames": model.config.frames,
            "image_size": model.image_size,
            "sampling": sampling,
            "decoder": config.model.decoder,
            "timeout_s": config.decode_timeout_s,
            "storage": config.storage,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.decode_workers),
        num_cpus=plan.decode_cpus,
    )


def _quiet(dataset: Any) -> Any:
    """``dataset`` without Ray Data's progress bars: they are drawn from inside the training
    workers, interleave with the training log, and the loop logs its own progress."""
    dataset.context.enable_progress_bars = False
    return dataset


def data_config() -> Any:
    """Split only the training data over the workers (worker 0 validates on all of ``val``), and
    keep the stream's order: it is what makes worker ``w`` get block ``w`` of every step."""
    from ray.train import DataConfig

    ordered = DataConfig.default_ingest_options()
    ordered.preserve_order = True
    return DataConfig(datasets_to_split=["train"], execution_options={"train": ordered})
