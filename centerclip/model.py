"""The CenterCLIP video encoder, built by patching an open_clip CLIP in place.

``CenterVisionTransformer`` replaces the class of an open_clip ``VisionTransformer`` instance
(written against open_clip_torch 3.3.0's ``VisionTransformer``). Its modules and parameters are the
upstream ones, untouched, so any open_clip state dict loads unchanged. What it changes: a new
``forward_video`` runs blocks ``1..b`` per frame, reduces each segment's tokens with
:func:`segment_tokens`, runs the remaining blocks per segment and pools per segment. The image
``forward`` is upstream's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from centerclip.cluster import kmedoids, spectral
from centerclip.config import CenterCLIPConfig


def segment_tokens(x: Tensor, config: CenterCLIPConfig) -> Tensor:
    """Turn per-frame token sequences into per-segment clustered sequences.

    The T frames are cut into S contiguous segments; the patch tokens of each segment
    (``T/S * N``) are clustered and only the K medoid tokens kept, in their original order; the
    segment's CLS token is the mean of its frames' CLS tokens.

    Args:
        x: tokens after block b, ``[B, T, 1 + N, C]`` (CLS first).
        config: the settings (``segments``, ``centers``, ``method``, ``distance``...).
    Returns:
        ``[B, S, 1 + K, C]``.
    """
    batch, frames, _, width = x.shape
    segments, centers = config.segments, config.centers
    grouped = x.reshape(batch * segments, frames // segments, x.shape[2], width)
    cls = grouped[:, :, 0].mean(dim=1, keepdim=True)  # [B*S, 1, C]
    patches = grouped[:, :, 1:].reshape(batch * segments, -1, width)  # [B*S, T/S*N, C]
    if config.method == "spectral":
        keep = spectral(
            patches,
            centers,
            affinity=config.affinity,
            sigma=config.sigma,
            neighbors=config.neighbors,
            max_iters=config.max_iters,
        )
    else:
        keep = kmedoids(patches, centers, distance=config.distance, max_iters=config.max_iters)
    kept = patches.gather(1, keep[:, :, None].expand(-1, -1, width))  # [B*S, K, C]
    return torch.cat([cls, kept], dim=1).reshape(batch, segments, 1 + centers, width)


def pooled_text_positions(
    tokens: Tensor, pool_type: str, eos_token_id: int | None = None
) -> Tensor | None:
    """Where open_clip's text tower reads each text's embedding (``text_global_pool``).

    Args:
        tokens: token ids ``[B, L]``.
        pool_type: the tower's ``text_pool_type``; ``"argmax"`` (CLIP: the end-of-text token has
            the largest id) and ``"eos"`` (the first ``eos_token_id``) read one position per row.
        eos_token_id: the end-of-text id, for ``"eos"``.
    Returns:
        positions ``[B]`` (int64), or None when the pooling reads no single position per row.
    """
    if pool_type == "argmax":
        return tokens.argmax(dim=-1)
    if pool_type == "eos" and eos_token_id is not None:
        return (tokens == eos_token_id).int().argmax(dim=-1)
    return None


def encode_text_prefix(clip: nn.Module, tokens: Tensor, *, normalize: bool = True) -> Tensor:
    """open_clip ``CLIP.encode_text`` computed over only the positions that can reach the result.

    CLIP's text transformer is causal and each text's embedding is read at one token (the
    end-of-text), so positions after the batch's last such token change nothing: the tower runs
    on the first ``max(position) + 1`` tokens, with the positional embedding and the causal
    mask cut to that length. The result equals the full ``context_length`` computation (up to
    float rounding); a 5-word query runs about 8 of CLIP's 77 positions. Towers this does not
    hold for (no causal mask, pooling other than one position per row) run in full.

    Args:
        clip: an open_clip ``CLIP`` (its text tower is the model's own attributes).
        tokens: token ids ``[B, L]``, L = ``clip.context_length``.
        normalize: L2-normalise the embeddings.
    Returns:
        text embeddings ``[B, D]``.
    """
    positions = pooled_text_positions(
        tokens, clip.text_pool_type, getattr(clip, "text_eos_id", None)
    )
    if positions is None or clip.attn_mask is None or tokens.shape[0] == 0:
        return clip.encode_text(tokens, normalize=normalize)
    length = int(positions.max()) + 1
    cast_dtype = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens[:, :length]).to(cast_dtype)  # [B, length, width]
    x = x + clip.positional_embedding[:length].to(cast_dtype)
    x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
    x = clip.ln_final(x)  # [B, length, width]
    x = x[torch.arange(x.shape[0], device=x.device), positions]  # [B, width]
    if clip.text_projection is not None:
        if isinstance(clip.text_projection, nn.Linear):
            x = clip.text_projection(x)
        else:
            x = x @ clip.text_projection
    return F.normalize(x, dim=-1) if normalize else x  # [B, D]


class CenterVisionTransformer(VisionTransformer):
    """open_clip's ``VisionTransformer`` with a video forward; see the module docstring.

    Instances are made by :func:`patch_vision_transformer`, never constructed directly.
    """

    center: CenterCLIPConfig

    def _run_blocks(self, x: Tensor, blocks: nn.ModuleList | list[nn.Module]) -> Tensor:
        batch_first = self.transformer.batch_first
        if not batch_first:
            x = x.transpose(0, 1)
        for block in blocks:
            if self.transformer.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x if batch_first else x.transpose(0, 1)

    def forward_video(self, frames: Tensor) -> Tensor:
        """Segment embeddings of a batch of videos.

        Args:
            frames: normalised frames ``[B, T, 3, H, W]``.
        Returns:
            un-normalised segment embeddings ``[B, S, D]`` (S = T for ``method="none"``).
        """
        config = self.center
        batch, frames_per_video = frames.shape[:2]
        if frames_per_video != config.frames:
            raise ValueError(f"expected {config.frames} frames per video, got {frames_per_video}")
        x = self._embeds(frames.flatten(0, 1))  # [B*T, 1+N, C]
        blocks = list(self.transformer.resblocks)
        if config.clustered:
            x = self._run_blocks(x, blocks[: config.cluster_block])
            x = x.reshape(batch, frames_per_video, *x.shape[1:])  # [B, T, 1+N, C]
            x = segment_tokens(x, config).flatten(0, 1)  # [B*S, 1+K, C]
            x = self._run_blocks(x, blocks[config.cluster_block :])
        else:
            x = self._run_blocks(x, blocks)
        pooled, _ = self._pool(x)  # [B*S, width]
        if self.proj is not None:
            pooled = pooled @ self.proj
        return pooled.reshape(batch, -1, pooled.shape[-1])


def patch_vision_transformer(visual: VisionTransformer, config: CenterCLIPConfig) -> None:
    """Make ``visual`` a :class:`CenterVisionTransformer` in place and attach ``config``."""
    if not isinstance(visual, VisionTransformer):
        raise TypeError(f"expected an open_clip VisionTransformer, got {type(visual).__name__}")
    if visual.attn_pool is not None:
        raise ValueError("attentional pooling towers (CoCa) are not supported")
    grid = visual.grid_size
    config.check_against(
        blocks=len(visual.transformer.resblocks), tokens_per_frame=grid[0] * grid[1]
    )
    visual.__class__ = CenterVisionTransformer
    visual.center = config


class VideoCLIP(nn.Module):
    """A CLIP whose image tower encodes videos the CenterCLIP way.

    Made by :func:`centerclip.create_model`. ``clip`` is the open_clip model (its ``visual``
    patched), so ``clip.state_dict()`` is an ordinary open_clip state dict.
    """

    def __init__(
        self,
        clip: nn.Module,
        *,
        config: CenterCLIPConfig,
        tokenizer: Any,
        model_id: str,
        preset: Any,
    ) -> None:
        super().__init__()
        patch_vision_transformer(clip.visual, config)
        self.clip = clip
        self.config = config
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.preset = preset
        mean = getattr(clip.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(clip.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 1, 3, 1, 1), persistent=False)

    @property
    def image_size(self) -> int:
        return int(self.clip.visual.image_size[0])

    @property
    def embed_dim(self) -> int:
        return int(self.clip.visual.output_dim)

    @property
    def num_segments(self) -> int:
        return self.config.output_segments

    @property
    def context_length(self) -> int:
        return int(self.clip.context_length)

    @property
    def logit_scale(self) -> Tensor:
        """Log of CLIP's learned similarity scale (a scalar parameter)."""
        return self.clip.logit_scale

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, frames: Tensor | np.ndarray) -> Tensor:
        """uint8 RGB frames ``[B, T, H, W, 3]`` -> normalised float ``[B, T, 3, S, S]`` on the
        model's device (S = ``image_size``). Frames of another size are resized (shorter side)
        and centre-cropped on the device."""
        frames = torch.as_tensor(frames).to(self.device, non_blocking=True)
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [B, T, H, W, 3], got {tuple(frames.shape)}")
        batch, count, height, width, _ = frames.shape
        x = frames.permute(0, 1, 4, 2, 3).float().div_(255.0)  # [B, T, 3, H, W]
        size = self.image_size
        if (height, width) != (size, size):
            scale = size / min(height, width)
            resized = (max(size, round(height * scale)), max(size, round(width * scale)))
            x = F.interpolate(x.flatten(0, 1), size=resized, mode="bilinear", antialias=True)
            top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
            x = x[:, :, top : top + size, left : left + size].reshape(batch, count, 3, size, size)
        return (x - self.pixel_mean) / self.pixel_std

    def encode_video(
        self, frames: Tensor, *, normalize: bool = True, return_segments: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Video embeddings (meanP over segment embeddings).

        Args:
            frames: normalised frames ``[B, T, 3, H, W]`` (see :meth:`preprocess`).
            normalize: L2-normalise the outputs.
            return_segments: also return the segment embeddings.
        Returns:
            ``[B, D]``, or ``([B, D], [B, S, D])`` with ``return_segments``. The video embedding
            is the mean of the L2-normalised segment embeddings (normalised again if asked).
        """
        segments = F.normalize(self.clip.visual.forward_video(frames), dim=-1)  # [B, S, D]
        video = segments.mean(dim=1)
        if normalize:
            video = F.normalize(video, dim=-1)
        return (video, segments) if return_segments else video

    def encode_text(self, tokens: Tensor, *, normalize: bool = True) -> Tensor:
        """Text embeddings ``[B, D]`` of token ids ``[B, L]`` (see :meth:`tokenize`), computed
        over the positions up to the batch's last end-of-text token (:func:`encode_text_prefix`).
        """
        return encode_text_prefix(self.clip, tokens.to(self.device), normalize=normalize)

    def tokenize(self, texts: str | list[str]) -> Tensor:
        """Token ids ``[B, L]`` for CLIP's text tower (L = the model's context length)."""
        return self.tokenizer([texts] if isinstance(texts, str) else list(texts))

    def forward(self, frames: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Unit video ``[B, D]`` and text ``[B, D]`` embeddings, for training."""
        return self.encode_video(frames), self.encode_text(tokens)
