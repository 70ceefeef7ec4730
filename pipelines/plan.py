"""Diff a manifest against the tables before any work: what to encode, skip and delete.

Everything here is Arrow joins and vectorised compute, never a Python loop over rows, so a
million-row manifest diffs against a million-row table in seconds.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import schema

REASON = "reason"

NEW = "new"
CHANGED = "changed"
MODEL_CHANGED = "model_changed"
METADATA_CHANGED = "metadata_changed"
RETRY = "retry"
REBUILD = "rebuild"
UNCHANGED = "unchanged"
FAILED_BEFORE = "failed_before"
MISSING = "missing"

TO_ENCODE = (NEW, CHANGED, MODEL_CHANGED, RETRY, REBUILD)
_REASONS = pa.array(
    [
        NEW,
        CHANGED,
        MODEL_CHANGED,
        RETRY,
        REBUILD,
        UNCHANGED,
        METADATA_CHANGED,
        FAILED_BEFORE,
        MISSING,
    ]
)
# Rows per partition of the plan's join: 10 M rows join in 40 partitions (bench/plan.py
# measures the plan's peak memory; docs/ARCHITECTURE.md states it).
PARTITION_ROWS = 250_000
_HASH_SLICE_ROWS = 100_000

# Manifest columns that say what is encoded, or that the index job derives: every other
# column is descriptive (uri, caption, split, the user's own) and only updates rows in place.
_NOT_METADATA = (schema.VIDEO_ID, schema.FINGERPRINT, schema.START_S, schema.END_S, REASON)


@dataclass(frozen=True)
class IndexPlan:
    """The work one run of the index job does."""

    todo: pa.Table
    """Manifest rows to decode and encode, with a ``reason`` column."""
    missing: pa.Table
    """Manifest rows whose file does not exist: recorded as errors without decoding."""
    missing_recorded: pa.Table
    """``video_id, error`` of the errors table's rows for ``missing`` videos already recorded
    as having no file (null fingerprint): rewritten only when the error changes."""
    metadata_updates: pa.Table
    """Manifest rows whose vector stands but whose descriptive columns changed."""
    delete_ids: list[str]
    """Video ids in the tables but gone from the manifest."""
    counts: dict[str, int]

    def describe(self) -> str:
        order = (*TO_ENCODE, METADATA_CHANGED, MISSING, UNCHANGED, FAILED_BEFORE)
        parts = [f"{name}={self.counts[name]}" for name in order if self.counts.get(name)]
        parts.append(f"deleted={len(self.delete_ids)}")
        return ", ".join(parts)


def plan_index(
    manifest: pa.Table,
    *,
    indexed: pa.Table | None,
    failed: pa.Table | None,
    model_id: str,
    rebuild: bool = False,
    retry_errors: bool = False,
    keep_deleted: bool = False,
    partition_rows: int = PARTITION_ROWS,
) -> IndexPlan:
    """Compare ``manifest`` (with fingerprints) with what the tables hold.

    A video is re-encoded when its bytes (or clip), its model or its failure changed; a video
    whose vector stands but whose descriptive columns (:func:`metadata_digests`) changed is only
    updated in place.

    Args:
        manifest: validated manifest with a ``fingerprint`` column (null: file missing).
        indexed: ``video_id, fingerprint, model_id`` and, where the table has it,
            ``metadata_digest`` of the embeddings table (``None``: no table yet).
        failed: ``video_id, fingerprint`` and, where read, ``error`` of the errors table, or
            ``None``.
        model_id: the model this run encodes with.
        rebuild: encode every video whatever the tables hold.
        retry_errors: encode previously failed videos even when their bytes did not change.
        keep_deleted: keep rows of videos that left the manifest.
        partition_rows: above this many rows (manifest or table), the join runs in partitions
            of about this many ids each, so its memory is that of one partition.
    """
    indexed = indexed if indexed is not None else _empty(schema.FINGERPRINT, schema.MODEL_ID)
    if schema.METADATA_DIGEST not in indexed.column_names:  # written before digests existed
        indexed = indexed.append_column(
            schema.METADATA_DIGEST, pa.nulls(indexed.num_rows, pa.int64())
        )
    failed = newest_per_id(failed if failed is not None else _empty(schema.FINGERPRINT), schema.AT)
    manifest = with_metadata_digests(manifest)
    # Arrow joins carry no list columns (captions): join a slim key table, then line the result
    # up with the manifest by row number.
    keys = pa.table(
        {
            schema.VIDEO_ID: manifest[schema.VIDEO_ID],
            schema.FINGERPRINT: manifest[schema.FINGERPRINT],
            schema.METADATA_DIGEST: manifest[schema.METADATA_DIGEST],
            "_row": pa.array(np.arange(manifest.num_rows, dtype=np.int64)),
        }
    )
    failed_state = failed.select([schema.VIDEO_ID, schema.FINGERPRINT]).rename_columns(
        [schema.VIDEO_ID, "_failed_fingerprint"]
    )
    decide = functools.partial(
        _reasons, model_id=model_id, rebuild=rebuild, retry_errors=retry_errors
    )
    partitions = -(-max(manifest.num_rows, indexed.num_rows) // partition_rows)
    if partitions <= 1:
        reason = decide(keys, indexed, failed_state)
    else:
        # One join per partition of ids (by hash): the join's copies of the state are 1/P of
        # the table's, and each partition's reasons land at their manifest rows.
        codes = np.empty(manifest.num_rows, dtype=np.int8)
        part = [
            _partition_of(t[schema.VIDEO_ID], partitions) for t in (keys, indexed, failed_state)
        ]
        for number in range(partitions):
            slices = [
                t.filter(pa.array(of == number))
                for t, of in zip((keys, indexed, failed_state), part, strict=True)
            ]
            reasons = decide(*slices)
            codes[slices[0]["_row"].to_numpy()] = pc.index_in(reasons, _REASONS).to_numpy()
        reason = _REASONS.take(pa.array(codes))
    joined = manifest.append_column(REASON, reason)
    counts = {row["values"]: row["counts"] for row in pc.value_counts(joined[REASON]).to_pylist()}
    todo = joined.filter(pc.is_in(joined[REASON], pa.array(TO_ENCODE)))
    delete_ids: list[str] = []
    if not keep_deleted:
        known = pa.concat_arrays(
            [indexed[schema.VIDEO_ID].combine_chunks(), failed[schema.VIDEO_ID].combine_chunks()]
        )
        gone = pc.invert(pc.is_in(known, manifest[schema.VIDEO_ID]))
        delete_ids = sorted(set(known.filter(gone).to_pylist()))
    missing = joined.filter(pc.equal(joined[REASON], MISSING))
    return IndexPlan(
        todo=todo,
        missing=missing,
        missing_recorded=_recorded_missing(failed, missing[schema.VIDEO_ID]),
        metadata_updates=joined.filter(pc.equal(joined[REASON], METADATA_CHANGED)),
        delete_ids=delete_ids,
        counts=counts,
    )


def _reasons(
    keys: pa.Table,
    indexed: pa.Table,
    failed: pa.Table,
    *,
    model_id: str,
    rebuild: bool,
    retry_errors: bool,
) -> pa.Array:
    """The reason ``[K]`` of each row of ``keys`` (``video_id, fingerprint, metadata_digest,
    _row``), in its order, from the tables' state (``failed``'s columns renamed by
    :func:`plan_index`)."""
    # A table holding duplicate ids (see pipelines.write.remove_duplicate_ids) is planned by
    # the row the writer keeps. Done here, a partition at a time: an id's rows all land in
    # the same partition.
    state = [schema.VIDEO_ID, schema.FINGERPRINT, schema.MODEL_ID, schema.METADATA_DIGEST]
    indexed = (
        newest_per_id(indexed, schema.INDEXED_AT)
        .select(state)
        .rename_columns(
            [schema.VIDEO_ID, "_indexed_fingerprint", "_indexed_model", "_indexed_digest"]
        )
    )
    joined = (
        keys.join(indexed, keys=schema.VIDEO_ID, join_type="left outer")
        .join(failed, keys=schema.VIDEO_ID, join_type="left outer")
        .sort_by("_row")
    )
    fingerprint = joined[schema.FINGERPRINT]
    in_table = pc.is_valid(joined["_indexed_fingerprint"])
    in_errors = pc.is_valid(joined["_failed_fingerprint"])
    same_bytes = pc.fill_null(pc.equal(fingerprint, joined["_indexed_fingerprint"]), False)
    same_model = pc.fill_null(pc.equal(joined["_indexed_model"], model_id), False)
    same_metadata = pc.fill_null(
        pc.equal(joined[schema.METADATA_DIGEST], joined["_indexed_digest"]), False
    )
    same_failure = pc.fill_null(pc.equal(fingerprint, joined["_failed_fingerprint"]), False)
    missing = pc.is_null(fingerprint)
    current = pc.and_(in_table, pc.and_(same_bytes, same_model))
    reason = pc.case_when(
        pc.make_struct(
            missing,
            pa.repeat(pa.scalar(rebuild), joined.num_rows),
            pc.and_(current, same_metadata),
            current,
            pc.and_(in_table, same_bytes),
            in_table,
            pc.and_(in_errors, pc.and_(same_failure, pa.scalar(not retry_errors))),
            in_errors,
        ),
        MISSING,
        REBUILD,
        UNCHANGED,
        METADATA_CHANGED,
        MODEL_CHANGED,
        CHANGED,
        FAILED_BEFORE,
        RETRY,
        NEW,
    )
    return reason.combine_chunks() if isinstance(reason, pa.ChunkedArray) else reason


def _partition_of(ids: pa.ChunkedArray, partitions: int) -> np.ndarray:
    """``[N]`` partition number of each id: the same for an id wherever it appears.

    Hashed a slice at a time: the hash needs the ids as Python strings, and 10 M of them at
    once would cost more memory than the partitioned join saves.
    """
    numbers = np.empty(len(ids), dtype=np.uint64)
    for start in range(0, len(ids), _HASH_SLICE_ROWS):
        strings = ids.slice(start, _HASH_SLICE_ROWS).to_numpy(zero_copy_only=False)
        digests = pd.util.hash_array(strings, categorize=False)
        numbers[start : start + len(strings)] = digests % np.uint64(partitions)
    return numbers


def newest_per_id(rows: pa.Table, time_column: str) -> pa.Table:
    """One row per ``video_id`` of ``rows``: the one with the latest ``time_column`` and, among
    rows of the same time (or when ``rows`` has no such column), the last one. ``rows`` itself
    when its ids are distinct already."""
    if pc.count_distinct(rows[schema.VIDEO_ID]).as_py() == rows.num_rows:
        return rows
    position = pa.array(np.arange(rows.num_rows, dtype=np.int64))
    keys = [(schema.VIDEO_ID, "ascending")]
    if time_column in rows.column_names:
        keys.append((time_column, "descending"))
    order = pc.sort_indices(
        pa.table({**{name: rows[name] for name, _ in keys}, "_position": position}),
        sort_keys=[*keys, ("_position", "descending")],
    )
    ids = rows[schema.VIDEO_ID].combine_chunks().take(order)
    # Sorted by id, newest first: the first row of each id is the one kept.
    first = pa.concat_arrays([pa.array([True]), pc.not_equal(ids[1:], ids[:-1])])
    return rows.take(np.sort(order.filter(first).to_numpy()))


def _recorded_missing(failed: pa.Table, ids: pa.ChunkedArray) -> pa.Table:
    if schema.ERROR not in failed.column_names:
        return pa.table(
            {schema.VIDEO_ID: pa.array([], pa.string()), schema.ERROR: pa.array([], pa.string())}
        )
    recorded = failed.filter(
        pc.and_(pc.is_null(failed[schema.FINGERPRINT]), pc.is_in(failed[schema.VIDEO_ID], ids))
    )
    return recorded.select([schema.VIDEO_ID, schema.ERROR])


def with_metadata_digests(manifest: pa.Table) -> pa.Table:
    """``manifest`` with its ``metadata_digest`` column, computed unless it is there already."""
    if schema.METADATA_DIGEST in manifest.column_names:
        return manifest
    return manifest.append_column(schema.METADATA_DIGEST, metadata_digests(manifest))


def metadata_digests(manifest: pa.Table) -> pa.Array:
    """A 64-bit digest ``[N]`` (int64) of each row's descriptive columns: every manifest column
    but the key, the fingerprint and the clip bounds (``uri``, ``caption``, ``split`` and the
    user's own), names included, so that a change to any of them, or a column added or dropped,
    changes the digest.

    Vectorised: each column becomes text in Arrow (lists joined, nulls marked), the texts are
    joined per row, and pandas hashes the rows (SipHash with a fixed key, the same in every
    process). Only extra columns of types Arrow cannot cast to text (structs, lists of
    numbers...) go through Python, row by row, as JSON.
    """
    names = sorted(name for name in manifest.column_names if name not in _NOT_METADATA)
    parts: list[pa.Array | str] = []
    for name in names:
        parts += [f"\x1e{name}\x1f", pc.fill_null(_as_text(manifest[name]), "\x00")]
    if not parts:
        return pa.nulls(manifest.num_rows, pa.int64())
    rows = pc.binary_join_element_wise(*parts, "")
    hashed = pd.util.hash_array(rows.to_numpy(zero_copy_only=False), categorize=False)
    return pa.array(hashed.view(np.int64))


def _as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    listed = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
    if listed and pa.types.is_string(column.type.value_type):
        return pc.binary_join(column, "\x1f")
    try:
        return pc.cast(column, pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        texts = [json.dumps(value, sort_keys=True, default=str) for value in column.to_pylist()]
        return pa.chunked_array([pa.array(texts, pa.string())])


def _empty(*columns: str) -> pa.Table:
    return pa.table(
        {schema.VIDEO_ID: pa.array([], pa.string())}
        | {name: pa.array([], pa.string()) for name in columns}
    )
