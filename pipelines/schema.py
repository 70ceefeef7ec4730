"""Every column name and Arrow schema of the project, in one place.

Three kinds of record flow through the index job:

* the **manifest** a user writes (one row per video);
* **decoded batches** between the decode and encode stages;
* the **tables** in LanceDB: the embeddings table and its errors table ``<table>_errors``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

# Manifest columns.
VIDEO_ID = "video_id"
URI = "uri"
CAPTION = "caption"
SPLIT = "split"
START_S = "start_s"
END_S = "end_s"

REQUIRED_MANIFEST_COLUMNS = (VIDEO_ID, URI)
OPTIONAL_MANIFEST_COLUMNS = (CAPTION, SPLIT, START_S, END_S)

# Columns added by the pipeline.
FINGERPRINT = "fingerprint"
FRAMES = "frames"
DURATION_S = "duration_s"
FRAME_TIMES_S = "frame_times_s"
DECODE_S = "decode_s"
# Cost accounting per row, from the decode stage: CPU seconds of the decoder process and frames
# it produced (clips decoded in one pass share the pass's figures). Not stored in the table.
DECODE_CPU_S = "decode_cpu_s"
FRAMES_DECODED = "frames_decoded"
# What decoded a row, with the reason where it is not the decoder asked for (GPU fallback).
DECODER = "decoder"
# Optional decode input: the seed of one row's random frame sampling, so the frames a training
# row gets do not depend on which decode actor happens to decode it (``pipelines.finetune``).
SAMPLE_SEED = "sample_seed"
# The fine-tuning stream: the global step a row belongs to and the one caption it trains with.
STEP = "step"
TRAIN_CAPTION = "train_caption"
ENCODE_S = "encode_s"
ERROR = "error"
STAGE = "stage"
VECTOR = "vector"
# The S segment embeddings as a LanceDB multivector (``list<fixed_size_list<float32>[D]>``),
# which LanceDB searches by MaxSim: a row's score is its best segment's cosine.
SEGMENT_EMBEDDINGS = "segment_embeddings"
# Tables written before the multivector column held the segments flattened to [S * D] here; the
# index job migrates them (``pipelines.write.migrate_segment_layout``) and search reads either.
LEGACY_SEGMENT_VECTORS = "segment_vectors"
SEGMENT_START_S = "segment_start_s"
SEGMENT_END_S = "segment_end_s"
MODEL_ID = "model_id"
# A 64-bit digest of a row's descriptive manifest columns (``pipelines.plan.metadata_digests``):
# a changed caption or uri updates the row in place without re-encoding the video.
METADATA_DIGEST = "metadata_digest"
INDEXED_AT = "indexed_at"
AT = "at"
WORKER = "worker"

# Search results (``pipelines.search.nearest``) and evaluation's per-query ranks.
QUERY = "query"
SCORE = "score"
CAPTION_INDEX = "caption_index"
T2V_RANK = "t2v_rank"
ANN_T2V_RANK = "ann_t2v_rank"
TOP1_VIDEO_ID = "top1_video_id"
MISSING = "missing"
# The one column of the temporary caption table evaluation searches for video-to-text.
CAPTION_ROW = "caption_row"

# Values of the ``stage`` column of the errors table.
STAGE_READ = "read"
STAGE_DECODE = "decode"
STAGE_ENCODE = "encode"

ERRORS_TABLE_SUFFIX = "_errors"

# What the embeddings table holds, as metadata of its ``vector`` field (LanceDB updates field
# metadata in place, so a re-index with another model rewrites it; schema-level metadata is fixed
# at creation). Any Arrow reader sees it: ``table.schema.field("vector").metadata``.
# ``lancedb:description`` is LanceDB's own convention for a human-readable note on a column.
META_DESCRIPTION = "lancedb:description"
META_MODEL_ID = "centerclip:model_id"
META_PRESET = "centerclip:preset"
META_SETTINGS = "centerclip:settings"
META_DIM = "centerclip:dim"
META_SEGMENTS = "centerclip:segments"
META_SAMPLING = "centerclip:sampling"
META_SIMILARITY = "centerclip:similarity"
# The full-text index on captions that hybrid search combines with the vector search.
CAPTION_FTS_INDEX = f"{CAPTION}_idx"

TIMESTAMP = pa.timestamp("us", tz="UTC")


def errors_table_name(table: str) -> str:
    """Name of the errors table that belongs to the embeddings table ``table``."""
    return f"{table}{ERRORS_TABLE_SUFFIX}"


def vector_metadata(
    *, model_id: str, preset: str, settings: str, dim: int, segments: int, sampling: str
) -> dict[str, str]:
    """The ``vector`` field's metadata: which model made the vectors and how to query them.

    ``settings`` is the model's settings as JSON; ``sampling`` how frames were picked (uniform
    chunk centres for indexing).
    """
    return {
        META_DESCRIPTION: (
            f"unit-norm CenterCLIP video embedding [{dim}] (mean of the {segments} segment "
            f"embeddings in {SEGMENT_EMBEDDINGS}, a multivector column that ranks moments by "
            f"MaxSim); search either with cosine distance, filtered on {MODEL_ID} = "
            f"'{model_id}', the query encoded by the same model's text tower"
        ),
        META_MODEL_ID: model_id,
        META_PRESET: preset,
        META_SETTINGS: settings,
        META_DIM: str(dim),
        META_SEGMENTS: str(segments),
        META_SAMPLING: sampling,
        META_SIMILARITY: "cosine",
    }


def multivector_type(dim: int) -> pa.DataType:
    """LanceDB's multivector type of ``dim``-wide vectors: ``list<fixed_size_list<float32>[D]>``
    (MaxSim search, cosine only)."""
    return pa.list_(pa.list_(pa.float32(), dim))


def multivectors(vectors: np.ndarray) -> pa.ListArray:
    """``[N, S, D]`` float32 as ``N`` values of the multivector column, each ``S`` vectors
    ``[D]``."""
    count, segments, dim = vectors.shape
    inner = pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1)), dim
    )
    return pa.ListArray.from_arrays(
        pa.array(np.arange(0, count * segments + 1, segments, dtype=np.int32)), inner
    )


def embeddings_schema(dim: int, segments: int) -> pa.Schema:
    """Arrow schema of the embeddings table for ``dim``-wide vectors and ``segments`` segments.

    ``vector`` is the unit-norm video embedding ``[D]``; ``segment_embeddings`` holds the ``S``
    unit-norm segment embeddings ``[S, D]`` as a multivector column (a variable-size list of
    ``[D]`` vectors: LanceDB searches it by MaxSim, and a fixed-size list of fixed-size lists
    would not read back in Lance 0.40), and the two ``segment_*_s`` columns the time span each
    segment covers, so a search hit can point inside the video.
    """
    return pa.schema(
        [
            pa.field(VIDEO_ID, pa.string(), nullable=False),
            pa.field(URI, pa.string(), nullable=False),
            pa.field(VECTOR, pa.list_(pa.float32(), dim), nullable=False),
            pa.field(SEGMENT_EMBEDDINGS, multivector_type(dim)),
            pa.field(SEGMENT_START_S, pa.list_(pa.float32(), segments)),
            pa.field(SEGMENT_END_S, pa.list_(pa.float32(), segments)),
            pa.field(MODEL_ID, pa.string(), nullable=False),
            pa.field(FINGERPRINT, pa.string(), nullable=False),
            pa.field(METADATA_DIGEST, pa.int64()),
            pa.field(INDEXED_AT, TIMESTAMP, nullable=False),
            pa.field(CAPTION, pa.list_(pa.string())),
            pa.field(SPLIT, pa.string()),
        ]
    )


ERRORS_SCHEMA = pa.schema(
    [
        pa.field(VIDEO_ID, pa.string(), nullable=False),
        pa.field(URI, pa.string()),
        pa.field(STAGE, pa.string(), nullable=False),
        pa.field(ERROR, pa.string(), nullable=False),
        pa.field(FINGERPRINT, pa.string()),
        pa.field(MODEL_ID, pa.string()),
        pa.field(AT, TIMESTAMP, nullable=False),
    ]
)
