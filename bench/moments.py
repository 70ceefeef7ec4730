"""Moment hits: the flat ``segment_vectors`` column against a LanceDB multivector column.

Issue 16 asks whether the S segment embeddings should be stored as a multivector column
(``list<fixed_size_list<float32>[D]>``, searched by MaxSim) instead of today's flat
``fixed_size_list<float32>[S*D]`` read back for the best segment. Both give the same best segment
of a hit (the argmax of the S cosines); they differ in *which videos* come back: today's search
ranks by the mean embedding (``vector``), MaxSim by the best segment. This script measures both
on videos whose content changes halfway, queried with the caption of one half:

* moment accuracy: the hit's best segment lies in the half the caption describes;
* video R@1 / R@5: the two-part video ranks first / in the top 5 among all videos;
* latency of one query (warm, median of repeats) on the same rows, vector search alone.

It needs a trained model (an untrained one's text tower describes nothing): by default the demo's.

    python -m bench.moments --model demo/finetune/model.pt --videos 60
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench._common import print_table, run_metadata, write_results


def fixed_size_list(rows: np.ndarray) -> pa.FixedSizeListArray:
    """``[N, W]`` float32 as a fixed-size-list column (LanceDB's vector type)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel(), pa.float32()), rows.shape[1])


def best_segment(segments: list, query: np.ndarray) -> int:
    """The segment (of a flat ``[S*D]`` or nested ``[S][D]`` value) most like ``query [D]``."""
    return int((np.asarray(segments, np.float32).reshape(-1, query.shape[0]) @ query).argmax())


def whole_video_recall(db: str, model: Any, segments: int) -> dict[str, Any]:
    """Exact text-to-video R@1/R@5 of every caption of ``db``'s ``videos`` table (one video
    each), ranking by the mean embedding (today's ``vector``) and by MaxSim over segments."""
    from pipelines import schema
    from pipelines.search import encode_queries, open_index

    rows = open_index(db, "videos").to_arrow().to_pylist()
    rows = [r for r in rows if r[schema.MODEL_ID] == model.model_id and r[schema.CAPTION]]
    vector = np.stack([r[schema.VECTOR] for r in rows]).astype(np.float32)  # [V, D]
    segment = np.stack([r[schema.SEGMENT_VECTORS] for r in rows]).astype(np.float32)
    segment = segment.reshape(len(rows), segments, -1)  # [V, S, D]
    owner = np.array([i for i, r in enumerate(rows) for _ in r[schema.CAPTION]])  # [Q]
    text = encode_queries(model, [c for r in rows for c in r[schema.CAPTION]])  # [Q, D]
    out: dict[str, Any] = {"videos": len(rows), "queries": len(owner)}
    for name, scores in (
        ("mean", text @ vector.T),  # [Q, V]
        ("maxsim", np.einsum("qd,vsd->qvs", text, segment).max(axis=2)),
    ):
        rank = (scores > scores[np.arange(len(owner)), owner][:, None]).sum(axis=1)  # 0-based
        out[f"{name}_R@1"] = float((rank < 1).mean())
        out[f"{name}_R@5"] = float((rank < 5).mean())
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

    import lancedb

    from jobs import index as index_job
    from pipelines import schema
    from pipelines.encode import ModelSpec
    from pipelines.search import encode_queries, open_index
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
    rows = open_index(str(db), "videos").to_arrow()
    rows = {row[schema.VIDEO_ID]: row for row in rows.to_pylist()}
    dim, segments = model.embed_dim, model.num_segments

    # The same rows twice: today's columns, and the segments as a multivector column.
    ids = list(rows)
    vector = np.stack([r[schema.VECTOR] for r in rows.values()]).astype(np.float32)  # [V, D]
    segment = np.stack([r[schema.SEGMENT_VECTORS] for r in rows.values()]).astype(np.float32)
    segment = segment.reshape(len(ids), segments, dim)  # [V, S, D]
    variants = lancedb.connect(str(work / "variants"))
    flat = variants.create_table(
        "flat",
        pa.table(
            {
                "video_id": ids,
                "vector": fixed_size_list(vector),
                "segment_vectors": fixed_size_list(segment.reshape(len(ids), -1)),
            }
        ),
    )
    multi = variants.create_table(
        "multi",
        pa.table(
            {
                "video_id": ids,
                "segments": pa.ListArray.from_arrays(
                    np.arange(0, len(ids) * segments + 1, segments, dtype=np.int32),
                    fixed_size_list(segment.reshape(-1, dim)),
                ),
            }
        ),
    )

    queries = [h[schema.CAPTION][0] for h in halves]
    vectors = encode_queries(model, queries)  # [Q, D]

    def flat_search(q: np.ndarray, k: int) -> list[tuple[str, int]]:
        hits = (
            flat.search(q.tolist(), vector_column_name="vector").distance_type("cosine")
            .select(["video_id", "segment_vectors"]).limit(k).to_list()
        )  # fmt: skip
        return [(h["video_id"], best_segment(h["segment_vectors"], q)) for h in hits]

    def multi_search(q: np.ndarray, k: int) -> list[tuple[str, int]]:
        hits = (
            multi.search([q.tolist()], vector_column_name="segments").distance_type("cosine")
            .select(["video_id", "segments"]).limit(k).to_list()
        )  # fmt: skip
        return [(h["video_id"], best_segment(h["segments"], q)) for h in hits]

    results: dict[str, Any] = {}
    for name, run in (("flat segment_vectors (today)", flat_search),
                      ("multivector MaxSim", multi_search)):  # fmt: skip
        top1 = top5 = moments = found = 0
        for half, q in zip(halves, vectors, strict=True):
            hits = run(q, len(rows))
            rank = [video_id for video_id, _ in hits].index(half["of"])
            top1 += rank == 0
            top5 += rank < 5
            whole = rows[half["of"]]
            best = hits[rank][1]
            spans = whole[schema.SEGMENT_START_S], whole[schema.SEGMENT_END_S]
            middle = (spans[0][best] + spans[1][best]) / 2
            moments += half["half_start_s"] <= middle <= half["half_end_s"]
            found += 1
        timings = []
        for i in range(args.repeats):
            started = time.perf_counter()
            run(vectors[i % len(vectors)], 10)
            timings.append((time.perf_counter() - started) * 1000)
        results[name] = {
            "moment_accuracy": moments / found,
            "video_R@1": top1 / found,
            "video_R@5": top5 / found,
            "query_p50_ms": float(np.percentile(timings, 50)),
        }

    whole = (
        whole_video_recall(args.whole_db, model, segments) if Path(args.whole_db).exists() else None
    )
    if whole is not None:
        print(
            f"whole-video captions ({whole['queries']} of {whole['videos']} videos in "
            f"{args.whole_db}): R@1 by the mean embedding {whole['mean_R@1']:.1%}, by MaxSim "
            f"{whole['maxsim_R@1']:.1%}; R@5 {whole['mean_R@5']:.1%} vs {whole['maxsim_R@5']:.1%}"
        )
    payload = {
        **run_metadata(),
        "model": args.model,
        "model_id": model.model_id,
        "rows": len(rows),
        "queries": len(queries),
        "segments": segments,
        "variants": results,
        "whole_video_captions": whole,
    }
    print_table(
        [[name, f"{r['moment_accuracy']:.1%}", f"{r['video_R@1']:.1%}", f"{r['video_R@5']:.1%}",
          f"{r['query_p50_ms']:.2f}"] for name, r in results.items()],
        ["variant", "moment in the right half", "video R@1", "video R@5", "query p50 ms"],
        title=f"{len(queries)} half captions over {len(rows)} videos "
        f"({args.videos} two-part videos), {model.model_id}",
    )  # fmt: skip
    path = (
        write_results("moments", payload)
        if args.output is None
        else write_results(args.output.stem, payload, directory=args.output.parent)
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
