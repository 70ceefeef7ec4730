"""Diff a manifest against the tables before any work: what to encode, skip and delete.

Everything here is Arrow joins and vectorised compute, never a Python loop over rows, so a
million-row manifest diffs against a million-row table in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import schema

REASON = "reason"

NEW = "new"
CHANGED = "changed"
MODEL_CHANGED = "model_changed"
RETRY = "retry"
REBUILD = "rebuild"
UNCHANGED = "unchanged"
FAILED_BEFORE = "failed_before"
MISSING = "missing"

TO_ENCODE = (NEW, CHANGED, MODEL_CHANGED, RETRY, REBUILD)


@dataclass(frozen=True)
class IndexPlan:
    """The work one run of the index job does."""

    todo: pa.Table
    """Manifest rows to decode and encode, with a ``reason`` column."""
    missing: pa.Table
    """Manifest rows whose file does not exist: recorded as errors without decoding."""
    delete_ids: list[str]
    """Video ids in the tables but gone from the manifest."""
    counts: dict[str, int]

    def describe(self) -> str:
        order = (*TO_ENCODE, MISSING, UNCHANGED, FAILED_BEFORE)
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
) -> IndexPlan:
    """Compare ``manifest`` (with fingerprints) with what the tables hold.

    Args:
        manifest: validated manifest with a ``fingerprint`` column (null: file missing).
        indexed: ``video_id, fingerprint, model_id`` of the embeddings table, or ``None``.
        failed: ``video_id, fingerprint`` of the errors table, or ``None``.
        model_id: the model this run encodes with.
        rebuild: encode every video whatever the tables hold.
        retry_errors: encode previously failed videos even when their bytes did not change.
        keep_deleted: keep rows of videos that left the manifest.
    """
    indexed = indexed if indexed is not None else _empty(schema.FINGERPRINT, schema.MODEL_ID)
    failed = failed if failed is not None else _empty(schema.FINGERPRINT)
    # Arrow joins carry no list columns (captions): join a slim key table, then line the result
    # up with the manifest by row number.
    keys = pa.table(
        {
            schema.VIDEO_ID: manifest[schema.VIDEO_ID],
            schema.FINGERPRINT: manifest[schema.FINGERPRINT],
            "_row": pa.array(np.arange(manifest.num_rows, dtype=np.int64)),
        }
    )
    joined = (
        keys.join(
            indexed.select([schema.VIDEO_ID, schema.FINGERPRINT, schema.MODEL_ID]).rename_columns(
                [schema.VIDEO_ID, "_indexed_fingerprint", "_indexed_model"]
            ),
            keys=schema.VIDEO_ID,
            join_type="left outer",
        )
        .join(
            failed.select([schema.VIDEO_ID, schema.FINGERPRINT]).rename_columns(
                [schema.VIDEO_ID, "_failed_fingerprint"]
            ),
            keys=schema.VIDEO_ID,
            join_type="left outer",
        )
        .sort_by("_row")
    )
    fingerprint = joined[schema.FINGERPRINT]
    in_table = pc.is_valid(joined["_indexed_fingerprint"])
    in_errors = pc.is_valid(joined["_failed_fingerprint"])
    same_bytes = pc.fill_null(pc.equal(fingerprint, joined["_indexed_fingerprint"]), False)
    same_model = pc.fill_null(pc.equal(joined["_indexed_model"], model_id), False)
    same_failure = pc.fill_null(pc.equal(fingerprint, joined["_failed_fingerprint"]), False)
    missing = pc.is_null(fingerprint)

    reason = pc.case_when(
        pc.make_struct(
            missing,
            pa.repeat(pa.scalar(rebuild), joined.num_rows),
            pc.and_(in_table, pc.and_(same_bytes, same_model)),
            pc.and_(in_table, same_bytes),
            in_table,
            pc.and_(in_errors, pc.and_(same_failure, pa.scalar(not retry_errors))),
            in_errors,
        ),
        MISSING,
        REBUILD,
        UNCHANGED,
        MODEL_CHANGED,
        CHANGED,
        FAILED_BEFORE,
        RETRY,
        NEW,
    )
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
    return IndexPlan(
        todo=todo,
        missing=joined.filter(pc.equal(joined[REASON], MISSING)),
        delete_ids=delete_ids,
        counts=counts,
    )


def _empty(*columns: str) -> pa.Table:
    return pa.table(
        {schema.VIDEO_ID: pa.array([], pa.string())}
        | {name: pa.array([], pa.string()) for name in columns}
    )
