"""The one GPU check: every GPU path of the project, on one GPU, in one command (issue #17).

On a machine with one NVIDIA GPU (H100/H200 class; at most 8 minutes), after
``CENTERCLIP_TORCH=cuda bash scripts/setup.sh``::

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.gpu

writes ``bench/results/gpu.json`` with ``device`` (the GPU's name), ``driver``, the versions, and
the top-level figures ``kmedoids_speedup``, ``clustering_share``, ``videos_per_s_b32`` and
``train_memory_cut``. Sections, each recorded even when another fails:

1. ``gpu_tests``: the pytest tests marked ``gpu`` (they skip without CUDA; the skips are listed);
2. ``encoder``: encode throughput in bf16 from pre-decoded frames, ViT-B/32 at 12 frames, batch
   32, 64 and 128: meanP, k-medoids++ B6-4,49 and spectral B6-3,49, interleaved (the pieces of
   ``bench.encoder``), with clustering's share of encode time. The top-level figures are those
   of the largest batch; ``videos_per_s_b32`` is k-medoids++ B6-4,49, the product's model;
3. ``train_memory``: peak CUDA memory of one training step, meanP against B6-4,49
   (``bench.train_memory.measure_memory``); ``train_memory_cut`` compares the peaks;
4. ``decode``: the decode stage alone, no Ray, each decoder over a synthetic corpus: videos/s,
   CPU seconds a video, which backend decoded (NVDEC falls back to PyAV where it cannot run and
   ``decoded_by`` says why), and each decoder's mean pixel difference from PyAV's frames;
5. ``index``: the index job end to end on the same corpus (real pinning, real bf16), with CPU
   decoding (PyAV) and with GPU decoding (NVDEC); the bottleneck line of each run;
6. ``finetune``: a few fine-tuning steps on one GPU worker (NCCL, a world of one).

``--sections index,finetune`` runs only those; the other sections of the output file's report
(same kind of run) are kept, each with the date and commit it was measured at. That lets a
machine that cannot hold every dependency at once measure the sections in several calls.

``--device cpu`` (or ``--dry-run``) runs the same script end to end on a CPU with tiny sizes and
writes ``bench/results/gpu-dryrun.json`` instead, marked ``"dry_run": true``: a proof that the
script works, never a GPU figure.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python bench/gpu.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import centerclip
from bench import _common
from bench.encoder import VARIANTS, measure_throughput, synthetic_videos
from bench.train_memory import VARIANTS as TRAIN_VARIANTS
from bench.train_memory import captions, measure_memory
from centerclip.train import TrainConfig, build_optimizer

TIME_LIMIT_S = 8 * 60


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each section runs: the GPU run's, or the CPU dry run's tiny ones."""

    # None: the ViT-B/32 presets; else this preset as meanP, k-medoids++ and spectral.
    encoder_preset: str | None
    batches: tuple[int, ...]
    warmup: int
    repeats: int
    train_batch: int
    index_videos: int
    index_model: str
    video_side: int
    finetune_model: str
    finetune_videos: int
    finetune_batch: int


GPU_SIZES = Sizes(
    encoder_preset=None,
    batches=(32, 64, 128),
    warmup=3,
    repeats=10,
    train_batch=64,
    index_videos=512,
    index_model="ViT-B-32-center",
    video_side=320,
    finetune_model="ViT-B-32-center",
    finetune_videos=64,
    finetune_batch=16,
)
DRY_RUN_SIZES = Sizes(
    encoder_preset="tiny",
    batches=(2,),
    warmup=1,
    repeats=1,
    train_batch=2,
    index_videos=16,
    index_model="tiny",
    video_side=96,
    finetune_model="tiny",
    finetune_videos=10,
    finetune_batch=4,
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def section(report: dict[str, Any], name: str, run: Callable[[], dict[str, Any]]) -> None:
    """Run one section; a failure is recorded (with its traceback) and the next section runs."""
    log(f"== {name}")
    began = time.perf_counter()
    try:
        report[name] = {"ok": True, **run()}
    except Exception as err:
        report[name] = {
            "ok": False,
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
        }
        log(f"   {name} failed: {type(err).__name__}: {err}")
    report[name]["seconds"] = round(time.perf_counter() - began, 1)


def device_info(device: torch.device) -> dict[str, Any]:
    """The GPU's name and driver (``nvidia-smi``), CUDA and cuDNN versions; the CPU on a CPU."""
    if device.type != "cuda":
        return {"device": f"cpu ({_common.cpu_model()})", "driver": None, "cuda": None}
    driver = None
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        driver = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            .stdout.strip()
            .splitlines()[0]
        )
    props = torch.cuda.get_device_properties(device)
    return {
        "device": torch.cuda.get_device_name(device),
        "driver": driver,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "gpus": torch.cuda.device_count(),
    }


# --------------------------------------------------------------------------------------------
# 1. The tests marked gpu


def gpu_tests(out: Path) -> dict[str, Any]:
    """``pytest -m gpu`` in a child process; counts and skip reasons from its JUnit XML."""
    junit = out / "gpu-tests.xml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            "tests",
        ],
        cwd=_common.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    results: dict[str, Any] = {"exit_status": done.returncode, "tests": {}}
    if not junit.exists():
        results["output_tail"] = (done.stdout + done.stderr)[-3000:]
        return results
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome, detail = tag, found.get("message", "")
        results["tests"][name] = {"outcome": outcome, "detail": detail[:500]}
    outcomes = [t["outcome"] for t in results["tests"].values()]
    results.update({k: outcomes.count(k) for k in ("passed", "failure", "error", "skipped")})
    return results


# --------------------------------------------------------------------------------------------
# 2. Encoder throughput


def variant_models(
    keys: tuple[str, ...], sizes: Sizes, device: torch.device
) -> dict[str, centerclip.VideoCLIP]:
    """The variants ``keys`` (``baseline``, ``kmedoids``, ``spectral``) with random weights."""
    if sizes.encoder_preset is None:
        presets = {v.key: v.preset for v in VARIANTS}
        return {key: centerclip.create_model(presets[key], device=device) for key in keys}
    methods = {"baseline": "none", "kmedoids": "kmedoids", "spectral": "spectral"}
    return {
        key: centerclip.create_model(sizes.encoder_preset, device=device, method=methods[key])
        for key in keys
    }


def encoder(device: torch.device, dtype: torch.dtype, sizes: Sizes) -> dict[str, Any]:
    """Videos/s of the three variants at each batch size, interleaved; clustering's share."""
    models = variant_models(tuple(v.key for v in VARIANTS), sizes, device)
    models = {key: model.eval() for key, model in models.items()}
    reference = models["baseline"]
    by_batch: dict[str, Any] = {}
    for batch in sizes.batches:
        raw = synthetic_videos(batch, reference.config.frames, reference.image_size)
        frames = reference.preprocess(raw).to(device)  # [B, T, 3, H, W], pre-decoded
        measured = measure_throughput(
            models,
            frames,
            device=device,
            dtype=dtype,
            warmup=sizes.warmup,
            repeats=sizes.repeats,
            log=log,
        )
        row: dict[str, Any] = {}
        for key, result in measured.items():
            best = min(result["seconds"])
            at = result["seconds"].index(best)
            row[key] = {
                "videos_per_s": batch / best,
                "seconds": result["seconds"],
                "clustering_share": result["cluster_seconds"][at] / best,
                "kmedoids_rounds_per_call": result["rounds_per_call"],
            }
        for key in ("kmedoids", "spectral"):
            row[key]["speedup"] = row[key]["videos_per_s"] / row["baseline"]["videos_per_s"]
        by_batch[str(batch)] = row
        del frames
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "model_ids": {key: model.model_id for key, model in models.items()},
        "frames": reference.config.frames,
        "by_batch": by_batch,
        "top_level_batch": max(sizes.batches),
    }


# --------------------------------------------------------------------------------------------
# 3. Training memory


def train_memory(device: torch.device, dtype: torch.dtype | None, sizes: Sizes) -> dict[str, Any]:
    """One training step of meanP and of B6-4,49: CUDA's peak allocated bytes on a GPU (on a CPU
    the saved activations plus the training state, ``bench.train_memory``'s count)."""
    results: dict[str, Any] = {"batch": sizes.train_batch}
    for key in TRAIN_VARIANTS:
        model = variant_models((key,), sizes, device)[key].train()
        raw = synthetic_videos(sizes.train_batch, model.config.frames, model.image_size)
        frames = model.preprocess(raw).to(device)
        tokens = model.tokenize(captions(sizes.train_batch)).to(device)
        optimizer, _ = build_optimizer(
            model,
            TrainConfig(batch_size=max(2, sizes.train_batch)),
            total_steps=10,
            pretrained={n for n, _ in model.named_parameters()},
        )
        results[key] = measure_memory(model, optimizer, frames, tokens, device=device, dtype=dtype)
        del model, optimizer, frames
        if device.type == "cuda":
            torch.cuda.empty_cache()
    metric = "cuda_peak_allocated_bytes" if device.type == "cuda" else "step_memory_bytes"
    results["metric"] = metric
    results["cut"] = 1 - results["kmedoids"][metric] / results["baseline"][metric]
    return results


# --------------------------------------------------------------------------------------------
# 4. The index job end to end, CPU and GPU decoding


@functools.cache
def cpu_model(preset: str) -> Any:
    """``preset`` built on the CPU once, for its frame count, image size and id, which the decode
    and index sections both read."""
    from pipelines.encode import ModelSpec

    return ModelSpec(preset).build("cpu")


def sample_corpus(sizes: Sizes, work: Path) -> Path:
    """The synthetic corpus the decode and index sections share, written on first use."""
    from pipelines.synthetic import write_sample_corpus

    corpus = work / "corpus"
    if not (corpus / "manifest").exists():
        side = sizes.video_side
        write_sample_corpus(
            corpus,
            videos=sizes.index_videos,
            seed=0,
            shards=4,
            width=side,
            height=side,
            fps=25,
            seconds=(4.0, 6.0),
        )
    return corpus


def decode_stage(sizes: Sizes, work: Path) -> dict[str, Any]:
    """The decode stage alone, in this process (no Ray), each decoder over the same videos:
    videos/s (after one untimed video), CPU seconds a video, which backend decoded (NVDEC falls
    back to PyAV and says why), and each decoder's mean absolute pixel difference from PyAV's
    frames."""
    import numpy as np
    import pyarrow.dataset as pads

    from pipelines import schema
    from pipelines.decode import (
        DECODER_NVDEC,
        DECODER_PYAV,
        DECODERS,
        DecodeStage,
        torchcodec_backend,
    )

    built = cpu_model(sizes.index_model)
    rows = pads.dataset(str(sample_corpus(sizes, work) / "manifest")).to_table()
    batch = {
        name: rows[name].to_numpy(zero_copy_only=False) for name in (schema.VIDEO_ID, schema.URI)
    }
    results: dict[str, Any] = {
        "videos": rows.num_rows,
        "video_side": sizes.video_side,
        "nvdec_unavailable_reason": torchcodec_backend.unavailable_reason(DECODER_NVDEC),
    }
    frames: dict[str, Any] = {}
    for decoder in (DECODER_PYAV, *(d for d in DECODERS if d != DECODER_PYAV)):
        with DecodeStage(
            frames=built.config.frames, image_size=built.image_size, decoder=decoder
        ) as stage:
            # Untimed: the decoder process's start and the library's first call (NVDEC: CUDA's).
            stage({name: column[:1] for name, column in batch.items()})
            began = time.perf_counter()
            decoded = stage(batch)
            seconds = time.perf_counter() - began
        errors = [e for e in decoded[schema.ERROR] if e]
        frames[decoder] = decoded[schema.FRAMES]
        row: dict[str, Any] = {
            "videos_per_s": rows.num_rows / seconds,
            "decode_cpu_s_per_video": float(decoded[schema.DECODE_CPU_S].mean()),
            "errors": len(errors),
            "decoded_by": sorted(set(decoded[schema.DECODER])),
        }
        if decoder != DECODER_PYAV:
            ours = np.asarray(frames[decoder], dtype=np.float32)
            theirs = np.asarray(frames[DECODER_PYAV], dtype=np.float32)
            row["mean_abs_pixel_difference_from_pyav"] = float(np.abs(ours - theirs).mean())
        results[decoder] = row
    return results


def index_runs(device: torch.device, sizes: Sizes, work: Path) -> dict[str, Any]:
    """The index job end to end, once with CPU decoding and once with NVDEC."""
    import ray

    from pipelines import schema
    from pipelines.bottleneck import find_bottleneck
    from pipelines.decode import DECODER_NVDEC, DECODER_PYAV
    from pipelines.encode import ModelSpec
    from pipelines.index import IndexConfig, run_index
    from pipelines.resources import ResourceRequest

    corpus = sample_corpus(sizes, work)
    _start_ray(device)
    model = ModelSpec(sizes.index_model)
    results: dict[str, Any] = {
        "videos": sizes.index_videos,
        "video_side": sizes.video_side,
        "model": cpu_model(sizes.index_model).model_id,
    }

    gpus = 1 if device.type == "cuda" else 0
    for label, decoder in (("cpu_decoding", DECODER_PYAV), ("gpu_decoding", DECODER_NVDEC)):
        db = work / f"db-{label}"
        shutil.rmtree(db, ignore_errors=True)  # a kept --work folder: index from scratch
        config = IndexConfig(
            manifest=str(corpus / "manifest"),
            db=str(db),
            table="videos",
            model=dataclasses.replace(model, decoder=decoder),
            resources=ResourceRequest(gpus_per_actor=gpus, batch_size=None if gpus else 2),
        )
        summary = run_index(config)
        videos = summary.indexed + summary.failed
        pipeline_s = summary.seconds.get("pipeline", 0.0)
        run = {
            "indexed": summary.indexed,
            "failed": summary.failed,
            "resources": summary.resources,
            "seconds": summary.seconds,
            "videos_per_s": videos / pipeline_s if pipeline_s else None,
            "steady_videos_per_s": summary.steady_videos_per_second,
            "costs_per_video": summary.costs,
            "videos_by_worker": summary.videos_by_worker,
        }
        decode_cost = summary.costs.get(schema.DECODE_CPU_S)
        encode_cost = summary.costs.get(schema.ENCODE_S)
        if decode_cost and encode_cost:
            run["bottleneck"] = find_bottleneck(
                decode_cost,
                encode_cost,
                decode_cpus=_decode_cpus(config, videos),
                encode_actors=max(1, len(summary.videos_by_worker)),
            ).describe()
        results[label] = run
    ray.shutdown()
    return results


def _decode_cpus(config: Any, videos: int) -> float:
    """The CPUs that decoded in a run: the decode pool's, or the encode actors' own where each
    decodes its videos (the job's plan, recomputed from the same inputs)."""
    import ray

    from pipelines.resources import plan_resources

    cluster = ray.cluster_resources()
    plan = plan_resources(
        config.resources,
        cluster_cpus=cluster.get("CPU", 0.0),
        cluster_gpus=cluster.get("GPU", 0.0),
        videos=videos,
    )
    if plan.decode_in_encode_actors:
        return plan.encode_actors * plan.encode_cpus
    return plan.decode_workers * plan.decode_cpus


def _start_ray(device: torch.device) -> None:
    import ray

    if ray.is_initialized():
        return
    options: dict[str, Any] = {"address": "local", "include_dashboard": False}
    if device.type != "cuda":
        options.update(num_cpus=max(2, _common.usable_cores()), num_gpus=0)
    ray.init(**options)


# --------------------------------------------------------------------------------------------
# 5. Fine-tuning on NCCL


def finetune(device: torch.device, sizes: Sizes, work: Path) -> dict[str, Any]:
    import ray

    from pipelines.encode import ModelSpec
    from pipelines.finetune import FinetuneConfig, run_finetune
    from pipelines.synthetic import write_sample_corpus

    corpus = work / "finetune-corpus"
    if not (corpus / "manifest").exists():
        write_sample_corpus(
            corpus, videos=sizes.finetune_videos, seed=1, shards=1, test_fraction=0.0
        )
    out = work / "finetune"
    shutil.rmtree(out, ignore_errors=True)  # a kept --work folder: train from scratch
    _start_ray(device)
    config = FinetuneConfig(
        manifest=str(corpus / "manifest"),
        out=str(out),
        model=ModelSpec(sizes.finetune_model),
        train=TrainConfig(epochs=1, batch_size=sizes.finetune_batch, lr=1e-4),
        val_split=None,
        workers=1,
        use_gpus=device.type == "cuda",
    )
    summary = run_finetune(config)
    history = json.loads((Path(config.out) / "history.json").read_text())
    ray.shutdown()
    return {
        "backend": "nccl" if device.type == "cuda" else "gloo",
        "workers": 1,
        "steps": summary.step,
        "total_steps": summary.total_steps,
        "history": history,
    }


# --------------------------------------------------------------------------------------------


def top_level(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's four figures, ``None`` where their section failed."""
    figures: dict[str, Any] = dict.fromkeys(
        ("kmedoids_speedup", "clustering_share", "videos_per_s_b32", "train_memory_cut")
    )
    enc = report.get("encoder", {})
    if enc.get("ok"):
        row = enc["by_batch"][str(enc["top_level_batch"])]
        figures["kmedoids_speedup"] = row["kmedoids"]["speedup"]
        figures["clustering_share"] = row["kmedoids"]["clustering_share"]
        figures["videos_per_s_b32"] = row["kmedoids"]["videos_per_s"]
    if report.get("train_memory", {}).get("ok"):
        figures["train_memory_cut"] = report["train_memory"]["cut"]
    return figures


def print_report(report: dict[str, Any]) -> None:
    title = "bench.gpu" + (" -- CPU DRY RUN, not GPU figures" if report["dry_run"] else "")
    rows = [
        (key, report[key])
        for key in ("kmedoids_speedup", "clustering_share", "videos_per_s_b32", "train_memory_cut")
    ]
    rows += [
        (f"section {name}", "ok" if report[name].get("ok") else report[name].get("error"))
        for name in SECTIONS
        if name in report
    ]
    _common.print_table(rows, ("", report["device"]), title=title)
    for label in ("cpu_decoding", "gpu_decoding"):
        run = report.get("index", {}).get(label, {})
        if "bottleneck" in run:
            rate = run["steady_videos_per_s"] or run["videos_per_s"] or 0.0
            print(f"index job, {label}: {rate:.1f} videos/s; {run['bottleneck']}")


SECTIONS = ("gpu_tests", "encoder", "train_memory", "decode", "index", "finetune")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: the dry run with tiny sizes (default: %(default)s)",
    )
    parser.add_argument("--dry-run", action="store_true", help="same as --device cpu")
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="comma-separated sections to run; the others are kept from the output file when it "
        "holds a report from the same kind of run (default: all, %(default)s)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="scratch folder, kept, so a later run reuses its corpus (default: a temporary one)",
    )
    args = parser.parse_args(argv)
    sections = tuple(name.strip() for name in args.sections.split(",") if name.strip())
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        choices = ", ".join(SECTIONS)
        parser.error(f"--sections: unknown {unknown or 'nothing'}; choose from {choices}")
    args.sections = sections
    return args


def earlier_sections(path: Path, dry_run: bool, rerun: tuple[str, ...]) -> dict[str, Any]:
    """The sections of the report at ``path`` that this run does not redo, when that report is
    of the same kind (GPU or dry run); each keeps the date and commit it was measured at."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("dry_run") != dry_run:
        return {}
    kept = {}
    for name in SECTIONS:
        if name in earlier and name not in rerun:
            kept[name] = earlier[name]
            kept[name].setdefault("date", earlier.get("date"))
            kept[name].setdefault("git_commit", earlier.get("git_commit"))
    return kept


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    dry_run = args.dry_run or args.device == "cpu"
    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; run with --device cpu for the CPU dry run")
    device = torch.device("cpu" if dry_run else "cuda")
    sizes = DRY_RUN_SIZES if dry_run else GPU_SIZES
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name = "gpu-dryrun" if dry_run else "gpu"
    output = args.output or _common.RESULTS_DIR / f"{name}.json"
    started = time.perf_counter()
    report: dict[str, Any] = {"dry_run": dry_run, **device_info(device), **_common.run_metadata()}
    report["sizes"] = dataclasses.asdict(sizes)
    runs = {
        "gpu_tests": lambda: gpu_tests(work),
        "encoder": lambda: encoder(device, dtype, sizes),
        "train_memory": lambda: train_memory(
            device, dtype if device.type == "cuda" else None, sizes
        ),
        "decode": lambda: decode_stage(sizes, work),
        "index": lambda: index_runs(device, sizes, work),
        "finetune": lambda: finetune(device, sizes, work),
    }
    report.update(earlier_sections(output, dry_run, args.sections))
    with contextlib.ExitStack() as stack:
        if args.work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-gpu-")))
        else:
            work = args.work
            work.mkdir(parents=True, exist_ok=True)
        for section_name in args.sections:
            section(report, section_name, runs[section_name])
            report[section_name].update(date=report["date"], git_commit=report["git_commit"])
    report = {k: v for k, v in report.items() if k not in SECTIONS} | {
        n: report[n] for n in SECTIONS if n in report
    }
    report.update(top_level(report))
    wall = time.perf_counter() - started
    report["wall_seconds"] = round(wall, 1)
    # The time limit is for all sections together, however many runs measured them.
    all_sections_s = sum(report[n]["seconds"] for n in SECTIONS if n in report)
    report["all_sections_seconds"] = round(all_sections_s, 1)
    report["within_time_limit"] = all_sections_s <= TIME_LIMIT_S
    # Reorder so that the figures the issue names come first.
    first = (
        "dry_run",
        "device",
        "driver",
        "cuda",
        "kmedoids_speedup",
        "clustering_share",
        "videos_per_s_b32",
        "train_memory_cut",
        "wall_seconds",
        "within_time_limit",
    )
    report = {**{k: report[k] for k in first if k in report}, **report}
    print_report(report)
    path = _common.write_results(name, report, output=output)
    print(f"\nwrote {path}")
    return report


if __name__ == "__main__":
    main()
