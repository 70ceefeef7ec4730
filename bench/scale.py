"""What the index, search and evaluation cost as the table grows (issue 14).

At each table size (``--sizes``; rows of the real schema, 512-d vectors and 4 segments, random
unit vectors written with LanceDB in large batches, then given the writer's scalar indexes, a
maintenance (compaction) and an IVF_PQ index) it measures:

* **commit**: a 256-row ``TableWriter`` commit (half updates, half new rows), median of 10;
* **unchanged re-run**: read the manifest, the table state and ``plan_index``, in a fresh process
  (peak RSS), and at the largest size the whole CLI (``python -m jobs.index``) wall time;
* **1% re-index**: the plan and the writes (the writer's defaults, then ``finish``) of a
  manifest whose fingerprints changed for 1% of the rows, against the encode work of those
  videos at the ViT-B/32 encode rate ``bench/results/pipeline.json`` measured on this machine;
* **search**: one text query end to end (text encode with a warm ViT-B-32-center, the model
  check, an IVF_PQ search prefiltered on ``model_id``, the hits), p50 and p95 of 40, in a fresh
  process as ``jobs.search`` and the service run (the process that has just built the table
  searched 30% slower at 1M rows, its text encode included), beside the same with the text
  encoded over CLIP's full 77-token context (the path before), and the same query searched by
  moments (MaxSim through the segments' IVF_PQ index);
* **evaluation** (sizes up to ``--eval-max-videos``): exact ranks of ``--eval-captions`` random
  caption vectors against the table's videos, chunked, in a fresh process (peak RSS).

Sizes above ``--ann-max-rows`` get no IVF_PQ index (a 1M-row table's two took 438-453 s on 2
cores, most of it the segments' index over 4M vectors): search is not measured there, and the
1% re-index's writes leave the index out. Their figures say so (``ann_index``), and the run's
``not_measured`` lists them. ``--only search`` measures search alone at every size
(``--ann-columns vector``: on the index of ``vector`` only, the column a search by text queries,
125 s at 1M); ``--only evaluation`` the evaluation alone, on tables without IVF_PQ indexes.

Once, at the largest size: **driver ingest**, rows per second one committing driver takes in
commits of 256 and of 4096 new rows, appended (the index job's path for new videos) and
upserted (:mod:`pipelines.upsert`, the path of rows the plan does not know to be new),
alternating; then what the writer sustains with its defaults, maintenance included, into a new
table (a first index) against its previous defaults, and into the ANN-indexed table
(:func:`_sustained_ingest`). The headline ``ingest_rows_per_s`` is the first of these.
Writes ``bench/results/scale.json`` and ``scale.png``.

    python -m bench.scale                                  # 10k and 100k rows
    python -m bench.scale --sizes 10000,100000,1000000     # needs ~10 GB of disk per 1M rows
    python -m bench.scale --sizes 10000,1000000 --ann-max-rows 100000 --name scale-1m
    python -m bench.scale --sizes 10000,1000000 --only search --name scale-1m-search
    python -m bench.scale --sizes 100000 --only evaluation --eval-max-videos 100000 \
        --name scale-eval-100k
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench._common import REPO_ROOT, RESULTS_DIR, print_table, run_metadata, write_results
from bench.reindex import _diff_in_fresh_process, peak_rss_gib

MODEL = "ViT-B-32-center"
TABLE = "videos"
DIM, SEGMENTS = 512, 4
BATCH_ROWS = 25_000
# Rows per block reaching the writer (a Ray Data block of results), and the commits timed alone.
BLOCK_ROWS = 256
SUSTAINED_COMMITS = 40
SEARCHES = 40
# What --only may keep to, alone at each size.
ONLY = ("search", "evaluation")
# An --index-min-rows no table reaches: where a size has no IVF_PQ index, the writer builds none.
NO_ANN_INDEX_ROWS = 2**62
QUERIES = ("a red circle moving left", "two blue squares", "a small green triangle on grey")


def video_rows(ids: np.ndarray, rng: np.random.Generator) -> pa.Table:
    """Encoded rows for ``ids`` as the encode stage gives them to the writer (``error`` empty)
    plus the manifest columns a table row carries."""
    from pipelines import schema

    n = len(ids)
    vectors = rng.standard_normal((n, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # Segments near their video's vector, each its own: identical ones are duplicate vectors,
    # on which the multivector index's k-means degenerates (a cost no real table pays).
    segments = vectors[:, None] + 0.5 * rng.standard_normal((n, SEGMENTS, DIM), dtype=np.float32)
    segments /= np.linalg.norm(segments, axis=2, keepdims=True)

    return pa.table(
        {
            schema.VIDEO_ID: names(ids),
            schema.URI: uris(ids),
            schema.FINGERPRINT: fingerprints(ids),
            schema.ERROR: pa.array([""] * n),
            schema.VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM),
            schema.SEGMENT_EMBEDDINGS: schema.multivectors(segments),
            schema.SEGMENT_START_S: pa.FixedSizeListArray.from_arrays(
                pa.array(np.tile(np.arange(SEGMENTS, dtype=np.float32), n)), SEGMENTS
            ),
            schema.SEGMENT_END_S: pa.FixedSizeListArray.from_arrays(
                pa.array(np.tile(np.arange(1, SEGMENTS + 1, dtype=np.float32), n)), SEGMENTS
            ),
        }
    )


def names(ids: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise("v", pc.cast(pa.array(ids), pa.string()), "")


def uris(ids: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise("s3://bucket/videos/", names(ids), ".mp4", "")


def fingerprints(ids: np.ndarray, generation: int = 0) -> pa.Array:
    return pc.binary_join_element_wise(
        pc.cast(pa.array(100_000 + ids % 9_000), pa.string()),
        pc.cast(pa.array(1_700_000_000_000_000_000 + ids + generation), pa.string()),
        ":",
    )


def build_table(
    db: Path, rows: int, model_id: str, *, ann: bool = True, ann_columns: list[str] | None = None
) -> dict[str, Any]:
    """``rows`` rows written with LanceDB in large batches, compacted as the writer's
    maintenance leaves a table (a 25,000-row fragment per batch would otherwise burden the
    commits timed on it: 40 of them at 1M rows), then the writer's indexes (the IVF_PQ ones
    only with ``ann``, on ``ann_columns`` only where given)."""
    import lancedb

    from pipelines import schema
    from pipelines.plan import metadata_digests
    from pipelines.write import TableWriter, build_ann_index, fragment_count

    table_schema = schema.embeddings_schema(DIM, SEGMENTS)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    table = None
    for start in range(0, rows, BATCH_ROWS):
        ids = np.arange(start, min(rows, start + BATCH_ROWS))
        encoded = video_rows(ids, rng)
        n = len(ids)
        columns = {
            **{name: encoded[name] for name in encoded.column_names if name != schema.ERROR},
            schema.MODEL_ID: pa.array([model_id] * n),
            schema.METADATA_DIGEST: metadata_digests(pa.table({schema.URI: encoded[schema.URI]})),
            schema.INDEXED_AT: pa.array(np.full(n, 1_700_000_000_000_000, "datetime64[us]")).cast(
                schema.TIMESTAMP
            ),
        }
        batch = pa.table(
            {f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in table_schema},
            schema=table_schema,
        )
        if table is None:
            table = lancedb.connect(str(db)).create_table(TABLE, data=batch, mode="overwrite")
        else:
            table.add(batch)
    written = time.perf_counter() - started
    started = time.perf_counter()
    writer = TableWriter(
        db_uri=str(db), table=TABLE, dim=DIM, segments=SEGMENTS, model_id=model_id
    )  # creates the scalar indexes
    scalar = time.perf_counter() - started
    started = time.perf_counter()
    writer.maintain()
    built = {
        "write_s": written,
        "scalar_indexes_s": scalar,
        "compaction_s": time.perf_counter() - started,
        "fragments": fragment_count(writer.table),
    }
    if not ann:
        return {**built, "ann_index_s": None}
    started = time.perf_counter()
    build_ann_index(writer.table, rows=rows, dim=DIM, columns=ann_columns)
    return {
        **built,
        "ann_index_s": time.perf_counter() - started,
        "ann_columns": ann_columns or "all",
    }


def write_manifest(folder: Path, rows: int, changed: np.ndarray | None = None) -> Path:
    """The manifest of the table's ``rows`` videos, with their fingerprints (as ETags would
    be given); the ``changed`` ids get new ones."""
    from pipelines import schema

    folder.mkdir(parents=True)
    ids = np.arange(rows)
    generation = np.zeros(rows, np.int64)
    if changed is not None:
        generation[changed] = 1
    shards = 4
    bounds = np.linspace(0, rows, shards + 1).astype(int)
    for k in range(shards):
        part = ids[bounds[k] : bounds[k + 1]]
        pq.write_table(
            pa.table(
                {
                    schema.VIDEO_ID: names(part),
                    schema.URI: uris(part),
                    schema.FINGERPRINT: fingerprints(part, 0)
                    if changed is None
                    else pc.if_else(
                        pa.array(generation[part] == 1),
                        fingerprints(part, 7),
                        fingerprints(part, 0),
                    ),
                }
            ),
            folder / f"part-{k:05d}.parquet",
        )
    return folder


def commit_ms(db: Path, rows: int, model_id: str, *, repeats: int = 10) -> dict[str, Any]:
    """Median 256-row commit: 128 existing rows updated, 128 new ones."""
    from pipelines.write import TableWriter, fragment_count

    writer = TableWriter(
        db_uri=str(db), table=TABLE, dim=DIM, segments=SEGMENTS, model_id=model_id,
        commit_rows=10**9, maintain_every=10**9, adaptive_maintenance=False,
    )  # fmt: skip
    rng = np.random.default_rng(1)
    times = []
    for repeat in range(repeats):
        fresh = np.arange(10 * rows + repeat * 128, 10 * rows + (repeat + 1) * 128)
        batch = video_rows(np.concatenate([rng.choice(rows, 128, replace=False), fresh]), rng)
        started = time.perf_counter()
        writer.add(batch)
        writer.flush()
        times.append(time.perf_counter() - started)
    fragments = fragment_count(writer.table)
    started = time.perf_counter()
    writer.maintain()
    return {
        "commit_ms_each": [round(t * 1000, 1) for t in times],
        "commit_ms": float(np.median(times) * 1000),
        "fragments_before_maintenance": fragments,
        "fragments_after_maintenance": fragment_count(writer.table),
        "maintenance_s": time.perf_counter() - started,
    }


def reindex_1pct(
    work: Path, db: Path, rows: int, model_id: str, *, ann: bool = True
) -> dict[str, Any]:
    """Plan and writes of a re-index with 1% of the fingerprints changed; without ``ann`` the
    table has no IVF_PQ index and the writer builds none."""
    from pipelines.index import read_table_state
    from pipelines.manifest import attach_fingerprints, read_manifest
    from pipelines.plan import REASON, plan_index
    from pipelines.write import TableWriter

    changed = np.random.default_rng(2).choice(rows, max(1, rows // 100), replace=False)
    manifest = write_manifest(work / f"manifest-1pct-{rows}", rows, changed)
    started = time.perf_counter()
    table = attach_fingerprints(read_manifest(str(manifest)))
    indexed, failed = read_table_state(str(db), TABLE)
    plan = plan_index(table, indexed=indexed, failed=failed, model_id=model_id)
    plan_s = time.perf_counter() - started
    assert plan.counts.get("changed") == len(changed), plan.counts
    started = time.perf_counter()
    writer = TableWriter(
        db_uri=str(db), table=TABLE, dim=DIM, segments=SEGMENTS, model_id=model_id,
        manifest=plan.todo.drop_columns([REASON]),
    )  # fmt: skip
    rng = np.random.default_rng(3)
    for start in range(0, len(changed), BLOCK_ROWS):
        ids = np.sort(changed)[start : start + BLOCK_ROWS]
        writer.add(video_rows(ids, rng).select(["video_id", "error", "vector",
            "segment_embeddings", "segment_start_s", "segment_end_s"]))  # fmt: skip
    if ann:
        ann_index = writer.finish()
    else:
        writer.finish(index_min_rows=NO_ANN_INDEX_ROWS)
        ann_index = "none: no IVF_PQ index at this size (--ann-max-rows)"
    writes_s = time.perf_counter() - started
    encode_rate = _encode_videos_per_s()
    encode_s = len(changed) / encode_rate
    return {
        "changed": len(changed),
        "plan_s": plan_s,
        "writes_s": writes_s,
        "ann_index": ann_index,
        "encode_videos_per_s": encode_rate,
        "encode_s": encode_s,
        "share_of_encode": (plan_s + writes_s) / encode_s,
    }


def _encode_videos_per_s() -> float:
    import json

    measured = json.loads((RESULTS_DIR / "pipeline.json").read_text())
    return float(measured["encode_only_videos_per_s"])


def search_latency(db: Path, model: Any) -> dict[str, Any]:
    """One text query end to end, as ``jobs.search`` runs it after start-up: the text encode
    and the table's part (model check, prefiltered IVF_PQ search, hits) timed apart, on
    ``QUERY_TORCH_THREADS`` torch threads as the search job and service run. Each iteration
    also encodes the query over CLIP's full context (open_clip's ``encode_text``, the path
    before ``encode_text_prefix``), alternating which goes first, so both are measured under
    the same load: ``full_context_*`` is what search cost before. Where the segments' column
    has its IVF_PQ index, each iteration also searches by moments (MaxSim over the segments)
    with the same query embedding: ``moments_*``."""
    import torch

    from pipelines import schema
    from pipelines.resources import QUERY_TORCH_THREADS
    from pipelines.search import BY_MOMENTS, encode_queries, open_index, search_vectors

    table = open_index(str(db), TABLE)
    by_moments = any(schema.SEGMENT_EMBEDDINGS in index.columns for index in table.list_indices())
    threads = torch.get_num_threads()
    torch.set_num_threads(QUERY_TORCH_THREADS)

    def full_context(query: str) -> np.ndarray:
        with torch.inference_mode():
            return model.clip.encode_text(model.tokenize([query]), normalize=True).numpy()

    encoders = {"prefix": lambda query: encode_queries(model, [query]), "full": full_context}
    encode: dict[str, list[float]] = {"prefix": [], "full": []}
    lookup: dict[str, list[float]] = {"prefix": [], "full": []}
    moments: list[float] = []
    try:
        for i in range(SEARCHES + 3):
            order = ("prefix", "full") if i % 2 == 0 else ("full", "prefix")
            for name in order:
                started = time.perf_counter()
                vectors = encoders[name](QUERIES[i % len(QUERIES)])
                encoded = time.perf_counter()
                hits = search_vectors(table, vectors, model_id=model.model_id, k=10)
                if i >= 3:  # warm-up: caches, the index's first read
                    encode[name].append(encoded - started)
                    lookup[name].append(time.perf_counter() - encoded)
                assert len(hits[0]) == 10
                if by_moments and name == "prefix":
                    started = time.perf_counter()
                    hits = search_vectors(
                        table, vectors, model_id=model.model_id, k=10, by=BY_MOMENTS
                    )
                    if i >= 3:
                        moments.append(time.perf_counter() - started)
                    assert len(hits[0]) == 10
    finally:
        torch.set_num_threads(threads)
    total = {name: np.add(encode[name], lookup[name]) for name in encode}
    by_moments_figures = {}
    if moments:
        moments_total = np.add(encode["prefix"], moments)
        by_moments_figures = {
            "moments_search_p50_ms": float(np.percentile(moments_total, 50) * 1000),
            "moments_search_p95_ms": float(np.percentile(moments_total, 95) * 1000),
            "moments_table_search_p50_ms": float(np.percentile(moments, 50) * 1000),
        }
    return {
        "search_p50_ms": float(np.percentile(total["prefix"], 50) * 1000),
        "search_p95_ms": float(np.percentile(total["prefix"], 95) * 1000),
        "text_encode_p50_ms": float(np.percentile(encode["prefix"], 50) * 1000),
        "table_search_p50_ms": float(np.percentile(lookup["prefix"], 50) * 1000),
        "table_search_p95_ms": float(np.percentile(lookup["prefix"], 95) * 1000),
        "full_context_search_p50_ms": float(np.percentile(total["full"], 50) * 1000),
        "full_context_text_encode_p50_ms": float(np.percentile(encode["full"], 50) * 1000),
        "torch_threads": QUERY_TORCH_THREADS,
        **by_moments_figures,
    }


def _search_in_fresh_process(db: str) -> dict[str, Any]:
    """:func:`search_latency` in a process of its own with the model built there, as
    ``jobs.search`` and the service run: not in the process that has just built and indexed the
    table (its heap, Lance's caches and threads)."""
    from pipelines.encode import ModelSpec

    return search_latency(Path(db), ModelSpec(MODEL).build())


def _evaluate_in_fresh_process(db: str, captions: int) -> dict[str, Any]:
    import lancedb

    from pipelines import schema
    from pipelines.evaluate import DEFAULT_EXACT_CHUNK_ROWS, exact_ranks
    from pipelines.evaluate.vectors import to_matrix

    after_imports = peak_rss_gib()
    table = lancedb.connect(db).open_table(TABLE)
    video = to_matrix(table.search().select([schema.VECTOR]).limit(None).to_arrow()[schema.VECTOR])
    rng = np.random.default_rng(4)
    caption_video = rng.integers(0, len(video), captions)
    text = video[caption_video] + 0.5 * rng.standard_normal((captions, DIM), dtype=np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    started = time.perf_counter()
    ranks = exact_ranks(text, video, caption_video, chunk_rows=DEFAULT_EXACT_CHUNK_ROWS)
    return {
        "captions": captions,
        "videos": len(video),
        "exact_s": time.perf_counter() - started,
        "t2v_R@1": ranks.ranks.metrics()["t2v"]["R@1"],
        "peak_rss_gib": peak_rss_gib(),
        "rss_after_imports_gib": after_imports,
    }


INGEST_PATHS = ("upsert", "append")
INGEST_REPEATS = 3


def ingest(db: Path, model_id: str, start_id: int) -> dict[str, Any]:
    """Rows per second one driver commits, new rows in commits of 256 and of 4096, by both write
    paths: ``upsert`` (every row upserted, as for rows the plan does not know to be new) and
    ``append`` (the index job's path for new videos: ``TableWriter(new_ids=)``). The paths
    alternate, ``INGEST_REPEATS`` times each; the best repeat of each counts (the machine is
    shared). The table is compacted before each pair, as a run's maintenance leaves it, and the
    upsert goes first: its best case, since its lookups scan the fragments the ``video_id``
    index does not cover yet."""
    from pipelines import schema
    from pipelines.write import TableWriter

    rng = np.random.default_rng(5)
    rates: dict[str, list[float]] = {}
    for commit_rows, commits in ((256, 16), (4096, 4)):
        for _ in range(INGEST_REPEATS):
            compacted = False
            for path in INGEST_PATHS:
                ids = np.arange(start_id, start_id + commits * commit_rows)
                start_id += len(ids)
                batches = [
                    video_rows(ids[i * commit_rows : (i + 1) * commit_rows], rng)
                    for i in range(commits)
                ]
                manifest = pa.table({schema.VIDEO_ID: names(ids), schema.URI: uris(ids)})
                writer = TableWriter(
                    db_uri=str(db), table=TABLE, dim=DIM, segments=SEGMENTS, model_id=model_id,
                    commit_rows=commit_rows, maintain_every=10**9, adaptive_maintenance=False,
                    manifest=manifest if path == "append" else None,
                    new_ids=manifest[schema.VIDEO_ID] if path == "append" else None,
                )  # fmt: skip
                if not compacted:
                    writer.maintain()
                    compacted = True
                started = time.perf_counter()
                for batch in batches:
                    writer.add(batch)
                writer.flush()
                seconds = time.perf_counter() - started
                rates.setdefault(f"{path}_commit_{commit_rows}", []).append(len(ids) / seconds)
    result: dict[str, Any] = {"repeats": {k: [round(r) for r in v] for k, v in rates.items()}}
    for key, values in rates.items():
        result[f"ingest_rows_per_s_{key}"] = max(values)
    for commit_rows in (256, 4096):
        result[f"append_over_upsert_commit_{commit_rows}"] = (
            result[f"ingest_rows_per_s_append_commit_{commit_rows}"]
            / result[f"ingest_rows_per_s_upsert_commit_{commit_rows}"]
        )
    result["sustained"] = _sustained_ingest(db, model_id, start_id, rng)
    return result


def _sustained_ingest(
    db: Path, model_id: str, start_id: int, rng: np.random.Generator
) -> dict[str, Any]:
    """Rows per second the index job's writer sustains appending new rows that arrive in blocks
    of ``BLOCK_ROWS``, commits and maintenance included, generating the rows left out:

    * ``first_index``: ``SUSTAINED_COMMITS`` commits of its defaults (``DEFAULT_COMMIT_ROWS``,
      :class:`~pipelines.write.MaintenanceSchedule`) into a new table, as a first index writes
      (no ANN index until ``finish``);
    * ``first_index_previous_defaults``: the same rows in 256-row commits with a maintenance
      every 50 commits, the defaults before;
    * ``indexed_table``: its defaults appending a tenth of this size's table, whose IVF_PQ
      indexes every maintenance folds the new rows into (a run adding more rebuilds them at
      ``finish``).
    """
    from pipelines import schema
    from pipelines.resources import DEFAULT_COMMIT_ROWS
    from pipelines.write import DEFAULT_MAINTAIN_EVERY, TableWriter, fragment_count

    first_rows = SUSTAINED_COMMITS * DEFAULT_COMMIT_ROWS
    previous = {"commit_rows": 256, "maintain_every": DEFAULT_MAINTAIN_EVERY}
    variants = {
        "first_index": (db.with_name(db.name + "-first-index"), first_rows, {}),
        "first_index_previous_defaults": (
            db.with_name(db.name + "-first-index-previous"),
            first_rows,
            {**previous, "adaptive_maintenance": False},
        ),
        "indexed_table": (db, max(BLOCK_ROWS, db_rows(db) // 10), {}),
    }
    result: dict[str, Any] = {}
    for name, (target, rows, options) in variants.items():
        ids = np.arange(start_id, start_id + rows)
        start_id += rows
        manifest = pa.table({schema.VIDEO_ID: names(ids), schema.URI: uris(ids)})
        writer = TableWriter(
            db_uri=str(target), table=TABLE, dim=DIM, segments=SEGMENTS, model_id=model_id,
            manifest=manifest, new_ids=manifest[schema.VIDEO_ID], **options,
        )  # fmt: skip
        seconds = 0.0
        for block in range(0, rows, BLOCK_ROWS):
            batch = video_rows(ids[block : block + BLOCK_ROWS], rng)
            started = time.perf_counter()
            writer.add(batch)
            seconds += time.perf_counter() - started
        started = time.perf_counter()
        writer.flush()
        seconds += time.perf_counter() - started
        result[name] = {
            "rows": rows,
            "rows_per_s": rows / seconds,
            "commits": writer.stats.commits,
            "maintenance_runs": writer.stats.maintenance_runs,
            "maintenance_s": writer.stats.maintenance_s,
            "fragments_at_end": fragment_count(writer.table),
        }
    result["first_index_over_previous_defaults"] = (
        result["first_index"]["rows_per_s"] / result["first_index_previous_defaults"]["rows_per_s"]
    )
    return result


def db_rows(db: Path) -> int:
    import lancedb

    return lancedb.connect(str(db)).open_table(TABLE).count_rows()


def cli_unchanged_s(manifest: Path, db: Path, *, ann: bool = True) -> float:
    """The whole index job's wall time on an unchanged manifest. Without ``ann`` the table has
    no IVF_PQ index, which the job would build (its version pruning makes it maintain the
    table); ``--index-min-rows`` keeps it to what it does where the index exists."""
    no_index_build = [] if ann else ["--index-min-rows", str(NO_ANN_INDEX_ROWS)]
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "jobs.index", "--manifest", str(manifest), "--db", str(db),
         "--table", TABLE, "--model", MODEL, "--log-level", "WARNING", *no_index_build],
        cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    return time.perf_counter() - started


def _search_headline(per_size: dict[int, dict[str, Any]], searched: list[int]) -> dict[str, Any]:
    """Search figures at the largest size searched, and its p50 over the smallest's."""
    first, last = per_size[searched[0]]["search"], per_size[searched[-1]]["search"]
    ratio = (
        {
            f"search_p50_ratio_{searched[-1]}_over_{searched[0]}": last["search_p50_ms"]
            / first["search_p50_ms"]
        }
        if len(searched) > 1
        else {}
    )
    headline = {
        f"search_p50_ms_{searched[-1]}": last["search_p50_ms"],
        **ratio,
        f"search_p50_ms_full_context_{searched[-1]}": last["full_context_search_p50_ms"],
        f"text_encode_p50_ms_{searched[-1]}": last["text_encode_p50_ms"],
        f"text_encode_p50_ms_full_context_{searched[-1]}": last["full_context_text_encode_p50_ms"],
    }
    if "moments_search_p50_ms" in last:
        headline[f"moments_search_p50_ms_{searched[-1]}"] = last["moments_search_p50_ms"]
        headline[f"moments_search_p95_ms_{searched[-1]}"] = last["moments_search_p95_ms"]
    if "moments_search_p50_ms" in last and "moments_search_p50_ms" in first and len(searched) > 1:
        headline[f"moments_search_p50_ratio_{searched[-1]}_over_{searched[0]}"] = (
            last["moments_search_p50_ms"] / first["moments_search_p50_ms"]
        )
    return headline


def _issue_headline(per_size: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The figures issue 14 names, at 1M rows against 10k (the evaluation: 100k captions against
    100k videos): ``None`` where the run lacks a size or the figure. ``unchanged_rerun_1m_s`` is
    the CLI's wall, as its target counts it."""
    large, small = per_size.get(1_000_000, {}), per_size.get(10_000, {})
    commits = large.get("commit"), small.get("commit")
    searches = large.get("search"), small.get("search")
    evaluation = per_size.get(100_000, {}).get("evaluation")
    return {
        "commit_ratio_1m_over_10k": commits[0]["commit_ms"] / commits[1]["commit_ms"]
        if all(commits)
        else None,
        "unchanged_rerun_1m_s": large.get("cli_unchanged_s"),
        "reindex_1pct_share": large["reindex_1pct"]["share_of_encode"]
        if "reindex_1pct" in large
        else None,
        "search_p50_ms_1m": searches[0]["search_p50_ms"] if searches[0] else None,
        "search_p50_ratio_1m_over_10k": searches[0]["search_p50_ms"] / searches[1]["search_p50_ms"]
        if all(searches)
        else None,
        "eval_100k_peak_rss_gib": evaluation["peak_rss_gib"]
        if evaluation and evaluation["captions"] == evaluation["videos"] == 100_000
        else None,
    }


def plot(path: Path, figures: dict[str, tuple[list[int], list[float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label, (sizes, values) in figures.items():
        if sizes:
            axis.loglog(sizes, values, marker="o", label=label)
    axis.set_xlabel("table rows")
    axis.set_ylabel("seconds")
    axis.set_title("cost against table size (log-log)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000", help="table sizes, comma-separated")
    parser.add_argument("--eval-captions", type=int, default=100_000)
    parser.add_argument("--eval-max-videos", type=int, default=10_000)
    parser.add_argument(
        "--ann-max-rows",
        type=int,
        help="sizes above this get no IVF_PQ index, and no search figures (default: every size)",
    )
    parser.add_argument(
        "--only",
        choices=ONLY,
        help="at each size, build the table and measure this alone (evaluation: no IVF_PQ "
        "index is built, the exact ranks need none; sizes up to --eval-max-videos)",
    )
    parser.add_argument(
        "--ann-columns",
        choices=("all", "vector"),
        default="all",
        help="vector: the IVF_PQ index on `vector` only, the column a search by text queries "
        "(the segments' index, over 4 vectors a row, is most of a build); with --only search",
    )
    parser.add_argument("--name", default="scale", help="results as bench/results/NAME.json/png")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    if args.ann_columns != "all" and args.only != "search":
        parser.error(
            "--ann-columns vector: only with --only search (a re-index would build the rest)"
        )
    sizes = sorted(int(size) for size in args.sizes.split(","))
    with_ann = {
        rows: args.only != "evaluation" and (args.ann_max_rows is None or rows <= args.ann_max_rows)
        for rows in sizes
    }
    ann_columns = None if args.ann_columns == "all" else [args.ann_columns]

    from pipelines.encode import ModelSpec

    model = ModelSpec(MODEL).build()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    per_size: dict[int, dict[str, Any]] = {}
    spawn = multiprocessing.get_context("spawn")
    try:
        for rows in sizes:
            db = work / f"db-{rows}"
            ann = with_ann[rows]
            result: dict[str, Any] = {"build": build_table(db, rows, model.model_id, ann=ann,
                                                           ann_columns=ann_columns)}  # fmt: skip
            per_size[rows] = result
            if args.only != "evaluation":
                result["search"] = None
                if ann:
                    with spawn.Pool(1) as pool:
                        result["search"] = pool.apply(_search_in_fresh_process, (str(db),))
            if args.only != "search" and rows <= args.eval_max_videos:
                with spawn.Pool(1) as pool:
                    result["evaluation"] = pool.apply(
                        _evaluate_in_fresh_process, (str(db), args.eval_captions)
                    )
            if args.only:
                print(f"{rows} rows done", flush=True)
                continue
            manifest = write_manifest(work / f"manifest-{rows}", rows)
            with spawn.Pool(1) as pool:
                result["unchanged"] = pool.apply(
                    _diff_in_fresh_process, (str(manifest), str(db), model.model_id)
                )
            result["commit"] = commit_ms(db, rows, model.model_id)
            result["reindex_1pct"] = reindex_1pct(work, db, rows, model.model_id, ann=ann)
            if rows == sizes[-1]:
                # The manifest with 1% changed was just indexed: it is the unchanged one now.
                result["cli_unchanged_s"] = cli_unchanged_s(
                    work / f"manifest-1pct-{rows}", db, ann=ann
                )
                result["ingest"] = ingest(db, model.model_id, 100 * rows)
            print(f"{rows} rows done", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    searched = [rows for rows in sizes if per_size[rows].get("search") is not None]
    headline = _search_headline(per_size, searched) if searched else {}
    evaluations = [r["evaluation"] for r in per_size.values() if "evaluation" in r]
    if evaluations:
        headline["eval_peak_rss_gib"] = max(e["peak_rss_gib"] for e in evaluations)
        headline["eval_shape"] = [evaluations[-1]["captions"], evaluations[-1]["videos"]]
    if not args.only:
        headline.update(_work_headline(per_size, sizes, with_ann))
    headline.update(_issue_headline(per_size))
    not_measured = []
    if sizes[-1] < 1_000_000:
        not_measured.append(
            f"no 1M-row table: largest size {sizes[-1]} (1M rows of the real schema are ~10 GB, "
            "and their IVF_PQ indexes take 7-8 minutes on 2 cores)"
        )
    not_measured += [
        f"{rows} rows: no IVF_PQ index (--ann-max-rows {args.ann_max_rows}), so no search "
        "figures, and the 1% re-index's writes leave the index out"
        for rows in sizes
        if not with_ann[rows] and args.only != "evaluation"
    ]
    if args.only:
        not_measured.append(f"{args.only} only (--only): nothing else")
    if args.only == "evaluation":
        not_measured.append("no IVF_PQ index: the exact ranks need none")
    if ann_columns is not None:
        not_measured.append(
            f"IVF_PQ on {', '.join(ann_columns)} only (--ann-columns): searches by moments "
            "(the segments' column) not measured"
        )
    results = {
        **run_metadata(),
        "model": MODEL,
        "sizes": sizes,
        "headline": headline,
        "not_measured": "; ".join(not_measured) or None,
        "per_size": {str(k): v for k, v in per_size.items()},
    }
    path = write_results(args.name, results)
    figures = {
        "search p50": (searched, [per_size[s]["search"]["search_p50_ms"] / 1000 for s in searched])
    }
    if not args.only:
        figures.update(_work_figures(per_size, sizes))
    if any(sizes for sizes, _ in figures.values()):
        plot(RESULTS_DIR / f"{args.name}.png", figures)
    print_table(
        [
            [
                rows,
                f"{r['commit']['commit_ms']:.0f}" if "commit" in r else "-",
                f"{r['unchanged']['total_s']:.2f} ({r['unchanged']['peak_rss_gib']:.2f} GiB)"
                if "unchanged" in r
                else "-",
                f"{r['reindex_1pct']['share_of_encode']:.2%}" if "reindex_1pct" in r else "-",
                f"{r['search']['search_p50_ms']:.0f} / {r['search']['search_p95_ms']:.0f}"
                if r.get("search") is not None
                else "-",
                f"{r['evaluation']['peak_rss_gib']:.2f}" if "evaluation" in r else "-",
            ]
            for rows, r in per_size.items()
        ],
        ["rows", "commit ms", "unchanged s (RSS)", "1% share", "search p50/p95 ms", "eval GiB"],
        title=f"scale, {MODEL} shapes, {os.cpu_count()} CPUs",
    )
    print({k: v for k, v in headline.items() if v is not None})
    print(f"wrote {path}")


def _work_headline(
    per_size: dict[int, dict[str, Any]], sizes: list[int], with_ann: dict[int, bool]
) -> dict[str, Any]:
    """Commits, re-runs, evaluation and ingest: the largest size against the smallest."""
    small, large = per_size[sizes[0]], per_size[sizes[-1]]
    sustained = large["ingest"]["sustained"]
    # The ingest into the largest table: its IVF_PQ indexes take the new rows, where it has them.
    into_existing = "indexed_table" if with_ann[sizes[-1]] else "table_without_ann_index"
    return {
        f"commit_ratio_{sizes[-1]}_over_{sizes[0]}": large["commit"]["commit_ms"]
        / small["commit"]["commit_ms"],
        f"unchanged_rerun_{sizes[-1]}_s": large["unchanged"]["total_s"],
        f"unchanged_rerun_cli_{sizes[-1]}_s": large["cli_unchanged_s"],
        f"reindex_1pct_share_{sizes[-1]}": large["reindex_1pct"]["share_of_encode"],
        # What the job's writer sustains with its defaults, maintenance included.
        "ingest_rows_per_s": sustained["first_index"]["rows_per_s"],
        "ingest_rows_per_s_previous_defaults": sustained["first_index_previous_defaults"][
            "rows_per_s"
        ],
        "ingest_over_previous_defaults": sustained["first_index_over_previous_defaults"],
        f"ingest_rows_per_s_into_{into_existing}": sustained["indexed_table"]["rows_per_s"],
        # Commits alone, no maintenance.
        "commit_rows_per_s_append_256": large["ingest"]["ingest_rows_per_s_append_commit_256"],
        "commit_rows_per_s_append_4096": large["ingest"]["ingest_rows_per_s_append_commit_4096"],
        "commit_rows_per_s_upsert_256": large["ingest"]["ingest_rows_per_s_upsert_commit_256"],
        "commit_rows_per_s_upsert_4096": large["ingest"]["ingest_rows_per_s_upsert_commit_4096"],
    }


def _work_figures(
    per_size: dict[int, dict[str, Any]], sizes: list[int]
) -> dict[str, tuple[list[int], list[float]]]:
    return {
        "256-row commit": (sizes, [per_size[s]["commit"]["commit_ms"] / 1000 for s in sizes]),
        "unchanged re-run (plan)": (sizes, [per_size[s]["unchanged"]["total_s"] for s in sizes]),
        "1% re-index plan + writes": (
            sizes,
            [
                per_size[s]["reindex_1pct"]["plan_s"] + per_size[s]["reindex_1pct"]["writes_s"]
                for s in sizes
            ],
        ),
    }


if __name__ == "__main__":
    main()
