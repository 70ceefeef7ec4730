"""The GPU decoder (NVDEC through torchcodec) and its fallback to CPU decoding.

Without torchcodec or CUDA (this machine) the stage decodes with PyAV and every row says why; a
file the GPU decoder fails on is decoded by PyAV in the decoder process, and its rows say so.
Either way the rows, frames and errors are PyAV's. ``tests/test_gpu.py`` holds the GPU side.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from pipelines import schema, synthetic
from pipelines.decode import (
    DECODER_NVDEC,
    DECODER_PYAV,
    DECODER_TORCHCODEC,
    DecodeStage,
    error_category,
)
from pipelines.decode.child import _decode_request
from pipelines.decode.environment import decoder_environment, pyav_ffmpeg_folder
from pipelines.decode.errors import PyavFallback, _short
from pipelines.decode.frame_index import index_frames
from pipelines.decode.protocol import _Clip, _Request
from pipelines.decode.source import _probe
from pipelines.decode.torchcodec_backend import (
    check_size,
    check_times,
    scale_and_crop,
    unavailable_reason,
)
from pipelines.manifest import read_manifest
from pipelines.storage import StorageOptions

FRAMES, SIZE = 6, 48
NVDEC_RUNS_HERE = unavailable_reason(DECODER_NVDEC) is None


def batch(uris: list[str]) -> dict[str, np.ndarray]:
    return {
        schema.VIDEO_ID: np.array([f"v{i}" for i in range(len(uris))], dtype=object),
        schema.URI: np.array(uris, dtype=object),
    }


@pytest.fixture(scope="module")
def uris(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Four good videos, then every kind of damaged input."""
    good = read_manifest(sample_corpus / "manifest")[schema.URI].to_pylist()[:4]
    damaged = synthetic.write_damaged_videos(
        tmp_path_factory.mktemp("damaged"), good_video=Path(good[0])
    )
    return good + list(damaged.values())


@pytest.mark.skipif(NVDEC_RUNS_HERE, reason="NVDEC runs here: the stage does not fall back")
def test_without_torchcodec_or_cuda_the_stage_decodes_on_the_cpu_and_says_why(
    uris: list[str],
) -> None:
    reason = unavailable_reason(DECODER_NVDEC)
    assert reason in ("torchcodec is not installed", "no CUDA device visible to this process") or (
        reason.startswith("torchcodec cannot load FFmpeg")
    )
    with DecodeStage(frames=FRAMES, image_size=SIZE, decoder=DECODER_NVDEC) as gpu:
        assert gpu.decoder == DECODER_PYAV
        fell_back = gpu(batch(uris))
    with DecodeStage(frames=FRAMES, image_size=SIZE, decoder=DECODER_PYAV) as cpu:
        expected = cpu(batch(uris))
    label = f"{DECODER_PYAV} ({DECODER_NVDEC} unavailable: {reason})"
    assert list(fell_back[schema.DECODER]) == [label] * len(uris)
    assert list(expected[schema.DECODER]) == [DECODER_PYAV] * len(uris)
    # The same rows as CPU decoding: errors (damaged inputs included) and frames.
    assert list(fell_back[schema.ERROR]) == list(expected[schema.ERROR])
    assert {error_category(e) for e in expected[schema.ERROR][4:]} - {""}
    np.testing.assert_array_equal(fell_back[schema.FRAMES], expected[schema.FRAMES])
    np.testing.assert_array_equal(fell_back[schema.FRAME_TIMES_S], expected[schema.FRAME_TIMES_S])


def test_a_file_the_gpu_decoder_fails_on_is_decoded_on_the_cpu(uris: list[str]) -> None:
    """The decoder process's own fallback, per file. Here the GPU decoder fails because
    torchcodec or CUDA is missing; on a GPU a codec NVDEC lacks takes the same path."""
    if NVDEC_RUNS_HERE:
        pytest.skip("NVDEC runs here: no file to fail on")
    requests = {
        decoder: _Request(
            uri=uris[0], clips=(_Clip(), _Clip(start_s=0.5, end_s=1.5)), frames=FRAMES,
            image_size=SIZE, sampling="uniform", threads=1, storage=StorageOptions(),
            decoder=decoder,
        )
        for decoder in (DECODER_NVDEC, DECODER_PYAV)
    }  # fmt: skip
    outs = {d: np.zeros((2, FRAMES, SIZE, SIZE, 3), np.uint8) for d in requests}
    results = {d: _decode_request(requests[d], outs[d]) for d in requests}
    fallback, cpu = results[DECODER_NVDEC], results[DECODER_PYAV]
    assert fallback.decoder.startswith(f"{DECODER_PYAV} ({DECODER_NVDEC} failed on this file: ")
    assert cpu.decoder == ""
    assert [c.error for c in fallback.clips] == [c.error for c in cpu.clips] == ["", ""]
    np.testing.assert_array_equal(outs[DECODER_NVDEC], outs[DECODER_PYAV])
    assert fallback.frames_decoded == cpu.frames_decoded


@pytest.mark.parametrize(
    ("rotation", "mirrored", "reason"),
    [(90, True, "does not mirror video"), (180, False, "is unchecked on video turned half a turn")],
)
def test_mirrored_or_half_turned_video_is_decoded_on_the_cpu(
    tmp_path: Path, rotation: int, mirrored: bool, reason: str
) -> None:
    """Mirrored video (some front cameras) and video turned half a turn are handed to PyAV before
    torchcodec is asked: torchcodec does not mirror, and frames it left unturned half a turn
    would keep their size, which is what the turn of quarter-turned video is checked by. The
    row's frames are PyAV's, as players show them, and its ``decoder`` says why."""
    uri = tmp_path / "turned.mp4"
    video = np.zeros((8, 48, 64, 3), np.uint8)
    video[:, :24, :32] = 255  # not symmetric: frames turned another way would differ
    synthetic.write_mp4(uri, video, rotation=rotation, mirrored=mirrored)
    results, outs = {}, {}
    for decoder in (DECODER_NVDEC, DECODER_PYAV):
        req = _Request(uri=str(uri), clips=(_Clip(),), frames=FRAMES, image_size=SIZE,
                       sampling="uniform", threads=1, storage=StorageOptions(),
                       decoder=decoder)  # fmt: skip
        outs[decoder] = np.zeros((1, FRAMES, SIZE, SIZE, 3), np.uint8)
        results[decoder] = _decode_request(req, outs[decoder])
    assert results[DECODER_NVDEC].decoder == f"{DECODER_PYAV} ({DECODER_NVDEC} {reason})"
    assert [c.error for c in results[DECODER_NVDEC].clips] == [""]
    np.testing.assert_array_equal(outs[DECODER_NVDEC], outs[DECODER_PYAV])


def test_interlaced_video_is_decoded_on_the_cpu(tmp_path: Path) -> None:
    """torchcodec returns an interlaced frame's two fields woven (on the CPU, 0.17: 55 levels
    from PyAV's one field here); the stage shows the model one field, so such files are handed
    to PyAV before torchcodec is asked."""
    uri = tmp_path / "interlaced.mp4"
    red = np.full((10, 64, 96, 3), (200, 60, 60), np.uint8)
    blue = np.full((10, 64, 96, 3), (60, 60, 200), np.uint8)
    synthetic.write_interlaced_mp4(uri, red, blue)
    outs = {}
    for decoder in (DECODER_NVDEC, DECODER_PYAV):
        req = _Request(uri=str(uri), clips=(_Clip(),), frames=FRAMES, image_size=SIZE,
                       sampling="uniform", threads=1, storage=StorageOptions(),
                       decoder=decoder)  # fmt: skip
        outs[decoder] = np.zeros((1, FRAMES, SIZE, SIZE, 3), np.uint8)
        result = _decode_request(req, outs[decoder])
        if decoder == DECODER_NVDEC:
            reason = f"{DECODER_NVDEC} weaves the two fields of interlaced video"
            assert result.decoder == f"{DECODER_PYAV} ({reason})"
    np.testing.assert_array_equal(outs[DECODER_NVDEC], outs[DECODER_PYAV])


def test_quarter_turned_frames_left_unturned_are_refused(tmp_path: Path) -> None:
    """torchcodec turns quarter-turned video (upright phone video) itself; frames that come back
    in the stored size instead of the turned one hand the file to PyAV."""
    uri = tmp_path / "upright.mp4"
    synthetic.write_mp4(uri, np.zeros((4, 48, 64, 3), np.uint8), rotation=90)
    probed = _probe(str(uri))
    assert probed.stored_size == (64, 48)
    check_size("nvdec", (48, 64), probed)  # turned as shown
    with pytest.raises(PyavFallback, match="returned frames of 64x48, not the 48x64 shown"):
        check_size("nvdec", (64, 48), probed)


def test_a_damaged_file_fails_as_on_the_cpu_before_the_gpu_is_asked(uris: list[str]) -> None:
    """A damaged file is found while its frames are indexed (PyAV, on the CPU): the GPU decoder
    never sees it and the row's error is the CPU decoders'."""
    for uri in uris[4:]:
        outs = []
        for decoder in (DECODER_NVDEC, DECODER_PYAV):
            req = _Request(uri=uri, clips=(_Clip(),), frames=FRAMES, image_size=SIZE,
                           sampling="uniform", threads=1, storage=StorageOptions(),
                           decoder=decoder)  # fmt: skip
            outs.append(_decode_request(req, np.zeros((1, FRAMES, SIZE, SIZE, 3), np.uint8)))
        assert outs[0].clips[0].error == outs[1].clips[0].error, uri
        if outs[1].clips[0].error:
            assert outs[0].decoder == ""  # failed as damaged, not handed to the CPU fallback


def test_gpu_scaling_and_crop_match_the_cpu_decoders_frames(tmp_path: Path) -> None:
    """The GPU path's pixel arithmetic (run here on CPU tensors): scaled so the shorter side is
    the output size, the centre cut. PyAV's scaler works on the YUV planes (chroma at half
    resolution, scaled before their conversion to RGB), the GPU path on RGB, so they differ by a
    few levels: 5.6 on this colourful texture (4.2 when PyAV scaled into RGB), against 10 to 12
    for a crop one pixel off."""
    generator = np.random.default_rng(0)
    coarse = generator.integers(0, 255, (1, 3, 6, 10)).astype(np.float32)
    smooth = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(96, 160),
                                             mode="bicubic").clamp(0, 255)  # fmt: skip
    frame = smooth[0].permute(1, 2, 0).round().to(torch.uint8).numpy()  # [96, 160, 3]
    path = tmp_path / "wide.mp4"
    synthetic.write_mp4(path, np.stack([frame] * 5), crf=0)
    with av.open(str(path)) as container:
        decoded = next(container.decode(video=0)).to_ndarray(format="rgb24")  # [96, 160, 3]
    with DecodeStage(frames=1, image_size=SIZE) as cpu:
        expected = cpu(batch([str(path)]))[schema.FRAMES][0, 0]
    frames = torch.from_numpy(decoded).permute(2, 0, 1)[None]  # [1, 3, 96, 160]
    got = scale_and_crop(frames, (80, SIZE), SIZE)[0].numpy()
    assert got.shape == expected.shape == (SIZE, SIZE, 3) and got.dtype == np.uint8
    difference = np.abs(got.astype(int) - expected.astype(int))
    assert difference.mean() < 6.0, difference.mean()


TORCHCODEC_RUNS_HERE = unavailable_reason(DECODER_TORCHCODEC) is None


def test_pyavs_ffmpeg_libraries_load_under_ffmpegs_own_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torchcodec loads ``libavutil.so.60`` and its siblings by those names; the decoder process
    finds PyAV's copies under them (a new interpreter with the decoder process's environment
    loads each by its plain name), so torchcodec needs no FFmpeg from the system."""
    folder = pyav_ffmpeg_folder()
    assert folder is not None and folder == pyav_ffmpeg_folder()  # made once
    env = decoder_environment()
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == str(folder)
    versions = {name: av.library_versions[f"lib{name}"][0] for name in ("avutil", "avcodec")}
    plain = [f"lib{name}.so.{major}" for name, major in versions.items()]
    for name in plain:
        assert (folder / name).resolve().parent.name == "av.libs", name
    code = f"import ctypes; [ctypes.CDLL(n) for n in {plain!r}]; print('loaded')"
    loaded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert loaded.stdout.strip() == "loaded", loaded.stderr
    unaided = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "cannot open shared object file" in unaided.stderr  # the system has no FFmpeg
    # A process started that way (a decoder process's own) hands its children the same path.
    monkeypatch.setenv("LD_LIBRARY_PATH", env["LD_LIBRARY_PATH"])
    assert decoder_environment()["LD_LIBRARY_PATH"] == env["LD_LIBRARY_PATH"]


def test_frames_other_than_those_asked_for_are_refused(tmp_path: Path) -> None:
    """torchcodec's frames are checked against the index by their timestamps: a frame a frame
    away from the one asked for hands the file to PyAV."""
    path = tmp_path / "ten.mp4"
    synthetic.write_mp4(path, np.zeros((10, 32, 48, 3), np.uint8), fps=10)
    with av.open(str(path)) as container:
        index = index_frames(container, container.streams.video[0])
    frames = np.array([0, 4, 9])
    exact = index.pts[frames] * float(index.time_base)
    check_times("torchcodec", index, frames, exact)
    check_times("torchcodec", index, frames, exact + 0.02)  # a fifth of a frame: rounding
    with pytest.raises(
        PyavFallback, match=r"returned the frame at 0\.500 s for frame 4, at 0\.400"
    ):
        check_times("torchcodec", index, frames, exact + np.array([0, 0.1, 0]))


@pytest.mark.skipif(not TORCHCODEC_RUNS_HERE, reason="torchcodec cannot run here")
def test_torchcodec_on_the_cpu_decodes_the_frames_pyav_decodes(tmp_path: Path) -> None:
    """The GPU decoder's path run on the CPU (``--decoder torchcodec``: needs a CUDA build of
    torch, which runs without a GPU): the same frame times and frames within a few levels of
    PyAV's (scaled in RGB, not in YUV), quarter-turned video turned as PyAV turns it; MPEG-TS
    and FLV are handed to PyAV."""
    generator = np.random.default_rng(0)
    coarse = generator.integers(0, 255, (30, 3, 6, 10)).astype(np.float32)
    smooth = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(96, 160),
                                             mode="bicubic").clamp(0, 255)  # fmt: skip
    video = smooth.permute(0, 2, 3, 1).round().to(torch.uint8).numpy()  # [30, 96, 160, 3]
    files = {"a.mp4": {}, "a.mkv": {}, "turned_90.mp4": {"rotation": 90},
             "turned_270.mp4": {"rotation": 270}, "a.ts": {}, "a.flv": {}}  # fmt: skip
    for name, options in files.items():
        synthetic.write_mp4(tmp_path / name, video, fps=30, gop=10, **options)
    uris = [str(tmp_path / name) for name in files]
    with DecodeStage(frames=FRAMES, image_size=SIZE, decoder=DECODER_TORCHCODEC) as torchcodec:
        got = torchcodec(batch(uris))
    with DecodeStage(frames=FRAMES, image_size=SIZE, decoder=DECODER_PYAV) as cpu:
        expected = cpu(batch(uris))
    unsought = (
        f"{DECODER_PYAV} ({DECODER_TORCHCODEC} does not seek MPEG-TS, MPEG-PS or FLV reliably)"
    )
    assert list(got[schema.DECODER]) == [DECODER_TORCHCODEC] * 4 + [unsought] * 2
    assert list(got[schema.ERROR]) == [""] * len(uris)
    np.testing.assert_array_equal(got[schema.FRAME_TIMES_S], expected[schema.FRAME_TIMES_S])
    levels = np.abs(got[schema.FRAMES].astype(int) - expected[schema.FRAMES].astype(int))
    per_frame = levels.mean(axis=(2, 3, 4))  # [B, T]
    assert per_frame[:4].max() < 6.0, per_frame[:4].max()  # a crop one pixel off: 10 to 12
    assert per_frame[4:].max() == 0  # PyAV's own frames
    # Each frame of this video is new texture: the next frame would be far from PyAV's.
    neighbour = np.roll(expected[schema.FRAMES][:4], 1, axis=1).astype(int)
    assert np.abs(got[schema.FRAMES][:4].astype(int) - neighbour).mean(axis=(2, 3, 4)).min() > 20


def test_a_torchcodec_error_reads_without_its_source_location() -> None:
    """What torchcodec 0.17 raised on the CPU for a stream whose size changes midway (its rows
    are then PyAV's): the row's ``decoder`` keeps the message, not the C++ function and line."""
    raised = RuntimeError(
        "convert_video_av_frame_to_frame_output, /__w/torchcodec/torchcodec/meta-pytorch/"
        "torchcodec/src/torchcodec/_core/CpuDeviceInterface.cpp:252, Expected pre-allocated "
        "tensor of shape 96x64x3, got [64, 96, 3]"
    )
    assert _short(raised) == "Expected pre-allocated tensor of shape 96x64x3, got [64, 96, 3]"
