"""What is evaluated: one query per caption of the split, and the gallery of the split's videos
that have a vector of the evaluated model (why the others have none)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.table import Table

from pipelines import schema
from pipelines.evaluate.vectors import to_matrix
from pipelines.upsert import sql_in

# Video ids per SQL ``IN`` filter when reading the table: one scan per chunk.
_IDS_PER_FILTER = 2000


def split_queries(manifest: pa.Table, split: str | None) -> tuple[pa.Table, pa.Table, pa.Table]:
    """The split's videos and one query per caption.

    Returns:
        ``(videos, queries, skipped)``: ``videos`` has ``video_id`` for every manifest row of the
        split, captioned or not (uncaptioned videos still compete as retrieval targets);
        ``queries`` has ``video_id``, ``caption_index`` (position in the video's caption list)
        and ``caption``, in manifest order. A null or blank (empty or whitespace) caption is no
        query: it is a row of ``skipped`` (``video_id``, ``caption_index``, ``reason``).

    Raises:
        ValueError: no ``caption`` column, an unknown split, or a split without captions.
    """
    if schema.CAPTION not in manifest.column_names:
        raise ValueError(f"the manifest has no '{schema.CAPTION}' column; nothing to evaluate")
    if split is not None:
        if schema.SPLIT not in manifest.column_names:
            raise ValueError(f"--split {split}: the manifest has no '{schema.SPLIT}' column")
        selected = manifest.filter(pc.equal(manifest[schema.SPLIT], split))
        if selected.num_rows == 0:
            known = sorted(v for v in pc.unique(manifest[schema.SPLIT]).to_pylist() if v)
            raise ValueError(f"--split {split}: no manifest rows; the splits are {known}")
        manifest = selected
    captions = manifest[schema.CAPTION].combine_chunks()
    parents = pc.list_parent_indices(captions)
    flat = pc.list_flatten(captions)
    starts = captions.offsets.to_numpy()[:-1]
    positions = np.arange(len(flat)) - starts[parents.to_numpy()]
    every_caption = pa.table(
        {
            schema.VIDEO_ID: manifest[schema.VIDEO_ID].combine_chunks().take(parents),
            schema.CAPTION_INDEX: pa.array(positions, pa.int32()),
            schema.CAPTION: flat,
        }
    )
    is_null = pc.is_null(flat)
    is_blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(flat), ""), False)
    queries = every_caption.filter(pc.invert(pc.or_(is_null, is_blank)))
    skipped = every_caption.filter(pc.or_(is_null, is_blank)).select(
        [schema.VIDEO_ID, schema.CAPTION_INDEX]
    )
    reasons = pc.if_else(is_null, "null caption", "blank caption").filter(pc.or_(is_null, is_blank))
    skipped = skipped.append_column("reason", reasons)
    if queries.num_rows == 0:
        raise ValueError(f"the {split or 'manifest'} rows have no captions; nothing to evaluate")
    return manifest.select([schema.VIDEO_ID]), queries, skipped


def missing_reasons(
    errors: Table | None, missing_ids: Sequence[str], other_model: dict[str, str]
) -> dict[str, str]:
    """Why each video of ``missing_ids`` has no vector of the evaluated model: its failure from
    the ``errors`` table (``<table>_errors``), the other model that indexed it (``other_model``),
    or not indexed."""
    reasons = {
        video_id: f"indexed with another model: {other_model[video_id]}"
        if video_id in other_model
        else "not indexed"
        for video_id in missing_ids
    }
    if errors is not None and missing_ids:
        failed = read_rows(errors, missing_ids, [schema.VIDEO_ID, schema.STAGE, schema.ERROR])
        for row in failed.to_pylist():
            reasons[row[schema.VIDEO_ID]] = f"failed ({row[schema.STAGE]}): {row[schema.ERROR]}"
    return reasons


def read_rows(table: Table, video_ids: Sequence[str], columns: list[str]) -> pa.Table:
    """``columns`` of the rows of ``table`` whose ``video_id`` is in ``video_ids``."""
    parts = [
        table.search()
        .where(sql_in(schema.VIDEO_ID, video_ids[start : start + _IDS_PER_FILTER]))
        .select(columns)
        .limit(None)
        .to_arrow()
        for start in range(0, len(video_ids), _IDS_PER_FILTER)
    ]
    return pa.concat_tables(parts)


@dataclass(frozen=True)
class Gallery:
    """The videos retrieved among: those of the split with a vector of the evaluated model.

    Attributes:
        rows: ``[V]`` ``video_id``, ``vector``, ``model_id`` and the table's ``split``, in
            manifest order.
        vectors: ``[V, D]`` unit video embeddings.
        evaluated: ``[all captions of the split]`` whether a caption's video is in the gallery.
        caption_video: ``[Q]`` the gallery column of each evaluated caption's video.
        missing: why each video of the split without a vector has none, in manifest order.
    """

    rows: pa.Table
    vectors: np.ndarray
    evaluated: pa.ChunkedArray
    caption_video: np.ndarray
    missing: dict[str, str]


def load_gallery(
    table: Table,
    errors: Table | None,
    videos: pa.Table,
    queries: pa.Table,
    *,
    model_id: str,
    split: str | None,
) -> Gallery:
    """Read the vectors of ``videos`` (see :func:`split_queries`) that ``model_id`` made, and
    say why the others have none (from ``errors``, the table's errors table, where it exists).

    Raises:
        ValueError: when no caption's video has a vector, naming the reasons.
    """
    split_ids = videos[schema.VIDEO_ID].to_pylist()
    stored = read_rows(
        table, split_ids, [schema.VIDEO_ID, schema.VECTOR, schema.MODEL_ID, schema.SPLIT]
    )
    mine = pc.equal(stored[schema.MODEL_ID], model_id)
    rows = stored.filter(mine)
    rows = rows.take(
        pc.sort_indices(pc.index_in(rows[schema.VIDEO_ID], value_set=videos[schema.VIDEO_ID]))
    )
    other = stored.filter(pc.invert(mine))
    indexed = set(rows[schema.VIDEO_ID].to_pylist())
    missing = missing_reasons(
        errors,
        [v for v in split_ids if v not in indexed],
        dict(
            zip(
                other[schema.VIDEO_ID].to_pylist(),
                other[schema.MODEL_ID].to_pylist(),
                strict=True,
            )
        ),
    )
    ids = rows[schema.VIDEO_ID].combine_chunks()
    evaluated = pc.is_in(queries[schema.VIDEO_ID], value_set=ids)
    kept = queries.filter(evaluated)
    if kept.num_rows == 0:
        raise ValueError(
            f"none of the {len(split_ids)} videos of the {split or 'manifest'} rows has a "
            f"vector of {model_id} in table {table.name!r}: "
            + "; ".join(sorted(set(missing.values())))
        )
    caption_video = pc.index_in(kept[schema.VIDEO_ID], value_set=ids).to_numpy()
    return Gallery(
        rows=rows,
        vectors=to_matrix(rows[schema.VECTOR]),
        evaluated=evaluated,
        caption_video=caption_video.astype(np.int64),  # writable, for torch
        missing=missing,
    )
