"""Two writers upserting overlapping ids into one LanceDB table at once: with and without the lease.

Measures what issue #15 asks of "one writer per table": whether LanceDB's own commit conflict
detection rejects the second of two overlapping ``merge_insert`` streams (it does not: both
commit and duplicates stay), and that :class:`pipelines.lease.WriterLease` holds instead. Each
trial starts two spawned processes that meet at a barrier, then each commits ``--commits``
upserts of 5 ids of its own and 5 ids shared with the other (keyed on ``video_id``, with the
BTREE index the writer keeps), as the index job's writer does; the table is then counted.

    python -m bench.concurrent_upserts --trials 5
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from bench._common import print_table, run_metadata, write_results

TABLE = "videos"


def _writer(
    db_uri: str, name: str, barrier: Barrier, commits: int, with_lease: bool, results: Any
) -> None:
    import lancedb
    import pyarrow as pa

    from pipelines.lease import WriterBusyError, WriterLease

    table = lancedb.connect(db_uri).open_table(TABLE)
    lease = WriterLease(db_uri=db_uri, table=TABLE, command=f"writer {name}")
    barrier.wait()
    if with_lease:
        try:
            lease.acquire()
        except WriterBusyError:
            results.put((name, "refused", 0, 0))
            return
    done = failed = 0
    for commit in range(commits):
        ids = [f"{name}-{commit}-{j}" for j in range(5)] + [
            f"shared-{commit}-{j}" for j in range(5)
        ]
        rows = pa.table({"video_id": ids, "writer": [name] * len(ids)})
        try:
            (
                table.merge_insert("video_id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(rows)
            )
            done += 1
        except Exception:  # a commit conflict: what is being counted
            failed += 1
    if with_lease:
        lease.release()
    results.put((name, "wrote", done, failed))


def trial(db_uri: str, commits: int, with_lease: bool) -> dict[str, Any]:
    import lancedb
    import pyarrow as pa

    table = lancedb.connect(db_uri).create_table(
        TABLE, schema=pa.schema([("video_id", pa.string()), ("writer", pa.string())])
    )
    table.add(pa.table({"video_id": ["seed"], "writer": ["seed"]}))
    table.create_scalar_index("video_id", index_type="BTREE")
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    writers = [
        context.Process(target=_writer, args=(db_uri, name, barrier, commits, with_lease, results))
        for name in ("a", "b")
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    outcomes = sorted(results.get() for _ in writers)
    ids = lancedb.connect(db_uri).open_table(TABLE).to_arrow()["video_id"].to_pylist()
    return {
        "with_lease": with_lease,
        "writers": [
            dict(zip(("name", "outcome", "commits", "conflicts"), o, strict=True)) for o in outcomes
        ],
        "rows": len(ids),
        "distinct_ids": len(set(ids)),
        "duplicates": len(ids) - len(set(ids)),
        "expected_ids": 1 + sum(o[2] * 5 for o in outcomes) + commits * 5,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--commits", type=int, default=20)
    args = parser.parse_args()
    trials = []
    with tempfile.TemporaryDirectory() as root:
        for number in range(args.trials):
            for with_lease in (False, True):
                db = Path(root) / f"{number}-{'lease' if with_lease else 'none'}"
                trials.append(trial(str(db), args.commits, with_lease))
    rows = []
    for with_lease in (False, True):
        mine = [t for t in trials if t["with_lease"] == with_lease]
        refused = sum(w["outcome"] == "refused" for t in mine for w in t["writers"])
        rows.append(
            [
                "lease" if with_lease else "no lease (LanceDB alone)",
                len(mine),
                sum(w["conflicts"] for t in mine for w in t["writers"]),
                refused,
                f"{min(t['duplicates'] for t in mine)}-{max(t['duplicates'] for t in mine)}",
                sum(t["distinct_ids"] == t["expected_ids"] for t in mine),
            ]
        )
    print_table(
        rows,
        ["writers", "trials", "commit conflicts", "refused", "duplicate rows", "ids all there"],
        title=f"two writers, {args.commits} upserts of 10 ids each (5 shared), per trial",
    )
    payload = {**run_metadata(), "commits": args.commits, "trials": trials}
    print(f"wrote {write_results('concurrent_upserts', payload)}")


if __name__ == "__main__":
    main()
