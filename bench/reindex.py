"""What incremental re-indexing costs, in one run, against the targets of issue 4.

1. **Full index, then 1% changed.** A generated corpus is indexed from scratch, the bytes of 1% of
   its videos are replaced (each file gets another generated video's bytes), and the job runs
   again. Target: the re-index's *work* costs at most 5% of the full index's.
2. **Unchanged re-run over 10,000 rows.** Manifest rows are hard links to the generated files (an
   unchanged run decodes nothing, so their content does not matter) and their table rows are
   written by the job's own ``TableWriter`` with the vectors of the videos they link to. Target:
   the job (``run_index``, model build included) under 10 s; the CLI's wall time is reported
   beside it, with its start-up (a fresh interpreter importing what the job imports).
3. **Diff at scale.** A 1,000,000-row table (random unit vectors, real schema, written with
   LanceDB) against a 1,000,000-row manifest that carries its own fingerprints (as object-store
   ETags would), with every category present. Measured in a fresh process: read the manifest,
   read the table state, ``plan_index``. Target: under 30 s and under 2 GiB peak RSS (the whole
   process, imports included).

**Work** (figure 1) is the summary's ``total`` minus actor start-up; Ray itself is started before
either run and counted in neither. Actor start-up is the time to the first result
(``seconds["startup"]``) less what the first result's own videos cost, estimated as
``startup_rows`` times the run's mean decode + encode actor-seconds per video (the first batch is
decoded, then encoded, before it can arrive).

    python -m bench.reindex                                 # 1000 videos, 10k rows, 1M-row diff
    python -m bench.reindex --videos 300 --diff-rows 100000 # a quick look
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
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from bench._common import REPO_ROOT, print_table, run_metadata, write_results

if TYPE_CHECKING:
    from pipelines.index import IndexSummary

MODEL = "tiny"
TABLE = "videos"
WORK_FRACTION_TARGET = 0.05
UNCHANGED_SECONDS_TARGET = 10.0
DIFF_SECONDS_TARGET = 30.0
DIFF_MEMORY_GIB_TARGET = 2.0


def work_seconds(summary: IndexSummary) -> dict[str, float]:
    """``total``, ``actor_startup`` and ``work`` of one run (see the module docstring)."""
    seconds = summary.seconds
    per_video = summary.costs.get("decode_s", 0.0) + summary.costs.get("encode_s", 0.0)
    startup = max(seconds.get("startup", 0.0) - summary.startup_rows * per_video, 0.0)
    return {
        "total_s": seconds["total"],
        "actor_startup_s": startup,
        "work_s": seconds["total"] - startup,
    }


def full_then_incremental(work: Path, *, videos: int, fraction: float) -> dict[str, Any]:
    """Figure 1: index a generated corpus, replace the bytes of ``fraction`` of it, re-index."""
    from pipelines.encode import ModelSpec
    from pipelines.index import IndexConfig, run_index
    from pipelines.resources import ResourceRequest
    from pipelines.synthetic import write_sample_corpus

    corpus = work / "corpus"
    started = time.perf_counter()
    write_sample_corpus(corpus, videos=videos, seed=0)
    generated_s = time.perf_counter() - started
    config = IndexConfig(
        manifest=str(corpus / "manifest"),
        db=str(work / "db"),
        table=TABLE,
        model=ModelSpec(MODEL),
        resources=ResourceRequest(gpus_per_actor=0),
    )
    full = run_index(config)

    uris = pads.dataset(str(corpus / "manifest")).to_table(columns=["uri"])["uri"].to_pylist()
    changed = max(1, round(videos * fraction))
    rng = np.random.default_rng(0)
    picked = rng.choice(len(uris), size=2 * changed, replace=False)
    # Another video's bytes: a real change of content at the same URI.
    for target, source in zip(picked[:changed], picked[changed:], strict=True):
        shutil.copyfile(uris[source], uris[target])
    incremental = run_index(config)
    assert incremental.plan.get("changed") == changed, incremental.plan
    assert incremental.indexed == changed, incremental.indexed
    return {
        "corpus": corpus,
        "generate_s": generated_s,
        "videos": videos,
        "changed": changed,
        "full": {**work_seconds(full), "seconds": full.seconds, "indexed": full.indexed},
        "incremental": {
            **work_seconds(incremental),
            "seconds": incremental.seconds,
            "indexed": incremental.indexed,
            "plan": incremental.plan,
        },
    }


def unchanged_rerun(work: Path, corpus: Path, source_db: Path, *, rows: int) -> dict[str, Any]:
    """Figure 2: ``rows`` hard-linked manifest rows, their table written directly, re-run."""
    import lancedb

    from pipelines import schema
    from pipelines.encode import ModelSpec
    from pipelines.index import IndexConfig, run_index
    from pipelines.manifest import attach_fingerprints, read_manifest
    from pipelines.resources import ResourceRequest
    from pipelines.write import TableWriter

    indexed = lancedb.connect(str(source_db)).open_table(TABLE).to_arrow()
    originals = pads.dataset(str(corpus / "manifest")).to_table()
    originals = originals.filter(pc.is_in(originals["video_id"], indexed["video_id"]))
    links = work / "links"
    links.mkdir()
    source = pa.array(np.arange(rows) % originals.num_rows)
    ids = [f"link-{i:06d}" for i in range(rows)]
    for video_id, uri in zip(ids, originals["uri"].take(source).to_pylist(), strict=True):
        os.link(uri, links / f"{video_id}.mp4")
    manifest_rows = originals.take(source)
    manifest_rows = manifest_rows.set_column(0, "video_id", pa.array(ids))
    manifest_rows = manifest_rows.set_column(
        1, "uri", pa.array([str(links / f"{video_id}.mp4") for video_id in ids])
    )
    manifest = work / "links-manifest"
    manifest.mkdir()
    pq.write_table(manifest_rows, manifest / "part-00000.parquet")

    model = ModelSpec(MODEL).build()
    db = work / "links-db"
    writer = TableWriter(
        db_uri=str(db),
        table=TABLE,
        dim=model.embed_dim,
        segments=model.num_segments,
        model_id=model.model_id,
        manifest=attach_fingerprints(read_manifest(str(manifest))),
        commit_rows=rows,
    )
    # Each link carries the vectors of the video it links to, as an index run would give it.
    position = pc.index_in(originals["video_id"].take(source), value_set=indexed["video_id"])
    vectors = indexed.take(position)
    writer.add(
        pa.table(
            {
                schema.VIDEO_ID: pa.array(ids),
                schema.ERROR: pa.array([""] * rows),
                **{
                    name: vectors[name]
                    for name in (
                        schema.VECTOR,
                        schema.SEGMENT_EMBEDDINGS,
                        schema.SEGMENT_START_S,
                        schema.SEGMENT_END_S,
                    )
                },
            }
        )
    )
    ann_index = writer.finish()

    summary = run_index(
        IndexConfig(
            manifest=str(manifest),
            db=str(db),
            table=TABLE,
            model=ModelSpec(MODEL),
            resources=ResourceRequest(gpus_per_actor=0),
        )
    )
    assert summary.plan == {"unchanged": rows}, summary.plan
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "jobs.index", "--manifest", str(manifest), "--db", str(db),
         "--table", TABLE, "--model", MODEL, "--log-level", "WARNING"],
        cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    cli_s = time.perf_counter() - started
    # Start-up alone: a fresh interpreter importing what the job imports, doing nothing.
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import jobs.index, pipelines.index"],
        cwd=REPO_ROOT, check=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    imports_s = time.perf_counter() - started
    return {
        "rows": rows,
        "table_ann_index": ann_index,
        "job_s": summary.seconds["total"],
        "job_seconds": summary.seconds,
        "cli_wall_s": cli_s,
        "cli_startup_s": imports_s,
    }


def write_large_state(work: Path, *, rows: int, model_id: str, dim: int) -> dict[str, Any]:
    """Figure 3's inputs: a ``rows``-row table and errors table, and a ``rows``-row manifest
    (captions included, in 8 shards).

    Categories: 0.5% of the table's ids left the manifest (deleted) and as many are new; 0.5%
    changed bytes; 0.5% carry another model; 0.5% have another caption in the manifest than in
    the table (metadata only); 0.1% of the new ones failed before, same bytes.
    """
    import lancedb

    from pipelines import schema
    from pipelines.plan import metadata_digests

    share = max(1, rows // 200)
    table_ids = np.arange(rows)
    manifest_ids = np.arange(share, rows + share)

    def names(ids: np.ndarray) -> pa.Array:
        return pc.binary_join_element_wise("v", pc.cast(pa.array(ids), pa.string()), "")

    def fingerprints(ids: np.ndarray) -> pa.Array:
        return pc.binary_join_element_wise(
            pc.cast(pa.array(100_000 + ids % 9_000), pa.string()),
            pc.cast(pa.array(1_700_000_000_000_000_000 + ids), pa.string()),
            ":",
        )

    def described(ids: np.ndarray, *, recaptioned: bool = False) -> dict[str, pa.Array]:
        """The manifest's descriptive columns of ``ids``; ``recaptioned``: as the table holds
        them, where ids [3s, 4s) still carry their caption from before an edit."""
        captions = pc.binary_join_element_wise("a video of ", names(ids), "")
        if recaptioned:
            old = pa.array((ids >= 3 * share) & (ids < 4 * share))
            captions = pc.if_else(
                old, pc.binary_join_element_wise("an old caption of ", names(ids), ""), captions
            )
        return {
            schema.URI: pc.binary_join_element_wise("s3://bucket/videos/", names(ids), ".mp4", ""),
            schema.CAPTION: pa.ListArray.from_arrays(
                pa.array(np.arange(len(ids) + 1, dtype=np.int32)), captions
            ),
            schema.SPLIT: pa.array(np.where(ids % 5 == 0, "test", "train")),
        }

    db = lancedb.connect(str(work / "large-db"))
    table_schema = schema.embeddings_schema(dim, 4)
    table = None
    rng = np.random.default_rng(0)
    chunk = 100_000
    started = time.perf_counter()
    for start in range(0, rows, chunk):
        ids = table_ids[start : start + chunk]
        n = len(ids)
        vectors = rng.standard_normal((n, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        # Ids [0, s) left the manifest; [s, 2s) changed bytes since; [2s, 3s) another model.
        changed = (ids >= share) & (ids < 2 * share)
        fingerprint = pc.if_else(pa.array(changed), pa.scalar("0:0"), fingerprints(ids))
        model = np.where((ids >= 2 * share) & (ids < 3 * share), "another-model", model_id)
        descriptive = described(ids, recaptioned=True)
        columns = {
            schema.VIDEO_ID: names(ids),
            **descriptive,
            schema.METADATA_DIGEST: metadata_digests(pa.table(descriptive)),
            schema.VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
            # Four segments, each the video's vector: the table's real width on disk, cheaply.
            schema.SEGMENT_EMBEDDINGS: schema.multivectors(np.repeat(vectors[:, None], 4, axis=1)),
            schema.SEGMENT_START_S: pa.FixedSizeListArray.from_arrays(
                pa.array(np.tile(np.arange(4, dtype=np.float32), n)), 4
            ),
            schema.SEGMENT_END_S: pa.FixedSizeListArray.from_arrays(
                pa.array(np.tile(np.arange(1, 5, dtype=np.float32), n)), 4
            ),
            schema.MODEL_ID: pa.array(model),
            schema.FINGERPRINT: fingerprint,
            schema.INDEXED_AT: pa.array(np.full(n, 1_700_000_000_000_000, "datetime64[us]")).cast(
                schema.TIMESTAMP
            ),
        }
        batch = pa.table(
            {
                field.name: columns.get(field.name, pa.nulls(n, field.type))
                for field in table_schema
            },
            schema=table_schema,
        )
        if table is None:
            table = db.create_table(TABLE, data=batch, schema=table_schema, mode="overwrite")
        else:
            table.add(batch)
    written_s = time.perf_counter() - started
    failed_ids = np.arange(rows, rows + max(1, rows // 1000))
    db.create_table(
        schema.errors_table_name(TABLE),
        data=pa.table(
            {
                schema.VIDEO_ID: names(failed_ids),
                schema.URI: names(failed_ids),
                schema.STAGE: pa.array(["decode"] * len(failed_ids)),
                schema.ERROR: pa.array(["truncated: at frame 3"] * len(failed_ids)),
                schema.FINGERPRINT: fingerprints(failed_ids),
                schema.MODEL_ID: pa.array([model_id] * len(failed_ids)),
                schema.AT: pa.array(
                    np.full(len(failed_ids), 1_700_000_000_000_000, "datetime64[us]")
                ).cast(schema.TIMESTAMP),
            },
            schema=schema.ERRORS_SCHEMA,
        ),
        mode="overwrite",
    )
    manifest = work / "large-manifest"
    manifest.mkdir()
    shards = 8
    bounds = np.linspace(0, rows, shards + 1).astype(int)
    for k in range(shards):
        ids = manifest_ids[bounds[k] : bounds[k + 1]]
        pq.write_table(
            pa.table(
                {
                    schema.VIDEO_ID: names(ids),
                    **described(ids),
                    schema.FINGERPRINT: fingerprints(ids),
                }
            ),
            manifest / f"part-{k:05d}.parquet",
        )
    return {"db": work / "large-db", "manifest": manifest, "write_s": written_s}


def peak_rss_gib() -> float:
    """This process's peak resident memory. ``VmHWM``, not ``getrusage``'s ``ru_maxrss``: a
    spawned child's ``ru_maxrss`` starts at its parent's RSS at fork time (kept across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _diff_in_fresh_process(manifest: str, db: str, model_id: str) -> dict[str, Any]:
    """Runs in a spawned process, so its peak RSS is the diff's alone (plus imports)."""
    from pipelines.index import read_table_state
    from pipelines.manifest import attach_fingerprints, read_manifest
    from pipelines.plan import plan_index

    after_imports = peak_rss_gib()
    times = {}
    started = time.perf_counter()
    table = attach_fingerprints(read_manifest(manifest))
    times["read_manifest_s"] = time.perf_counter() - started
    mark = time.perf_counter()
    indexed, failed = read_table_state(db, TABLE)
    times["read_table_state_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    plan = plan_index(table, indexed=indexed, failed=failed, model_id=model_id)
    times["plan_index_s"] = time.perf_counter() - mark
    times["total_s"] = time.perf_counter() - started
    return {
        **times,
        "counts": plan.counts,
        "deleted": len(plan.delete_ids),
        "peak_rss_gib": peak_rss_gib(),
        "rss_after_imports_gib": after_imports,
    }


def large_diff(work: Path, *, rows: int) -> dict[str, Any]:
    """Figure 3: write the inputs, then diff them in a fresh process."""
    from pipelines.encode import ModelSpec

    model = ModelSpec(MODEL).build()
    inputs = write_large_state(work, rows=rows, model_id=model.model_id, dim=model.embed_dim)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply(
            _diff_in_fresh_process, (str(inputs["manifest"]), str(inputs["db"]), model.model_id)
        )
    return {"rows": rows, "write_inputs_s": inputs["write_s"], **result}


def target(value: float, limit: float, unit: str) -> dict[str, Any]:
    return {"value": value, "target": f"< {limit:g} {unit}".strip(), "met": value < limit}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=1000, help="generated corpus size")
    parser.add_argument("--changed", type=float, default=0.01, help="share of videos changed")
    parser.add_argument("--unchanged-rows", type=int, default=10_000)
    parser.add_argument("--diff-rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--output", type=Path, help="JSON path (default bench/results/)")
    args = parser.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="bench-reindex-"))
    try:
        # Ray starts before either timed run: its start-up is no run's work.
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        cycle = full_then_incremental(work, videos=args.videos, fraction=args.changed)
        unchanged = unchanged_rerun(work, cycle["corpus"], work / "db", rows=args.unchanged_rows)
        ray.shutdown()
        diff = large_diff(work, rows=args.diff_rows)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    full, incremental = cycle["full"], cycle["incremental"]
    work_share = incremental["work_s"] / full["work_s"]
    targets = {
        "incremental_work_share": {
            "value": work_share,
            "target": f"<= {WORK_FRACTION_TARGET:g} of the full index's work",
            "met": work_share <= WORK_FRACTION_TARGET,
        },
        "unchanged_rerun_s": target(unchanged["job_s"], UNCHANGED_SECONDS_TARGET, "s"),
        "diff_s": target(diff["total_s"], DIFF_SECONDS_TARGET, "s"),
        "diff_peak_rss_gib": target(diff["peak_rss_gib"], DIFF_MEMORY_GIB_TARGET, "GiB"),
    }
    results = {
        **run_metadata(),
        "model": MODEL,
        "work_definition": "summary total minus actor start-up (time to the first result less "
        "startup_rows x mean decode+encode actor-seconds per video); Ray start-up excluded",
        "full_and_incremental": {k: v for k, v in cycle.items() if k != "corpus"},
        "unchanged_rerun": unchanged,
        "diff": diff,
        "targets": targets,
    }
    verdict = {True: "met", False: "NOT met"}
    print_table(
        [
            [
                f"full index, {args.videos} videos",
                f"{full['work_s']:.1f} s work ({full['total_s']:.1f} s total)",
                "-",
                "-",
            ],
            [
                f"re-index, {cycle['changed']} changed",
                f"{incremental['work_s']:.2f} s work ({incremental['total_s']:.1f} s total)",
                f"{work_share:.1%} of full <= {WORK_FRACTION_TARGET:.0%}",
                verdict[targets["incremental_work_share"]["met"]],
            ],
            [
                f"unchanged re-run, {args.unchanged_rows} rows",
                f"{unchanged['job_s']:.2f} s job; CLI {unchanged['cli_wall_s']:.1f} s wall, "
                f"{unchanged['cli_startup_s']:.1f} s of it start-up",
                f"< {UNCHANGED_SECONDS_TARGET:g} s",
                verdict[targets["unchanged_rerun_s"]["met"]],
            ],
            [
                f"diff {args.diff_rows} vs {args.diff_rows} rows",
                f"{diff['total_s']:.2f} s",
                f"< {DIFF_SECONDS_TARGET:g} s",
                verdict[targets["diff_s"]["met"]],
            ],
            [
                "diff peak RSS (whole process)",
                f"{diff['peak_rss_gib']:.2f} GiB ({diff['rss_after_imports_gib']:.2f} "
                "after imports)",
                f"< {DIFF_MEMORY_GIB_TARGET:g} GiB",
                verdict[targets["diff_peak_rss_gib"]["met"]],
            ],
        ],
        ["figure", "measured", "target", ""],
        title=f"re-indexing, {MODEL} preset, {os.cpu_count()} CPUs",
    )
    print(
        f"diff breakdown: manifest {diff['read_manifest_s']:.2f} s, table state "
        f"{diff['read_table_state_s']:.2f} s, plan {diff['plan_index_s']:.2f} s; "
        f"plan {diff['counts']}, deleted {diff['deleted']}"
    )
    path = write_results("reindex", results, output=args.output)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
