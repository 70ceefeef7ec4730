"""The index job's plan at corpus scale: time and peak memory of ``plan_index`` on manifests and
tables of 1 M and 10 M rows, its partitioned join against one join of everything.

Each case runs in a process of its own: it builds an unchanged re-run's inputs (a manifest
with fingerprints, and the embeddings table's state columns as ``jobs.index`` reads them),
resets the kernel's peak-RSS counter, plans, and reports the plan's time and its peak memory
above those inputs. Issue #14 asks for the diff of a 10 M-row manifest against a 10 M-row table
within a stated memory bound; the bound is what this measures.

    python -m bench.plan                      # 1 M and 10 M rows (~4 min, ~5 GiB at most)
    python -m bench.plan --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench._common import print_table, run_metadata, write_results

AT_ONCE = 10**12  # partition_rows above any table: one join of everything
MODEL_ID = "ViT-B-32-center@sha256:0123456789abcdef0123456789abcdef0123456789abcdef"


def _case(rows: int, partition_rows: int) -> dict[str, Any]:
    """Runs in its own process (``--case``): one plan, measured."""
    import gc
    import time

    import pyarrow as pa

    from pipelines import schema
    from pipelines.plan import plan_index, with_metadata_digests

    ids = pa.array([f"video-{i:09d}" for i in range(rows)])
    fingerprints = pa.array(
        [f"{2_000_000 + i}:{1_700_000_000_000_000_000 + i}" for i in range(rows)]
    )
    uris = pa.array([f"s3://corpus/videos/{i:09d}.mp4" for i in range(rows)])
    manifest = with_metadata_digests(
        pa.table({schema.VIDEO_ID: ids, schema.URI: uris, schema.FINGERPRINT: fingerprints})
    )
    indexed = pa.table(
        {
            schema.VIDEO_ID: ids,
            schema.FINGERPRINT: fingerprints,
            schema.MODEL_ID: pa.array([MODEL_ID] * rows),
            schema.METADATA_DIGEST: manifest[schema.METADATA_DIGEST],
        }
    )
    gc.collect()
    inputs = _rss_gib()
    with open("/proc/self/clear_refs", "w") as reset:  # the peak counter, from here on
        reset.write("5")
    began = time.perf_counter()
    plan = plan_index(manifest, indexed=indexed, failed=None, model_id=MODEL_ID,
                      partition_rows=partition_rows)  # fmt: skip
    seconds = time.perf_counter() - began
    return {
        "rows": rows,
        "partition_rows": None if partition_rows == AT_ONCE else partition_rows,
        "plan_s": seconds,
        "inputs_gib": inputs,
        "peak_gib": _peak_gib(),
        "peak_above_inputs_gib": _peak_gib() - inputs,
        "counts": plan.counts,
    }


def _status_gib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 2**20
    raise RuntimeError(f"no {field} in /proc/self/status")


def _rss_gib() -> float:
    return _status_gib("VmRSS:")


def _peak_gib() -> float:
    return _status_gib("VmHWM:")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--output", type=Path, help="JSON file (default bench/results/plan.json)")
    parser.add_argument("--case", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(_case(*args.case)))
        return

    from pipelines.plan import PARTITION_ROWS

    cases = []
    for rows in args.rows:
        for partition_rows in (PARTITION_ROWS, AT_ONCE):
            done = subprocess.run(
                [sys.executable, "-m", "bench.plan", "--case", str(rows), str(partition_rows)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            cases.append(json.loads(done.stdout.splitlines()[-1]))
            print(cases[-1])
    print_table(
        [
            [c["rows"], c["partition_rows"] or "one join", c["plan_s"], c["inputs_gib"],
             c["peak_above_inputs_gib"]]
            for c in cases
        ],
        ["rows", "partition rows", "plan s", "inputs GiB", "peak above inputs GiB"],
    )  # fmt: skip
    largest = max(args.rows)
    by = {(c["rows"], c["partition_rows"]): c for c in cases}
    partitioned, at_once = by[(largest, PARTITION_ROWS)], by[(largest, None)]
    payload = {
        **run_metadata(),
        "partition_rows": PARTITION_ROWS,
        "headline": {
            "largest_rows": largest,
            "plan_s": partitioned["plan_s"],
            "peak_above_inputs_gib": partitioned["peak_above_inputs_gib"],
            "peak_above_inputs_bytes_per_row": partitioned["peak_above_inputs_gib"]
            * 2**30
            / largest,
            "peak_ratio_one_join_over_partitioned": at_once["peak_above_inputs_gib"]
            / partitioned["peak_above_inputs_gib"],
            "plan_s_ratio_one_join_over_partitioned": at_once["plan_s"] / partitioned["plan_s"],
        },
        "cases": cases,
    }
    print(f"wrote {write_results('plan', payload, output=args.output)}")


if __name__ == "__main__":
    main()
