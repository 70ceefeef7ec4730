"""Latency of the search service, warm, against the target of issue 16 (search p50 <= 30 ms).

Starts the service as ``jobs.serve`` does (Ray Serve on an embedded Ray, one replica, HTTP on
loopback), warms it up, then sends requests one at a time from this process and times each from
the request to the last byte of the answer:

* ``/search``: a different caption of the table every time (so the text encoder runs for every
  request: nothing is cached), k=10;
* ``/search&hybrid=1``: the same queries, fused with the full-text ranking;
* ``/similar/ID``: query by example from a stored vector;
* ``/thumbnail/ID?t=``: a frame decoded and encoded as JPEG (first request per video and time),
  and the same requests again (cached).

    python -m bench.serve --db demo/db --table videos --model demo/finetune/model.pt
"""

from __future__ import annotations

import argparse
import os
import socket
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import print_table, run_metadata, write_results

P50_TARGET_MS = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def timed_get(url: str) -> float:
    """Milliseconds from sending the request to reading the whole answer (status 200 only)."""
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")
    return (time.perf_counter() - started) * 1000


def summarize(samples: list[float]) -> dict[str, Any]:
    values = np.asarray(samples)
    return {
        "requests": len(samples),
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p95_ms": round(float(np.percentile(values, 95)), 2),
        "mean_ms": round(float(values.mean()), 2),
        "max_ms": round(float(values.max()), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="demo/db", help="LanceDB folder (default: the demo's)")
    parser.add_argument("--table", default="videos")
    parser.add_argument("--model", default="demo/finetune/model.pt", help="preset or checkpoint")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per endpoint")
    parser.add_argument("--warmup", type=int, default=30, help="untimed requests first")
    parser.add_argument("--output", type=Path, help="JSON file (default bench/results/serve.json)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import ray

    from pipelines.encode import ModelSpec
    from pipelines.search import open_index
    from pipelines.serve.deployment import start_service, stop_service
    from pipelines.serve.service import ServeConfig

    # Ray first: it forks processes, which LanceDB's runtime, once started, does not survive well.
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    table = open_index(args.db, args.table)
    rows = table.search().select(["video_id", "caption"]).limit(None).to_arrow().to_pylist()
    captions = [c for row in rows for c in (row["caption"] or [])]
    ids = [row["video_id"] for row in rows]
    if not captions:
        raise SystemExit(f"{args.table} has no captions to query with")
    started = time.perf_counter()
    url = start_service(
        ServeConfig(db=args.db, table=args.table, model=ModelSpec(args.model)), port=free_port()
    )
    start_s = time.perf_counter() - started
    try:

        def search(i: int, hybrid: bool = False) -> str:
            query = {"q": captions[i % len(captions)], "k": 10}
            if hybrid:
                query["hybrid"] = 1
            return f"{url}/search?{urllib.parse.urlencode(query)}"

        def thumbnail(i: int) -> str:
            return f"{url}/thumbnail/{ids[i % len(ids)]}?t={0.1 * (i // len(ids)):.1f}"

        endpoints = {
            "search": lambda i: search(i),
            "search_hybrid": lambda i: search(i, hybrid=True),
            "similar": lambda i: f"{url}/similar/{ids[i % len(ids)]}?k=10",
            "thumbnail_uncached": thumbnail,
            "thumbnail_cached": thumbnail,
        }
        for i in range(args.warmup):
            timed_get(search(-1 - i))
        results = {}
        for name, make in endpoints.items():
            samples = [timed_get(make(i)) for i in range(args.requests)]
            results[name] = summarize(samples)
    finally:
        stop_service()
        ray.shutdown()

    met = results["search"]["p50_ms"] <= P50_TARGET_MS
    payload = {
        **run_metadata(),
        "db": args.db,
        "table": args.table,
        "model": args.model,
        "rows": len(ids),
        "queries": len(captions),
        "service_start_s": round(start_s, 1),
        "endpoints": results,
        "target": {"search_p50_ms": P50_TARGET_MS, "met": met},
    }
    print_table(
        [
            [name, r["requests"], r["p50_ms"], r["p95_ms"], r["mean_ms"]]
            for name, r in results.items()
        ],
        ["endpoint", "requests", "p50 ms", "p95 ms", "mean ms"],
        title=f"search service on {args.table} ({len(ids)} videos), one replica, warm",
    )
    print(
        f"search p50 {results['search']['p50_ms']:.1f} ms: target <= {P50_TARGET_MS:g} ms "
        f"{'met' if met else 'NOT met'}; service start {start_s:.1f} s"
    )
    path = write_results("serve", payload, output=args.output)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
