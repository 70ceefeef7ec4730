"""The evaluation job's settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.encode import ModelSpec
from pipelines.resources import EVAL_RAY_MIN_SCORES
from pipelines.search import DEFAULT_REFINE_FACTOR

# ann_recall@10 compares against the exact top 10; R@10 needs ranks up to 10.
MIN_ANN_K = 10
# Captions per exact-rank chunk, at most: fewer where the gallery is large (see below).
DEFAULT_EXACT_CHUNK_ROWS = 1024
# Scores per exact-rank chunk, at most (128 MB of float32): a chunk's matmul output, comparison
# mask and top-k work each scale with it, so 1024 captions x 100k videos (400 MB a copy) peaked
# at 2.5 GiB RSS in the job's exact step; capped, the chunk is 335 captions (or 33,333 videos
# against 1,005 captions) and the peak 1.42 GiB.
EXACT_CHUNK_SCORES = 1 << 25


@dataclass(frozen=True)
class EvaluateConfig:
    """One run of the evaluation job.

    Attributes:
        manifest: Parquet shards or folders; their ``caption`` column holds the queries.
        db, table: the LanceDB embeddings table the index job wrote.
        model: must be the model the table was indexed with.
        out: folder for ``metrics.json``, ``ranks.parquet`` and ``recall_at_k.png``.
        split: evaluate only the manifest rows of this split (``None``: every row).
        k: results per ANN query (at least 10).
        build_index: (re)build the table's IVF_PQ index first, even below the index job's size
            threshold. This writes the index into the table.
        nprobes, refine_factor: ANN search settings, as the search job uses them.
        text_batch_size: captions per text-tower batch.
        ray_min_captions: encode on a Ray Data actor pool when the split has more captions.
        exact_chunk_rows: captions scored against every video at once for the exact ranks.
        ray_min_scores: compute the exact ranks as Ray tasks when the split has more
            caption-video scores (captions x videos); ``None``: never.
        address, actors, gpus_per_actor: the Ray cluster and its text-encode actors.
    """

    manifest: str | Sequence[str]
    db: str
    table: str
    model: ModelSpec
    out: Path
    split: str | None = None
    k: int = MIN_ANN_K
    build_index: bool = False
    nprobes: int | None = None
    refine_factor: int | None = DEFAULT_REFINE_FACTOR
    text_batch_size: int = 256
    ray_min_captions: int = 5000
    exact_chunk_rows: int = DEFAULT_EXACT_CHUNK_ROWS
    ray_min_scores: int | None = EVAL_RAY_MIN_SCORES
    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None


def connect_ray(address: str | None) -> None:
    """Join the cluster at ``address`` (``None``: ``RAY_ADDRESS``, else a local Ray), once."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True)
