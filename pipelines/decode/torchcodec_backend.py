"""The torchcodec backend: frames decoded by the GPU's video decoder (NVDEC) through torchcodec's
CUDA decoder (``nvdec``), or by torchcodec on the CPU (``torchcodec``), which runs this same path
on machines without a GPU: how the GPU path is checked where none is at hand.

torchcodec was chosen over PyNvVideoCodec (both install from the registry) because it hands
decoded frames over as CUDA tensors, so scaling and cropping stay on the GPU, and it seeks by
frame index exactly as the CPU backends do. Neither was measured against the other: no GPU was
available.

A file is first demuxed with PyAV (cheap: no decoding) for its frames' timestamps and keyframes,
exactly as :mod:`pipelines.decode.pyav_backend` does, so the same rows fail with the same errors
and the same targets are chosen (each target's ``want`` frame is fetched). torchcodec then
decodes the targets on its device, which scales each to the output size (bilinear, antialiased)
and cuts the centre; only the ``[T, S, S, 3]`` uint8 crops are copied back to the host. The
frames torchcodec returns are checked against the index by their timestamps, and against PyAV's
first frame by their size (torchcodec turns quarter-turned video, as phones record it upright,
itself).

Fallback to PyAV, with the reason recorded in the row's ``decoder`` column:

- for the whole stage, when torchcodec (or the FFmpeg shared libraries it loads) is missing or,
  for ``nvdec``, no CUDA device is visible (:func:`unavailable_reason`, checked when the stage
  starts);
- for one file, when torchcodec fails on a file PyAV could index (a codec or profile NVDEC does
  not support) or returns other frames than those asked for, or of another size; when the file
  is MPEG-TS, MPEG-PS or FLV, which torchcodec does not seek reliably, or its timestamps restart
  partway; when it is shown mirrored (torchcodec does not mirror) or turned half a turn (frames
  left unturned would keep their size, so nothing would notice); when it is HDR, which
  torchcodec does not tone-map; and when it is interlaced, whose fields torchcodec weaves:
  :class:`~pipelines.decode.errors.PyavFallback` makes the decoder process decode it with PyAV.

The decoding runs in the stage's decoder process like every backend, so timeouts and crash
isolation are the CPU decoders'.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from typing import Any

import numpy as np

from pipelines.decode.environment import decoder_environment
from pipelines.decode.errors import PyavFallback, _Failure, _short
from pipelines.decode.frame_index import FrameIndex, index_frames, usual_step
from pipelines.decode.protocol import _ClipResult, _Request
from pipelines.decode.sampling import frames_of_clips, spread_frames
from pipelines.decode.source import _damaged, _open_video, _probe, _Probed, output_size
from pipelines.display import UPRIGHT, is_mirrored

DECODER_NVDEC = "nvdec"
DECODER_TORCHCODEC = "torchcodec"
# torchcodec's device for each decoder this backend runs.
DEVICES = {DECODER_NVDEC: "cuda", DECODER_TORCHCODEC: "cpu"}
# FFmpeg's names for MPEG-TS, MPEG-PS and FLV, which torchcodec seeks to the wrong frames or not
# at all (on the CPU, torchcodec 0.17: frames seconds away, the same frame for several asked for,
# or "no more frames left to decode").
_UNSOUGHT_FORMATS = ("mpegts", "mpeg", "flv")
# Importing torch and torchcodec in a new interpreter: seconds, on a loaded node more.
_CHECK_TIMEOUT_S = 120.0
_ANSWER = "unavailable because: "


@functools.cache
def unavailable_reason(decoder: str) -> str | None:
    """Why ``decoder`` (one of :data:`DEVICES`) cannot run in the decoder process (``None`` when
    it can): torchcodec missing or unable to load FFmpeg's shared libraries, or, for the GPU, no
    CUDA device visible.

    Asked of a new interpreter started as the decoder process is
    (:func:`~pipelines.decode.environment.decoder_environment`): the FFmpeg libraries torchcodec
    loads are found there, not in this process, which started without them on its library path.
    """
    code = f"import {__name__} as b; print(b._ANSWER + b._reason_here({DEVICES[decoder]!r}))"
    try:
        check = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=decoder_environment(),
            stdin=subprocess.DEVNULL,
            timeout=_CHECK_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return f"checking for torchcodec took over {_CHECK_TIMEOUT_S:g} s"
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or [f"exit status {check.returncode}"])[-1]
        return f"checking for torchcodec failed: {_short(RuntimeError(last))}"
    # The answer's own line: the libraries may print lines of their own.
    answers = [line for line in check.stdout.splitlines() if line.startswith(_ANSWER)]
    if not answers:
        return "checking for torchcodec gave no answer"
    return answers[-1][len(_ANSWER) :] or None


def _reason_here(device: str) -> str:
    """:func:`unavailable_reason` in this process ("" where torchcodec can decode on
    ``device``)."""
    try:
        import torchcodec
    except ImportError:
        return "torchcodec is not installed"
    except Exception as err:  # its older versions raise here when FFmpeg's libraries are missing
        return f"torchcodec cannot load FFmpeg: {_short(err)}"
    if torchcodec.ffmpeg_major_version is None:  # newer ones say None
        return "torchcodec cannot load FFmpeg: no FFmpeg 4 to 9 shared libraries found"
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device visible to this process"
    return ""


def resolve_decoder(requested: str, cpu_decoder: str) -> tuple[str, str]:
    """``(decoder to run, label for the rows)``: ``requested`` unless it is one of torchcodec's
    and cannot run here, in which case ``cpu_decoder``, labelled with the reason."""
    if requested not in DEVICES:
        return requested, requested
    reason = unavailable_reason(requested)
    if reason is None:
        return requested, requested
    return cpu_decoder, f"{cpu_decoder} ({requested} unavailable: {reason})"


def decode_file(path: str, req: _Request, out: np.ndarray) -> tuple[list[_ClipResult], int]:
    """Decode the clips of ``req`` from ``path`` into ``out`` ``[C, T, S, S, 3]`` with torchcodec
    on the device of ``req.decoder``.

    Returns each clip's result and the frames torchcodec decoded (the distinct targets).

    Raises:
        _Failure: the file is damaged (as the PyAV backend says it).
        PyavFallback: PyAV reads the file but torchcodec cannot decode it, or not as PyAV does.
    """
    name = req.decoder
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
            # torchcodec numbers the frames by their own timestamps, which repeat.
            raise PyavFallback(f"{name} cannot follow timestamps that restart partway")
        if container.format.name in _UNSOUGHT_FORMATS:
            raise PyavFallback(f"{name} does not seek MPEG-TS, MPEG-PS or FLV reliably")
    probed = _probe(path)  # its first frame decoded by PyAV: how it is shown, its pixel aspect
    if is_mirrored(probed.shown):
        # torchcodec turns frames itself since 0.11 (by the nearest quarter turn), but does not
        # mirror them: on the CPU, 0.17 turns exactly as PyAV does and leaves mirror images as
        # stored.
        raise PyavFallback(f"{name} does not mirror video")
    if probed.shown != UPRIGHT and not probed.shown[0]:
        # A half turn leaves the size as it is, so frames left unturned (a torchcodec or device
        # that does not turn) would go unnoticed; quarter turns are checked by the frames' size.
        raise PyavFallback(f"{name} is unchecked on video turned half a turn")
    if probed.hdr:
        raise PyavFallback(f"{name} does not tone-map HDR")
    if probed.interlaced:
        # PyAV's path scales one field (pipelines.display.one_field); torchcodec returns both
        # woven, whose moving edges show as combs.
        raise PyavFallback(f"{name} weaves the two fields of interlaced video")
    width, height = probed.width, probed.height
    starts, duration = index.starts_s, index.duration_s
    results, wanted = frames_of_clips(req, starts, duration, index.own_keyframes)
    every = np.concatenate(wanted)
    if not len(every):
        return results, 0
    unique, inverse = np.unique(every, return_inverse=True)
    size = out.shape[2]
    try:
        crops, times_s, frame_size = _decode_with_torchcodec(
            path, unique, output_size(width, height, size), size, DEVICES[name]
        )
    except Exception as err:
        raise PyavFallback(f"{name} failed on this file: {_short(err)}") from None
    check_size(name, frame_size, probed)
    check_times(name, index, unique, times_s)
    spread_frames(crops, inverse, wanted, out)
    return results, len(unique)


def check_times(name: str, index: FrameIndex, frames: np.ndarray, times_s: np.ndarray) -> None:
    """Raises PyavFallback unless torchcodec's frames ``times_s`` (its timestamps, in seconds)
    are frames ``frames`` of ``index``, each within a quarter of a frame's usual length."""
    expected = index.pts[frames] * float(index.time_base)
    tolerance = usual_step(index.pts) * float(index.time_base) / 4
    off = np.flatnonzero(np.abs(times_s - expected) > tolerance)
    if len(off):
        at = off[0]
        raise PyavFallback(
            f"{name} returned the frame at {times_s[at]:.3f} s for frame {frames[at]},"
            f" at {expected[at]:.3f} s"
        )


def check_size(name: str, frame_size: tuple[int, int], probed: _Probed) -> None:
    """Raises PyavFallback unless torchcodec's frames, ``frame_size`` (width, height) before
    scaling, are the size PyAV's first frame has once turned as shown: a quarter-turned video
    whose frames came back unturned would otherwise be squeezed into the turned size."""
    width, height = probed.stored_size
    shown = (height, width) if probed.shown[0] else (width, height)
    if width and frame_size != shown:
        raise PyavFallback(
            f"{name} returned frames of {frame_size[0]}x{frame_size[1]},"
            f" not the {shown[0]}x{shown[1]} shown"
        )


def _decode_with_torchcodec(
    path: str, indices: np.ndarray, scaled: tuple[int, int], size: int, device: str
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Frames ``indices`` of ``path``, decoded by torchcodec on ``device``, scaled to ``scaled``
    (width, height) and centre-cropped: ``[N, size, size, 3]`` uint8 on the host, their
    timestamps in seconds ``[N]``, and their (width, height) as torchcodec decoded them."""
    from torchcodec.decoders import VideoDecoder

    # One FFmpeg thread on the CPU, as the other decoders: parallelism comes from many stages.
    threads = {"num_ffmpeg_threads": 1} if device == "cpu" else {}
    decoder = VideoDecoder(path, device=device, seek_mode="exact", **threads)
    batch = decoder.get_frames_at(indices.tolist())  # [N, 3, H, W] uint8 on the device
    crops = scale_and_crop(batch.data, scaled, size).cpu().numpy()
    frame_size = (int(batch.data.shape[3]), int(batch.data.shape[2]))
    return crops, batch.pts_seconds.cpu().numpy().astype(np.float64), frame_size


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
