"""Write stage: the one process that commits to LanceDB.

Encoded batches stream into :class:`TableWriter` in the driver. It buffers them and commits an
upsert keyed on ``video_id`` every ``commit_rows`` rows or ``commit_seconds`` seconds, so a killed
job keeps what it committed and a rerun that writes the same videos again replaces rows instead of
duplicating them. Each upsert is one Lance commit that finds the rows it replaces through the
``video_id`` index (:mod:`pipelines.upsert`, whose cost does not grow with the table, unlike
LanceDB's ``merge_insert``). Rows of videos the plan found in neither table (``new_ids``: most of a
first index) are appended instead, the first time this run writes them: an append looks nothing up,
so it costs what it writes. The append stays exactly-once: a rerun's plan sees the appended rows as
indexed and does not write them again. Only this process writes, because two LanceDB writers
upserting the same keys at once can both insert: the index job holds the table's writer lease
(:mod:`pipelines.lease`) while it writes, and the writer checks it before every commit. A table that
holds duplicate ids anyway (written by an older version, or by two jobs at once before the lease
existed) is repaired when the writer opens it (:func:`remove_duplicate_ids`).

Both tables carry a BTREE index on ``video_id``, which upserts find their rows through and every
``video_id IN (...)`` lookup and delete uses, and the embeddings table a BITMAP index on
``model_id``, which the search prefilter uses, so a commit or a query costs what it touches, not
what the table holds. Rows added since an index was last refreshed are scanned, so the writer
maintains its tables (:func:`maintain_table`: compaction and index refresh, and old versions
removed when asked) when :class:`MaintenanceSchedule` says it pays, at most ``maintain_every``
commits apart, and once more in :meth:`TableWriter.finish`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.index import FTS, IvfPq

from pipelines import schema
from pipelines.lease import WriterLease
from pipelines.plan import newest_per_id, with_metadata_digests
from pipelines.resources import DEFAULT_COMMIT_ROWS
from pipelines.storage import StorageOptions
from pipelines.upsert import IndexedUpsert, sql_in

log = logging.getLogger(__name__)

DEFAULT_INDEX_MIN_ROWS = 5000
# The most commits between two compactions (which also fold new rows into every index) during a
# run, whatever :class:`MaintenanceSchedule` measures: each commit adds a fragment, a file every
# search opens. bench/scale.py at 100k rows: each 256-row upsert since the last compaction made
# the next one about 7 ms slower and a compaction cost 11 s, so N commits cost about 7 N^2 / 2 ms
# extra plus 11 s: least per commit near N = sqrt(2 x 11 s / 7 ms) = 56.
DEFAULT_MAINTAIN_EVERY = 50
REBUILD_INDEX_FRACTION = 0.1
# Compaction merges fragments smaller than this. Lance's default (1M rows) rewrites a whole table
# below 1M rows at every maintenance, a cost that grows with the table; with this bound a
# maintenance rewrites at most one partly filled fragment besides the new rows.
COMPACT_TARGET_ROWS = 1 << 17
# A vector index takes the rows a maintenance folds in as a segment of its own (a delta) instead
# of merging them into its first segment: Lance 13 (under LanceDB 0.40) merges into an IVF_PQ
# index's first segment by reading its rows back one at a time. bench/scale.py's 100k-row table
# after 10 commits of 256 rows: that merge took 89 s for the segments' multivector index and
# 6.5 s for the video vectors', a delta 1.1 and 0.3 s. A search visits every segment (median
# query 17 ms with 2, 30 ms with 9, 70 ms with 26), so at this many the deltas are merged into
# one, leaving the first segment alone (25 deltas of 2,560 rows: 3.0 and 1.4 s).
MAX_INDEX_SEGMENTS = 8
_DELETE_CHUNK = 500
# The column marking queued rows that are appended rather than upserted (never written).
_APPEND = "_append"
# Rows per commit when moving a table's segments to the multivector column (8 MiB a chunk at
# 4 segments of 512 floats per row).
MIGRATE_CHUNK_ROWS = 1024


def connect(db_uri: str, storage: StorageOptions | None = None) -> lancedb.DBConnection:
    """Open the LanceDB database at ``db_uri`` (a folder or ``s3://`` URI); ``storage`` says how
    to reach S3 (default :meth:`StorageOptions.from_env`)."""
    storage = storage if storage is not None else StorageOptions.from_env()
    return lancedb.connect(db_uri, storage_options=storage.lancedb_options(db_uri) or None)


def open_table(
    db: lancedb.DBConnection, name: str, *, drop_unfinished: bool = False
) -> lancedb.table.Table | None:
    """The table ``name``, or None if there is none, or only a folder without any version (a
    creation cut short by a full disk or a kill). With ``drop_unfinished`` such a folder is
    removed: creating the table over it would otherwise fail, and it holds nothing."""
    if name not in db.table_names():
        return None
    try:
        return db.open_table(name)
    except ValueError as err:
        if "was not found" not in str(err):
            raise
    if drop_unfinished:
        db.drop_table(name)
    return None


def remove_duplicate_ids(table: lancedb.table.Table, time_column: str) -> int:
    """Keep one row per ``video_id`` in ``table``: the newest by ``time_column``, the last read
    among rows of the same time (:func:`pipelines.plan.newest_per_id`, the row the plan reads);
    delete the others by row id, in one commit. Returns the rows deleted (0: nothing committed).
    """
    rows = (
        table.search()
        .select([schema.VIDEO_ID, time_column])
        .with_row_id(True)
        .limit(None)
        .to_arrow()
    )
    if pc.count_distinct(rows[schema.VIDEO_ID]).as_py() == rows.num_rows:
        return 0
    kept = newest_per_id(rows, time_column)
    extra = pc.invert(pc.is_in(rows["_rowid"], kept["_rowid"]))
    row_ids = rows["_rowid"].filter(extra).to_pylist()
    table.delete("_rowid IN (" + ",".join(str(row_id) for row_id in row_ids) + ")")
    log.warning(
        "%s: deleted %d duplicate rows, kept the newest per video_id", table.name, len(row_ids)
    )
    return len(row_ids)


def delete_ids(table: lancedb.table.Table, video_ids: list[str]) -> int:
    """Delete the rows of ``video_ids``, touching only rows that exist: each chunk of ids is
    looked up first (through the ``video_id`` index), and a chunk none of whose ids is in the
    table commits nothing. Returns the rows deleted."""
    deleted = 0
    for start in range(0, len(video_ids), _DELETE_CHUNK):
        present = (
            table.search()
            .where(sql_in(schema.VIDEO_ID, video_ids[start : start + _DELETE_CHUNK]))
            .select([schema.VIDEO_ID])
            .limit(None)
            .to_arrow()[schema.VIDEO_ID]
            .to_pylist()
        )
        if present:
            table.delete(sql_in(schema.VIDEO_ID, present))
            deleted += len(present)
    return deleted


# The scalar indexes each table keeps: (column, LanceDB index type).
EMBEDDINGS_SCALAR_INDEXES = ((schema.VIDEO_ID, "BTREE"), (schema.MODEL_ID, "BITMAP"))
ERRORS_SCALAR_INDEXES = ((schema.VIDEO_ID, "BTREE"),)


def ensure_scalar_indexes(
    table: lancedb.table.Table, indexes: Iterable[tuple[str, str]]
) -> list[str]:
    """Create each ``(column, index type)`` scalar index ``table`` lacks; returns the columns
    indexed now. An existing index is kept: maintenance folds new rows into it."""
    indexed = {tuple(index.columns) for index in table.list_indices()}
    created = []
    for column, index_type in indexes:
        if (column,) not in indexed:
            table.create_scalar_index(column, index_type=index_type, replace=True)
            created.append(column)
    return created


class MaintenanceSchedule:
    """When a run compacts its tables and refreshes their indexes: rent or buy.

    Rows added since the last maintenance make commits dearer (lookups scan the rows no index covers
    yet, and each fragment is one file more) and a maintenance costs what it folds in, by amounts
    that differ tenfold between tables (bench/scale.py: an ANN index to refresh or none, upserts or
    appends). So the schedule measures both: after each commit it adds what the commit cost above
    the cheapest per-row cost seen since the last maintenance, and a maintenance is due once that
    excess reaches what the last maintenance cost. That pays at most twice what the best schedule
    for the same costs would, without knowing them in advance. Before the run's first maintenance
    its price is unknown, and one is due once the excess reaches what the commits would have cost at
    their cheapest (they cost twice that): a short run on a large table, whose maintenance can take
    minutes, does not pay one for noise. A maintenance is also due every ``max_commits`` commits
    whatever the timings, to bound the fragments; with ``adaptive`` False that is the only rule
    (fixed cadence, for callers that need one).
    """

    def __init__(self, max_commits: int = DEFAULT_MAINTAIN_EVERY, *, adaptive: bool = True) -> None:
        self.max_commits = max_commits
        self.adaptive = adaptive
        self.price_s: float | None = None
        self._commits = 0
        self._excess_s = 0.0
        self._cheapest_s = 0.0
        self._cheapest_s_per_row = math.inf

    def committed(self, rows: int, seconds: float) -> bool:
        """Record a commit of ``rows`` rows that took ``seconds``; True when maintenance is due."""
        self._commits += 1
        if rows > 0:
            self._cheapest_s_per_row = min(self._cheapest_s_per_row, seconds / rows)
            cheapest = rows * self._cheapest_s_per_row
            self._cheapest_s += cheapest
            self._excess_s += max(0.0, seconds - cheapest)
        if self._commits >= self.max_commits:
            return True
        price = self._cheapest_s if self.price_s is None else self.price_s
        return self.adaptive and self._excess_s > price

    def maintained(self, seconds: float) -> None:
        """Record a maintenance that took ``seconds``: the price of the next one."""
        self.price_s = seconds
        self._commits, self._excess_s, self._cheapest_s = 0, 0.0, 0.0
        self._cheapest_s_per_row = math.inf


@dataclass
class WriteStats:
    indexed: int = 0
    failed: int = 0
    metadata_updated: int = 0
    commits: int = 0
    maintenance_runs: int = 0
    maintenance_s: float = 0.0
    duplicates_removed: int = 0
    failures_by_reason: Counter[str] = field(default_factory=Counter)
    videos_by_worker: Counter[str] = field(default_factory=Counter)


class TableWriter:
    """Buffers encoded rows and commits them to ``table`` and ``<table>_errors``.

    ``manifest`` holds the manifest rows of the videos this run writes; its columns (captions,
    split, fingerprint, extra columns) join the results by ``video_id``, and extra columns become
    columns of the table. ``storage`` says how to reach an ``s3://`` ``db_uri``. Both tables are
    compacted and their indexes refreshed when :class:`MaintenanceSchedule` says it pays, and at
    least every ``maintain_every`` commits (only then, without ``adaptive_maintenance``).
    ``vector_metadata`` (:func:`pipelines.schema.vector_metadata`) describes the model to readers
    of the table; it is written as the ``vector`` field's metadata whenever it changes.
    ``lease``, the table's writer lease this process holds, is checked before every commit.
    Duplicate ids the tables hold are removed first (:func:`remove_duplicate_ids`).

    ``new_ids`` (ids of ``manifest`` that the plan found in neither table) are appended rather
    than upserted when the first row of theirs this run writes is a success; any later row of
    the same id in this run (a replayed block) is upserted and replaces it.
    Without ``new_ids`` every row is upserted.
    """

    def __init__(
        self,
        *,
        db_uri: str,
        table: str,
        dim: int,
        segments: int,
        model_id: str,
        manifest: pa.Table | None = None,
        commit_rows: int = DEFAULT_COMMIT_ROWS,
        commit_seconds: float = 30.0,
        maintain_every: int = DEFAULT_MAINTAIN_EVERY,
        adaptive_maintenance: bool = True,
        storage: StorageOptions | None = None,
        vector_metadata: dict[str, str] | None = None,
        lease: WriterLease | None = None,
        new_ids: pa.Array | pa.ChunkedArray | None = None,
    ) -> None:
        if new_ids is not None and manifest is None:
            raise ValueError("new_ids needs the manifest that holds them")
        self.lease = lease
        storage = storage if storage is not None else StorageOptions.from_env()
        self.db = connect(db_uri, storage)
        self.model_id = model_id
        self.schema = schema.embeddings_schema(dim, segments)
        self.manifest = with_metadata_digests(manifest) if manifest is not None else None
        for extra in manifest.schema if manifest is not None else ():
            if extra.name not in self.schema.names:
                self.schema = self.schema.append(extra)
        existing = open_table(self.db, table, drop_unfinished=True)
        self.segments_migrated = 0
        if existing is None:
            self.table = self.db.create_table(table, schema=self.schema)
        elif _vector_types(existing.schema) != _vector_types(self.schema):
            # Another embedding width or segment count cannot be upserted into fixed-size vector
            # columns. Every row is then another model's, which no query may mix with this one's
            # (the plan re-encodes them), so the table is replaced by an empty one in one commit:
            # queries see the old model's rows or the new one's, and the old version stays
            # restorable (``table.restore``) until versions are cleaned up.
            log.warning("%s holds vectors of another shape: replacing it (a new version)", table)
            self.table = self.db.create_table(table, schema=self.schema, mode="overwrite")
        else:
            # Columns this run brings (a new manifest column, or the metadata digest for a table
            # written before it existed) are added to the table, null for the rows it holds.
            added = [f for f in self.schema if f.name not in existing.schema.names]
            if added:
                existing.add_columns(added)
            self.table = existing
            # A table written before the multivector column gets its segments moved into it
            # from the flat column, without re-encoding anything.
            self.segments_migrated = migrate_segment_layout(self.table, segments=segments)
            self.schema = self.table.schema
        described = self.table.schema.field(schema.VECTOR).metadata or {}
        if vector_metadata and any(
            described.get(key.encode()) != value.encode() for key, value in vector_metadata.items()
        ):
            self.table.update_field_metadata(
                {"path": schema.VECTOR, "metadata": vector_metadata, "replace": True}
            )
        errors_name = schema.errors_table_name(table)
        errors = open_table(self.db, errors_name, drop_unfinished=True)
        if errors is None:
            errors = self.db.create_table(errors_name, schema=schema.ERRORS_SCHEMA)
        self.errors = errors
        options = storage.lancedb_options(db_uri) or None
        self._upsert_embeddings = IndexedUpsert(self.table, schema.INDEXED_AT, options)
        self._upsert_errors = IndexedUpsert(self.errors, schema.AT, options)
        self.check_lease()
        ensure_scalar_indexes(self.table, EMBEDDINGS_SCALAR_INDEXES)
        ensure_scalar_indexes(self.errors, ERRORS_SCALAR_INDEXES)
        self.stats = WriteStats()
        self.stats.duplicates_removed = remove_duplicate_ids(
            self.table, schema.INDEXED_AT
        ) + remove_duplicate_ids(self.errors, schema.AT)
        self.commit_rows = commit_rows
        self.commit_seconds = commit_seconds
        self.maintenance = MaintenanceSchedule(maintain_every, adaptive=adaptive_maintenance)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._last_commit = time.monotonic()
        # Each manifest id's row, built once (see _manifest_positions): 115 bytes a row held for
        # 1M ids of 7 characters (tracemalloc), longer ids more.
        self._manifest_rows = (
            {
                video_id: row
                for row, video_id in enumerate(self.manifest[schema.VIDEO_ID].to_pylist())
            }
            if self.manifest is not None
            else None
        )
        # One flag per manifest row: True while the row's video is new and not yet written.
        self._unwritten_new = (
            pc.is_in(self.manifest[schema.VIDEO_ID], value_set=new_ids).to_numpy(
                zero_copy_only=False
            )
            if new_ids is not None and self.manifest is not None
            else None
        )

    def check_lease(self) -> None:
        """Raise :class:`pipelines.lease.LeaseLostError` when this job no longer holds the
        table's lease (another job took it over): nothing more may be committed."""
        if self.lease is not None:
            self.lease.check()

    def add(self, batch: pa.Table) -> None:
        """Queue one batch from the encode stage (or read errors); commits when one is due."""
        if schema.WORKER in batch.column_names:
            for worker, count in Counter(batch[schema.WORKER].to_pylist()).items():
                self.stats.videos_by_worker[worker] += count
        positions = self._manifest_positions(batch[schema.VIDEO_ID])
        rows = self._with_manifest_columns(batch, positions)
        self._pending.append(self._marked_appendable(rows, positions))
        self._pending_rows += batch.num_rows
        due = time.monotonic() - self._last_commit >= self.commit_seconds
        if self._pending_rows >= self.commit_rows or due:
            self.flush()

    def _manifest_positions(self, video_ids: pa.ChunkedArray) -> pa.Array | None:
        """Each id's row in the manifest (null where the manifest lacks it). The lookup table is
        built once: ``pc.index_in`` hashes its whole value set on every call, 24 ms a 256-row
        block against a 164k-row manifest and 210 ms against 1M, which made the driver's cost
        per block grow with the run."""
        if self._manifest_rows is None:
            return None
        return pa.array(
            [self._manifest_rows.get(video_id) for video_id in video_ids.to_pylist()], pa.int32()
        )

    def update_metadata(self, rows: pa.Table) -> None:
        """Rewrite the manifest columns (captions, uri, split, the user's own, the metadata
        digest) of rows whose vector stands, in one commit that reads and writes no vector."""
        if rows.num_rows == 0:
            return
        self.check_lease()
        columns = [f for f in self.schema if f.name in rows.column_names]
        self.table.merge_insert(schema.VIDEO_ID).when_matched_update_all().execute(
            pa.table([rows[f.name].cast(f.type) for f in columns], schema=pa.schema(columns))
        )
        self.stats.metadata_updated += rows.num_rows
        self.stats.commits += 1
        log.info("updated the manifest columns of %d rows", rows.num_rows)

    def _marked_appendable(self, rows: pa.Table, positions: pa.Array | None) -> pa.Table:
        """``rows`` with an ``_append`` column: True for a successful row that is the first row
        this run writes of a new video (one in neither table when the plan read them), which can
        be appended. Every video seen here loses its flag, so any later row of it (a replayed
        block, a success after a failure) is upserted and deletes a stale error row. Rows are
        queued and committed in order, so clearing here is clearing at commit. ``positions``:
        each row's manifest row.
        """
        appendable = np.zeros(rows.num_rows, dtype=bool)
        if self._unwritten_new is not None and positions is not None and rows.num_rows:
            known = np.flatnonzero(pc.is_valid(positions).to_numpy(zero_copy_only=False))
            rows_of = pc.fill_null(positions, 0).to_numpy(zero_copy_only=False)[known]
            succeeded = pc.equal(rows[schema.ERROR], "").to_numpy(zero_copy_only=False)[known]
            # The first row of each video in this batch.
            videos, first = np.unique(rows_of, return_index=True)
            first = first[self._unwritten_new[videos] & succeeded[first]]
            appendable[known[first]] = True
            self._unwritten_new[videos] = False
        return rows.append_column(_APPEND, pa.array(appendable))

    def _with_manifest_columns(self, results: pa.Table, positions: pa.Array | None) -> pa.Table:
        """Results carry little beyond ``video_id``; the manifest's columns (caption, split,
        fingerprint, extra columns) are looked up here (``positions``: each row's manifest row),
        with their manifest types."""
        if self.manifest is None or positions is None:
            return results
        carried = self.manifest.take(positions)
        # end_s is the encoder's: clamped to the video, where the manifest's may run past it.
        own = [
            n for n in results.column_names if n not in carried.column_names or n == schema.END_S
        ]
        carried = carried.drop_columns([n for n in own if n in carried.column_names])
        return pa.Table.from_arrays(
            [*carried.columns, *results.select(own).columns],
            names=[*carried.column_names, *own],
        )

    def flush(self) -> None:
        """Commit everything queued: upsert the embeddings, then the errors."""
        if not self._pending:
            return
        self.check_lease()
        started = time.perf_counter()
        batch = pa.concat_tables(self._pending, promote_options="permissive")
        self._pending, self._pending_rows = [], 0
        now = pa.scalar(datetime.now(timezone.utc), schema.TIMESTAMP)
        failed = pc.not_equal(batch[schema.ERROR], "")
        good, bad = batch.filter(pc.invert(failed)), batch.filter(failed)
        if good.num_rows:
            appended = good.filter(good[_APPEND])
            upserted = good.filter(pc.invert(good[_APPEND]))
            if appended.num_rows:
                # New videos: in neither table, so nothing to look up and no error row to delete.
                self.table.add(self._embedding_rows(appended, now))
            if upserted.num_rows:
                self._upsert_embeddings(self._embedding_rows(upserted, now))
                delete_ids(self.errors, upserted[schema.VIDEO_ID].to_pylist())
        if bad.num_rows:
            self._upsert_errors(self._error_rows(bad, now))
            # A video that no longer encodes has no valid vector: drop a stale one.
            delete_ids(self.table, bad[schema.VIDEO_ID].to_pylist())
            for error in bad[schema.ERROR].to_pylist():
                self.stats.failures_by_reason[error.split(":", 1)[0]] += 1
        self.stats.indexed += good.num_rows
        self.stats.failed += bad.num_rows
        self.stats.commits += 1
        self._last_commit = time.monotonic()
        log.info(
            "committed %d indexed, %d failed (total %d / %d)",
            good.num_rows,
            bad.num_rows,
            self.stats.indexed,
            self.stats.failed,
        )
        if self.maintenance.committed(batch.num_rows, time.perf_counter() - started):
            self.maintain()

    def maintain(self, cleanup_older_than: timedelta | None = None) -> None:
        """Compact both tables and fold the rows added since into every index (the ANN index
        included), so that commits and searches during a long run stay as fast as on a freshly
        compacted table."""
        self.check_lease()
        started = time.perf_counter()
        steps = maintain_table(self.table, cleanup_older_than)
        maintain_table(self.errors, cleanup_older_than)
        seconds = time.perf_counter() - started
        self.maintenance.maintained(seconds)
        self.stats.maintenance_s += seconds
        self.stats.maintenance_runs += 1
        log.info(
            "compacted: %d fragments in %.1f s (%s)",
            fragment_count(self.table),
            seconds,
            ", ".join(f"{step} {s:.1f} s" for step, s in steps.items()),
        )

    def _embedding_rows(self, good: pa.Table, now: pa.Scalar) -> pa.Table:
        columns = []
        for target in self.schema:
            if target.name == schema.MODEL_ID:
                column = pa.array([self.model_id] * good.num_rows, pa.string())
            elif target.name == schema.INDEXED_AT:
                column = pa.array([now.as_py()] * good.num_rows, schema.TIMESTAMP)
            elif target.name in good.column_names:
                column = good[target.name].cast(target.type)
            else:
                column = pa.nulls(good.num_rows, target.type)
            columns.append(column)
        return pa.Table.from_arrays(columns, schema=self.schema)

    def _error_rows(self, bad: pa.Table, now: pa.Scalar) -> pa.Table:
        stage = bad[schema.STAGE] if schema.STAGE in bad.column_names else None
        return pa.table(
            {
                schema.VIDEO_ID: bad[schema.VIDEO_ID].cast(pa.string()),
                schema.URI: bad[schema.URI].cast(pa.string()),
                schema.STAGE: stage.cast(pa.string()) if stage is not None else None,
                schema.ERROR: bad[schema.ERROR].cast(pa.string()),
                schema.FINGERPRINT: bad[schema.FINGERPRINT].cast(pa.string()),
                schema.MODEL_ID: pa.array([self.model_id] * bad.num_rows, pa.string()),
                schema.AT: pa.array([now.as_py()] * bad.num_rows, schema.TIMESTAMP),
            },
            schema=schema.ERRORS_SCHEMA,
        )

    def finish(
        self,
        *,
        deleted: int = 0,
        index_min_rows: int = DEFAULT_INDEX_MIN_ROWS,
        cleanup_older_than: timedelta | None = None,
    ) -> str:
        """Flush, then keep the tables healthy, doing nothing where nothing changed.

        Compacts both tables (which also folds new rows into the existing indices) and prunes
        versions older than ``cleanup_older_than``. The captions get a full-text index (for
        hybrid search) once the table has rows, tables written before it existed included.
        The IVF_PQ index is built once the table has ``index_min_rows`` rows, and rebuilt when
        this run changed at least ``REBUILD_INDEX_FRACTION`` of them (an index trained on old
        vectors partitions new ones poorly), or when the segments' column has none yet (a
        table migrated from the flat layout); rows whose manifest columns alone were updated
        keep their vectors and count for compaction only. Returns what happened to the ANN
        index, for the summary.
        """
        self.flush()
        if not has_caption_index(self.table) and self.table.count_rows():
            build_caption_index(self.table)
        changed = self.stats.indexed + self.stats.failed + deleted
        touched = changed + self.stats.metadata_updated + self.segments_migrated
        if touched == 0 and cleanup_older_than is None:
            return "unchanged"
        self.maintain(cleanup_older_than)
        rows = self.table.count_rows()
        if rows < index_min_rows:
            return f"none (table below {index_min_rows} rows)"
        indexed = {column for index in self.table.list_indices() for column in index.columns}
        has_index = {schema.VECTOR, schema.SEGMENT_EMBEDDINGS} <= indexed
        if has_index and changed < REBUILD_INDEX_FRACTION * rows:
            return "updated"
        build_ann_index(self.table, rows=rows, dim=self.schema.field(schema.VECTOR).type.list_size)
        return "built"


def maintain_table(
    table: lancedb.table.Table, cleanup_older_than: timedelta | None = None
) -> dict[str, float]:
    """Compact ``table`` (:data:`COMPACT_TARGET_ROWS`), fold the rows added since into each of
    its indexes (into a vector index as a new segment, :data:`MAX_INDEX_SEGMENTS`), and remove
    the versions older than ``cleanup_older_than``; with ``None`` every version is kept (LanceDB's
    ``optimize`` removed those older than 7 days whatever the job was told). Pylance's API, unlike
    LanceDB's ``optimize``, takes the compaction and index options this needs.

    Returns the seconds of each step: ``compaction``, ``scalar_indexes``, one entry per vector
    index (``<name>`` for a new segment, ``<name> (merge)`` when segments were merged), and
    ``cleanup`` when versions were removed."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    table.checkout_latest()
    table.to_lance().optimize.compact_files(target_rows_per_fragment=COMPACT_TARGET_ROWS)
    table.checkout_latest()
    dataset = table.to_lance()
    seconds["compaction"] = time.perf_counter() - started
    indexes = dataset.list_indices()  # one entry per segment
    segments = Counter(index["name"] for index in indexes)
    vector = {index["name"] for index in indexes if index["type"].startswith("IVF")}
    if scalar := sorted(set(segments) - vector):
        started = time.perf_counter()
        dataset.optimize.optimize_indices(index_names=scalar)
        seconds["scalar_indexes"] = time.perf_counter() - started
    for name in sorted(vector):
        # num_indices_to_merge counts the newest segments merged with the new rows.
        merge = segments[name] - 1 if segments[name] >= MAX_INDEX_SEGMENTS else 0
        started = time.perf_counter()
        dataset.optimize.optimize_indices(index_names=[name], num_indices_to_merge=merge)
        seconds[f"{name} (merge)" if merge else name] = time.perf_counter() - started
    if cleanup_older_than is not None:
        started = time.perf_counter()
        dataset.cleanup_old_versions(
            older_than=cleanup_older_than, error_if_tagged_old_versions=False
        )
        seconds["cleanup"] = time.perf_counter() - started
    table.checkout_latest()
    return seconds


def fragment_count(table: lancedb.table.Table) -> int:
    """Data fragments of ``table``: each small commit adds one until compaction merges them."""
    return int(table.stats()["fragment_stats"]["num_fragments"])


def _vector_types(table_schema: pa.Schema) -> list[pa.DataType | None]:
    """Types of the fixed-size columns whose sizes depend on the model: the width ``D`` (of
    ``vector``, which the segments' column shares) and the segment count ``S``."""
    names = (schema.VECTOR, schema.SEGMENT_START_S, schema.SEGMENT_END_S)
    return [table_schema.field(name).type if name in table_schema.names else None for name in names]


def migrate_segment_layout(
    table: lancedb.table.Table, *, segments: int, chunk_rows: int = MIGRATE_CHUNK_ROWS
) -> int:
    """Move the segment embeddings of a table written before the multivector column from the
    flat ``segment_vectors [S * D]`` into ``segment_embeddings`` (which must exist), then drop
    the flat column. Returns the rows moved (0 for a table in today's layout).

    Each chunk of ``chunk_rows`` rows is one partial ``merge_insert`` that writes no other
    column, and only rows still null in the new column are read, so a migration killed midway
    continues where it stopped on the next run; the flat column is dropped once every row has
    moved. Until then :mod:`pipelines.search` reads either column.
    """
    legacy, target = schema.LEGACY_SEGMENT_VECTORS, schema.SEGMENT_EMBEDDINGS
    if legacy not in table.schema.names:
        return 0
    field = table.schema.field(target)
    moved = 0
    while True:
        rows = (
            table.search()
            .where(f"{target} IS NULL AND {legacy} IS NOT NULL")
            .select([schema.VIDEO_ID, legacy])
            .limit(chunk_rows)
            .to_arrow()
        )
        if rows.num_rows == 0:
            break
        flat = rows[legacy].combine_chunks().flatten().to_numpy()
        update = pa.table(
            [rows[schema.VIDEO_ID], schema.multivectors(flat.reshape(rows.num_rows, segments, -1))],
            schema=pa.schema([table.schema.field(schema.VIDEO_ID), field]),
        )
        table.merge_insert(schema.VIDEO_ID).when_matched_update_all().execute(update)
        moved += rows.num_rows
    table.drop_columns([legacy])
    log.warning("moved the segments of %d rows into the %s column", moved, target)
    return moved


def has_caption_index(table: lancedb.table.Table) -> bool:
    return any(index.name == schema.CAPTION_FTS_INDEX for index in table.list_indices())


def build_caption_index(table: lancedb.table.Table) -> None:
    """A full-text (BM25) index over every caption of a row (``caption`` is a list of strings),
    with LanceDB's default English tokenizer (lower case, stemming, stop words removed)."""
    if schema.CAPTION in table.schema.names:
        table.create_index(schema.CAPTION, config=FTS(), name=schema.CAPTION_FTS_INDEX)


def build_ann_index(
    table: lancedb.table.Table, *, rows: int, dim: int, columns: Collection[str] | None = None
) -> None:
    """IVF_PQ with cosine distance on ``vector`` and, where the table has it, on the segments'
    multivector column (LanceDB indexes each of its vectors; cosine is the only distance it
    supports there); about sqrt(vectors) partitions and 8-float sub-vectors. ``columns`` keeps
    to those of the two (``None``: both)."""
    sub_vectors = next(n for n in (dim // 8, dim // 4, dim // 2, dim, 1) if n and dim % n == 0)
    indexed = [(schema.VECTOR, rows)]
    if schema.SEGMENT_EMBEDDINGS in table.schema.names:
        segments = table.schema.field(schema.SEGMENT_START_S).type.list_size
        indexed.append((schema.SEGMENT_EMBEDDINGS, rows * segments))
    if columns is not None:
        indexed = [(column, vectors) for column, vectors in indexed if column in columns]
    for column, vectors in indexed:
        partitions = max(1, int(math.sqrt(vectors)))
        log.info(
            "building IVF_PQ index on %s: %d partitions, %d sub-vectors",
            column,
            partitions,
            sub_vectors,
        )
        # LanceDB 0.40 reads the first positional argument as the column whenever ``config`` is
        # given; ``vector_column_name=`` is a legacy-API keyword it ignores then (indexing "l2").
        table.create_index(
            column,
            config=IvfPq(
                distance_type="cosine", num_partitions=partitions, num_sub_vectors=sub_vectors
            ),
            replace=True,
        )
