"""GPU paths on a real CUDA device: bf16 encoding, clustering on the GPU, a GPU encode actor.

Marked ``gpu`` and skipped where CUDA is missing (the skip names the reason); ``bench/gpu.py``
runs them on a GPU (``pytest -m gpu``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import centerclip
from centerclip.cluster import kmedoids
from pipelines import schema
from pipelines.encode import EncodeStage, ModelSpec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


def frames(batch: int, model: centerclip.VideoCLIP, seed: int = 0) -> np.ndarray:
    """uint8 ``[B, T, S, S, 3]``: a smooth random texture per video, the same in every frame
    but for a little noise (consecutive frames of real video are nearly identical)."""
    generator = torch.Generator().manual_seed(seed)
    t, size = model.config.frames, model.image_size
    coarse = torch.rand(batch, 3, 8, 8, generator=generator)
    texture = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    videos = texture[:, None] + 0.02 * torch.randn(batch, t, 3, size, size, generator=generator)
    return (videos.clamp(0, 1) * 255).to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()


@pytest.mark.parametrize(("preset", "least_cosine"), [("ViT-B-32-meanP", 0.99),
                                                     ("ViT-B-32-center", 0.95)])  # fmt: skip
def test_bf16_cuda_encoding_agrees_with_fp32_cpu(preset: str, least_cosine: float) -> None:
    cpu = centerclip.create_model(preset, device="cpu").eval()
    gpu = centerclip.create_model(preset, device="cuda").eval()
    videos = frames(4, cpu)
    with torch.inference_mode():
        expected = cpu.encode_video(cpu.preprocess(videos))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = gpu.encode_video(gpu.preprocess(videos).cuda())
    cosine = torch.nn.functional.cosine_similarity(expected, got.float().cpu(), dim=-1)
    assert cosine.min() >= least_cosine, cosine


def test_kmedoids_on_cuda_picks_the_same_medoids_as_on_cpu() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = 8 * torch.randn(7, 16, generator=generator)
    tokens = centres.repeat(21, 1) + 0.05 * torch.randn(147, 16, generator=generator)
    batch = torch.stack([tokens, tokens.flip(0)])  # [2, 147, 16]
    assert torch.equal(kmedoids(batch.cuda(), 7).cpu(), kmedoids(batch, 7))


def test_encode_stage_computes_in_bf16_on_its_gpu() -> None:
    stage = EncodeStage(ModelSpec("tiny"))
    assert stage.device.type == "cuda" and stage.autocast_dtype == torch.bfloat16
    videos = frames(3, stage.model)
    count = len(videos)
    out = stage(
        {
            schema.VIDEO_ID: np.array([f"v{i}" for i in range(count)], object),
            schema.FRAMES: videos,
            schema.ERROR: np.array([""] * count, object),
            schema.DURATION_S: np.full(count, 2.0, np.float32),
            schema.FRAME_TIMES_S: np.tile(
                np.linspace(0, 2, videos.shape[1], endpoint=False, dtype=np.float32), (count, 1)
            ),
        }
    )
    vectors = np.stack(out[schema.VECTOR].to_numpy(zero_copy_only=False))
    assert vectors.shape == (count, stage.model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
