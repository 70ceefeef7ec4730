"""The writer's upsert against LanceDB's ``merge_insert``, as the table grows (issue 14).

At each table size (``--sizes``) a table is built as ``bench/scale.py`` builds one (the real
schema, random unit vectors, the writer's scalar indexes, compacted; no IVF_PQ index), then rounds
alternate the two upsert paths of ``TableWriter``: ``one_commit`` (:mod:`pipelines.upsert`, the
writer's) and ``merge_insert`` (LanceDB's, the writer's path before). A round is a fresh writer
(so its first commit is a cold start), ``--commits`` commits of 256 rows (128 replaced, 128 new),
and a maintenance. Reports each path's median commit at each size and its ratio from the smallest
size to the largest (the issue's target: at most 1.5x from 10k to 1M rows), and ``one_commit``'s
speed-up. Writes ``bench/results/upsert.json``.

    python -m bench.upsert                          # 10k and 1M rows: ~10 GB of disk, ~6 min
    python -m bench.upsert --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import print_table, run_metadata, write_results
from bench.scale import BLOCK_ROWS, DIM, SEGMENTS, TABLE, build_table, video_rows

PATHS = ("one_commit", "merge_insert")
MODEL_ID = "bench-upsert"


def round_of_commits(
    db: Path, rows: int, path: str, commits: int, first_new_id: int, rng: np.random.Generator
) -> list[float]:
    """Seconds of each commit of one round through ``path``, then a maintenance (untimed)."""
    from pipelines import schema
    from pipelines.write import TableWriter

    writer = TableWriter(
        db_uri=str(db), table=TABLE, dim=DIM, segments=SEGMENTS, model_id=MODEL_ID,
        commit_rows=10**9, maintain_every=10**9, adaptive_maintenance=False,
    )  # fmt: skip
    if path == "merge_insert":
        writer._upsert_embeddings = lambda batch: (
            writer.table.merge_insert(schema.VIDEO_ID)
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(batch)
        )
    half = BLOCK_ROWS // 2
    seconds = []
    for commit in range(commits):
        start = first_new_id + commit * half
        replaced = rng.choice(rows, half, replace=False)
        batch = video_rows(np.concatenate([replaced, np.arange(start, start + half)]), rng)
        started = time.perf_counter()
        writer.add(batch)
        writer.flush()
        seconds.append(time.perf_counter() - started)
    writer.maintain()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,1000000", help="table sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per path and size")
    parser.add_argument("--commits", type=int, default=10, help="commits per round")
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))

    work = Path(tempfile.mkdtemp(prefix="bench-upsert-"))
    rng = np.random.default_rng(0)
    per_size: dict[int, dict[str, Any]] = {}
    try:
        for rows in sizes:
            db = work / f"db-{rows}"
            result: dict[str, Any] = {"build": build_table(db, rows, MODEL_ID, ann=False)}
            next_new_id = 10 * rows
            for _ in range(args.rounds):
                for path in PATHS:
                    seconds = round_of_commits(db, rows, path, args.commits, next_new_id, rng)
                    next_new_id += args.commits * BLOCK_ROWS
                    result.setdefault(f"{path}_ms_each", []).append(
                        [round(s * 1000, 1) for s in seconds]
                    )
            for path in PATHS:
                every = [ms for one_round in result[f"{path}_ms_each"] for ms in one_round]
                result[f"{path}_ms"] = float(np.median(every))
            per_size[rows] = result
            shutil.rmtree(db)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    small, large = per_size[sizes[0]], per_size[sizes[-1]]
    headline = {
        f"{path}_ratio_{sizes[-1]}_over_{sizes[0]}": large[f"{path}_ms"] / small[f"{path}_ms"]
        for path in PATHS
    }
    headline |= {
        f"one_commit_speedup_{rows}": per_size[rows]["merge_insert_ms"]
        / per_size[rows]["one_commit_ms"]
        for rows in sizes
    }
    print_table(
        [[rows, *(f"{per_size[rows][f'{path}_ms']:.1f}" for path in PATHS)] for rows in sizes],
        ["rows", *(f"{path} ms" for path in PATHS)],
        title=f"256-row commits (128 replaced, 128 new), median of {args.rounds} rounds x "
        f"{args.commits}",
    )
    for key, value in headline.items():
        print(f"{key}: {value:.2f}")
    payload = {
        **run_metadata(),
        "rounds": args.rounds,
        "commits_per_round": args.commits,
        "headline": headline,
        "per_size": per_size,
    }
    print(f"wrote {write_results('upsert', payload)}")


if __name__ == "__main__":
    main()
