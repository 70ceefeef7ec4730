"""The NVDEC backend: frames decoded by the GPU's video decoder, through torchcodec's CUDA decoder.

Chosen over PyNvVideoCodec (both install from the registry) because torchcodec hands decoded
frames over as CUDA tensors, so scaling and cropping stay on the GPU, and it seeks by frame index
exactly as the CPU backends do. Neither was measured against the other: no GPU was available.

A file is first demuxed with PyAV (cheap: no decoding) for its frames' timestamps and keyframes,
exactly as :mod:`pipelines.decode.pyav_backend` does, so the same rows fail with the same errors
and the same targets are chosen (each target's ``want`` frame is fetched). torchcodec then
decodes the targets on the GPU, which scales each to the output size (bilinear, antialiased)
and cuts the centre; only the ``[T, S, S, 3]`` uint8 crops are copied back to the host.

Fallback to CPU decoding, with the reason recorded in the row's ``decoder`` column:

- for the whole stage, when torchcodec (or the FFmpeg shared libraries it loads) is missing or
  no CUDA device is visible (:func:`unavailable_reason`, checked when the stage starts);
- for one file, when the GPU decoder fails on a file PyAV could index (a codec or profile NVDEC
  does not support), when its timestamps restart partway, and when it is shown turned or
  mirrored (how torchcodec's versions turn frames is unchecked on a GPU):
  :class:`~pipelines.decode.errors.PyavFallback` makes the decoder process decode it with PyAV.

The decoding runs in the stage's decoder process like every backend, so timeouts and crash
isolation are the CPU decoders'.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from pipelines.decode.errors import PyavFallback, _Failure, _short
from pipelines.decode.frame_index import index_frames
from pipelines.decode.protocol import _ClipResult, _Request
from pipelines.decode.sampling import frames_of_clips, spread_frames
from pipelines.decode.source import _damaged, _open_video, _probe, output_size
from pipelines.display import UPRIGHT

DECODER_NVDEC = "nvdec"


@functools.cache
def unavailable_reason() -> str | None:
    """Why GPU decoding cannot run in this process (``None`` when it can): torchcodec missing or
    unable to load FFmpeg's shared libraries, or no CUDA device visible."""
    try:
        import torchcodec.decoders  # noqa: F401
    except ImportError:
        return "torchcodec is not installed"
    except Exception as err:  # torchcodec raises RuntimeError when FFmpeg's libraries are missing
        return f"torchcodec cannot load FFmpeg: {_short(err)}"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device visible to this process"
    return None


def resolve_decoder(requested: str, cpu_decoder: str) -> tuple[str, str]:
    """``(decoder to run, label for the rows)``: ``requested`` unless it is NVDEC and NVDEC
    cannot run here, in which case ``cpu_decoder``, labelled with the reason."""
    if requested != DECODER_NVDEC:
        return requested, requested
    reason = unavailable_reason()
    if reason is None:
        return requested, requested
    return cpu_decoder, f"{cpu_decoder} ({DECODER_NVDEC} unavailable: {reason})"


def decode_file(path: str, req: _Request, out: np.ndarray) -> tuple[list[_ClipResult], int]:
    """Decode the clips of ``req`` from ``path`` into ``out`` ``[C, T, S, S, 3]`` on the GPU.

    Returns each clip's result and the frames the GPU decoded (the distinct targets).

    Raises:
        _Failure: the file is damaged (as the PyAV backend says it).
        PyavFallback: PyAV reads the file but the GPU decoder cannot decode it.
    """
    container, stream = _open_video(path)
    with container:
        claimed = stream.frames
        try:
            index = index_frames(container, stream)
        except _Failure:
            raise
        except Exception as err:
            raise _damaged(path, claimed, err) from None
        if index.timeline is not None:
            # The GPU decoder numbers the frames by their own timestamps, which repeat.
            raise PyavFallback(f"{DECODER_NVDEC} cannot follow timestamps that restart partway")
    probed = _probe(path)  # its first frame decoded by PyAV: how it is shown, its pixel aspect
    if probed.shown != UPRIGHT:
        # torchcodec turns frames itself since 0.11, by the nearest quarter turn and without
        # mirroring; which of its versions does what is unchecked on a GPU.
        raise PyavFallback(f"{DECODER_NVDEC} is unchecked on turned or mirrored video")
    width, height = probed.width, probed.height
    starts, duration = index.starts_s, index.duration_s
    results, wanted = frames_of_clips(req, starts, duration, index.own_keyframes)
    every = np.concatenate(wanted)
    if not len(every):
        return results, 0
    unique, inverse = np.unique(every, return_inverse=True)
    size = out.shape[2]
    try:
        crops = _decode_on_gpu(path, unique, output_size(width, height, size), size)
    except Exception as err:
        raise PyavFallback(f"{DECODER_NVDEC} failed on this file: {_short(err)}") from None
    spread_frames(crops, inverse, wanted, out)
    return results, len(unique)


def _decode_on_gpu(
    path: str, indices: np.ndarray, scaled: tuple[int, int], size: int
) -> np.ndarray:
    """Frames ``indices`` of ``path``, decoded by NVDEC, scaled to ``scaled`` (width, height) and
    centre-cropped: ``[N, size, size, 3]`` uint8 on the host."""
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(path, device="cuda", seek_mode="exact")
    frames = decoder.get_frames_at(indices.tolist()).data  # [N, 3, H, W] uint8 on the GPU
    return scale_and_crop(frames, scaled, size).cpu().numpy()


def scale_and_crop(frames: Any, scaled: tuple[int, int], size: int) -> Any:
    """``[N, 3, H, W]`` uint8 frames (any device) scaled to ``scaled`` (width, height), bilinear
    and antialiased, then centre-cropped: ``[N, size, size, 3]`` uint8 on the same device."""
    import torch

    width, height = scaled
    resized = torch.nn.functional.interpolate(
        frames.float(), size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )
    top, left = (height - size) // 2, (width - size) // 2
    crop = resized[:, :, top : top + size, left : left + size]
    return crop.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
