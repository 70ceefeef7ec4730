"""Moment hits: ranking videos by their whole-video vector or by their best segment (MaxSim).

The index table stores the S segment embeddings as a LanceDB multivector column
(``segment_embeddings``, ``list<fixed_size_list<float32>[D]>``), which LanceDB searches by
MaxSim. ``jobs.search --by vector`` (the default) ranks videos by the mean embedding (``vector``);
``--by moments`` by MaxSim. Both point at the same best segment of a hit (the argmax of the S
cosines); they differ in *which videos* come back. This script measures both through
:func:`pipelines.search.search_vectors`, the code path the job and the service run, on videos
whose content changes halfway, queried with the caption of one half:

* moment accuracy: the hit's best segment lies in the half the caption describes;
* video R@1 / R@5: the two-part video ranks first / in the top 5 among all videos;
* latency of one query (warm, median of repeats, the embedding given: the table's part).

and, on a table of whole-video captions (the demo's), text-to-video R@1 / R@5 both ways. That
table is copied and upgraded the way ``jobs.index`` upgrades one written before the multivector
column (``TableWriter`` moves its segments over), so an old demo folder still serves.

It needs a trained model (an untrained one's text tower describes nothing): by default the demo's.

    python -m bench.moments --model demo/finetune/model.pt --videos 60 --whole-db demo/db
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench._common import print_table, run_metadata, write_results

BY = ("vector", "moments")


def rank_of(hits: list, video_id: str) -> int:
    """0-based rank of ``video_id`` among ``hits`` (every video was asked for)."""
    return [h.video_id for h in hits].index(video_id)


def whole_video_recall(db: str, model: Any, work: Path) -> dict[str, Any]:
    """Exact text-to-video R@1/R@5 of every caption of ``db``'s ``videos`` table (one video
    each), ranked by the video vector and by moments, on a copy upgraded to today's layout."""
    from pipelines import schema
    from pipelines.search import encode_queries, model_filter, open_index, search_vectors
    from pipelines.write import TableWriter

    copy = work / "whole-db"
    shutil.copytree(db, copy)
    writer = TableWriter(
        db_uri=str(copy), table="videos", dim=model.embed_dim, segments=model.num_segments,
        model_id=model.model_id,
    )  # fmt: skip
    table = open_index(str(copy), "videos")
    rows = table.search().where(model_filter(model.model_id)).limit(None).to_arrow().to_pylist()
    rows = [r for r in rows if r[schema.CAPTION]]
    owner = [r[schema.VIDEO_ID] for r in rows for _ in r[schema.CAPTION]]  # [Q]
    text = encode_queries(model, [c for r in rows for c in r[schema.CAPTION]])  # [Q, D]
    out: dict[str, Any] = {
        "videos": len(rows), "queries": len(owner), "rows_migrated": writer.segments_migrated,
    }  # fmt: skip
    for by in BY:
        results = search_vectors(
            table, text, model_id=model.model_id, k=len(rows), exact=True, by=by
        )
        ranks = np.array([rank_of(h, o) for h, o in zip(results, owner, strict=True)])
        out[f"{by}_R@1"] = float((ranks < 1).mean())
        out[f"{by}_R@5"] = float((ranks < 5).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo/finetune/model.pt", help="a trained checkpoint")
    parser.add_argument("--videos", type=int, default=60, help="two-part videos")
    parser.add_argument("--repeats", type=int, default=200, help="timed queries per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--whole-db",
        default="demo/db",
        help="a table of the same model whose captions describe whole videos (the demo's test "
        "split): R@1 of both rankings on them; skipped when absent",
    )
    parser.add_argument(
        "--output", type=Path, help="JSON file (default bench/results/moments.json)"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from jobs import index as index_job
    from pipelines import schema
    from pipelines.encode import ModelSpec
    from pipelines.search import encode_queries, open_index, search_vectors
    from pipelines.synthetic import write_two_part_videos

    work = Path(tempfile.mkdtemp(prefix="bench-moments-"))
    generated = pq.read_table(
        write_two_part_videos(work / "corpus", videos=args.videos, seed=args.seed)
    )
    # Only the two-part videos are indexed; their halves' captions are the queries.
    manifest = work / "manifest"
    manifest.mkdir()
    pq.write_table(
        generated.filter(pc.equal(generated["part"], "whole")), manifest / "part-0.parquet"
    )
    halves = generated.filter(pc.not_equal(generated["part"], "whole")).to_pylist()
    db = work / "db"
    status = index_job.main(
        ["--manifest", str(manifest), "--db", str(db), "--table", "videos",
         "--model", args.model, "--log-level", "WARNING"]
    )  # fmt: skip
    if status:
        raise SystemExit(f"indexing failed with status {status}")
    model = ModelSpec(args.model).build()
    table = open_index(str(db), "videos")
    rows = {row[schema.VIDEO_ID]: row for row in table.to_arrow().to_pylist()}
    queries = [h[schema.CAPTION][0] for h in halves]
    vectors = encode_queries(model, queries)  # [Q, D]

    results: dict[str, Any] = {}
    for by in BY:
        found = search_vectors(
            table, vectors, model_id=model.model_id, k=len(rows), exact=True, by=by
        )
        top1 = top5 = moments = 0
        for half, hits in zip(halves, found, strict=True):
            rank = rank_of(hits, half["of"])
            top1 += rank == 0
            top5 += rank < 5
            middle = (hits[rank].segment_start_s + hits[rank].segment_end_s) / 2
            moments += half["half_start_s"] <= middle <= half["half_end_s"]
        results[by] = {
            "moment_accuracy": moments / len(halves),
            "video_R@1": top1 / len(halves),
            "video_R@5": top5 / len(halves),
        }
    # Latency, the two rankings interleaved so that the machine's load falls on both alike.
    timings: dict[str, list[float]] = {by: [] for by in BY}
    for i in range(args.repeats):
        for by in BY:
            started = time.perf_counter()
            search_vectors(
                table, vectors[i % len(vectors)][None], model_id=model.model_id, k=10,
                checked=True, by=by,
            )  # fmt: skip
            timings[by].append((time.perf_counter() - started) * 1000)
    for by in BY:
        results[by]["query_p50_ms"] = float(np.percentile(timings[by], 50))

    whole = whole_video_recall(args.whole_db, model, work) if Path(args.whole_db).exists() else None
    if whole is not None:
        print(
            f"whole-video captions ({whole['queries']} of {whole['videos']} videos in "
            f"{args.whole_db}): R@1 by vector {whole['vector_R@1']:.1%}, by moments "
            f"{whole['moments_R@1']:.1%}; R@5 {whole['vector_R@5']:.1%} vs "
            f"{whole['moments_R@5']:.1%}"
        )
    payload = {
        **run_metadata(),
        "model": args.model,
        "model_id": model.model_id,
        "rows": len(rows),
        "queries": len(queries),
        "segments": model.num_segments,
        "by": results,
        "whole_video_captions": whole,
    }
    print_table(
        [[name, f"{r['moment_accuracy']:.1%}", f"{r['video_R@1']:.1%}", f"{r['video_R@5']:.1%}",
          f"{r['query_p50_ms']:.2f}"] for name, r in results.items()],
        ["--by", "moment in the right half", "video R@1", "video R@5", "query p50 ms"],
        title=f"{len(queries)} half captions over {len(rows)} videos "
        f"({args.videos} two-part videos), {model.model_id}",
    )  # fmt: skip
    path = write_results("moments", payload, output=args.output)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
