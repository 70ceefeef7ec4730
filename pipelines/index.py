"""The index job's Ray Data graph: manifest -> plan -> decode -> encode -> one committer.

::

    read_manifest + attach_fingerprints      (driver; fails fast on a bad manifest)
    plan_index against the tables            (driver; Arrow joins)
    ray.data.from_arrow(todo)
      .map_batches(DecodeStage)              (CPU actor pool; PyAV or decord in a child process)
      .map_batches(EncodeStage)              (one actor per GPU, or CPU actors)
      or, with one single-thread actor per CPU and no GPU:
      .map_batches(DecodeEncodeStage)        (each CPU actor decodes, then encodes)
      .iter_batches() -> TableWriter         (driver; appends new videos, merge_insert the rest)
    TableWriter.finish()                     (compaction, IVF_PQ index)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

import centerclip
from pipelines import schema
from pipelines.bottleneck import Bottleneck, find_bottleneck
from pipelines.decode import DECODER_NVDEC, MISSING_FILE, DecodeStage, unreadable_file_error
from pipelines.encode import DecodeEncodeStage, EncodeStage, ModelSpec
from pipelines.lease import WriterLease, active_writer
from pipelines.manifest import attach_fingerprints, read_manifest
from pipelines.plan import NEW, REASON, IndexPlan, plan_index
from pipelines.resources import (
    DEFAULT_COMMIT_ROWS,
    NodeShape,
    ResourcePlan,
    ResourceRequest,
    plan_resources,
    rows_per_block,
)
from pipelines.storage import StorageOptions
from pipelines.write import (
    DEFAULT_INDEX_MIN_ROWS,
    TableWriter,
    connect,
    delete_ids,
    fragment_count,
    open_table,
)

log = logging.getLogger(__name__)


class ErrorRateExceeded(RuntimeError):
    """More videos failed than ``max_error_rate`` allows."""


@dataclass(frozen=True)
class IndexConfig:
    """One run of the index job."""

    manifest: str | Sequence[str]
    db: str
    table: str
    model: ModelSpec
    resources: ResourceRequest = field(default_factory=ResourceRequest)
    split: str | None = None
    address: str | None = None
    decode_timeout_s: float = 60.0
    actor_start_timeout_s: int = 600
    commit_rows: int = DEFAULT_COMMIT_ROWS
    commit_seconds: float = 30.0
    rebuild: bool = False
    retry_errors: bool = False
    keep_deleted: bool = False
    dry_run: bool = False
    max_error_rate: float = 1.0
    index_min_rows: int = DEFAULT_INDEX_MIN_ROWS
    cleanup_older_than: timedelta | None = None
    # Read from the environment of the process that builds the config (the driver), then handed
    # to every stage that opens a URI, Ray actors included (see pipelines/storage.py).
    storage: StorageOptions = field(default_factory=StorageOptions.from_env)


@dataclass
class IndexSummary:
    """What a run did, for the terminal and for tests."""

    model_id: str
    plan: dict[str, int]
    table: str = ""
    deleted: int = 0
    metadata_updated: int = 0
    duplicates_removed: int = 0
    """Rows deleted because the table held their ``video_id`` more than once (the newest kept)."""
    active_writer: str = ""
    """A dry run's report of another job writing the table now, if one is."""
    segments_migrated: int = 0
    """Rows whose segments moved from the flat column of earlier versions to the multivector
    one (:func:`pipelines.write.migrate_segment_layout`), re-encoding nothing."""
    indexed: int = 0
    failed: int = 0
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    videos_by_worker: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    resources: str = ""
    ann_index: str = ""
    table_rows: int = 0
    """Rows of the embeddings table after the run (every model's)."""
    error_rows: int = 0
    """Rows of the errors table after the run."""
    fragments: tuple[int, int] = (0, 0)
    """Fragments (data files' groups) of the embeddings and errors tables after the run: what
    the writer's maintenance during the run keeps bounded on long runs."""
    db: str = ""
    startup_rows: int = 0
    """Rows of the first result, which ends start-up."""
    results: list[tuple[float, int]] = field(default_factory=list)
    """Per result block: (wall-clock ``time.time()``, rows received so far)."""
    decoders: dict[str, int] = field(default_factory=dict)
    """Videos per decoder that decoded them (with the reason where a fallback happened)."""
    bottleneck: str = ""
    """Which stage bounds the throughput, from the measured costs (:mod:`pipelines.bottleneck`)."""
    costs: dict[str, float] = field(default_factory=dict)
    """Per video, summed over the rows the stages reported: ``decode_s`` (wall seconds in the
    decoder), ``encode_s`` (an encode actor's seconds), and where the decode stage reports them
    ``decode_cpu_s`` (core-seconds) and ``frames_decoded``."""

    @property
    def steady_videos_per_second(self) -> float | None:
        """Videos/s from the first result to the last: the start-up (Ray, actors loading the
        model) left out. ``None`` when the rows arrived in one block."""
        if len(self.results) < 2:
            return None
        (first_time, first_rows), (last_time, last_rows) = self.results[0], self.results[-1]
        if last_time <= first_time:
            return None
        return (last_rows - first_rows) / (last_time - first_time)

    @property
    def errors_table(self) -> str:
        return schema.errors_table_name(self.table)

    def format(self) -> str:
        """The summary a user reads after the plan and the progress bar."""
        work = self.indexed + self.failed
        lines = [
            f"indexed     {self.indexed} videos with {self.model_id}",
            f"failed      {self.failed}"
            + (
                " ("
                + ", ".join(f"{r}: {n}" for r, n in sorted(self.failures_by_reason.items()))
                + ")"
                if self.failures_by_reason
                else ""
            ),
            f"deleted     {self.deleted}; manifest columns updated in place: "
            f"{self.metadata_updated}",
            f"tables      {self.table}: {self.table_rows} rows; {self.errors_table}: "
            f"{self.error_rows} rows (fragments: {self.fragments[0]} and {self.fragments[1]})",
        ]
        if self.duplicates_removed:
            lines.append(
                f"repaired    {self.duplicates_removed} duplicate rows (kept the newest row of "
                "each video_id)"
            )
        if self.segments_migrated:
            lines.append(
                f"migrated    the segments of {self.segments_migrated} rows to the multivector "
                "column (re-encoding nothing)"
            )
        steady = self.steady_videos_per_second
        startup = self.seconds.get("startup")
        if steady is not None:
            lines.append(
                f"throughput  {steady:.2f} videos/s in the steady state, after "
                f"{startup:.1f} s of start-up (Ray, actors loading the model)"
            )
        elif work and startup is not None:
            lines.append(
                f"throughput  {work} videos in one block after {startup:.1f} s (start-up "
                "included): too few to measure a steady state"
            )
        if self.costs:
            lines.append("per video   " + self._format_costs())
        if self.bottleneck:
            lines.append(f"bottleneck  {self.bottleneck}")
        if self.decoders:
            lines.append(
                "decoded by  " + ", ".join(f"{d}: {n}" for d, n in sorted(self.decoders.items()))
            )
        lines.append("time        " + self._format_seconds())
        if self.resources:
            lines.append(f"resources   {self.resources}")
        lines += [f"  worker {w}: {n} videos" for w, n in sorted(self.videos_by_worker.items())]
        lines.append(f"ANN index   {self.ann_index}")
        if self.error_rows:
            lines.append(
                f"errors      one row per failed video, with its reason, in {self.errors_table}:"
            )
            lines.append(
                f"  python -c \"import lancedb; print(lancedb.connect('{self.db}')"
                f".open_table('{self.errors_table}').to_pandas()[['video_id', 'error']])\""
            )
        return "\n".join(lines)

    def _format_seconds(self) -> str:
        seconds = dict(self.seconds)
        if "pipeline" in seconds and "startup" in seconds:
            seconds["work"] = seconds.pop("pipeline") - seconds["startup"]
        else:
            seconds.pop("pipeline", None)
        order = ("plan", "startup", "work", "write+optimize", "total")
        names = {"startup": "start-up"}
        return ", ".join(f"{names.get(k, k)} {seconds[k]:.1f} s" for k in order if k in seconds)

    def _format_costs(self) -> str:
        costs = self.costs
        parts = []
        if schema.DECODE_CPU_S in costs:
            parts.append(f"decode {costs[schema.DECODE_CPU_S]:.3f} core-s")
        elif schema.DECODE_S in costs:
            parts.append(f"decode {costs[schema.DECODE_S]:.3f} s")
        if schema.FRAMES_DECODED in costs:
            parts.append(f"{costs[schema.FRAMES_DECODED]:.0f} frames decoded")
        if schema.ENCODE_S in costs:
            parts.append(f"encode {costs[schema.ENCODE_S]:.3f} actor-s")
        return ", ".join(parts)


def read_table_state(
    db_uri: str, table: str, storage: StorageOptions | None = None
) -> tuple[pa.Table | None, pa.Table | None]:
    """``(video_id, fingerprint, model_id, metadata_digest)`` of the embeddings table (no
    digest in a table written before digests existed) and ``(video_id, fingerprint, error)`` of
    its errors table, or ``None`` for a table that does not exist yet."""
    db = connect(db_uri, storage)
    state = []
    for name, columns in (
        (
            table,
            # indexed_at: which of duplicate rows (an older version's) is the newest.
            [
                schema.VIDEO_ID,
                schema.FINGERPRINT,
                schema.MODEL_ID,
                schema.METADATA_DIGEST,
                schema.INDEXED_AT,
            ],
        ),
        (
            schema.errors_table_name(table),
            [schema.VIDEO_ID, schema.FINGERPRINT, schema.ERROR, schema.AT],
        ),
    ):
        opened = open_table(db, name)
        if opened is None:
            state.append(None)
            continue
        present = [column for column in columns if column in opened.schema.names]
        state.append(opened.search().select(present).limit(None).to_arrow())
    return state[0], state[1]


def load_manifest(config: IndexConfig) -> pa.Table:
    """Read and validate the manifest (``config.split``'s rows)."""
    manifest = read_manifest(config.manifest, storage=config.storage)
    if config.split is not None:
        if schema.SPLIT not in manifest.column_names:
            raise ValueError(f"--split {config.split}: the manifest has no '{schema.SPLIT}' column")
        manifest = manifest.filter(pc.equal(manifest[schema.SPLIT], config.split))
    return manifest


def load_plan(
    config: IndexConfig, model_id: str, manifest: pa.Table | None = None
) -> tuple[pa.Table, IndexPlan]:
    """Fingerprint the manifest (read by :func:`load_manifest` unless given) and diff it
    against the tables."""
    if manifest is None:
        manifest = load_manifest(config)
    manifest = attach_fingerprints(manifest, storage=config.storage)
    indexed, failed = read_table_state(config.db, config.table, config.storage)
    plan = plan_index(
        manifest,
        indexed=indexed,
        failed=failed,
        model_id=model_id,
        rebuild=config.rebuild,
        retry_errors=config.retry_errors,
        keep_deleted=config.keep_deleted,
    )
    return manifest, plan


ProgressCallback = Callable[[int, int, int], None]
"""``(rows done, of which failed, rows planned)``, called as encoded rows reach the driver."""
# The bottleneck is judged once this many result blocks have arrived (the first carries the
# start-up, so a few more make the costs representative), and again at the end.
BOTTLENECK_AFTER_BLOCKS = 4


def run_index(
    config: IndexConfig,
    *,
    on_plan: Callable[[IndexPlan, str], None] | None = None,
    on_progress: ProgressCallback | None = None,
    on_bottleneck: Callable[[Bottleneck], None] | None = None,
) -> IndexSummary:
    """Bring ``config.table`` in line with the manifest; see the module docstring.

    ``on_plan`` gets the plan and the ``model_id`` it was made for, before any work;
    ``on_progress`` follows the encoded rows (a first call with 0 rows done once the
    pipeline starts); ``on_bottleneck`` gets, once ``BOTTLENECK_AFTER_BLOCKS`` blocks have
    arrived, which stage bounds the job by the costs measured so far.

    Holds the table's writer lease (:mod:`pipelines.lease`) from before the plan to the end;
    a dry run takes none and reports a job that holds it in ``active_writer``.

    Raises:
        pipelines.lease.WriterBusyError: another live job is writing the table (before any work).
    """
    callbacks = {"on_plan": on_plan, "on_progress": on_progress, "on_bottleneck": on_bottleneck}
    # A bad manifest fails before the lease, which would create the database's folder.
    manifest = load_manifest(config)
    if config.dry_run:
        summary = _run_index(config, manifest, None, **callbacks)
        holder = active_writer(config.db, config.table, config.storage)
        summary.active_writer = holder.describe() if holder is not None else ""
        return summary
    with WriterLease(db_uri=config.db, table=config.table, storage=config.storage) as lease:
        return _run_index(config, manifest, lease, **callbacks)


def _run_index(
    config: IndexConfig,
    manifest: pa.Table,
    lease: WriterLease | None,
    *,
    on_plan: Callable[[IndexPlan, str], None] | None,
    on_progress: ProgressCallback | None,
    on_bottleneck: Callable[[Bottleneck], None] | None,
) -> IndexSummary:
    started = time.perf_counter()
    model = config.model.build("cpu")
    _, plan = load_plan(config, model.model_id, manifest)
    summary = IndexSummary(
        model_id=model.model_id, plan=dict(plan.counts), table=config.table, db=config.db
    )
    summary.seconds["plan"] = time.perf_counter() - started
    if on_plan is not None:
        on_plan(plan, model.model_id)
    else:
        log.info("plan: %s", plan.describe())
    if config.dry_run:
        return summary

    writer = TableWriter(
        db_uri=config.db,
        table=config.table,
        dim=model.embed_dim,
        segments=model.num_segments,
        model_id=model.model_id,
        manifest=pa.concat_tables([plan.todo, plan.missing]).drop_columns([REASON]),
        commit_rows=config.commit_rows,
        commit_seconds=config.commit_seconds,
        storage=config.storage,
        vector_metadata=describe_vectors(model, sampling=config.model.sampling),
        lease=lease,
        new_ids=plan.todo.filter(pc.equal(plan.todo[REASON], NEW))[schema.VIDEO_ID],
    )
    if plan.delete_ids:
        delete_ids(writer.table, plan.delete_ids)
        delete_ids(writer.errors, plan.delete_ids)
        summary.deleted = len(plan.delete_ids)
    missing_errors = _changed(_missing_file_errors(plan.missing), plan.missing_recorded)
    if missing_errors.num_rows:
        writer.add(missing_errors)
    # Clip bounds are part of the fingerprint, so they stand for these rows; the stored end_s
    # is the encoder's, clamped to the video, and stays.
    clip_bounds = [
        c for c in (schema.START_S, schema.END_S) if c in plan.metadata_updates.column_names
    ]
    writer.update_metadata(plan.metadata_updates.drop_columns([REASON, *clip_bounds]))

    pipeline_started = time.perf_counter()
    costs: Counter[str] = Counter()
    decoders: Counter[str] = Counter()
    planned = plan.todo.num_rows
    if planned:
        resources = _plan_cluster_resources(config, planned)
        summary.resources = resources.describe()
        log.info("resources: %s", summary.resources)
        dataset = build_dataset(plan.todo, config, model.image_size, model.config.frames, resources)
        received = failed = 0
        if on_progress is not None:
            on_progress(0, 0, planned)
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            # Start-up (actors loading models) ends with the first result; the rest is the
            # steady state, which is what throughput figures measure.
            if "startup" not in summary.seconds:
                summary.seconds["startup"] = time.perf_counter() - pipeline_started
                summary.startup_rows = batch.num_rows
            received += batch.num_rows
            failed += pc.sum(pc.not_equal(batch[schema.ERROR], "")).as_py() or 0
            summary.results.append((time.time(), received))
            for column in _COST_COLUMNS:
                if column in batch.column_names:
                    costs[column] += pc.sum(batch[column]).as_py() or 0.0
            if schema.DECODER in batch.column_names:
                decoders.update(batch[schema.DECODER].to_pylist())
            writer.add(batch)
            if on_progress is not None:
                on_progress(received, failed, planned)
            if len(summary.results) == BOTTLENECK_AFTER_BLOCKS and on_bottleneck is not None:
                found = _bottleneck(costs, received, resources)
                if found is not None:
                    on_bottleneck(found)
            _check_error_rate(writer, planned, config.max_error_rate)
        summary.costs = {column: total / max(received, 1) for column, total in costs.items()}
        summary.decoders = dict(decoders)
        found = _bottleneck(costs, received, resources)
        summary.bottleneck = found.describe() if found is not None else ""
    writer.flush()
    summary.seconds["pipeline"] = time.perf_counter() - pipeline_started

    finish_started = time.perf_counter()
    summary.ann_index = writer.finish(
        deleted=summary.deleted,
        index_min_rows=config.index_min_rows,
        cleanup_older_than=config.cleanup_older_than,
    )
    summary.seconds["write+optimize"] = time.perf_counter() - finish_started
    summary.seconds["total"] = time.perf_counter() - started
    stats = writer.stats
    summary.indexed, summary.failed = stats.indexed, stats.failed
    summary.metadata_updated = stats.metadata_updated
    summary.segments_migrated = writer.segments_migrated
    summary.duplicates_removed = stats.duplicates_removed
    summary.failures_by_reason = dict(stats.failures_by_reason)
    summary.videos_by_worker = dict(stats.videos_by_worker)
    summary.table_rows = writer.table.count_rows()
    summary.error_rows = writer.errors.count_rows()
    summary.fragments = (fragment_count(writer.table), fragment_count(writer.errors))
    _check_error_rate(writer, 0, config.max_error_rate, final=True)
    return summary


def _bottleneck(costs: Counter[str], rows: int, resources: ResourcePlan) -> Bottleneck | None:
    """The bounding stage by the mean costs of ``rows`` rows so far; None without both costs."""
    decode, encode = costs.get(schema.DECODE_CPU_S, 0.0), costs.get(schema.ENCODE_S, 0.0)
    if rows == 0 or decode <= 0 or encode <= 0:
        return None
    decode_cpus = (
        resources.encode_actors * resources.encode_cpus
        if resources.decode_in_encode_actors
        else resources.decode_workers * resources.decode_cpus
    )
    return find_bottleneck(
        decode / rows, encode / rows, decode_cpus=decode_cpus, encode_actors=resources.encode_actors
    )


def describe_vectors(model: centerclip.VideoCLIP, *, sampling: str) -> dict[str, str]:
    """The table's ``vector`` metadata for vectors ``model`` encodes from frames picked by the
    ``sampling`` policy."""
    return schema.vector_metadata(
        model_id=model.model_id,
        preset=model.preset.name,
        settings=json.dumps(dataclasses.asdict(model.config), sort_keys=True),
        dim=model.embed_dim,
        segments=model.num_segments,
        sampling=sampling,
    )


# Per-row costs the stages report, averaged per video in the summary.
_COST_COLUMNS = (schema.DECODE_S, schema.ENCODE_S, schema.DECODE_CPU_S, schema.FRAMES_DECODED)


def _plan_cluster_resources(config: IndexConfig, videos: int) -> ResourcePlan:
    import ray

    if not ray.is_initialized():
        # No --address and no RAY_ADDRESS: an embedded local Ray, never a stale or unrelated
        # `ray start` cluster that happens to run on this machine (use --address auto for that).
        address = config.address or os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, log_to_driver=True)
    available = ray.cluster_resources()
    nodes = [
        NodeShape(
            node["NodeID"], node["Resources"].get("CPU", 0.0), node["Resources"].get("GPU", 0.0)
        )
        for node in ray.nodes()
        if node["Alive"]
    ]
    return plan_resources(
        config.resources,
        cluster_cpus=available.get("CPU", 0.0),
        cluster_gpus=available.get("GPU", 0.0),
        videos=videos,
        nodes=nodes,
        gpu_decoding=config.model.decoder == DECODER_NVDEC,
    )


def build_dataset(
    todo: pa.Table,
    config: IndexConfig,
    image_size: int,
    frames: int,
    resources: ResourcePlan,
) -> Any:
    """The Ray Data graph from planned manifest rows to encoded rows (see module docstring)."""
    import ray

    # Start streaming only once every encode actor holds its model, so work spreads over all of
    # them; an autoscaling cluster gets this long to provide the GPUs, then the job says why.
    context = ray.data.DataContext.get_current()
    context.wait_for_min_actors_s = config.actor_start_timeout_s
    # The driver reports progress itself (``on_progress``); Ray Data's own bars, drawn from
    # its executor, print a stale "0/?" line and interleave with the job's output.
    context.enable_progress_bars = False
    # Only what decoding needs travels through Ray; the writer joins the rest back by video_id.
    carried = [schema.VIDEO_ID, schema.URI, schema.START_S, schema.END_S]
    rows = todo.select([name for name in carried if name in todo.column_names])
    per_block = rows_per_block(resources, rows.num_rows)
    # One block per slice: no repartition (an all-to-all step that needs free CPUs for its tasks).
    dataset = ray.data.from_arrow(
        [rows.slice(start, per_block) for start in range(0, rows.num_rows, per_block)]
    )
    decode_options = {
        "frames": frames,
        "image_size": image_size,
        "sampling": config.model.sampling,
        "decoder": config.model.decoder,
        "timeout_s": config.decode_timeout_s,
        "storage": config.storage,
    }
    encode_options = {
        "fn_constructor_args": (config.model,),
        "batch_size": resources.encode_batch_size,
        "batch_format": "numpy",
        "compute": ray.data.ActorPoolStrategy(size=resources.encode_actors),
        "num_cpus": resources.encode_cpus,
        "num_gpus": resources.encode_gpus,
    }
    if resources.decode_in_encode_actors:
        return dataset.map_batches(
            DecodeEncodeStage,
            fn_constructor_kwargs={**decode_options, "torch_threads": resources.torch_threads},
            **encode_options,
        )
    dataset = dataset.map_batches(
        DecodeStage,
        fn_constructor_kwargs=decode_options,
        batch_size=resources.decode_batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=resources.decode_workers),
        num_cpus=resources.decode_cpus,
        # The plan's nodes: CPU-only nodes first, so decoding need not crowd the GPU nodes.
        ray_remote_args_fn=resources.decode_actor_options(),
    )
    return dataset.map_batches(
        EncodeStage,
        fn_constructor_kwargs={"torch_threads": resources.torch_threads},
        **encode_options,
    )


def _missing_file_errors(missing: pa.Table) -> pa.Table:
    """Error rows of the videos the plan found no file for, each with what is there instead
    (nothing, a directory or pipe, a symlink loop, a file the job may not read)."""
    return pa.table(
        {
            schema.VIDEO_ID: missing[schema.VIDEO_ID],
            schema.ERROR: pa.array(
                [_missing_file_error(uri) for uri in missing[schema.URI].to_pylist()], pa.string()
            ),
            schema.STAGE: pa.array([schema.STAGE_READ] * missing.num_rows, pa.string()),
        }
    )


def _changed(errors: pa.Table, recorded: pa.Table) -> pa.Table:
    """The rows of ``errors`` (``video_id, error, stage``) whose error the errors table does
    not hold already: a file still missing for the same reason is recorded once, not
    rewritten (a new row version, a new ``at``) on every run."""
    if recorded.num_rows == 0:
        return errors
    previous = pc.index_in(errors[schema.VIDEO_ID], value_set=recorded[schema.VIDEO_ID])
    same = pc.equal(errors[schema.ERROR], recorded[schema.ERROR].combine_chunks().take(previous))
    return errors.filter(pc.invert(pc.fill_null(same, False)))


_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _missing_file_error(uri: str) -> str:
    if uri.startswith("file:"):
        path = pafs.FileSystem.from_uri(uri)[1]
    elif _URI_SCHEME.match(uri):
        return f"{MISSING_FILE}: {uri}"
    else:
        path = uri
    return unreadable_file_error(path) or f"{MISSING_FILE}: {uri}"


def _check_error_rate(
    writer: TableWriter, planned: int, max_error_rate: float, *, final: bool = False
) -> None:
    stats = writer.stats
    seen = stats.indexed + stats.failed
    # Judge early only once enough videos were seen for the rate to mean something.
    if seen == 0 or (not final and seen < max(50, planned // 10)):
        return
    rate = stats.failed / seen
    if rate > max_error_rate:
        raise ErrorRateExceeded(
            f"{stats.failed} of {seen} videos failed ({rate:.1%}), above --max-error-rate "
            f"{max_error_rate:.1%}; see the errors table for the reasons"
        )
