"""Symmetric InfoNCE (CLIP's contrastive loss) over the global batch of all training workers.

Gradient scale under data parallelism. :func:`distributed_infonce` gathers every worker's
embeddings, so each of the ``W`` workers computes the same global loss ``L`` over ``N`` pairs. The
gather's backward sums, over workers, the gradient each worker's copy of ``L`` sends to a slice, so
a worker's local embeddings receive ``W * dL/dx_local``. DDP then averages parameter gradients over
the ``W`` workers, which divides by ``W`` again: the averaged gradient is ``sum_w J_w^T dL/dx_w``,
exactly the gradient of ``L`` taken in one process over the whole batch. The learned temperature
gets ``dL/dlogit_scale`` on every worker (it is not gathered) and DDP's average leaves it unchanged.
So the learning rate means the same thing for any number of workers, and no rescaling is needed.
A hand-written gradient synchronisation must likewise average over workers, not sum.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def symmetric_infonce(video: Tensor, text: Tensor, logit_scale: Tensor) -> Tensor:
    """CLIP's symmetric contrastive loss: pair ``i`` of ``video`` matches pair ``i`` of ``text``.

    Args:
        video: ``[B, D]`` L2-normalised video embeddings.
        text: ``[B, D]`` L2-normalised text embeddings.
        logit_scale: scalar tensor holding the *log* of the temperature's inverse, as CLIP and
            open_clip store it (``log(1/0.07)`` at initialisation); the logits are
            ``logit_scale.exp() * video @ text.T``. Clamp it in the training loop if wanted.

    Returns:
        ``[]``: the mean of the video-to-text cross-entropy (over rows of the ``[B, B]`` logits)
        and the text-to-video one (over columns), the diagonal being the targets.
    """
    if video.ndim != 2 or video.shape != text.shape:
        raise ValueError(
            f"video and text must both be [B, D], got {tuple(video.shape)} and {tuple(text.shape)}"
        )
    if logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")
    logits = logit_scale.exp().reshape(()) * (video @ text.T)  # [B, B]
    # Cross-entropy in float32 even under fp16 autocast: log-softmax over B logits up to 100.
    logits = logits.float()
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def _world_size(group: dist.ProcessGroup | None) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group=group)


class _GatherRows(torch.autograd.Function):
    """Concatenate every worker's rows; the backward hands each worker the summed gradient of its
    own rows. Rows are padded to the largest local batch so workers may hold different sizes."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        sizes: list[int],
        group: dist.ProcessGroup | None,
    ) -> Tensor:
        rank = dist.get_rank(group=group)
        ctx.group = group
        ctx.rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=group)
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple:
        # An all-reduce followed by taking our slice is a reduce-scatter that every backend has.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rows], None, None


def gather_with_grad(x: Tensor, *, group: dist.ProcessGroup | None = None) -> Tensor:
    """All-gather ``x [b, D]`` from every worker into ``[sum of b, D]``, in rank order.

    The gradient flows back to the local slice: each worker's ``x`` receives the sum over workers
    of the gradient its rows got (see the module docstring for why that is the right scale under
    DDP). Workers may hold different ``b`` (a short last batch). Returns ``x`` itself when
    ``torch.distributed`` is not initialised or the group has one worker.
    """
    if _world_size(group) == 1:
        return x
    local = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes = [torch.empty_like(local) for _ in range(_world_size(group))]
    dist.all_gather(sizes, local, group=group)
    return _GatherRows.apply(x, [int(s) for s in sizes], group)


def distributed_infonce(
    video: Tensor,
    text: Tensor,
    logit_scale: Tensor,
    *,
    group: dist.ProcessGroup | None = None,
) -> Tensor:
    """:func:`symmetric_infonce` over the global batch gathered from every worker.

    Args:
        video: ``[b, D]`` this worker's L2-normalised video embeddings.
        text: ``[b, D]`` the matching text embeddings, same ``b``.
        logit_scale: scalar log of the inverse temperature, identical on every worker.

    Returns:
        ``[]``: the same global loss on every worker. Under DDP the averaged gradients equal the
        single-process gradients on the global batch (module docstring). Without an initialised
        process group this is :func:`symmetric_infonce`.
    """
    if video.shape[0] != text.shape[0]:
        raise ValueError(f"video and text batch sizes differ: {video.shape[0]} vs {text.shape[0]}")
    return symmetric_infonce(
        gather_with_grad(video, group=group), gather_with_grad(text, group=group), logit_scale
    )
