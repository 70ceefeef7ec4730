"""Index-job throughput against its physical limit, in one run.

On a generated corpus, with the same CPUs for each:

* D: decode-only throughput (``DecodeStage``, one decoder per core, no Ray);
* E: encode-only throughput of the job's encode actors (``plan_resources``: one process per
  actor with its torch threads, every core to torch), on pre-decoded frames;
* the whole index job (local Ray, ``run_index``): its steady state (rows received against
  time, without the first and the last result), and its whole run with start-up;
* where the plan has each encode actor decode its own videos, the same job with a separate
  decode pool (``--decode-workers 1``) right after it, in the same Ray session: the ratio of
  the two is what running both stages in one actor gains.

Decoding and encoding share the CPUs here, so the job can at best reach ``1 / (1/D + 1/E)``
videos/s (on GPU nodes the limit would be ``min(D, E)``). D and E are the best of ``--repeats``
passes, so noise from other work on the machine raises the limit rather than lowering it.
``efficiency`` is the job's steady-state throughput over that limit; start-up (Ray and actors
loading the model) is reported apart. Peak memory is the largest summed RSS of this process and
every Ray process it started; CPU time per role (encode actor, decode+encode actor, decode
actor, decoder process, driver, Ray's own processes) over the steady state shows where the gap
to the limit goes.

    python -m bench.pipeline        # ViT-B-32-center (12 frames, 224 px), 192 videos
    python -m bench.pipeline --model tiny --videos 2400 --encode-videos 480 \
        --output bench/results/pipeline-tiny.json   # per-video work small: Ray's overhead shows
    python -m bench.pipeline --profile real       # bench/corpus.py's real footage and codecs
                                                  # (bench/results/pipeline-real.json)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench._common import print_table, run_metadata, usable_cores, write_results
from pipelines import schema

BATCH = 8


def _columns(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Manifest rows as the column batch a stage takes."""
    import numpy as np

    return {name: np.array([row[name] for row in rows], dtype=object) for name in rows[0]}


def decode_throughput(
    rows: list[dict[str, Any]], *, frames: int, size: int, workers: int, repeats: int
) -> float:
    """Videos/s with ``workers`` decode stages (each one child decoder process) in parallel,
    each decoding its own share of the batches (a stage serves one caller at a time); the best
    of ``repeats`` passes over the corpus."""

    from pipelines.decode import DecodeStage

    stages = [DecodeStage(frames=frames, image_size=size) for _ in range(workers)]
    batches = [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]

    def decode(stage: DecodeStage, share: list[list[dict[str, Any]]]) -> int:
        decoded = 0
        for batch in share:
            decoded += int(sum(not error for error in stage(_columns(batch))[schema.ERROR]))
        return decoded

    with ThreadPoolExecutor(workers) as pool:
        # One untimed batch per stage first: the decoders' first reads warm the page cache.
        list(pool.map(decode, stages, [[batch] for batch in batches[:workers]]))
        rates = []
        for _ in range(repeats):
            started = time.perf_counter()
            decoded = sum(pool.map(decode, stages, [batches[w::workers] for w in range(workers)]))
            rates.append(decoded / (time.perf_counter() - started))
    for stage in stages:
        stage.close()
    return max(rates)


def encode_throughput(
    rows: list[dict[str, Any]],
    *,
    model: str,
    videos: int,
    actors: int,
    threads: int,
    repeats: int,
) -> tuple[float, float]:
    """Videos/s of the job's encode configuration, ``actors`` processes of ``threads`` torch
    threads each, all encoding the first ``videos`` corpus videos (decoded beforehand: the job's
    own inputs, so clustering sees the same tokens) at the same time; passes start together, and
    the best of ``repeats`` passes' summed rates counts, with the CPU seconds per video it took."""
    import multiprocessing

    from centerclip import create_model
    from pipelines.decode import DecodeStage

    spec = create_model(model)
    with DecodeStage(frames=spec.config.frames, image_size=spec.image_size) as decoder:
        batches = [
            decoder(_columns(rows[i : i + BATCH])) for i in range(0, min(videos, len(rows)), BATCH)
        ]
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(actors) as pool:
        barrier = manager.Barrier(actors)
        per_actor = pool.starmap(
            _encode_passes, [(model, threads, batches, repeats, barrier)] * actors
        )
    passes = [
        (sum(rate for rate, _ in together), sum(cpu for _, cpu in together) / actors)
        for together in zip(*per_actor, strict=True)
    ]
    return max(passes)


def _encode_passes(
    model: str, threads: int, batches: list[dict[str, Any]], repeats: int, barrier: Any
) -> list[tuple[float, float]]:
    """One encode actor's passes: (videos/s, CPU seconds per video) each."""
    from pipelines.encode import EncodeStage, ModelSpec

    stage = EncodeStage(ModelSpec(model), torch_threads=threads)
    stage(batches[0])  # warm-up
    encoded = sum(len(batch[schema.VIDEO_ID]) for batch in batches)
    passes = []
    for _ in range(repeats):
        barrier.wait()
        started, cpu = time.perf_counter(), _cpu_seconds()
        for batch in batches:
            stage(batch)
        elapsed = time.perf_counter() - started
        passes.append((encoded / elapsed, (_cpu_seconds() - cpu) / encoded))
    return passes


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def steady_window(results: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """The results but the first, which carries start-up (actors loading models, the pipeline
    filling), and the last, which can arrive together with the one before as the job drains."""
    if len(results) < 5:
        raise ValueError(f"too few result blocks to measure a steady state: {results}")
    return results[1:-1]


def steady_throughput(results: list[tuple[float, int]]) -> float:
    """Rows/s of the steady state: the least-squares slope of rows received against time over
    the results between the first and the last (``steady_window``)."""
    import numpy as np

    interior = steady_window(results)
    seconds, rows = np.array(interior, dtype=np.float64).T
    return float(np.polyfit(seconds, rows, 1)[0])


class ProcessMonitor:
    """Samples this process and its descendants (Ray's raylet, GCS and workers, the decoder
    children): their summed RSS, whose peak it keeps, and each process's role and CPU time."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.peak_bytes = 0
        # (time.time(), {pid: (role, CPU seconds so far)})
        self.samples: list[tuple[float, dict[int, tuple[str, float]]]] = []
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def role(command: str, *, driver: bool) -> str:
        if driver:
            return "driver (plan, commits, Ray Data's executor)"
        for marker, role in (
            ("DecodeEncodeStage", "decode+encode actor"),
            ("EncodeStage", "encode actor"),
            ("DecodeStage", "decode actor"),
            ("_child_main", "decoder process"),
        ):
            if marker in command:
                return role
        return "Ray's own processes"

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total, processes = 0, {}
            for process in [me, *me.children(recursive=True)]:
                try:
                    with process.oneshot():
                        total += process.memory_info().rss
                        times = process.cpu_times()
                        command = " ".join(process.cmdline())
                except psutil.Error:
                    continue
                role = self.role(command, driver=process.pid == me.pid)
                processes[process.pid] = (role, times.user + times.system)
            self.peak_bytes = max(self.peak_bytes, total)
            self.samples.append((time.time(), processes))
            self._stop.wait(self._interval)

    def cpu_seconds(self, start: float, end: float) -> tuple[float, dict[str, float]]:
        """The seconds between the first and the last sample inside ``[start, end]``, and the
        CPU seconds each role used between them. A process counts up to its last sample there
        (Ray Data ends a stage's actors once the stage is done) and from zero when it started
        inside the window; a process that is an idle Ray worker first and an actor later counts
        as the actor."""
        inside = [sample for sample in self.samples if start <= sample[0] <= end]
        if len(inside) < 2:
            raise ValueError("no two samples inside the window")
        (first_at, first), latest = inside[0], {}
        for _, processes in inside[1:]:
            latest.update(processes)
        by_role: Counter[str] = Counter()
        for pid, (role, cpu) in latest.items():
            by_role[role] += max(0.0, cpu - first.get(pid, (role, 0.0))[1])
        return inside[-1][0] - first_at, dict(by_role)

    def __enter__(self) -> ProcessMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def index_job(corpus: Path, db: Path, model: str, request: Any, cores: int) -> dict[str, Any]:
    """One run of the index job (``run_index``) on the local Ray, and its figures: steady-state
    and whole-run throughput, start-up, peak memory and CPU time by role over the steady state."""
    from pipelines.encode import ModelSpec
    from pipelines.index import IndexConfig, run_index

    with ProcessMonitor() as monitor:
        summary = run_index(
            IndexConfig(
                manifest=str(corpus / "manifest"),
                db=str(db),
                table="videos",
                model=ModelSpec(model),
                resources=request,
            )
        )
    steady = steady_throughput(summary.results)
    window = steady_window(summary.results)
    sampled_s, cpu = monitor.cpu_seconds(window[0][0], window[-1][0])
    encoding = cpu.get("encode actor", 0.0) + cpu.get("decode+encode actor", 0.0)
    videos = summary.indexed + summary.failed
    return {
        "resources": summary.resources,
        "videos": videos,
        "steady_videos_per_s": steady,
        "videos_per_s_including_startup": videos / summary.seconds["pipeline"],
        "startup_s": summary.seconds["startup"],
        "results": summary.results,
        "peak_memory_gib": monitor.peak_bytes / 2**30,
        "steady_window_s": window[-1][0] - window[0][0],
        "steady_sampled_s": sampled_s,
        "steady_cpu_seconds_by_role": cpu,
        "steady_cpu_share_of_cores_by_role": {r: v / (sampled_s * cores) for r, v in cpu.items()},
        "encode_cpu_s_per_video": encoding / (steady * sampled_s),
        "seconds": summary.seconds,
    }


def write_realistic_manifest(corpus: Path, *, videos: int) -> None:
    """``corpus/manifest``: ``videos`` rows over bench/corpus.py's quick corpus (generated if
    absent), its files taken in turn, the long video's clips among them, each row a video id
    of its own."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.corpus import DEFAULT_OUT, generate

    entries = generate(DEFAULT_OUT, quick=True)
    sources: list[dict[str, Any]] = []
    for entry in entries.values():
        clips = entry.get("clip_rows") or [{"start_s": None, "end_s": None}]
        sources += [{"uri": entry["path"], **clip} for clip in clips]
    picked = [sources[i % len(sources)] for i in range(videos)]
    (corpus / "manifest").mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            schema.VIDEO_ID: [f"real-{i:06d}" for i in range(videos)],
            schema.URI: [row["uri"] for row in picked],
            schema.START_S: pa.array([row["start_s"] for row in picked], pa.float64()),
            schema.END_S: pa.array([row["end_s"] for row in picked], pa.float64()),
        }
    )
    pq.write_table(table, corpus / "manifest" / "part-00000.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="ViT-B-32-center")
    parser.add_argument("--videos", type=int, default=192, help="corpus size, all indexed")
    parser.add_argument(
        "--encode-videos", type=int, default=24, help="videos of the encode-only figure"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="passes of D and E; the best one counts"
    )
    parser.add_argument("--corpus", type=Path, help="reuse a corpus made by jobs.sample")
    parser.add_argument(
        "--profile",
        choices=["synthetic", "real"],
        default="synthetic",
        help="synthetic: jobs.sample's small clips; real: bench/corpus.py's realistic corpus "
        "(real footage and x264-default, HEVC, VP9, AV1... files, each used in turn)",
    )
    parser.add_argument(
        "--output", type=Path, help="JSON path (default bench/results/pipeline.json)"
    )
    args = parser.parse_args()

    import pyarrow.dataset as pads
    import ray

    from centerclip import create_model
    from pipelines.resources import ResourceRequest, plan_resources
    from pipelines.synthetic import write_sample_corpus

    cores = usable_cores()
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    corpus = args.corpus or work / "corpus"
    if args.profile == "real":
        write_realistic_manifest(corpus, videos=args.videos)
    elif args.corpus is None:
        write_sample_corpus(corpus, videos=args.videos, seed=0)
    manifest = pads.dataset(str(corpus / "manifest"))
    carried = [schema.VIDEO_ID, schema.URI, schema.START_S, schema.END_S]
    columns = [name for name in carried if name in manifest.schema.names]
    rows = manifest.to_table(columns=columns).to_pylist()
    model = create_model(args.model)
    frames, size = model.config.frames, model.image_size

    decode = decode_throughput(rows, frames=frames, size=size, workers=cores, repeats=args.repeats)
    request = ResourceRequest(gpus_per_actor=0)
    plan = plan_resources(request, cluster_cpus=cores, cluster_gpus=0, videos=len(rows))
    encode, encode_cpu_per_video = encode_throughput(
        rows,
        model=args.model,
        videos=args.encode_videos,
        actors=plan.encode_actors,
        threads=plan.torch_threads,
        repeats=args.repeats,
    )
    limit = 1.0 / (1.0 / decode + 1.0 / encode)

    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False)
    job = index_job(corpus, work / "db", args.model, request, cores)
    # The variant the plan replaced, in the same Ray session: a separate decode pool.
    pooled = None
    if plan.decode_in_encode_actors:
        pooled_request = ResourceRequest(gpus_per_actor=0, decode_workers=1)
        pooled = index_job(corpus, work / "db-pooled", args.model, pooled_request, cores)
    ray.shutdown()
    videos = job["videos"]
    steady, whole = job["steady_videos_per_s"], job["videos_per_s_including_startup"]
    cpu, sampled_s = job["steady_cpu_seconds_by_role"], job["steady_sampled_s"]

    # Issue #13 asks 0.9 of the limit on real footage, where decoding is a large part of the work.
    target = 0.9 if args.profile == "real" else 0.85
    results = {
        **run_metadata(),
        "model": args.model,
        "profile": args.profile,
        "videos": videos,
        "frames": frames,
        "image_size": size,
        "cores": cores,
        "decode_only_videos_per_s": decode,
        "encode_only_videos_per_s": encode,
        "limit_videos_per_s": limit,
        "limit_formula": "1 / (1/D + 1/E): decode and encode share the same CPUs",
        "repeats": args.repeats,
        "encode_videos": args.encode_videos,
        "encode_actors": plan.encode_actors,
        "torch_threads_per_actor": plan.torch_threads,
        "decode_in_encode_actors": plan.decode_in_encode_actors,
        "job_steady_videos_per_s": steady,
        "job_videos_per_s_including_startup": whole,
        "job_startup_s": job["startup_s"],
        "job_steady_definition": "slope of rows received against time, first and last "
        "result left out",
        "job_results": job["results"],
        "efficiency": steady / limit,
        "efficiency_including_startup": whole / limit,
        "peak_memory_gib": job["peak_memory_gib"],
        "steady_window_s": job["steady_window_s"],
        "steady_sampled_s": sampled_s,
        "steady_cpu_seconds_by_role": cpu,
        "steady_cpu_share_of_cores_by_role": job["steady_cpu_share_of_cores_by_role"],
        "encode_cpu_s_per_video_alone": encode_cpu_per_video,
        "encode_cpu_s_per_video_in_job": job["encode_cpu_s_per_video"],
        "job_seconds": job["seconds"],
        "job_resources": job["resources"],
        "target_efficiency": target,
        "target_met": steady / limit >= target,
    }
    rows_table = [
        ["decode only (D)", f"{decode:.1f}", "-"],
        [f"encode only (E, {plan.encode_actors} actor(s))", f"{encode:.1f}", "-"],
        ["limit 1/(1/D+1/E)", f"{limit:.1f}", "1.00"],
        ["index job, steady state", f"{steady:.1f}", f"{steady / limit:.2f}"],
        ["index job, with start-up", f"{whole:.1f}", f"{whole / limit:.2f}"],
    ]
    if pooled is not None:
        results["with_decode_pool"] = {
            **pooled,
            "efficiency": pooled["steady_videos_per_s"] / limit,
            "plan_over_decode_pool": steady / pooled["steady_videos_per_s"],
        }
        rows_table.append(
            [
                "the same with a decode pool, steady state",
                f"{pooled['steady_videos_per_s']:.1f}",
                f"{pooled['steady_videos_per_s'] / limit:.2f}",
            ]
        )
    print_table(
        rows_table,
        ["", "videos/s", "of limit"],
        title=f"{args.model}, {videos} videos, {frames} frames at {size} px, {cores} cores; "
        f"start-up {job['startup_s']:.1f} s, peak memory {job['peak_memory_gib']:.2f} GiB; "
        f"{job['resources']}",
    )
    print_table(
        [
            [role, f"{seconds:.1f}", f"{seconds / (sampled_s * cores):.0%}"]
            for role, seconds in sorted(cpu.items(), key=lambda item: -item[1])
        ],
        ["", "CPU s", "of the cores"],
        title=f"CPU time by role over {sampled_s:.1f} s of the steady state; "
        f"encode CPU per video: {job['encode_cpu_s_per_video']:.3f} s in the job, "
        f"{encode_cpu_per_video:.3f} s alone",
    )
    verdict = "met" if results["target_met"] else "NOT met"
    print(f"target: steady-state efficiency >= {target}: {verdict} ({steady / limit:.2f})")
    name = "pipeline-real" if args.profile == "real" else "pipeline"
    path = write_results(name, results, output=args.output)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
