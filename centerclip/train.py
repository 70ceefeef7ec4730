"""Fine-tuning in plain torch: the hyperparameters, AdamW parameter groups, the warm-up + cosine
schedule, one training step and the validation metrics.

Nothing here knows about Ray: ``pipelines/finetune/worker.py`` runs these pieces inside Ray Train
workers (with ``torch.distributed`` initialised, so the loss spans every worker's batch), and a
single process can use them unchanged (the loss is then over the local batch).

The recipe follows CLIP4Clip / CenterCLIP on MSR-VTT: AdamW (CLIP's betas and epsilon), weight
decay 0.2 on matrices only, a linear warm-up over the first 10% of the steps then a cosine decay to
zero, gradient clipping, CLIP's learned temperature clamped at 100, mixed precision on GPUs.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from centerclip.loss import gather_with_grad, symmetric_infonce
from centerclip.metrics import retrieval_metrics
from centerclip.model import VideoCLIP

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """The hyperparameters of one fine-tuning run: everything that decides the weights it ends
    with, given the data and the base model. Changing any of them changes the run, so a run can
    only be resumed with the same values.

    Learning rates. ``lr`` applies to *new* weights, those that start from the random
    initialisation; ``pretrained_lr`` to weights loaded from a trained model (an open_clip tag, a
    weights file, one of our checkpoints). CenterCLIP adds no parameters to CLIP, so a model is
    either all pretrained (fine-tuning CLIP: the paper's 1e-7, 1e-3 x the new-weight rate) or all
    new (the ``tiny`` preset trained from scratch, which needs a large rate such as 1e-3).
    """

    epochs: int = 5
    batch_size: int = 128  # global batch: the sum over workers, and the loss's negatives
    lr: float = 1e-4
    pretrained_lr: float = 1e-7
    weight_decay: float = 0.2
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0  # max global L2 norm of the gradients; 0 turns clipping off
    max_logit_scale: float = 100.0  # CLIP's clamp of exp(logit_scale)
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    precision: Precision = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    seed: int = 0  # data order, caption choice and frame positions

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(
                f"need epochs >= 1 and batch_size >= 2, got {self.epochs}, {self.batch_size}"
            )
        if min(self.lr, self.pretrained_lr) < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("learning rates, weight decay and grad_clip must not be negative")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.max_logit_scale <= 1.0:
            raise ValueError(f"max_logit_scale must exceed 1, got {self.max_logit_scale}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None``: full float32).

    ``auto`` is bfloat16 on CUDA and float32 elsewhere: on a CPU, bfloat16 matmuls are slower
    than float32 ones on most chips and the memory is not the limit there.
    """
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16


def decays(name: str, parameter: Tensor) -> bool:
    """Whether weight decay applies: to weight matrices (and conv kernels), not to biases, norm
    gains, the temperature or embeddings (token, positional, class) — as in CLIP."""
    return parameter.ndim >= 2 and "embedding" not in name


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    pretrained_lr: float,
    weight_decay: float,
    pretrained: Collection[str],
) -> list[dict]:
    """AdamW parameter groups: {pretrained, new} x {decayed, not decayed}, empty ones left out.

    Args:
        model: the model whose trainable parameters (``requires_grad``) are grouped.
        lr: learning rate of new weights.
        pretrained_lr: learning rate of pretrained weights.
        weight_decay: decay of the weights :func:`decays` selects; the others get 0.
        pretrained: names (as ``model.named_parameters()`` gives them) of the parameters loaded
            from a trained model; every other parameter is new.

    Returns:
        a list of dicts with ``params``, ``lr``, ``weight_decay`` and a ``name`` for logs.
    """
    groups: dict[tuple[bool, bool], list[Tensor]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            key = (name in pretrained, decays(name, parameter))
            groups.setdefault(key, []).append(parameter)
    return [
        {
            "params": params,
            "lr": pretrained_lr if is_pretrained else lr,
            "weight_decay": weight_decay if is_decayed else 0.0,
            "name": f"{'pretrained' if is_pretrained else 'new'}"
            f"{'' if is_decayed else ', no decay'}",
        }
        for (is_pretrained, is_decayed), params in sorted(groups.items(), reverse=True)
    ]


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor for the 0-based ``step`` about to be taken: linear from
    ``1 / warmup_steps`` up to 1 over the warm-up, then half a cosine from 1 down to 0 at
    ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_optimizer(
    model: VideoCLIP, config: TrainConfig, *, total_steps: int, pretrained: Collection[str]
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over :func:`param_groups` and its warm-up + cosine schedule over ``total_steps``."""
    groups = param_groups(
        model,
        lr=config.lr,
        pretrained_lr=config.pretrained_lr,
        weight_decay=config.weight_decay,
        pretrained=pretrained,
    )
    optimizer = torch.optim.AdamW(groups, betas=(config.beta1, config.beta2), eps=config.eps)
    warmup_steps = round(config.warmup_fraction * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine(step, warmup_steps=warmup_steps, total_steps=total_steps),
    )
    return optimizer, scheduler


def global_infonce(video: Tensor, text: Tensor, logit_scale: Tensor, keep: Tensor) -> Tensor:
    """Symmetric InfoNCE over the global batch of every worker, leaving out rows that failed.

    :func:`centerclip.loss.distributed_infonce` with a mask: a video that failed to decode still
    goes through the forward (as zeros, so every worker runs the same shapes) but is dropped, with
    its caption, from the similarity matrix.

    Args:
        video: ``[b, D]`` this worker's unit video embeddings.
        text: ``[b, D]`` the unit embeddings of their captions.
        logit_scale: the scalar log of the inverse temperature.
        keep: ``[N]`` bool over the *global* batch (every worker's rows in rank order, as
            :func:`centerclip.loss.gather_with_grad` concatenates them), False for rows to leave
            out.

    Returns:
        ``[]``: the loss over the kept pairs of all workers, the same on every worker.
    """
    return symmetric_infonce(
        gather_with_grad(video)[keep], gather_with_grad(text)[keep], logit_scale
    )


@dataclass(frozen=True)
class StepResult:
    """What one :func:`training_step` did, for logs."""

    loss: float
    grad_norm: float  # before clipping
    lr: float  # of the first (new or pretrained) group
    logit_scale: float  # exp(logit_scale) after the step
    pairs: int  # caption-video pairs in the global batch (failed videos left out)


def training_step(
    model: nn.Module,
    frames: Tensor,
    tokens: Tensor,
    valid: Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    dtype: torch.dtype | None,
    grad_clip: float,
    max_logit_scale: float,
) -> StepResult:
    """One optimisation step on a local batch: forward both towers, global InfoNCE, backward,
    clip, AdamW, schedule, clamp the temperature.

    Args:
        model: the :class:`VideoCLIP`, or a ``DistributedDataParallel`` wrapping it (the forward
            must go through the wrapper for its gradient averaging).
        frames: ``[b, T, 3, H, W]`` normalised frames (:meth:`VideoCLIP.preprocess`).
        tokens: ``[b, L]`` caption token ids.
        valid: ``[b]`` bool, False for videos that failed to decode.
        scaler: a ``GradScaler``, enabled for float16 only.
        dtype: autocast dtype, ``None`` for float32.

    Raises:
        ValueError: fewer than two videos of the global batch decoded (nothing to contrast).
    """
    video_clip: VideoCLIP = getattr(model, "module", model)
    keep = gather_with_grad(valid)  # [N] bool, the same on every worker
    if int(keep.sum()) < 2:
        raise ValueError(
            f"only {int(keep.sum())} of {keep.numel()} videos of a batch decoded; the corpus "
            "looks broken (see the decode errors logged)"
        )
    with torch.autocast(
        frames.device.type, dtype=dtype or torch.float32, enabled=dtype is not None
    ):
        video, text = model(frames, tokens)  # [b, D] each, unit norm
        loss = global_infonce(video, text, video_clip.logit_scale, keep)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    return apply_gradients(
        video_clip,
        loss=float(loss.detach()),
        pairs=int(keep.sum()),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        grad_clip=grad_clip,
        max_logit_scale=max_logit_scale,
    )


def apply_gradients(
    model: VideoCLIP,
    *,
    loss: float,
    pairs: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    grad_clip: float,
    max_logit_scale: float,
) -> StepResult:
    """The second half of :func:`training_step`, once the (scaled) gradients are in ``.grad``:
    unscale, clip, AdamW, schedule, clamp the temperature. ``loss`` and ``pairs`` are only
    reported."""
    scaler.unscale_(optimizer)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip or math.inf)
    scaler.step(optimizer)
    scaler.update()
    lr = optimizer.param_groups[0]["lr"]
    scheduler.step()
    with torch.no_grad():
        # CLIP's clamp: a temperature below 1/100 makes the loss unstable.
        model.logit_scale.clamp_(0.0, math.log(max_logit_scale))
    return StepResult(
        loss=loss,
        grad_norm=float(grad_norm),
        lr=lr,
        logit_scale=float(model.logit_scale.detach().exp()),
        pairs=pairs,
    )


@torch.no_grad()
def validation_metrics(
    model: VideoCLIP,
    frames: np.ndarray,
    captions: Sequence[Sequence[str]],
    *,
    batch_size: int = 32,
    dtype: torch.dtype | None = None,
) -> dict:
    """Text-to-video and video-to-text retrieval metrics of ``model`` on a captioned set.

    Args:
        frames: ``[V, T, H, W, 3]`` uint8 frames, uniformly sampled.
        captions: per video, its captions; every caption is a query for its video.
        batch_size: videos (and captions) encoded at once.
        dtype: autocast dtype, ``None`` for float32.

    Returns:
        :func:`centerclip.metrics.retrieval_metrics` of the ``[Q, V]`` caption-video cosines.
    """
    was_training = model.training
    model.eval()
    device = model.device
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        videos = torch.cat(
            [
                model.encode_video(model.preprocess(frames[i : i + batch_size])).float()
                for i in range(0, len(frames), batch_size)
            ]
        )  # [V, D]
        queries = [caption for own in captions for caption in own]
        texts = torch.cat(
            [
                model.encode_text(model.tokenize(queries[i : i + batch_size])).float()
                for i in range(0, len(queries), batch_size)
            ]
        )  # [Q, D]
    model.train(was_training)
    owner = [video for video, own in enumerate(captions) for _ in own]
    return retrieval_metrics(texts @ videos.T, owner)
