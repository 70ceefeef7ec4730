"""What a long job's table maintenance costs, step by step, and what it keeps searches at (#14).

A table of ``--rows`` rows of the real schema (512-d vectors, 4 segments; random unit vectors,
``bench/scale.py``'s builder, with the writer's scalar indexes and both IVF_PQ indexes) takes
``--rounds`` rounds of what a long index job does: ``--commits`` commits of 256 rows through
``TableWriter`` (automatic maintenance off; new videos, and with ``--update-share`` that share of
each commit re-encoding videos already in the table), then one ``maintain_table``. Per round:

* each maintenance step's seconds (compaction, the scalar indexes' refresh, each vector index:
  a new segment, or the merge of its newest segments once it holds ``MAX_INDEX_SEGMENTS``);
* the segments of each vector index and the data fragments left;
* the table's part of a search (the ``model_id`` prefilter, the IVF_PQ search, the hits; no
  text encode), p50 of ``SEARCHES`` over random query vectors, before and after the maintenance:
  what each added segment costs a query.

Then, on the same table, what the policy avoids: merging every segment of each vector index into
one with the rows since (``optimize_indices(num_indices_to_merge=all)``), against one more new
segment, both timed on the same added rows (the table is restored between them).

Headline figures (``bench/results/maintain.json``): ``delta_s`` and ``full_merge_s`` per vector
index and their ratio, ``search_ms_per_segment`` (slope of the table search's p50 against the
segments of the ``vector`` index), ``max_maintenance_s``.

    python -m bench.maintain                      # 20k rows, 10 rounds of 10 commits
    python -m bench.maintain --rows 100000 --update-share 0.5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bench._common import print_table, run_metadata, write_results
from bench.scale import DIM, SEGMENTS, TABLE, build_table, names, uris, video_rows

MODEL_ID = "bench-maintain"
COMMIT_ROWS = 256
SEARCHES = 30


def segments_of(table: Any) -> dict[str, int]:
    """Segments of each vector (IVF) index of ``table``."""
    indexes = table.to_lance().list_indices()
    return dict(Counter(i["name"] for i in indexes if i["type"].startswith("IVF")))


def table_search_p50_ms(table: Any, rng: np.random.Generator) -> float:
    """Median milliseconds of the table's part of a search: a random unit query vector, the
    ``model_id`` prefilter, IVF_PQ, the top 10."""
    from pipelines.search import search_vectors

    queries = rng.standard_normal((SEARCHES + 3, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    times = []
    for i, query in enumerate(queries):
        started = time.perf_counter()
        hits = search_vectors(table, query[None], model_id=MODEL_ID, k=10)
        if i >= 3:  # warm-up: the index's first reads
            times.append(time.perf_counter() - started)
        assert len(hits[0]) == 10
    return float(np.median(times) * 1000)


def add_rows(
    db: Path, first_id: int, commits: int, rng: np.random.Generator, update_share: float
) -> int:
    """``commits`` commits of ``COMMIT_ROWS`` rows through the index job's writer, no
    maintenance: new videos (appended) and, ``update_share`` of each commit, videos already in
    the table re-encoded (upserted, which deletes their old rows). Returns the next free
    id."""
    from pipelines import schema
    from pipelines.write import TableWriter

    updates = round(update_share * COMMIT_ROWS)
    new = np.arange(first_id, first_id + commits * (COMMIT_ROWS - updates))
    old = rng.choice(first_id, size=commits * updates, replace=False)
    batches = [
        np.concatenate(
            [
                old[i * updates : (i + 1) * updates],
                new[i * (COMMIT_ROWS - updates) : (i + 1) * (COMMIT_ROWS - updates)],
            ]
        )
        for i in range(commits)
    ]
    every = np.concatenate(batches)
    manifest = pa.table({schema.VIDEO_ID: names(every), schema.URI: uris(every)})
    writer = TableWriter(
        db_uri=str(db), table=TABLE, dim=DIM, segments=SEGMENTS, model_id=MODEL_ID,
        commit_rows=COMMIT_ROWS, maintain_every=10**9, adaptive_maintenance=False,
        manifest=manifest, new_ids=names(new),
    )  # fmt: skip
    for batch in batches:
        writer.add(video_rows(batch, rng))
    writer.flush()
    return first_id + len(new)


def next_free_id(table: Any) -> int:
    """One past the largest numeric id of ``table``'s ``v<n>`` videos."""
    from pipelines import schema

    ids = table.search().select([schema.VIDEO_ID]).limit(None).to_arrow()[schema.VIDEO_ID]
    return max(int(i[1:]) for i in ids.to_pylist()) + 1


def rounds(
    db: Path, count: int, commits: int, rng: np.random.Generator, update_share: float
) -> list[dict]:
    import lancedb

    from pipelines.write import fragment_count, maintain_table

    table = lancedb.connect(str(db)).open_table(TABLE)
    next_id, rows = next_free_id(table), []
    for round_ in range(1, count + 1):
        next_id = add_rows(db, next_id, commits, rng, update_share)
        table.checkout_latest()
        before = {"fragments": fragment_count(table), "search_ms": table_search_p50_ms(table, rng)}
        started = time.perf_counter()
        steps = maintain_table(table)
        total = time.perf_counter() - started
        rows.append(
            {
                "round": round_,
                "rows": table.count_rows(),
                "fragments_before": before["fragments"],
                "fragments_after": fragment_count(table),
                "search_p50_ms_before": before["search_ms"],
                "search_p50_ms_after": table_search_p50_ms(table, rng),
                "segments_after": segments_of(table),
                "steps_s": steps,
                "maintenance_s": total,
            }
        )
        print(f"round {round_}/{count}: {total:.1f} s {steps}", flush=True)
    return rows


def delta_against_full_merge(
    db: Path, commits: int, rng: np.random.Generator, update_share: float
) -> dict:
    """One more round of rows, then each vector index given them as a new segment, and, from
    the same version, with every segment merged into one: seconds of each."""
    import lance
    import lancedb

    from pipelines.write import COMPACT_TARGET_ROWS

    table = lancedb.connect(str(db)).open_table(TABLE)
    add_rows(db, next_free_id(table), commits, rng, update_share)
    table.checkout_latest()
    table.to_lance().optimize.compact_files(target_rows_per_fragment=COMPACT_TARGET_ROWS)
    table.checkout_latest()
    uri, base = table.to_lance().uri, table.to_lance().version
    result: dict[str, dict[str, float]] = {}
    for name, segments in sorted(segments_of(table).items()):
        timed = {}
        for label, merge in (("delta_s", 0), ("full_merge_s", segments)):
            lance.dataset(uri, version=base).restore()  # the same rows and segments each time
            dataset = lance.dataset(uri)
            started = time.perf_counter()
            dataset.optimize.optimize_indices(index_names=[name], num_indices_to_merge=merge)
            timed[label] = time.perf_counter() - started
        result[name] = {
            "segments": segments,
            **timed,
            "full_merge_over_delta": timed["full_merge_s"] / timed["delta_s"],
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000, help="rows before the rounds")
    parser.add_argument("--rounds", type=int, default=10, help="maintenance rounds")
    parser.add_argument("--commits", type=int, default=10, help="256-row commits per round")
    parser.add_argument(
        "--update-share",
        type=float,
        default=0.0,
        help="share of each commit's rows that re-encode videos already in the table",
    )
    parser.add_argument("--output", type=Path, help="JSON folder (default bench/results/)")
    args = parser.parse_args()
    if min(args.rows, args.rounds, args.commits) < 1:
        parser.error("--rows, --rounds and --commits must be at least 1")
    if not 0 <= args.update_share < 1:
        parser.error("--update-share must be in [0, 1)")

    rng = np.random.default_rng(11)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-maintain-") as work:
        db = Path(work) / "db"
        build = build_table(db, args.rows, MODEL_ID)
        per_round = rounds(db, args.rounds, args.commits, rng, args.update_share)
        merge = delta_against_full_merge(db, args.commits, rng, args.update_share)

    print_table(
        [
            [
                r["round"],
                r["rows"],
                f"{r['fragments_before']} -> {r['fragments_after']}",
                ", ".join(f"{k} {v:.2f}" for k, v in r["steps_s"].items()),
                f"{r['maintenance_s']:.2f}",
                " / ".join(str(v) for v in r["segments_after"].values()),
                f"{r['search_p50_ms_before']:.1f} -> {r['search_p50_ms_after']:.1f}",
            ]
            for r in per_round
        ],
        ["round", "rows", "fragments", "steps s", "total s", "segments", "search p50 ms"],
        title=f"maintenance after every {args.commits} commits of {COMMIT_ROWS} rows"
        f" ({args.update_share:.0%} of them updates)",
    )
    merge_rows = [
        [name, m["segments"], *(f"{m[k]:.2f}" for k in ("delta_s", "full_merge_s"))]
        for name, m in merge.items()
    ]
    for row, m in zip(merge_rows, merge.values(), strict=True):
        row.append(f"{m['full_merge_over_delta']:.1f}")
    print_table(
        merge_rows,
        ["index", "segments", "new segment s", "merge all s", "ratio"],
        title="one round's rows into each vector index: a new segment against merging all",
    )
    segments = [next(iter(r["segments_after"].values())) for r in per_round]
    searches = [r["search_p50_ms_after"] for r in per_round]
    slope = float(np.polyfit(segments, searches, 1)[0]) if len(set(segments)) > 1 else None
    payload = {
        **run_metadata(),
        "command": "python -m bench.maintain"
        + f" --rows {args.rows} --rounds {args.rounds} --commits {args.commits}"
        + f" --update-share {args.update_share}",
        "update_share": args.update_share,
        "rows": args.rows,
        "commit_rows": COMMIT_ROWS,
        "commits_per_round": args.commits,
        "search_ms_per_segment": slope,
        "max_maintenance_s": max(r["maintenance_s"] for r in per_round),
        "delta_against_full_merge": merge,
        "build": build,
        "rounds": per_round,
        "seconds": time.perf_counter() - began,
    }
    path = write_results("maintain", payload, directory=args.output)
    print(f"search ms per segment: {slope}; written to {path}")


if __name__ == "__main__":
    main()
