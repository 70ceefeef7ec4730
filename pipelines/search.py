"""Text-to-video search over an index table, pointing at the best-matching segment.

Vector search ranks videos by the cosine of the query and the video embedding (``by="vector"``)
or by their best segment's (``by="moments"``: LanceDB's MaxSim over the segments' multivector
column), which finds a video one part of which the query describes; hybrid search
(:func:`hybrid_search`) fuses that ranking with a BM25 ranking of the captions (the table's
full-text index) by reciprocal rank, for captions that carry words a CLIP model does not know.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from lancedb.rerankers import RRFReranker
from lancedb.table import Table

import centerclip
from pipelines import schema
from pipelines.upsert import sql_in
from pipelines.write import connect, open_table

# Candidates re-ranked by exact distance per result when an ANN index answers (LanceDB's
# refine_factor): PQ distances alone misorder close neighbours.
DEFAULT_REFINE_FACTOR = 10
_HIT_COLUMNS = (schema.VIDEO_ID, schema.URI, schema.SEGMENT_START_S, schema.SEGMENT_END_S)
# What a search ranks by: the whole-video embedding, or the best segment (MaxSim).
BY_VECTOR = "vector"
BY_MOMENTS = "moments"
SEARCH_BY = (BY_VECTOR, BY_MOMENTS)
# Reciprocal rank fusion's constant: a row at rank r of one list adds 1 / (r + 60).
RRF_K = 60
# Rows each side of a hybrid search ranks before fusion. Fusing only the top k of each would tie
# the keyword list's first row with the vector list's first; deeper lists let a row that both
# rankings hold (however low in one of them) win over a row only one of them holds.
HYBRID_CANDIDATES = 100


class ModelMismatchError(ValueError):
    """The table's vectors were made by another model than the one given."""


@dataclass(frozen=True)
class SearchHit:
    video_id: str
    uri: str
    score: float
    """Cosine similarity between the query and the video embedding (what ``by="vector"``
    ranks by)."""
    segment: int
    segment_start_s: float
    segment_end_s: float
    segment_score: float
    """Cosine similarity between the query and the best segment: MaxSim, what ``by="moments"``
    ranks by."""
    captions: tuple[str, ...] = ()
    fused_score: float | None = None
    """Hybrid search only: the reciprocal-rank-fusion score the results are ordered by."""


class HybridIndexMissingError(ValueError):
    """Hybrid search on a table without a full-text index on its captions."""


class MomentsUnavailableError(ValueError):
    """Moment ranking on a table whose segments are not in the multivector column yet."""


def open_index(db_uri: str, table: str) -> Table:
    """Open an embeddings table, with a clear error when it does not exist."""
    opened = open_table(connect(db_uri), table)
    if opened is None:
        raise ValueError(f"no table {table!r} in {db_uri}; run the index job first")
    return opened


def check_model(table: Table, model_id: str) -> int:
    """Number of rows embedded by ``model_id``; raises :class:`ModelMismatchError` when none are
    and the table holds another model's vectors (queries must never mix models).

    A count through the table's ``model_id`` index, so it costs the same on any table size;
    only a mismatch reads the column, to name the models the table holds."""
    mine = table.count_rows(model_filter(model_id))
    if mine == 0 and table.count_rows() > 0:
        ids = table.search().select([schema.MODEL_ID]).limit(None).to_arrow()[schema.MODEL_ID]
        raise ModelMismatchError(
            f"the table was indexed with {', '.join(sorted(pc.unique(ids).to_pylist()))}, not "
            f"{model_id}; pass the same --model/--weights/settings as the index job, or re-index"
        )
    return mine


def encode_queries(
    model: centerclip.VideoCLIP, queries: list[str], *, batch_size: int = 256
) -> np.ndarray:
    """Unit text embeddings ``[Q, D]`` float32."""
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(queries), batch_size):
            tokens = model.tokenize(queries[start : start + batch_size])
            chunks.append(model.encode_text(tokens).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, model.embed_dim), np.float32)


def model_filter(model_id: str) -> str:
    """SQL filter selecting the rows embedded by ``model_id`` (quotes escaped)."""
    return sql_in(schema.MODEL_ID, [model_id])


def nearest(
    table: Table,
    vectors: np.ndarray,
    *,
    k: int,
    where: str | None = None,
    exact: bool = False,
    nprobes: int | None = None,
    refine_factor: int | None = DEFAULT_REFINE_FACTOR,
    columns: Sequence[str] = (schema.VIDEO_ID,),
    batch_size: int = 256,
    column: str = schema.VECTOR,
) -> pa.Table:
    """The ``k`` rows nearest (cosine) to each of ``vectors [Q, D]``, among the rows the SQL
    filter ``where`` selects (a prefilter: the ``k`` results all pass it), or among all rows.

    ``column`` is ``vector`` (the video embedding) or ``segment_embeddings``, the multivector
    column, where a row's similarity is MaxSim: its best segment's cosine. LanceDB takes one
    multivector query per call (a list of vectors *is* one query there), so those are searched
    one by one.

    ``exact`` skips the ANN index (brute force over every row); otherwise LanceDB uses the IVF_PQ
    index where one exists, probes ``nprobes`` partitions (LanceDB's default when ``None``) and
    re-ranks ``k * refine_factor`` candidates by their exact distance (``None``: PQ distances,
    only approximately cosine). Rows the index does not cover yet are always searched exactly.

    Returns:
        ``columns`` plus ``query`` (the row of ``vectors``, int64) and ``score`` (cosine
        similarity, float32), best first within each query; a query gets fewer than ``k`` rows
        only when fewer than ``k`` rows pass ``where``.
    """
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"vectors must be [Q, D] with Q >= 1, got shape {vectors.shape}")
    if column == schema.SEGMENT_EMBEDDINGS:
        batch_size = 1
    parts = []
    for start in range(0, vectors.shape[0], batch_size):
        chunk = vectors[start : start + batch_size]
        query = (
            table.search(list(chunk), vector_column_name=column)
            .distance_type("cosine")
            .select([*columns, "_distance"])
            .limit(k)
        )
        if where is not None:
            query = query.where(where, prefilter=True)
        if exact:
            query = query.bypass_vector_index()
        else:
            if nprobes is not None:
                query = query.nprobes(nprobes)
            if refine_factor is not None:
                query = query.refine_factor(refine_factor)
        rows = query.to_arrow()
        # LanceDB adds ``query_index`` only when it was given more than one vector.
        if "query_index" in rows.column_names:
            within = rows["query_index"].to_numpy().astype(np.int64)
        else:
            within = np.zeros(rows.num_rows, np.int64)
        score = 1.0 - rows["_distance"].to_numpy().astype(np.float32)
        parts.append(
            rows.select(list(columns))
            .append_column(schema.QUERY, pa.array(within + start))
            .append_column(schema.SCORE, pa.array(score))
        )
    # Batches come back grouped by query; order each query's rows best first.
    return pa.concat_tables(parts).sort_by(
        [(schema.QUERY, "ascending"), (schema.SCORE, "descending")]
    )


def search_vectors(
    table: Table,
    vectors: np.ndarray,
    *,
    model_id: str,
    k: int = 10,
    exact: bool = False,
    where: str | None = None,
    checked: bool = False,
    by: str = BY_VECTOR,
) -> list[list[SearchHit]]:
    """Top ``k`` videos for each query embedding ``[Q, D]`` (unit norm, same model as the
    table's ``model_id`` rows), best first, each with its best-matching segment.

    ``by`` ranks by the video embedding (``"vector"``) or by the best segment (``"moments"``:
    MaxSim over ``segment_embeddings``, through its ANN index where it has one). ``where`` (SQL)
    narrows the rows further, e.g. to a split; ``checked`` skips the model check
    (:func:`check_model`) for a caller that made it already.

    Raises:
        MomentsUnavailableError: ``by="moments"`` on a table in the old flat segment layout.
    """
    if by not in SEARCH_BY:
        raise ValueError(f"by must be one of {', '.join(SEARCH_BY)}, got {by!r}")
    if by == BY_MOMENTS and schema.SEGMENT_EMBEDDINGS not in table.schema.names:
        raise MomentsUnavailableError(
            f"this table keeps its segments in the flat {schema.LEGACY_SEGMENT_VECTORS} column "
            "of earlier versions, which cannot rank moments; re-run jobs.index on it once (it "
            f"moves them to {schema.SEGMENT_EMBEDDINGS}, re-encoding nothing)"
        )
    if not checked:
        check_model(table, model_id)
    vectors = np.asarray(vectors, np.float32)
    columns = hit_columns(table)
    rows = nearest(
        table,
        vectors,
        k=k,
        where=_and(model_filter(model_id), where),
        exact=exact,
        columns=columns if by == BY_VECTOR else [*columns, schema.VECTOR],
        column=schema.VECTOR if by == BY_VECTOR else schema.SEGMENT_EMBEDDINGS,
    )
    query = rows[schema.QUERY].to_numpy()
    bounds = np.searchsorted(query, np.arange(vectors.shape[0] + 1))
    results = []
    for q, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        found = rows.slice(lo, hi - lo)
        if by == BY_MOMENTS:
            # Ranked by MaxSim; the hit's score stays the video embedding's cosine.
            found = found.set_column(
                found.column_names.index(schema.SCORE),
                schema.SCORE,
                pa.array(_video_scores(found, vectors[q])),
            )
        results.append(_hits(found, vectors[q]))
    return results


def search(
    *,
    db_uri: str,
    table_name: str,
    model: centerclip.VideoCLIP,
    queries: list[str],
    k: int = 10,
    exact: bool = False,
    hybrid: bool = False,
    split: str | None = None,
    by: str = BY_VECTOR,
) -> list[list[SearchHit]]:
    """Top ``k`` videos for each text query, best first (see :func:`search_vectors`), by
    vector search (ranked ``by`` the video or its best segment) or, with ``hybrid``, fused with
    the captions' full-text ranking (:func:`hybrid_search`, by the video embedding only);
    ``split`` keeps only that split's videos."""
    if hybrid and by != BY_VECTOR:
        raise ValueError("hybrid search fuses the whole-video ranking; it does not rank moments")
    table = open_index(db_uri, table_name)
    vectors = encode_queries(model, queries)
    where = split_filter(split)
    if not hybrid:
        return search_vectors(
            table, vectors, model_id=model.model_id, k=k, exact=exact, where=where, by=by
        )
    check_model(table, model.model_id)
    return [
        hybrid_search(table, text, vector, model_id=model.model_id, k=k, where=where, checked=True)
        for text, vector in zip(queries, vectors, strict=True)
    ]


def split_filter(split: str | None) -> str | None:
    """SQL filter keeping one split's rows (``None``: every row)."""
    return None if split is None else sql_in(schema.SPLIT, [split])


def hybrid_search(
    table: Table,
    text: str,
    vector: np.ndarray,
    *,
    model_id: str,
    k: int = 10,
    where: str | None = None,
    checked: bool = False,
) -> list[SearchHit]:
    """Top ``k`` videos for the query ``text`` (embedded as ``vector [D]``) by reciprocal rank
    fusion of the vector ranking and the captions' BM25 ranking, best first.

    Each ranking holds its top ``HYBRID_CANDIDATES`` (or ``k``) of ``model_id``'s rows (and
    ``where``'s). Each hit carries its cosine ``score`` and best segment as in
    :func:`search_vectors`, and the ``fused_score`` it is ordered by.

    Raises:
        HybridIndexMissingError: the table has no full-text index on its captions.
    """
    if not any(index.name == schema.CAPTION_FTS_INDEX for index in table.list_indices()):
        raise HybridIndexMissingError(
            "hybrid search needs the full-text index on captions, which the index job builds; "
            "re-run jobs.index on this table"
        )
    if not checked:
        check_model(table, model_id)
    vector = np.asarray(vector, np.float32)
    rows = (
        table.search(query_type="hybrid", vector_column_name=schema.VECTOR)
        .vector(vector.tolist())
        .text(text)
        .distance_type("cosine")
        .where(_and(model_filter(model_id), where), prefilter=True)
        .select([*hit_columns(table), schema.VECTOR])
        .rerank(RRFReranker(K=RRF_K, return_score="relevance"))
        .limit(max(k, HYBRID_CANDIDATES))
        .to_arrow()
        .slice(0, k)
    )
    rows = rows.append_column(schema.SCORE, pa.array(_video_scores(rows, vector)))
    fused = rows["_relevance_score"].to_pylist()
    return [
        dataclasses.replace(hit, fused_score=float(score))
        for hit, score in zip(_hits(rows, vector), fused, strict=True)
    ]


def hit_columns(table: Table) -> list[str]:
    """The columns a :class:`SearchHit` is made of: the segments (the multivector column, or
    the flat one of a table not migrated yet, or both midway), captions where the table has
    them."""
    names = table.schema.names
    segments = [c for c in (schema.SEGMENT_EMBEDDINGS, schema.LEGACY_SEGMENT_VECTORS) if c in names]
    captions = [schema.CAPTION] if schema.CAPTION in names else []
    return [*_HIT_COLUMNS, *segments, *captions]


def _and(*filters: str | None) -> str:
    return " AND ".join(f"({f})" for f in filters if f)


def _video_scores(rows: pa.Table, query: np.ndarray) -> np.ndarray:
    """Cosine of ``query [D]`` with each row's video embedding: ``[N]`` float32."""
    if rows.num_rows == 0:
        return np.zeros(0, np.float32)
    vectors = rows[schema.VECTOR].combine_chunks().flatten().to_numpy()
    return (vectors.reshape(rows.num_rows, -1) @ query).astype(np.float32)


def _segments(row: dict[str, Any]) -> list[Any]:
    """A row's segment embeddings: the multivector column's ``[S][D]``, or (a row not migrated
    yet) the flat ``[S * D]``."""
    value = row.get(schema.SEGMENT_EMBEDDINGS)
    return value if value is not None else row[schema.LEGACY_SEGMENT_VECTORS]


def _hits(rows: pa.Table, query: np.ndarray) -> list[SearchHit]:
    hits = []
    for row in rows.to_pylist():
        segments = np.asarray(_segments(row), np.float32).reshape(-1, query.shape[0])
        segment_scores = segments @ query  # [S]
        best = int(segment_scores.argmax())
        hits.append(
            SearchHit(
                video_id=row[schema.VIDEO_ID],
                uri=row[schema.URI],
                score=float(row[schema.SCORE]),
                segment=best,
                segment_start_s=float(row[schema.SEGMENT_START_S][best]),
                segment_end_s=float(row[schema.SEGMENT_END_S][best]),
                segment_score=float(segment_scores[best]),
                captions=tuple(row.get(schema.CAPTION) or ()),
            )
        )
    return hits
