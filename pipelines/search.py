"""Text-to-video search over an index table, pointing at the best-matching segment."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from lancedb.table import Table

import centerclip
from pipelines import schema
from pipelines.write import connect, open_table


class ModelMismatchError(ValueError):
    """The table's vectors were made by another model than the one given."""


@dataclass(frozen=True)
class SearchHit:
    video_id: str
    uri: str
    score: float
    """Cosine similarity between the query and the video embedding."""
    segment: int
    segment_start_s: float
    segment_end_s: float
    segment_score: float
    """Cosine similarity between the query and the best segment."""


def open_index(db_uri: str, table: str) -> Table:
    """Open an embeddings table, with a clear error when it does not exist."""
    opened = open_table(connect(db_uri), table)
    if opened is None:
        raise ValueError(f"no table {table!r} in {db_uri}; run the index job first")
    return opened


def check_model(table: Table, model_id: str) -> int:
    """Number of rows embedded by ``model_id``; raises :class:`ModelMismatchError` when none are
    and the table holds another model's vectors (queries must never mix models)."""
    ids = table.search().select([schema.MODEL_ID]).limit(None).to_arrow()[schema.MODEL_ID]
    counts = {row["values"]: row["counts"] for row in pc.value_counts(ids).to_pylist()}
    if counts and model_id not in counts:
        raise ModelMismatchError(
            f"the table was indexed with {', '.join(sorted(counts))}, not {model_id}; "
            "pass the same --model/--weights/settings as the index job, or re-index"
        )
    return counts.get(model_id, 0)


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


def search(
    *,
    db_uri: str,
    table_name: str,
    model: centerclip.VideoCLIP,
    queries: list[str],
    k: int = 10,
    exact: bool = False,
) -> list[list[SearchHit]]:
    """Top ``k`` videos for each query, best first.

    ``exact`` skips the ANN index (brute force over every row); otherwise LanceDB uses the IVF_PQ
    index where one exists and refines its candidates with exact distances.
    """
    table = open_index(db_uri, table_name)
    check_model(table, model.model_id)
    results = []
    for vector in encode_queries(model, queries):
        query = (
            table.search(vector, vector_column_name=schema.VECTOR)
            .distance_type("cosine")
            .where(f"{schema.MODEL_ID} = '{model.model_id}'", prefilter=True)
            .limit(k)
        )
        query = query.bypass_vector_index() if exact else query.refine_factor(10)
        rows = query.to_arrow()
        results.append(_hits(rows, vector))
    return results


def _hits(rows: pa.Table, query: np.ndarray) -> list[SearchHit]:
    hits = []
    for row in rows.to_pylist():
        segments = np.asarray(row[schema.SEGMENT_VECTORS], np.float32).reshape(-1, query.shape[0])
        segment_scores = segments @ query
        best = int(segment_scores.argmax())
        hits.append(
            SearchHit(
                video_id=row[schema.VIDEO_ID],
                uri=row[schema.URI],
                score=1.0 - float(row["_distance"]),
                segment=best,
                segment_start_s=float(row[schema.SEGMENT_START_S][best]),
                segment_end_s=float(row[schema.SEGMENT_END_S][best]),
                segment_score=float(segment_scores[best]),
            )
        )
    return hits
