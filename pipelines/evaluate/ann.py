"""The ANN side: both directions searched through LanceDB as a user's query would be, and what
the index covers."""

from __future__ import annotations

import tempfile
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.table import Table

from pipelines import schema
from pipelines.evaluate.config import EvaluateConfig
from pipelines.evaluate.gallery import Gallery
from pipelines.evaluate.ranks import AnnRanks, ann_ranks
from pipelines.evaluate.vectors import to_fixed_size_list
from pipelines.search import nearest
from pipelines.upsert import sql_in
from pipelines.write import build_ann_index


def gallery_filter(table: Table, model_where: str, split: str | None, gallery: pa.Table) -> str:
    """A prefilter that narrows ``model_where`` to exactly the ``gallery`` rows (``video_id`` and
    the table's ``split`` of each).

    The table's own ``split`` column when it selects the same rows: a scalar comparison costs
    LanceDB little, while an ``IN`` list of every gallery id, evaluated again for every batch of
    queries, made IVF_PQ searches about 4x slower (measured: 10k rows, 5k ids).
    """
    if split is not None:
        same_split = pc.fill_null(pc.equal(gallery[schema.SPLIT], split), False)
        by_split = f"{model_where} AND {sql_in(schema.SPLIT, [split])}"
        if pc.all(same_split).as_py() and table.count_rows(by_split) == gallery.num_rows:
            return by_split
    return f"{model_where} AND {sql_in(schema.VIDEO_ID, gallery[schema.VIDEO_ID].to_pylist())}"


def ann_text_to_video(
    table: Table, text: np.ndarray, gallery: Gallery, where: str, config: EvaluateConfig
) -> AnnRanks:
    """Each caption ``text [Q, D]`` searches the table as a user's query would (its index, the
    prefilter ``where`` selecting the gallery); ranks of each caption's own video."""
    found = nearest(
        table,
        text,
        k=config.k,
        where=where,
        nprobes=config.nprobes,
        refine_factor=config.refine_factor,
    )
    item = pc.index_in(found[schema.VIDEO_ID], value_set=gallery.rows[schema.VIDEO_ID])
    item = item.to_numpy()
    right = item == gallery.caption_video[found[schema.QUERY].to_numpy()]
    return ann_ranks(found, num_queries=len(text), item=item, right=right, k=config.k)


def ann_video_to_text(
    text: np.ndarray,
    queries: np.ndarray,
    caption_video: np.ndarray,
    query_video: np.ndarray,
    config: EvaluateConfig,
    *,
    indexed: bool,
) -> tuple[AnnRanks, dict[str, Any] | None]:
    """Video-to-text through LanceDB: the table indexes videos only, so the captions ``text
    [Q, D]`` go into a temporary table, given the same kind of index when ``indexed`` (the video
    table has one), and each captioned video ``queries [Vc, D]`` searches it.

    Returns:
        the ranks of each video's best own caption, and the caption index's :func:`index_info`.
    """
    with tempfile.TemporaryDirectory(prefix="centerclip-eval-") as folder:
        captions = lancedb.connect(folder).create_table(
            "captions",
            pa.table(
                {
                    schema.CAPTION_ROW: pa.array(np.arange(len(text), dtype=np.int64)),
                    schema.VECTOR: to_fixed_size_list(text),
                }
            ),
        )
        if indexed:
            build_ann_index(captions, rows=len(text), dim=text.shape[1])
        found = nearest(
            captions,
            queries,
            k=config.k,
            nprobes=config.nprobes,
            refine_factor=config.refine_factor,
            columns=(schema.CAPTION_ROW,),
        )
        info = index_info(captions)
    item = found[schema.CAPTION_ROW].to_numpy()
    right = caption_video[item] == query_video[found[schema.QUERY].to_numpy()]
    return ann_ranks(found, num_queries=len(queries), item=item, right=right, k=config.k), info


def index_info(table: Table) -> dict[str, Any] | None:
    """The ANN index on ``vector``: type, distance and how many rows it covers; None if none."""
    for index in table.list_indices():
        if list(index.columns) == [schema.VECTOR]:
            stats = table.index_stats(index.name)
            return {
                "type": stats.index_type,
                "distance": stats.distance_type,
                "indexed_rows": stats.num_indexed_rows,
                "unindexed_rows": stats.num_unindexed_rows,
            }
    return None


def index_note(info: dict[str, Any] | None, built: bool) -> str:
    if info is None:
        return (
            "none: the index job builds one only above --index-min-rows rows, so LanceDB searched "
            "every row and the ANN figures equal the exact ones (pass --build-index to see what "
            "an IVF_PQ index costs)"
        )
    total = info["indexed_rows"] + info["unindexed_rows"]
    note = (
        f"{info['type']} ({info['distance']}){' built now' if built else ''}, covering "
        f"{info['indexed_rows']} of {total} rows"
    )
    if info["unindexed_rows"]:
        why = (
            "LanceDB trains IVF_PQ only on 256+ rows"
            if info["indexed_rows"] == 0
            else "rows added since the index was built"
        )
        note += f"; the other {info['unindexed_rows']} are searched exactly ({why})"
    return note


def caption_index_note(info: dict[str, Any] | None, captions: int) -> str:
    where = f"the {captions} caption embeddings in a temporary LanceDB table"
    if info is None:
        return f"{where}, searched exhaustively (the video table has no index)"
    note = (
        f"{where} with an {info['type']} index like the video table's, covering "
        f"{info['indexed_rows']} of {captions}"
    )
    return note + (" (IVF_PQ trains on 256+ rows only)" if info["unindexed_rows"] else "")
