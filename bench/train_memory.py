"""Training-step benchmark: memory and time of one full fine-tuning step, meanP vs CenterCLIP.

One run, one process, ViT-B/32 with random weights (seed 0, identical in both models), 12 frames
per video, the same batch of synthetic videos (a drifting texture, as in ``bench.encoder``) and
captions for both:

- ``baseline``: CLIP4Clip meanP (``ViT-B-32-meanP``, no clustering);
- ``kmedoids``: CenterCLIP k-medoids++ B6-4,49 (``ViT-B-32-center``).

A step is what ``pipelines/finetune/worker.py`` runs: both towers forward, symmetric InfoNCE,
backward, gradient clipping, AdamW (``centerclip.train.training_step``). Measured per variant:

1. memory: the bytes autograd saves for backward during the step, each storage once (the
   ``saved_tensors_hooks`` accounting of ``bench.encoder``: parameters and autocast's copies of
   them left out), split by where they were saved (vision tower, text tower, loss); the training
   state (weights, gradients, AdamW's two moments), the same for both; their sum is the step's
   memory at its peak, when backward starts. On CUDA also the allocator's peak over the step.
2. time: the step's wall time, the two variants interleaved over several repeats after a warm-up.

Limits beside each figure (clustering free): the vision tower's saved activations shrink at most
by the token model's ``1 - (b T (1+N) + (L-b) S (1+K)) / (L T (1+N))`` (1/3 for B6-4,49 at 12
frames); the whole step's memory at most by that cut of the measured vision share; the step's
time at most by the FLOP ratio (training FLOPs being three times the forward's in both towers)
when compute bounds it. On a CPU the step also spends kernel time faulting in freshly allocated
activation memory, which shrinks with the activations rather than the FLOPs, so the measured
speedup can pass the FLOP ratio there; the kernel seconds are reported beside it.

Run ``python -m bench.train_memory`` (``--quick`` for a smoke run). Writes
``bench/results/train_memory.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python bench/train_memory.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import centerclip
from bench import _common
from bench.encoder import _is_weight_cast, limits, synchronize, synthetic_videos, tower_shape
from centerclip import VideoCLIP
from centerclip.loss import symmetric_infonce
from centerclip.train import TrainConfig, autocast_dtype, build_optimizer, training_step

VARIANTS = {"baseline": "ViT-B-32-meanP", "kmedoids": "ViT-B-32-center"}
LABELS = {"baseline": "meanP baseline", "kmedoids": "k-medoids++ B6-4,49"}
PHASES = ("vision", "text", "loss")

TARGETS = {
    # key: (threshold, description); all are ">=".
    "step_memory_reduction": (0.28, "whole-step memory cut (activations, both towers + loss)"),
    "vision_share_of_limit": (0.90, "vision tower's activation cut, share of its limit"),
}

# (batch, repeats, warmup) when not given; --quick: (2, 1, 0) (InfoNCE needs two pairs).
DEFAULTS = {"cpu": (4, 2, 1), "cuda": (64, 10, 2)}


def captions(batch: int) -> list[str]:
    """Distinct captions of about MSR-VTT's length (the text tower runs its full context)."""
    return [f"video {i}: a textured surface drifting slowly across the frame" for i in range(batch)]


def text_gflops(model: VideoCLIP) -> float:
    """Forward GFLOPs of the text tower per caption: every block sees the whole context."""
    clip = model.clip
    blocks = len(clip.transformer.resblocks)
    width, n = clip.transformer.width, model.context_length
    return blocks * (24.0 * n * width**2 + 4.0 * n**2 * width) / 1e9


# --------------------------------------------------------------------------------------------
# Memory


def state_bytes(model: VideoCLIP) -> int:
    """Weights, their gradients and AdamW's two moments, all float32: 4 x the weights."""
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters())


@contextlib.contextmanager
def saved_bytes_by_phase(model: VideoCLIP) -> Iterator[tuple[dict[str, int], dict[str, str]]]:
    """Count the bytes autograd saves while the block runs, per phase.

    Yields ``(bytes by phase, current)``: the caller sets ``current["phase"]`` before each part
    of the forward. Each storage counts once, for the phase that saved it first; parameters and
    autocast's low-precision copies of them are weights, not activations, and are left out.
    """
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    totals = dict.fromkeys(PHASES, 0)
    current = {"phase": PHASES[0]}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer == 0 or pointer in parameter_storages or pointer in seen:
            return tensor
        if _is_weight_cast(tensor):
            return tensor
        seen.add(pointer)  # the hook keeps the tensor alive until backward: no reuse meanwhile
        totals[current["phase"]] += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield totals, current


def measure_memory(
    model: VideoCLIP,
    optimizer: torch.optim.Optimizer,
    frames: torch.Tensor,
    tokens: torch.Tensor,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
) -> dict[str, Any]:
    """One full training step, the towers run one after the other so that the saved bytes can be
    told apart (the same operations ``training_step`` runs)."""
    result: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        result["cuda_allocated_before_bytes"] = torch.cuda.memory_allocated(device)
    with saved_bytes_by_phase(model) as (totals, current):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            current["phase"] = "vision"
            video = model.encode_video(frames)
            current["phase"] = "text"
            text = model.encode_text(tokens)
            current["phase"] = "loss"
            loss = symmetric_infonce(video, text, model.logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    synchronize(device)
    result["saved_bytes"] = dict(totals)
    result["saved_activation_bytes"] = sum(totals.values())
    result["state_bytes"] = state_bytes(model)
    result["step_memory_bytes"] = result["state_bytes"] + result["saved_activation_bytes"]
    if device.type == "cuda":
        result["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


# --------------------------------------------------------------------------------------------
# Time


def timed_step(
    model: VideoCLIP,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    frames: torch.Tensor,
    tokens: torch.Tensor,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
) -> tuple[float, float]:
    """``(wall seconds, kernel seconds)`` of one ``training_step``. The kernel's share is mostly
    page faults on freshly allocated activation memory: on a CPU it grows with the activations,
    not with the FLOPs, which lets a smaller model state beat the FLOP ratio there."""
    synchronize(device)
    began, kernel = time.perf_counter(), os.times().system
    training_step(
        model,
        frames,
        tokens,
        torch.ones(frames.shape[0], dtype=torch.bool, device=device),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        dtype=dtype,
        grad_clip=1.0,
        max_logit_scale=100.0,
    )
    synchronize(device)
    return time.perf_counter() - began, os.times().system - kernel


# --------------------------------------------------------------------------------------------
# Report


def build_report(
    args: argparse.Namespace,
    models: dict[str, VideoCLIP],
    memory: dict[str, dict[str, Any]],
    seconds: dict[str, list[float]],
    kernel_seconds: dict[str, list[float]],
    *,
    device: torch.device,
    dtype: torch.dtype | None,
) -> dict[str, Any]:
    base_model, center = models["baseline"], models["kmedoids"]
    vision = limits(center.config, **tower_shape(center))
    text = text_gflops(center)
    base, km = memory["baseline"], memory["kmedoids"]
    base_vision = base["saved_bytes"]["vision"]

    vision_cut = 1.0 - km["saved_bytes"]["vision"] / base_vision
    vision_limit = vision["memory_reduction_tokens"]
    activation_cut = 1.0 - km["saved_activation_bytes"] / base["saved_activation_bytes"]
    activation_limit = vision_limit * base_vision / base["saved_activation_bytes"]
    total_cut = 1.0 - km["step_memory_bytes"] / base["step_memory_bytes"]
    total_limit = vision_limit * base_vision / base["step_memory_bytes"]
    # Training FLOPs are 3x the forward's in both towers, so the ratio is the forward's.
    speedup_limit = (vision["baseline_gflops_per_video"] + text) / (
        vision["gflops_per_video"] + text
    )
    median = {key: statistics.median(values) for key, values in seconds.items()}
    speedup = median["baseline"] / median["kmedoids"]

    # Activations grow linearly with the batch and the state does not: the whole-step cut at the
    # paper's batch of 128, from this run's per-video figures.
    per_video = {k: m["saved_activation_bytes"] / args.batch for k, m in memory.items()}
    at_128 = {k: base["state_bytes"] + 128 * per_video[k] for k in memory}

    report: dict[str, Any] = {
        "step_memory_reduction": activation_cut,
        "step_memory_reduction_limit": activation_limit,
        "vision_memory_reduction": vision_cut,
        "vision_memory_reduction_limit": vision_limit,
        "vision_share_of_limit": vision_cut / vision_limit,
        "step_memory_with_state_reduction": total_cut,
        "step_memory_with_state_reduction_limit": total_limit,
        "step_memory_with_state_reduction_at_batch_128": 1.0
        - at_128["kmedoids"] / at_128["baseline"],
        "step_speedup": speedup,
        "step_speedup_limit_flops": speedup_limit,
        "step_seconds_median": median,
        "step_kernel_seconds_median": {k: statistics.median(v) for k, v in kernel_seconds.items()},
        "targets": {},
    }
    if device.type == "cuda":
        peaks = {k: m["cuda_peak_allocated_bytes"] for k, m in memory.items()}
        report["cuda_peak_allocated_bytes"] = peaks
        report["cuda_peak_reduction"] = 1.0 - peaks["kmedoids"] / peaks["baseline"]
    for key, (threshold, description) in TARGETS.items():
        report["targets"][key] = {
            "value": report[key],
            "target": f">= {threshold:g}",
            "met": report[key] >= threshold,
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
            "batch": args.batch,
            "frames": base_model.config.frames,
            "image_size": base_model.image_size,
            "context_length": base_model.context_length,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "dtype": "float32" if dtype is None else str(dtype).removeprefix("torch."),
            "torch_threads": torch.get_num_threads(),
            "step": "encode_video + encode_text, symmetric InfoNCE, backward, clip, AdamW",
            "memory": "saved-for-backward bytes per phase (saved_tensors_hooks, storages once, "
            "weights excluded) + state (weights, grads, AdamW moments: 4 x weights)",
            "limits": "token model for the vision tower's activations; FLOP model (both towers, "
            "x3 for training) for time; clustering free",
            "quick": args.quick,
        },
        variants={
            key: {
                "preset": VARIANTS[key],
                "label": LABELS[key],
                "model_id": models[key].model_id,
                "step_seconds": seconds[key],
                "step_kernel_seconds": kernel_seconds[key],
                "saved_bytes_per_video": per_video[key],
                **memory[key],
            }
            for key in VARIANTS
        },
    )
    return report


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({_common.cpu_model()}, {torch.get_num_threads()} threads)"


def gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def print_report(report: dict[str, Any]) -> None:
    v = report["variants"]
    base, km = v["baseline"], v["kmedoids"]
    pct = "{:.1f}%".format

    def row(label: str, before: int, after: int, cut: float | None, limit: float) -> list[str]:
        measured = pct(100 * (1 - after / before)) if cut is None else pct(100 * cut)
        return [label, gib(before), gib(after), measured, pct(100 * limit)]

    phases = base["saved_bytes"], km["saved_bytes"]
    rows = [
        row(
            "vision tower activations",
            phases[0]["vision"],
            phases[1]["vision"],
            report["vision_memory_reduction"],
            report["vision_memory_reduction_limit"],
        ),
        row("text tower activations", phases[0]["text"], phases[1]["text"], None, 0.0),
        row("loss activations", phases[0]["loss"], phases[1]["loss"], None, 0.0),
        row(
            "whole step: activations",
            base["saved_activation_bytes"],
            km["saved_activation_bytes"],
            report["step_memory_reduction"],
            report["step_memory_reduction_limit"],
        ),
        row("weights + grads + AdamW", base["state_bytes"], km["state_bytes"], None, 0.0),
        row(
            "whole step: activations + state",
            base["step_memory_bytes"],
            km["step_memory_bytes"],
            report["step_memory_with_state_reduction"],
            report["step_memory_with_state_reduction_limit"],
        ),
    ]
    if "cuda_peak_allocated_bytes" in report:
        peaks = report["cuda_peak_allocated_bytes"]
        rows.append(
            [
                "CUDA peak allocated",
                gib(peaks["baseline"]),
                gib(peaks["kmedoids"]),
                pct(100 * report["cuda_peak_reduction"]),
                "-",
            ]
        )
    settings = report["settings"]
    _common.print_table(
        rows,
        ["memory", "meanP", "B6-4,49", "cut", "cut limit"],
        title=(
            f"\nTraining step on {report['device']}, {settings['dtype']}, "
            f"batch {settings['batch']} x {settings['frames']} frames, ViT-B/32"
        ),
    )
    median, kernel = report["step_seconds_median"], report["step_kernel_seconds_median"]
    _common.print_table(
        [
            [
                "meanP baseline",
                f"{median['baseline']:.2f}",
                f"{kernel['baseline']:.2f}",
                "1.00x",
                "-",
            ],
            [
                "k-medoids++ B6-4,49",
                f"{median['kmedoids']:.2f}",
                f"{kernel['kmedoids']:.2f}",
                f"{report['step_speedup']:.2f}x",
                f"{report['step_speedup_limit_flops']:.2f}x",
            ],
        ],
        ["step time", "seconds (median)", "of which kernel", "speedup", "FLOP ratio"],
        title="",
    )
    print(
        "whole-step memory cut incl. state at the paper's batch 128 (activations scaled "
        f"linearly): {pct(100 * report['step_memory_with_state_reduction_at_batch_128'])}"
    )
    _common.print_table(
        [
            [t["description"], pct(100 * t["value"]), t["target"], "met" if t["met"] else "NOT met"]
            for t in report["targets"].values()
        ],
        ["target", "value", "needs", "status"],
        title="",
    )


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, help="videos per step (default: CPU 4, CUDA 64)")
    parser.add_argument("--repeats", type=int, help="timed steps per variant (CPU 2, CUDA 10)")
    parser.add_argument("--warmup", type=int, help="untimed steps per variant (CPU 1, CUDA 2)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:0")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="autocast, as the fine-tuning job's: auto is bf16 on CUDA, fp32 on CPU",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 2, one step")
    parser.add_argument("--output", type=Path, help="default bench/results/train_memory.json")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    batch, repeats, warmup = (2, 1, 0) if args.quick else DEFAULTS[torch.device(args.device).type]
    args.batch = batch if args.batch is None else args.batch
    args.repeats = repeats if args.repeats is None else args.repeats
    args.warmup = warmup if args.warmup is None else args.warmup
    if args.batch < 2 or args.repeats < 1 or args.warmup < 0:
        parser.error("batch must be at least 2, repeats positive, warmup not negative")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = autocast_dtype(args.precision, device)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    log(f"building {', '.join(VARIANTS.values())} (random weights) on {device}")
    models = {
        key: centerclip.create_model(preset, device=device).train()
        for key, preset in VARIANTS.items()
    }
    reference = models["baseline"]
    raw = synthetic_videos(args.batch, reference.config.frames, reference.image_size)
    frames = reference.preprocess(raw)  # [B, T, 3, H, W]
    tokens = reference.tokenize(captions(args.batch)).to(device)  # [B, L]
    # Fine-tuning CLIP: every weight counts as pretrained (the rates do not change the cost).
    train = TrainConfig(batch_size=max(2, args.batch))
    optimizers = {
        key: build_optimizer(
            model, train, total_steps=1000, pretrained={n for n, _ in model.named_parameters()}
        )
        for key, model in models.items()
    }

    memory: dict[str, dict[str, Any]] = {}
    for key, model in models.items():
        log(f"memory: one training step of {key}, batch {args.batch}")
        memory[key] = measure_memory(
            model, optimizers[key][0], frames, tokens, device=device, dtype=dtype
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()

    seconds: dict[str, list[float]] = {key: [] for key in models}
    kernel_seconds: dict[str, list[float]] = {key: [] for key in models}
    keys = list(models)
    for round_ in range(args.warmup + args.repeats):
        # Interleaved, the order rotating, so machine noise hits both variants alike.
        for key in keys[round_ % 2 :] + keys[: round_ % 2]:
            optimizer, scheduler = optimizers[key]
            elapsed, kernel = timed_step(
                models[key], optimizer, scheduler, frames, tokens, device=device, dtype=dtype
            )
            if round_ >= args.warmup:
                seconds[key].append(elapsed)
                kernel_seconds[key].append(kernel)
            log(
                f"  {'warm-up' if round_ < args.warmup else 'step'} {key:9s} {elapsed:7.2f} s "
                f"({kernel:.2f} s in the kernel)"
            )

    report = build_report(args, models, memory, seconds, kernel_seconds, device=device, dtype=dtype)
    report["settings"]["wall_seconds"] = round(time.perf_counter() - started, 1)
    print_report(report)
    path = _common.write_results("train_memory", report, output=args.output)
    print(f"\nwrote {path}")
    return report


if __name__ == "__main__":
    main()
