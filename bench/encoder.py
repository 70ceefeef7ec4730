"""Encoder benchmark: CLIP4Clip meanP vs CenterCLIP k-medoids++ B6-4,49 vs spectral B6-3,49.

One run, one process, ViT-B/32 with random weights (seed 0, identical in all three models),
12 frames per video, a batch of synthetic videos (a smooth random texture drifting a few pixels
per frame, so consecutive frames are nearly identical, as in real footage). It measures:

1. encode throughput (``encode_video``, inference mode, no grad) of the three variants, interleaved
   over several repeats after warm-up (the order rotates each repeat), so machine noise hits all
   alike; speedups are ratios to the baseline measured in the same run;
2. the share of encode time spent in clustering: ``centerclip.model.kmedoids`` / ``spectral``
   (the functions ``segment_tokens`` calls) are wrapped with a timer (CUDA events on a GPU, so no
   extra synchronisation);
3. the activation memory of a training forward+backward of the vision tower: the bytes autograd
   saves for backward, counted with ``torch.autograd.graph.saved_tensors_hooks``, each storage
   once, parameters (and on a GPU autocast's bf16 copies of them) left out; on CUDA also the peak
   allocated memory.

Physical limits, derived from the settings (:func:`limits`): the "token" model counts token-block
passes (blocks 1..b see T x (1+N) tokens per video, blocks b+1..L see S x (1+K)), which is what the
issue's 1.5x / 1.6x and 33% / 37.5% are; the "FLOP" model adds the patch embedding and the
attention's quadratic term. Clustering is taken as free in both.

Run ``python -m bench.encoder`` (or ``python bench/encoder.py``); ``--quick`` for a smoke run.
On CUDA the encoders run under bf16 autocast (``--dtype`` to change). Writes
``bench/results/encoder.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python bench/encoder.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import centerclip
import centerclip.cluster
import centerclip.model
from bench import _common
from centerclip import CenterCLIPConfig, VideoCLIP


@dataclass(frozen=True)
class Variant:
    key: str
    preset: str
    label: str


VARIANTS = (
    Variant("baseline", "ViT-B-32-meanP", "meanP baseline"),
    Variant("kmedoids", "ViT-B-32-center", "k-medoids++ B6-4,49"),
    Variant("spectral", "ViT-B-32-spectral", "spectral B6-3,49"),
)

TARGETS = {
    # key in the results: (comparison, threshold, description)
    "speedup_kmedoids": (">=", 1.4, "k-medoids++ B6-4,49 speedup"),
    "cluster_time_share": ("<", 0.05, "k-medoids++ share of encode time"),
    "activation_memory_reduction": (">=", 0.30, "activation memory cut, B6-4,49"),
    "activation_memory_reduction_b6_3": (">=", 0.34, "activation memory cut, B6-3,49"),
    "speedup_spectral": (">=", 1.0, "spectral B6-3,49 no slower than baseline"),
}


# --------------------------------------------------------------------------------------------
# Physical limits


def limits(
    config: CenterCLIPConfig, *, blocks: int, tokens_per_frame: int, width: int, patch_pixels: int
) -> dict[str, float]:
    """Best-case speedup and activation-memory cut of ``config`` against meanP, clustering free.

    Token model: cost and saved activations of a block are proportional to the tokens it sees.
    Per video, meanP runs ``L`` blocks on ``T (1+N)`` tokens; CenterCLIP runs ``b`` of them on
    ``T (1+N)`` and ``L-b`` on ``S (1+K)``.
    FLOP model: a block on a sequence of ``n`` tokens costs ``24 n C^2`` (qkv, output projection,
    4x MLP) plus ``4 n^2 C`` (scores and weighted sum); the patch embedding costs
    ``2 N (3 P^2) C`` per frame and always runs on every frame.
    """
    frames, n_frame = config.frames, 1 + tokens_per_frame
    if not config.clustered:
        return {"speedup_tokens": 1.0, "speedup_flops": 1.0, "memory_reduction_tokens": 0.0}
    b, segments, n_segment = config.cluster_block, config.segments, 1 + config.centers
    baseline_tokens = blocks * frames * n_frame
    clustered_tokens = b * frames * n_frame + (blocks - b) * segments * n_segment

    def block_flops(n: int) -> float:
        return 24.0 * n * width**2 + 4.0 * n**2 * width

    stem = frames * 2.0 * tokens_per_frame * 3 * patch_pixels * width
    baseline_flops = stem + blocks * frames * block_flops(n_frame)
    clustered_flops = (
        stem + b * frames * block_flops(n_frame) + (blocks - b) * segments * block_flops(n_segment)
    )
    return {
        "speedup_tokens": baseline_tokens / clustered_tokens,
        "speedup_flops": baseline_flops / clustered_flops,
        "memory_reduction_tokens": 1.0 - clustered_tokens / baseline_tokens,
        "gflops_per_video": clustered_flops / 1e9,
        "baseline_gflops_per_video": baseline_flops / 1e9,
    }


def tower_shape(model: VideoCLIP) -> dict[str, int]:
    visual = model.clip.visual
    grid = visual.grid_size
    patch = visual.conv1.kernel_size
    return {
        "blocks": len(visual.transformer.resblocks),
        "tokens_per_frame": grid[0] * grid[1],
        "width": visual.conv1.out_channels,
        "patch_pixels": patch[0] * patch[1],
    }


# --------------------------------------------------------------------------------------------
# Input


def synthetic_videos(batch: int, frames: int, size: int, *, seed: int = 0) -> torch.Tensor:
    """uint8 ``[B, T, size, size, 3]``: a smooth random texture drifting 1-4 px per frame plus a
    little pixel noise, so consecutive frames are nearly identical (as in real video)."""
    generator = torch.Generator().manual_seed(seed)
    max_step = 4
    canvas = size + max_step * frames
    coarse = torch.rand(batch, 3, canvas // 16 + 1, canvas // 16 + 1, generator=generator)
    texture = torch.nn.functional.interpolate(
        coarse, size=(canvas, canvas), mode="bicubic", align_corners=False
    )  # [B, 3, canvas, canvas]
    steps = torch.randint(1, max_step + 1, (batch, 2), generator=generator)
    videos = torch.empty(batch, frames, 3, size, size)
    for v in range(batch):
        dy, dx = (int(s) for s in steps[v])
        for t in range(frames):
            videos[v, t] = texture[v, :, t * dy : t * dy + size, t * dx : t * dx + size]
    videos += 0.02 * torch.randn(videos.shape, generator=generator)
    return (videos.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).contiguous()


# --------------------------------------------------------------------------------------------
# Timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class ClusterTimer:
    """Times the clustering calls that ``segment_tokens`` makes, while :meth:`installed`.

    Wraps the names ``kmedoids`` and ``spectral`` in ``centerclip.model`` (the ones
    ``segment_tokens`` looks up). On CUDA it records events around each call and reads them
    after the caller's synchronisation, so the measurement adds no synchronisation of its own.
    It also counts k-medoids rounds (calls of ``assign_to_medoids``: one per round plus a final
    one per clustering call).
    """

    device: torch.device
    seconds: float = 0.0
    calls: int = 0
    assign_calls: int = 0
    _events: list[tuple[Any, Any]] = field(default_factory=list)

    def reset(self) -> None:
        self.seconds, self.calls, self.assign_calls = 0.0, 0, 0
        self._events.clear()

    def collect(self) -> float:
        """Seconds spent clustering since :meth:`reset` (synchronises CUDA)."""
        if self._events:
            synchronize(self.device)
            self.seconds += sum(start.elapsed_time(end) for start, end in self._events) / 1e3
            self._events.clear()
        return self.seconds

    @property
    def rounds_per_call(self) -> float:
        return (self.assign_calls - self.calls) / self.calls if self.calls else 0.0

    def _wrap(self, function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> torch.Tensor:
            self.calls += 1
            if self.device.type == "cuda":
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                out = function(*args, **kwargs)
                end.record()
                self._events.append((start, end))
                return out
            began = time.perf_counter()
            out = function(*args, **kwargs)
            self.seconds += time.perf_counter() - began
            return out

        return timed

    def _count(self, function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        @functools.wraps(function)
        def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
            self.assign_calls += 1
            return function(*args, **kwargs)

        return counted

    @contextlib.contextmanager
    def installed(self) -> Iterator[ClusterTimer]:
        model_module, cluster_module = centerclip.model, centerclip.cluster
        saved = (model_module.kmedoids, model_module.spectral, cluster_module.assign_to_medoids)
        model_module.kmedoids = self._wrap(saved[0])
        model_module.spectral = self._wrap(saved[1])
        cluster_module.assign_to_medoids = self._count(saved[2])
        try:
            yield self
        finally:
            model_module.kmedoids, model_module.spectral = saved[0], saved[1]
            cluster_module.assign_to_medoids = saved[2]


def encode_once(
    model: VideoCLIP, frames: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> float:
    synchronize(device)
    began = time.perf_counter()
    with torch.inference_mode(), autocast(device, dtype):
        model.encode_video(frames)
    synchronize(device)
    return time.perf_counter() - began


def measure_throughput(
    models: dict[str, VideoCLIP],
    frames: torch.Tensor,
    *,
    device: torch.device,
    dtype: torch.dtype,
    warmup: int,
    repeats: int,
    log: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """Interleaved timing: every repeat times each variant once, the order rotating by one each
    repeat. Returns per variant the per-repeat seconds, clustering seconds and k-medoids rounds."""
    keys = list(models)
    timer = ClusterTimer(device)
    results: dict[str, dict[str, Any]] = {
        key: {"seconds": [], "cluster_seconds": [], "rounds_per_call": None} for key in keys
    }
    with timer.installed():
        for round_ in range(warmup):
            for key in keys:
                timer.reset()
                seconds = encode_once(models[key], frames, device, dtype)
                timer.collect()
                if timer.calls:
                    results[key]["rounds_per_call"] = timer.rounds_per_call
                log(f"  warm-up {round_ + 1}/{warmup} {key:9s} {seconds:7.3f} s")
        for repeat in range(repeats):
            shift = repeat % len(keys)
            for key in keys[shift:] + keys[:shift]:
                timer.reset()
                seconds = encode_once(models[key], frames, device, dtype)
                results[key]["seconds"].append(seconds)
                results[key]["cluster_seconds"].append(timer.collect())
            line = "  ".join(f"{key} {results[key]['seconds'][-1]:.3f}s" for key in keys)
            log(f"  repeat {repeat + 1}/{repeats}: {line}")
    return results


# --------------------------------------------------------------------------------------------
# Activation memory


_VIEW_NODES = (
    "TBackward",
    "TransposeBackward",
    "PermuteBackward",
    "ViewBackward",
    "UnsafeViewBackward",
    "ReshapeAliasBackward",
    "ExpandBackward",
    "SliceBackward",
    "SelectBackward",
    "SplitBackward",
    "UnbindBackward",
    "UnsqueezeBackward",
    "SqueezeBackward",
    "AliasBackward",
)


def _is_weight_cast(tensor: torch.Tensor) -> bool:
    """An autocast copy of a parameter, or a view of one: walking back through view nodes, a
    dtype cast whose input is a leaf parameter."""
    node = tensor.grad_fn
    for _ in range(8):
        if node is None:
            return False
        name = type(node).__name__
        if name.startswith("ToCopyBackward"):
            return any(type(fn).__name__ == "AccumulateGrad" for fn, _ in node.next_functions if fn)
        if not name.startswith(_VIEW_NODES):
            return False
        node = next((fn for fn, _ in node.next_functions if fn is not None), None)
    return False


def training_memory(
    model: VideoCLIP, frames: torch.Tensor, *, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """Bytes autograd saves in a training forward of ``encode_video`` (then runs backward).

    Each saved storage counts once (keyed by its data pointer; the hook keeps every saved tensor
    alive until backward, so pointers are not reused meanwhile). Parameters, and autocast's
    low-precision copies of them, are counted apart: they are weights, not activations.
    """
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    activations: dict[int, int] = {}
    weight_casts: dict[int, int] = {}
    saved_tensors = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved_tensors
        saved_tensors += 1
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer == 0 or pointer in parameter_storages:
            return tensor
        (weight_casts if _is_weight_cast(tensor) else activations)[pointer] = storage.nbytes()
        return tensor

    model.train()
    model.zero_grad(set_to_none=True)
    result: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result["cuda_allocated_before_bytes"] = torch.cuda.memory_allocated(device)
    began = time.perf_counter()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            with autocast(device, dtype):
                video = model.encode_video(frames)
            loss = video.float().square().sum()
        loss.backward()
        synchronize(device)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    result["train_step_seconds"] = time.perf_counter() - began
    result["saved_activation_bytes"] = sum(activations.values())
    result["saved_tensors"] = saved_tensors
    result["saved_weight_cast_bytes"] = sum(weight_casts.values())
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        result["cuda_peak_allocated_bytes"] = peak
        # Activations, parameter gradients and workspaces: what training adds on top of the
        # weights (the gradients are the same for every variant).
        result["cuda_peak_above_weights_bytes"] = peak - result["cuda_allocated_before_bytes"]
    del video, loss
    return result


# --------------------------------------------------------------------------------------------
# Report


def check(key: str, value: float) -> tuple[str, bool]:
    comparison, threshold, _ = TARGETS[key]
    met = value >= threshold if comparison == ">=" else value < threshold
    return f"{comparison} {threshold:g}", met


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MiB"


def build_report(args: argparse.Namespace, **parts: Any) -> dict[str, Any]:
    device: torch.device = parts["device"]
    dtype: torch.dtype = parts["dtype"]
    models: dict[str, VideoCLIP] = parts["models"]
    timing: dict[str, dict[str, Any]] = parts["timing"]
    memory: dict[str, dict[str, Any]] = parts["memory"]
    shape = tower_shape(models["baseline"])
    batch = args.batch

    variants: dict[str, Any] = {}
    base_median = statistics.median(timing["baseline"]["seconds"])
    base_bytes = memory["baseline"]["saved_activation_bytes"]
    base_peak = memory["baseline"].get("cuda_peak_above_weights_bytes")
    for variant in VARIANTS:
        model, times = models[variant.key], timing[variant.key]
        median = statistics.median(times["seconds"])
        base_times = timing["baseline"]["seconds"]
        paired = [b / v for b, v in zip(base_times, times["seconds"], strict=True)]
        cluster_total = sum(times["cluster_seconds"])
        share = cluster_total / sum(times["seconds"])
        entry: dict[str, Any] = {
            "preset": variant.preset,
            "label": variant.label,
            "model_id": model.model_id,
            "settings": model.config.tag(),
            "videos_per_s": batch / median,
            "ms_per_video": 1e3 * median / batch,
            "seconds_per_batch_median": median,
            "seconds_per_batch": times["seconds"],
            "speedup": base_median / median,
            # Best-of ratio: least disturbed by other processes on a shared machine.
            "speedup_best": min(base_times) / min(times["seconds"]),
            "speedup_paired_min": min(paired),
            "speedup_paired_max": max(paired),
            "cluster_seconds_per_batch": times["cluster_seconds"],
            "cluster_time_share": share,
            "kmedoids_rounds_per_call": times["rounds_per_call"],
            # Speedup had clustering cost nothing (encode time minus clustering time).
            "speedup_without_clustering": base_median
            / (median - statistics.median(times["cluster_seconds"])),
            **limits(model.config, **shape),
            **memory[variant.key],
        }
        entry["activation_memory_reduction"] = 1.0 - entry["saved_activation_bytes"] / base_bytes
        if base_peak:
            entry["cuda_peak_reduction"] = 1.0 - entry["cuda_peak_above_weights_bytes"] / base_peak
        variants[variant.key] = entry

    km, sp = variants["kmedoids"], variants["spectral"]
    report: dict[str, Any] = {
        "speedup_kmedoids": km["speedup"],
        "speedup_spectral": sp["speedup"],
        "speedup_best_kmedoids": km["speedup_best"],
        "speedup_best_spectral": sp["speedup_best"],
        "speedup_limit_kmedoids": km["speedup_tokens"],
        "speedup_limit_spectral": sp["speedup_tokens"],
        "speedup_limit_flops_kmedoids": km["speedup_flops"],
        "speedup_limit_flops_spectral": sp["speedup_flops"],
        "cluster_time_share": km["cluster_time_share"],
        "cluster_time_share_spectral": sp["cluster_time_share"],
        "activation_memory_reduction": km["activation_memory_reduction"],
        "activation_memory_reduction_b6_3": sp["activation_memory_reduction"],
        "activation_memory_reduction_limit": km["memory_reduction_tokens"],
        "activation_memory_reduction_limit_b6_3": sp["memory_reduction_tokens"],
        "throughput_videos_per_s": {key: v["videos_per_s"] for key, v in variants.items()},
        "saved_activation_bytes": {key: v["saved_activation_bytes"] for key, v in variants.items()},
    }
    if device.type == "cuda":
        report["cuda_peak_allocated_bytes"] = {
            key: v["cuda_peak_allocated_bytes"] for key, v in variants.items()
        }
        report["cuda_peak_reduction"] = km.get("cuda_peak_reduction")
        report["cuda_peak_reduction_b6_3"] = sp.get("cuda_peak_reduction")
    report["targets"] = {}
    for key, (_, _, description) in TARGETS.items():
        target, met = check(key, report[key])
        report["targets"][key] = {
            "value": report[key],
            "target": target,
            "met": met,
            "description": description,
        }
    report["all_targets_met"] = all(t["met"] for t in report["targets"].values())
    metadata = _common.run_metadata()
    report.update(
        device=_device_name(device),
        date=metadata["date"],
        machine=metadata["machine"],
        versions=metadata["versions"],
        git_commit=metadata["git_commit"],
        settings={
            "model": "ViT-B/32 (open_clip ViT-B-32-quickgelu), random weights seed 0",
            "batch": batch,
            "memory_batch": args.memory_batch,
            "frames": models["baseline"].config.frames,
            "image_size": models["baseline"].image_size,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "dtype": str(dtype).removeprefix("torch."),
            "autocast": dtype != torch.float32,
            "torch_threads": torch.get_num_threads(),
            "quick": args.quick,
            "input": "synthetic drifting texture, uint8 -> model.preprocess (not timed)",
            "timed": "encode_video under torch.inference_mode, median over repeats",
            "limits_model": (
                "token model (issue's limits): blocks 1..b see T(1+N) tokens per video, b+1..L "
                "see S(1+K); FLOP model adds patch embedding and attention n^2 term; "
                "clustering free in both"
            ),
        },
        variants=variants,
    )
    return report


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({_common.cpu_model()}, {torch.get_num_threads()} threads)"


def print_report(report: dict[str, Any]) -> None:
    variants = report["variants"]
    cuda = "cuda_peak_allocated_bytes" in report
    rows = []
    for variant in VARIANTS:
        v = variants[variant.key]
        is_base = variant.key == "baseline"
        row = [
            variant.label,
            f"{v['videos_per_s']:.2f}",
            f"{v['ms_per_video']:.0f}",
            "1.00x" if is_base else f"{v['speedup']:.2f}x",
            "-" if is_base else f"{v['speedup_best']:.2f}x",
            "-" if is_base else f"{v['speedup_paired_min']:.2f}-{v['speedup_paired_max']:.2f}",
            "-" if is_base else f"{v['speedup_tokens']:.2f}x / {v['speedup_flops']:.2f}x",
            "-" if is_base else f"{100 * v['cluster_time_share']:.1f}%",
            "-" if is_base else f"{v['speedup_without_clustering']:.2f}x",
            mib(v["saved_activation_bytes"]),
            "-" if is_base else f"{100 * v['activation_memory_reduction']:.1f}%",
            "-" if is_base else f"{100 * v['memory_reduction_tokens']:.1f}%",
        ]
        if cuda:
            row.append(mib(v["cuda_peak_allocated_bytes"]))
        rows.append(row)
    headers = [
        "variant",
        "videos/s",
        "ms/video",
        "speedup",
        "best/best",
        "paired range",
        "limit tok/FLOP",
        "cluster share",
        "w/o clustering",
        "saved activations",
        "cut",
        "cut limit",
    ]
    if cuda:
        headers.append("CUDA peak")
    settings = report["settings"]
    _common.print_table(
        rows,
        headers,
        title=(
            f"\nEncoder benchmark on {report['device']}, {settings['dtype']}, batch "
            f"{settings['batch']} x {settings['frames']} frames, {settings['repeats']} repeats "
            f"(memory: batch {settings['memory_batch']}, forward+backward); other processes "
            f"used {_format_cores(report.get('cpu_contention_during_timing'))} cores meanwhile"
        ),
    )
    target_rows = [
        [
            t["description"],
            _format_value(key, t["value"]),
            t["target"],
            "met" if t["met"] else "NOT met",
        ]
        for key, t in report["targets"].items()
    ]
    _common.print_table(target_rows, ["target", "value", "needs", "status"], title="")


def _format_cores(contention: dict[str, Any] | None) -> str:
    others = (contention or {}).get("other_busy_cores")
    return "?" if others is None else f"{others:.2f}"


def _format_value(key: str, value: float) -> str:
    return f"{value:.2f}x" if key.startswith("speedup") else f"{100 * value:.1f}%"


# --------------------------------------------------------------------------------------------


# Other processes' CPU use (in cores) during timing, beyond the cores our threads leave free,
# above which the CPU figures get a warning.
CONTENDED_CORES = 0.25

# (batch, repeats, warmup) when not given; --quick on any device: (1, 2, 1).
DEFAULTS = {"cpu": (4, 7, 1), "cuda": (32, 20, 3)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--batch", type=int, default=None, help="videos per batch (default: CPU 4, CUDA 32)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repeats (default: CPU 7, CUDA 20)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up rounds (default: CPU 1, CUDA 3)"
    )
    parser.add_argument(
        "--memory-batch", type=int, default=None, help="videos in the memory measurement (= batch)"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:0")
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="autocast dtype; auto: bfloat16 on CUDA, float32 on CPU",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's); 1 gives steadier figures on a busy machine",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 1, 2 repeats")
    parser.add_argument(
        "--output", type=Path, help="result JSON (default bench/results/encoder.json)"
    )
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    batch, repeats, warmup = (1, 2, 1) if args.quick else DEFAULTS[torch.device(args.device).type]
    args.batch = batch if args.batch is None else args.batch
    args.repeats = repeats if args.repeats is None else args.repeats
    args.warmup = warmup if args.warmup is None else args.warmup
    if args.memory_batch is None:
        args.memory_batch = args.batch
    if min(args.batch, args.repeats, args.memory_batch) < 1 or args.warmup < 0:
        parser.error("batch, repeats and memory batch must be positive, warmup not negative")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    load_before = _common.load_average()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    log(f"building {', '.join(v.preset for v in VARIANTS)} (random weights) on {device}")
    models = {v.key: centerclip.create_model(v.preset, device=device) for v in VARIANTS}
    for model in models.values():
        model.requires_grad_(False)
    reference = models["baseline"]
    raw = synthetic_videos(
        max(args.batch, args.memory_batch), reference.config.frames, reference.image_size
    )
    frames = reference.preprocess(raw)  # [B, T, 3, H, W] on the device
    log(f"throughput: batch {args.batch}, {args.warmup} warm-up, {args.repeats} repeats, {dtype}")
    with _common.contention_meter() as contention:
        timing = measure_throughput(
            models,
            frames[: args.batch],
            device=device,
            dtype=dtype,
            warmup=args.warmup,
            repeats=args.repeats,
            log=log,
        )
    memory: dict[str, dict[str, Any]] = {}
    memory_frames = frames[: args.memory_batch]
    for key, model in models.items():
        log(f"memory: training forward+backward of {key}, batch {args.memory_batch}")
        model.clip.visual.requires_grad_(True)
        memory[key] = training_memory(model, memory_frames, device=device, dtype=dtype)
        model.requires_grad_(False)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report = build_report(
        args, device=device, dtype=dtype, models=models, timing=timing, memory=memory
    )
    report["settings"]["wall_seconds"] = round(time.perf_counter() - started, 1)
    report["load_average_before"] = load_before
    report["cpu_contention_during_timing"] = contention
    print_report(report)
    others = contention.get("other_busy_cores")
    spare_cores = _common.usable_cores() - torch.get_num_threads()
    if device.type == "cpu" and others is not None and others > spare_cores + CONTENDED_CORES:
        print(
            f"\nwarning: while timing, other processes kept {others:.2f} of "
            f"{_common.usable_cores()} cores busy, so the timings (clustering above all: its many "
            "small parallel kernels stall when a thread is descheduled) are disturbed. Rerun on a "
            "quiet machine, or with --threads 1 for steadier ratios."
        )
    path = _common.write_results("encoder", report, output=args.output)
    print(f"\nwrote {path}")
    return report


if __name__ == "__main__":
    main()
