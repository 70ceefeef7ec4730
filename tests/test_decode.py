"""The decode stage on real files: sampling, resizing, and every way a video can be bad."""

from __future__ import annotations

import io
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipelines import schema, synthetic
from pipelines.decode import (
    BAD_CLIP,
    DECODE_FAILED,
    DECODER_CRASHED,
    DECODER_DECORD,
    DECODER_NVDEC,
    DECODER_PYAV,
    DECODER_TORCHCODEC,
    DECODERS,
    INDEX_SAMPLINGS,
    SAMPLING_FAST,
    SAMPLING_KEYFRAME,
    SAMPLING_RANDOM,
    SAMPLING_UNIFORM,
    TIMEOUT,
    TRUNCATED,
    DecodeStage,
    error_category,
    sample_frames,
)
from pipelines.decode.frame_index import demuxed_frames, listed_frames
from pipelines.decode.sampling import choose_targets, frames_to_reach
from pipelines.decode.thumbnails import Thumbnailer
from pipelines.manifest import read_manifest

FRAMES = 6
SIZE = 48


def batch(uris: list[str], **extra: np.ndarray) -> dict[str, np.ndarray]:
    ids = [f"v{i}" for i in range(len(uris))]
    return {
        schema.VIDEO_ID: np.array(ids, dtype=object),
        schema.URI: np.array(uris, dtype=object),
        **extra,
    }


@pytest.fixture(scope="module")
def videos(sample_corpus: Path) -> list[str]:
    return read_manifest(sample_corpus / "manifest")[schema.URI].to_pylist()


@pytest.fixture(scope="module")
def damaged(videos: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("damaged")
    return synthetic.write_damaged_videos(folder, good_video=Path(videos[0]))


@pytest.fixture(scope="module")
def stage() -> Iterator[DecodeStage]:
    with DecodeStage(frames=FRAMES, image_size=SIZE) as decode:
        yield decode


@pytest.fixture
def fifo(tmp_path: Path) -> str:
    """A named pipe nobody writes to: opening it for reading blocks forever."""
    path = tmp_path / "stalled.mp4"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("decoder", DECODERS)
def test_every_damaged_input_becomes_an_error_row(
    decoder: str, damaged: dict[str, str], videos: list[str]
) -> None:
    ids = list(damaged)
    with DecodeStage(frames=FRAMES, image_size=SIZE, decoder=decoder) as stage:
        out = stage(batch([damaged[k] for k in ids] + [videos[1]]))

    for i, key in enumerate(ids):
        expected = synthetic.DAMAGED_EXPECTED[key]
        assert error_category(out[schema.ERROR][i]) == expected, (key, out[schema.ERROR][i])
        if expected:
            assert not out[schema.FRAMES][i].any()
            assert np.isnan(out[schema.FRAME_TIMES_S][i]).all()
            assert np.isnan(out[schema.DURATION_S][i])
    assert out[schema.ERROR][-1] == ""


def quadrant_video(frames: int = 10) -> np.ndarray:
    """``[T, 64, 96, 3]``: a grey texture (so every turn of it differs), with a red block over
    the top-left quarter."""
    y, x = np.mgrid[0:64, 0:96].astype(np.float32)
    texture = (128 + 60 * np.sin(x / 5) * np.cos(y / 7)).astype(np.uint8)
    video = np.repeat(np.repeat(texture[None, :, :, None], 3, axis=3), frames, axis=0)
    video[:, :32, :48] = (230, 20, 20)
    return video


def red_quadrant(image: np.ndarray) -> tuple[int, int]:
    """``(row, column)`` of the quarter of ``image`` ``[H, W, 3]`` that is red."""
    h, w = image.shape[0] // 2, image.shape[1] // 2
    redness = image[..., 0].astype(int) - image[..., 1]
    quarters = {
        (r, c): redness[r * h : (r + 1) * h, c * w : (c + 1) * w].mean()
        for r in (0, 1)
        for c in (0, 1)
    }
    return max(quarters, key=quarters.__getitem__)


# Where the red top-left quarter is shown after a turn counter-clockwise by the display matrix.
RED_SHOWN_AT = {0: (0, 0), 90: (1, 0), -90: (0, 1), 180: (1, 1)}


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_raw_stream_without_timestamps_is_an_error_row(tmp_path: Path, decoder: str) -> None:
    """A raw H.264 stream (``.h264``: no container) times none of its frames, so none can be
    placed in its chunk: a ``decode failed`` row under every decoder, PyAV's saying why and how
    to mend it, where it said ``truncated`` before."""
    uri = tmp_path / "raw.h264"
    synthetic.write_mp4(uri, quadrant_video())  # H.264, in the format its suffix names

    with DecodeStage(frames=FRAMES, image_size=32, decoder=decoder) as stage:
        error = stage(batch([str(uri)]))[schema.ERROR][0]
    assert error_category(error) == DECODE_FAILED, error
    if decoder != DECODER_DECORD:
        assert "has a timestamp" in error and "ffmpeg -framerate" in error, error


@pytest.mark.parametrize("decoder", DECODERS)
def test_rotated_videos_are_decoded_as_players_show_them(tmp_path: Path, decoder: str) -> None:
    """A video tagged to be shown turned (phones record upright video as landscape frames and a
    quarter turn) is decoded turned, as a player shows it: PyAV's frames are exactly the upright
    video's turned; decord's within the few levels its turning of YUV frames moves chroma (5.5
    to 8.2 here; a quarter turn was 27 levels away, squeezed, before decord was asked for the
    turned size)."""
    uris = []
    for rotation in RED_SHOWN_AT:
        uri = tmp_path / f"turned-{rotation}.mp4"
        synthetic.write_mp4(uri, quadrant_video(), rotation=rotation)
        uris.append(str(uri))
    with av.open(uris[1]) as container:
        assert next(container.decode(video=0)).rotation == 90

    with DecodeStage(frames=FRAMES, image_size=32, decoder=decoder) as stage:
        out = stage(batch(uris))
    assert list(out[schema.ERROR]) == [""] * len(uris)
    upright = out[schema.FRAMES][0].astype(int)
    for row, (rotation, shown_at) in enumerate(RED_SHOWN_AT.items()):
        frames = out[schema.FRAMES][row]
        assert all(red_quadrant(frame) == shown_at for frame in frames), rotation
        difference = np.abs(frames - np.rot90(upright, rotation // 90, axes=(1, 2))).mean()
        assert difference <= (0.0 if decoder == DECODER_PYAV else 10.0), (rotation, difference)


@pytest.mark.parametrize("decoder", DECODERS)
def test_mirrored_videos_are_decoded_as_players_show_them(tmp_path: Path, decoder: str) -> None:
    """A display matrix may mirror the picture after turning it (front cameras, editors' flips).
    The frames come back turned and mirrored as players show them: the upright video's turned,
    then reversed left to right. PyAV's rotation alone read a mirror image as one turned half a
    turn: left to right mirrored, it came out upside down. decord turns frames but does not
    mirror them: it hands such files to PyAV."""
    upright = tmp_path / "upright.mp4"
    synthetic.write_mp4(upright, quadrant_video())
    uris = [str(upright)]
    for rotation in RED_SHOWN_AT:
        uri = tmp_path / f"mirrored-{rotation}.mp4"
        synthetic.write_mp4(uri, quadrant_video(), rotation=rotation, mirrored=True)
        uris.append(str(uri))

    with DecodeStage(frames=FRAMES, image_size=32, decoder=decoder) as stage:
        out = stage(batch(uris))
    assert list(out[schema.ERROR]) == [""] * len(uris)
    assert all(label.startswith(DECODER_PYAV) for label in out[schema.DECODER][1:])
    first = out[schema.FRAMES][0].astype(int)
    for row, (rotation, (red_row, red_column)) in enumerate(RED_SHOWN_AT.items(), start=1):
        frames = out[schema.FRAMES][row]
        assert all(red_quadrant(frame) == (red_row, 1 - red_column) for frame in frames), rotation
        expected = np.rot90(first, rotation // 90, axes=(1, 2))[:, :, ::-1]
        difference = np.abs(frames - expected).mean()
        assert difference <= (0.0 if decoder == DECODER_PYAV else 10.0), (rotation, difference)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("suffix", [".mp4", ".ts"])
def test_anamorphic_video_is_decoded_with_square_pixels(
    tmp_path: Path, decoder: str, suffix: str
) -> None:
    """A video of pixels twice as wide as high (anamorphic: DVD and broadcast SD, HDV) is
    decoded as shown, stretched to square pixels: within a few levels of the same picture coded
    with square pixels (it has half the detail across), where the squeezed picture is tens of
    levels away. MP4 states the pixel aspect in its own header, MPEG-TS only in H.264's: the
    file is opened without decoding a frame, so that is read once one is."""
    video = quadrant_video()
    square, anamorphic = tmp_path / "square.mp4", tmp_path / f"anamorphic{suffix}"
    synthetic.write_mp4(square, video)
    synthetic.write_mp4(
        anamorphic, np.ascontiguousarray(video[:, :, ::2]), pixel_aspect=Fraction(2)
    )

    with DecodeStage(frames=FRAMES, image_size=32, decoder=decoder) as stage:
        out = stage(batch([str(square), str(anamorphic)]))
    assert list(out[schema.ERROR]) == ["", ""]
    frames = out[schema.FRAMES].astype(int)
    assert np.abs(frames[1] - frames[0]).mean() < 4.0, np.abs(frames[1] - frames[0]).mean()


def test_interlaced_video_is_decoded_one_field_at_a_time(tmp_path: Path) -> None:
    """Each frame of interlaced video holds two moments, a field apart; woven, anything that
    moved between them shows as combs. The stage shows the model one field: here the top field
    is red and the bottom one blue, so the woven frame is purple, its top field red."""
    red = np.full((10, 64, 96, 3), (200, 60, 60), np.uint8)
    blue = np.full((10, 64, 96, 3), (60, 60, 200), np.uint8)
    uri = tmp_path / "interlaced.mp4"
    synthetic.write_interlaced_mp4(uri, red, blue)
    with av.open(str(uri)) as container:
        assert next(container.decode(video=0)).interlaced_frame

    with DecodeStage(frames=FRAMES, image_size=32) as stage:
        out = stage(batch([str(uri)]))
    assert list(out[schema.ERROR]) == [""]
    colour = out[schema.FRAMES][0].reshape(-1, 3).mean(axis=0)
    assert np.abs(colour - (200, 60, 60)).max() < 6, colour


def test_short_videos_repeat_frames(stage: DecodeStage, damaged: dict[str, str]) -> None:
    out = stage(batch([damaged[synthetic.SHORT_ONE_FRAME], damaged[synthetic.SHORT_THREE_FRAMES]]))

    assert list(out[schema.ERROR]) == ["", ""]
    one, three = out[schema.FRAMES]
    assert one.any() and all((f == one[0]).all() for f in one)
    assert (three[0] == three[1]).all() and not (three[1] == three[2]).all()
    assert out[schema.FRAME_TIMES_S][0].tolist() == [0.0] * FRAMES
    np.testing.assert_allclose(out[schema.FRAME_TIMES_S][1], [0, 0, 0.1, 0.1, 0.2, 0.2])
    np.testing.assert_allclose(out[schema.DURATION_S], [0.1, 0.3], rtol=1e-6)


def test_shapes_dtypes_and_passthrough(stage: DecodeStage, videos: list[str]) -> None:
    captions = np.empty(2, dtype=object)
    captions[:] = [np.array(["a red square"], dtype=object), np.array(["x", "y"], dtype=object)]
    inputs = batch(
        videos[:2],
        caption=captions,
        source=np.array([3, 4]),
        fingerprint=np.array(["1:2", "3:4"], dtype=object),
    )

    out = stage(inputs)

    assert set(out) == set(inputs) | {
        schema.FRAMES,
        schema.ERROR,
        schema.DURATION_S,
        schema.FRAME_TIMES_S,
        schema.DECODE_S,
        schema.DECODE_CPU_S,
        schema.FRAMES_DECODED,
        schema.DECODER,
    }
    assert out[schema.DECODER].tolist() == [DECODER_PYAV] * 2
    assert (out[schema.DECODE_CPU_S] > 0).all() and (out[schema.FRAMES_DECODED] > 0).all()
    assert out[schema.FRAMES].shape == (2, FRAMES, SIZE, SIZE, 3)
    assert out[schema.FRAMES].dtype == np.uint8
    assert out[schema.FRAME_TIMES_S].shape == (2, FRAMES)
    assert out[schema.FRAME_TIMES_S].dtype == out[schema.DURATION_S].dtype == np.float32
    assert (out[schema.DECODE_S] > 0).all()
    assert out[schema.CAPTION].tolist() == [["a red square"], ["x", "y"]]
    assert out["source"].tolist() == [3, 4]
    assert out[schema.FINGERPRINT] is inputs[schema.FINGERPRINT]

    empty = stage(batch([]))
    assert empty[schema.FRAMES].shape == (0, FRAMES, SIZE, SIZE, 3)


# Constant-rate streams as MP4 files time them: (time base, ticks a frame) at 29.97, 10, 24 fps.
CONSTANT_RATES = [(Fraction(1, 30000), 1001), (Fraction(1, 10240), 1024), (Fraction(1, 12288), 512)]


def constant_rate_starts(n: int, time_base: Fraction, ticks: int) -> tuple[np.ndarray, float]:
    """``[n]`` start seconds of frames at a constant rate, as the frame index computes them from
    timestamps, and where the last one ends."""
    starts = np.arange(n + 1, dtype=np.int64) * ticks * float(time_base)
    return starts[:n], float(starts[n])


@pytest.mark.parametrize("rate", CONSTANT_RATES)
@pytest.mark.parametrize(("n", "t"), [(24, 6), (25, 12), (7, 3), (3, 6), (1, 4), (1000, 12)])
def test_uniform_frames_at_a_constant_rate_are_chunk_centres(
    n: int, t: int, rate: tuple[Fraction, int]
) -> None:
    """Chunks of time at a constant rate are chunks of frames, ties (24 frames in 6 chunks put
    every centre on a frame's start) included, whatever the rounding of the timestamps."""
    starts, end = constant_rate_starts(n, *rate)
    expected = [int((i + 0.5) * n / t) for i in range(t)]
    assert sample_frames(starts, end, t).tolist() == expected


# A phone's or screen recorder's variable rate: 2 s at 5 fps, then 2 s at 30 fps.
VARIABLE_RATE_MS = [200 * i for i in range(10)] + [2000 + round(i * 1000 / 30) for i in range(60)]
VARIABLE_RATE_END_S = 4.0


def shown_until(times_s: np.ndarray, end_s: float = VARIABLE_RATE_END_S) -> np.ndarray:
    """Where each frame of :data:`VARIABLE_RATE_MS` starting at ``times_s`` stops being shown,
    the last one at ``end_s``."""
    starts = np.append(np.array(VARIABLE_RATE_MS) / 1000, end_s)
    at = np.searchsorted(starts, np.asarray(times_s) + 1e-4, side="right")
    return starts[at]


def test_variable_frame_rate_is_sampled_evenly_over_time() -> None:
    starts = np.array(VARIABLE_RATE_MS) / 1000
    picked = sample_frames(starts, VARIABLE_RATE_END_S, 8)
    centres = (np.arange(8) + 0.5) * VARIABLE_RATE_END_S / 8
    assert (starts[picked] <= centres).all() and (centres < shown_until(starts[picked])).all()
    # Chunks of frames would put 6 of the 8 in the 30-fps half.
    assert (starts[picked] < 2).sum() == 4


@pytest.mark.parametrize("rate", CONSTANT_RATES)
@pytest.mark.parametrize(("n", "t"), [(24, 6), (25, 7), (5, 8), (300, 12)])
def test_random_frames_stay_inside_their_chunks(n: int, t: int, rate: tuple[Fraction, int]) -> None:
    starts, end = constant_rate_starts(n, *rate)
    rng = np.random.default_rng(0)
    draws = np.stack(
        [sample_frames(starts, end, t, sampling=SAMPLING_RANDOM, rng=rng) for _ in range(200)]
    )
    low = np.floor(np.arange(t) * n / t)
    high = np.ceil((np.arange(t) + 1) * n / t) - 1
    assert (draws >= low).all() and (draws <= high).all()
    if n >= 2 * t:
        assert len({tuple(d) for d in draws}) > 100


def test_uniform_sampling_on_a_real_video(stage: DecodeStage, videos: list[str]) -> None:
    out = stage(batch([videos[0]]))
    fps = 10
    n = round(float(out[schema.DURATION_S][0]) * fps)
    expected = np.array([int((i + 0.5) * n / FRAMES) for i in range(FRAMES)]) / fps
    np.testing.assert_allclose(out[schema.FRAME_TIMES_S][0], expected, atol=1e-4)


def test_random_sampling_differs_between_calls_and_follows_the_seed(videos: list[str]) -> None:
    with DecodeStage(frames=FRAMES, image_size=SIZE, sampling=SAMPLING_RANDOM, seed=5) as a:
        first = a(batch(videos[:3]))[schema.FRAME_TIMES_S]
        second = a(batch(videos[:3]))[schema.FRAME_TIMES_S]
    with DecodeStage(frames=FRAMES, image_size=SIZE, sampling=SAMPLING_RANDOM, seed=5) as b:
        again = b(batch(videos[:3]))[schema.FRAME_TIMES_S]
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, again)


def test_clip_range(stage: DecodeStage, videos: list[str]) -> None:
    out = stage(
        batch(
            videos[:3],
            start_s=np.array([0.5, np.nan, 100.0]),
            end_s=np.array([1.5, 1.0, None], dtype=object),
        )
    )

    assert out[schema.ERROR][0] == out[schema.ERROR][1] == ""
    assert error_category(out[schema.ERROR][2]) == BAD_CLIP
    times = out[schema.FRAME_TIMES_S]
    assert times[0].min() >= 0.5 - 1e-6 and times[0].max() < 1.5
    assert times[1].min() == 0.0 and times[1].max() < 1.0
    assert out[schema.DURATION_S][0] > 1.5


def test_wide_video_is_scaled_then_centre_cropped(stage: DecodeStage, tmp_path: Path) -> None:
    frame = np.zeros((96, 160, 3), dtype=np.uint8)
    frame[:, :32] = synthetic.COLOURS["red"]
    frame[:, 32:128] = synthetic.COLOURS["blue"]
    frame[:, 128:] = synthetic.COLOURS["green"]
    path = tmp_path / "wide.mp4"
    synthetic.write_mp4(path, np.stack([frame] * 5))

    out = stage(batch([f"file://{path}"]))

    assert out[schema.ERROR][0] == ""
    # Shorter side 96 -> 48 makes the frame 80 wide; the centre 48 columns are all blue (the two
    # outermost on each side blend with the red and green bands, scaled chroma more so).
    pixels = out[schema.FRAMES][0][:, :, 2:-2].reshape(-1, 3).astype(int)
    assert np.abs(pixels - synthetic.COLOURS["blue"]).max() < 40


@pytest.mark.timeout(60)
def test_a_stalled_read_times_out_and_the_stage_recovers(fifo: str, videos: list[str]) -> None:
    with DecodeStage(frames=FRAMES, image_size=SIZE, timeout_s=1.0) as decode:
        began = time.monotonic()
        # A decoded video first: the dead child is replaced while its frames were just copied.
        out = decode(batch([videos[1], fifo, videos[0]]))
        elapsed = time.monotonic() - began

        assert error_category(out[schema.ERROR][1]) == TIMEOUT
        assert "1s" in out[schema.ERROR][1]
        assert out[schema.ERROR][0] == out[schema.ERROR][2] == ""
        assert out[schema.FRAMES][0].any() and out[schema.FRAMES][2].any()
        assert elapsed < 30


def _segfault_once_reading(fifo: str, pid: int, writers: list[int]) -> None:
    """Send the decoder a "segfault" once it is reading the pipe, however loaded the machine:
    opening the write end without blocking succeeds only once a reader has it open. The write
    end stays open (in ``writers``) until the test is done, so the reader sees no end of file
    before the signal lands."""
    deadline = time.monotonic() + 50
    while time.monotonic() < deadline:
        try:
            writers.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: no reader yet
            time.sleep(0.01)
            continue
        os.kill(pid, signal.SIGSEGV)
        return


@pytest.mark.timeout(60)
def test_a_crashed_decoder_is_an_error_row(fifo: str, videos: list[str]) -> None:
    with DecodeStage(frames=FRAMES, image_size=SIZE, timeout_s=30.0) as decode:
        assert decode(batch([videos[0]]))[schema.ERROR][0] == ""
        pid = decode.decoder_pid
        writers: list[int] = []
        killer = threading.Thread(target=_segfault_once_reading, args=(fifo, pid, writers))
        killer.start()
        try:
            out = decode(batch([fifo, videos[1]]))
        finally:
            killer.join()
            for writer in writers:
                os.close(writer)

        assert error_category(out[schema.ERROR][0]) == DECODER_CRASHED
        assert "SIGSEGV" in out[schema.ERROR][0]
        assert out[schema.ERROR][1] == ""
        assert decode.decoder_pid not in (None, pid)


def test_a_decoder_process_that_cannot_start_fails_the_first_batch_not_the_constructor(
    videos: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage does not wait for its decoder process to start (its owner goes on loading
    meanwhile); a process that never starts is an installation problem, raised at first use
    rather than turned into error rows, and the stage recovers once the cause is gone."""
    monkeypatch.setattr("sys.executable", "/bin/false")  # the child exits at once, status 1
    with DecodeStage(frames=FRAMES, image_size=SIZE) as decode:
        failed = r"decoder process failed to start \(exit status 1\)"
        with pytest.raises(RuntimeError, match=failed):
            decode(batch([videos[0]]))
        monkeypatch.undo()
        assert decode(batch([videos[0]]))[schema.ERROR][0] == ""


# --- sampling policies, decoder libraries, clips of one file ----------------------------------

CLIP_FPS = 24
CLIP_FRAMES = 48
# Encodings whose frame structure differs: x264's defaults (B-frames, one keyframe in 2 s), no
# B-frames, a short GOP with B-frames, HEVC, and MPEG-TS (no index: sought by byte position).
ENCODINGS = {
    "x264-long-gop.mp4": ("libx264", {"preset": "medium"}),
    "x264-no-bframes.mp4": ("libx264", {"preset": "medium", "bf": "0"}),
    "x264-short-gop.mp4": ("libx264", {"preset": "medium", "g": "8", "keyint_min": "8"}),
    "hevc.mp4": ("libx265", {"preset": "fast", "x265-params": "log-level=none"}),
    "x264-short-gop.ts": ("libx264", {"preset": "medium", "g": "8", "keyint_min": "8"}),
}


def textured_frame(i: int) -> np.ndarray:
    """Frame ``i`` ``[64, 96, 3]`` uint8 RGB of a smooth texture panning and changing."""
    y, x = np.mgrid[0:64, 0:96].astype(np.float32)
    phase = i / 4
    return np.stack(
        [
            128 + 100 * np.sin((x + 3 * i) / 9 + phase),
            128 + 100 * np.cos((y - 2 * i) / 7),
            128 + 100 * np.sin((x + y) / 13 - phase),
        ],
        axis=-1,
    ).astype(np.uint8)


def write_textured_clip(
    path: Path,
    codec: str,
    options: dict[str, str],
    pix_fmt: str = "yuv420p",
    container_options: dict[str, str] | None = None,
    first: int = 0,
) -> None:
    """96x64, 2 s at 24 fps: smooth texture panning and changing, so every frame differs; its
    frames are those from ``first`` on."""
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=Fraction(CLIP_FPS))
        stream.width, stream.height, stream.pix_fmt = 96, 64, pix_fmt
        stream.options = options
        for i in range(first, first + CLIP_FRAMES):
            frame = av.VideoFrame.from_ndarray(textured_frame(i), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def keyframe_indices(path: str) -> set[int]:
    with av.open(path) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    order = sorted(packets, key=lambda p: p.pts)
    return {i for i, p in enumerate(order) if p.is_keyframe}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("encodings")
    paths = {}
    for name, (codec, options) in ENCODINGS.items():
        path = folder / name
        write_textured_clip(path, codec, options)
        paths[name] = str(path)
    return paths


# (start_s, end_s) of the rows each policy is checked on: whole files, and a 1-s clip.
SPANS = [(math.nan, math.nan), (0.5, 1.5)]


@pytest.mark.parametrize("sampling", [*INDEX_SAMPLINGS, SAMPLING_RANDOM])
def test_every_policy_takes_one_frame_per_chunk(clips: dict[str, str], sampling: str) -> None:
    names = list(clips)
    rows = [(name, span) for span in SPANS for name in names]
    with DecodeStage(frames=FRAMES, image_size=32, sampling=sampling) as stage:
        out = stage(
            batch(
                [clips[name] for name, _ in rows],
                start_s=np.array([span[0] for _, span in rows]),
                end_s=np.array([span[1] for _, span in rows]),
            )
        )

    assert list(out[schema.ERROR]) == [""] * len(rows)
    for row, (name, (start_s, end_s)) in enumerate(rows):
        first = 0 if math.isnan(start_s) else round(start_s * CLIP_FPS)
        stop = CLIP_FRAMES if math.isnan(end_s) else round(end_s * CLIP_FPS)
        n = stop - first
        picked = np.round(out[schema.FRAME_TIMES_S][row] * CLIP_FPS).astype(int)
        keys = keyframe_indices(clips[name])
        keys_in_clip = [k for k in keys if first <= k < stop]
        assert out[schema.FRAMES][row].reshape(FRAMES, -1).any(axis=1).all()
        for i, frame in enumerate(picked.tolist()):
            low = first + math.floor(i * n / FRAMES)
            high = first + math.ceil((i + 1) * n / FRAMES) - 1
            if sampling == SAMPLING_KEYFRAME and keys_in_clip:
                assert frame in keys_in_clip, (name, i, frame)
            else:
                assert low <= frame <= high, (name, sampling, i, frame, low, high)
            if sampling == SAMPLING_UNIFORM:
                assert frame == first + int((i + 0.5) * n / FRAMES)
        assert (np.diff(picked) >= 0).all()


@pytest.fixture(scope="module")
def variable_rate_video(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("variable_rate") / "variable_rate.mp4"
    video = np.stack([textured_frame(i) for i in range(len(VARIABLE_RATE_MS))])
    synthetic.write_mp4(path, video, times_ms=VARIABLE_RATE_MS, gop=12)
    return str(path)


def nearest_written_frames(frames: np.ndarray, count: int) -> list[int]:
    """For each of ``frames`` ``[T, 64, 64, 3]`` (the centre of a 96x64 frame), the index of the
    one of the first ``count`` :func:`textured_frame` it is nearest to."""
    written = np.stack([textured_frame(i) for i in range(count)])[:, :, 16:80]
    distances = np.abs(written[None].astype(int) - frames[:, None]).mean(axis=(2, 3, 4))
    return distances.argmin(axis=1).tolist()


@pytest.mark.parametrize(
    ("decoder", "sampling"),
    [(decoder, SAMPLING_UNIFORM) for decoder in DECODERS]
    + [(DECODER_PYAV, SAMPLING_FAST), (DECODER_DECORD, SAMPLING_FAST)]
    + [(DECODER_PYAV, SAMPLING_RANDOM)],
)
def test_variable_frame_rate_video_is_sampled_in_chunks_of_time(
    variable_rate_video: str, decoder: str, sampling: str
) -> None:
    """Every frame is shown during its chunk of the clip's time (``uniform``: at its centre), for
    the whole file and for a ``start_s``/``end_s`` clip across the change of rate, and is the
    frame its time names (the written frame nearest it: 3.7-4.8 levels away, the next nearest
    22)."""
    with DecodeStage(frames=FRAMES, image_size=64, sampling=sampling, decoder=decoder) as stage:
        out = stage(
            batch(
                [variable_rate_video, variable_rate_video],
                start_s=np.array([math.nan, 1.0]),
                end_s=np.array([math.nan, 3.0]),
            )
        )
    assert list(out[schema.ERROR]) == ["", ""]
    # The last frame lasts as long as the file says: 67 ms in PyAV's reading, 33 ms in decord's.
    duration = float(out[schema.DURATION_S][0])
    spans = [(0.0, duration), (1.0, 3.0)]
    rows = zip(spans, out[schema.FRAME_TIMES_S], out[schema.FRAMES], strict=True)
    for (start_s, end_s), times, frames in rows:
        chunk = (end_s - start_s) / FRAMES
        lows = start_s + np.arange(FRAMES) * chunk
        until = shown_until(times, duration)
        starts = np.array(VARIABLE_RATE_MS) / 1000
        named = np.searchsorted(starts, times + 1e-4, side="right") - 1
        assert nearest_written_frames(frames, len(VARIABLE_RATE_MS)) == named.tolist()
        if sampling == SAMPLING_UNIFORM:
            centres = lows + chunk / 2
            assert (times <= centres + 1e-4).all() and (centres < until).all(), times
        else:
            assert (times < lows + chunk - 1e-4).all() and (until > lows + 1e-4).all(), times


def green_square_picture(width: int, height: int) -> np.ndarray:
    """``[H, W, 3]`` red, with a green 32x32 square at the centre."""
    picture = np.full((height, width, 3), (200, 30, 30), np.uint8)
    picture[height // 2 - 16 : height // 2 + 16, width // 2 - 16 : width // 2 + 16] = (30, 200, 30)
    return picture


def write_size_changing_mkv(path: Path, sizes: list[tuple[int, int]], fps: int = 24) -> None:
    """One H.264 stream whose picture size changes: a second of ``green_square_picture`` at each
    ``(width, height)`` in turn, each part with its own parameter sets, as an encoder writes them
    when a video call's bandwidth changes its resolution."""
    annex_b = io.BytesIO()
    for width, height in sizes:
        with av.open(annex_b, "w", format="h264") as part:
            stream = part.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"preset": "veryfast", "x264-params": "asm=0:bframes=0:keyint=12"}
            picture = av.VideoFrame.from_ndarray(green_square_picture(width, height), "rgb24")
            for _ in range(fps):
                part.mux(stream.encode(picture))
            part.mux(stream.encode())
    annex_b.seek(0)
    with av.open(annex_b, format="h264") as source, av.open(str(path), "w") as container:
        stream = container.add_stream_from_template(source.streams.video[0])
        packets = (p for p in source.demux(video=0) if p.size)
        for i, packet in enumerate(packets):
            packet.pts, packet.dts, packet.duration = i, i, 1
            packet.time_base, packet.stream = Fraction(1, fps), stream
            container.mux(packet)


@pytest.mark.parametrize("decoder", [DECODER_PYAV, DECODER_NVDEC, DECODER_TORCHCODEC])
def test_a_stream_that_changes_size_is_not_stretched(tmp_path: Path, decoder: str) -> None:
    """Frames keep their own shape when the stream's size changes midway (landscape 96x64, then
    portrait 64x96): the green square stays 32x32 in every frame's centre crop, where scaling
    every frame to the first size made the portrait part's 48x20. decord asks for one size for
    the whole file and still stretches them (README)."""
    path = tmp_path / "size_changing.mkv"
    write_size_changing_mkv(path, [(96, 64), (64, 96)])
    with DecodeStage(frames=4, image_size=64, decoder=decoder) as stage:
        out = stage(batch([str(path)]))
    assert out[schema.ERROR].tolist() == [""]
    np.testing.assert_allclose(out[schema.FRAME_TIMES_S][0], [0.208, 0.708, 1.208, 1.708])
    for frame in out[schema.FRAMES][0]:
        rows, columns = np.nonzero(frame[..., 1].astype(int) - frame[..., 0] > 60)
        assert (np.ptp(columns) + 1, np.ptp(rows) + 1) == (32, 32)


# An animated GIF's frame delays, in hundredths of a second: 2 s at 5 fps, then 1 s at 20 fps.
GIF_DELAYS_CS = [20] * 10 + [5] * 20


@pytest.fixture(scope="module")
def animated_gif(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Frame ``i`` a flat grey of level ``10 + 7 i`` (a GIF's palette keeps it exact)."""
    path = tmp_path_factory.mktemp("gif") / "animated.gif"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("gif", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "gray"
        stream.codec_context.time_base = Fraction(1, 100)
        for i, start in enumerate(np.cumsum([0, *GIF_DELAYS_CS[:-1]]).tolist()):
            frame = av.VideoFrame.from_ndarray(np.full((64, 96), 10 + 7 * i, np.uint8), "gray")
            frame.pts, frame.time_base = start, Fraction(1, 100)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


def test_animated_gifs_are_videos_timed_by_their_frame_delays(animated_gif: str) -> None:
    """GIFs (TGIF's and many web corpora's clips) decode with PyAV, each frame shown for its own
    delay: the frames at the centres of six half-second chunks are 1, 3, 6, 8 (5 fps), 15 and 25
    (20 fps). decord cannot open them: an error row says so."""
    with DecodeStage(frames=FRAMES, image_size=64) as stage:
        out = stage(batch([animated_gif]))
    assert out[schema.ERROR].tolist() == [""]
    levels = out[schema.FRAMES][0].reshape(FRAMES, -1).astype(float)
    assert (levels.min(axis=1) == levels.max(axis=1)).all()
    assert ((levels[:, 0] - 10) / 7).tolist() == [1, 3, 6, 8, 15, 25]
    np.testing.assert_allclose(out[schema.FRAME_TIMES_S][0], [0.2, 0.6, 1.2, 1.6, 2.25, 2.75])
    with DecodeStage(frames=FRAMES, image_size=64, decoder=DECODER_DECORD) as stage:
        out = stage(batch([animated_gif]))
    assert error_category(out[schema.ERROR][0]) == DECODE_FAILED, out[schema.ERROR][0]


# Where the clip of CLIP_FRAMES textured frames, a keyframe every CUT_GOP, is cut without
# re-encoding: at frame 12, so frames 10 and 11 are a hidden pre-roll, and the cut's own
# keyframes are the source's 20, 30 and 40.
CUT_S = 0.5
CUT_FRAME = round(CUT_S * CLIP_FPS)
CUT_GOP = 10
CUT_KEYFRAMES = [20 - CUT_FRAME, 30 - CUT_FRAME, 40 - CUT_FRAME]


@pytest.fixture(scope="module")
def cut_video(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("cut")
    video = np.stack([textured_frame(i) for i in range(CLIP_FRAMES)])
    synthetic.write_mp4(folder / "whole.mp4", video, fps=CLIP_FPS, gop=CUT_GOP)
    synthetic.cut_without_reencoding(folder / "whole.mp4", folder / "cut.mp4", start_s=CUT_S)
    return str(folder / "cut.mp4")


def test_a_cut_video_hides_its_pre_roll_from_the_index(cut_video: str) -> None:
    with av.open(cut_video) as container:
        stream = container.streams.video[0]
        claimed = stream.frames
        index = demuxed_frames(container, stream)
    assert claimed == CLIP_FRAMES - CUT_FRAME + CUT_FRAME % CUT_GOP
    assert (len(index.pts), index.hidden) == (CLIP_FRAMES - CUT_FRAME, CUT_FRAME % CUT_GOP)
    assert index.pts[0] == 0 and not index.first_is_key
    assert index.own_keyframes.tolist() == CUT_KEYFRAMES
    assert index.duration_s == pytest.approx((CLIP_FRAMES - CUT_FRAME) / CLIP_FPS)


@pytest.mark.parametrize(
    ("decoder", "sampling"),
    [(decoder, SAMPLING_UNIFORM) for decoder in DECODERS]
    + [(DECODER_PYAV, policy) for policy in (SAMPLING_FAST, SAMPLING_KEYFRAME, SAMPLING_RANDOM)]
    + [(DECODER_DECORD, SAMPLING_FAST)],
)
def test_a_cut_video_starts_where_players_start_it(
    cut_video: str, decoder: str, sampling: str
) -> None:
    """A video cut without re-encoding is timed from its first shown frame, as players time it:
    its duration, its frames' times and its ``start_s``/``end_s`` clips leave the hidden
    pre-roll out, no frame of the pre-roll comes back, and every frame is the one its time
    names. Counted from the pre-roll, every time would be two frames late. decord numbers
    such frames two ways (its times count the pre-roll, its frames do not), so PyAV decodes them
    and the row says why."""
    shown = CLIP_FRAMES - CUT_FRAME
    with DecodeStage(frames=FRAMES, image_size=64, sampling=sampling, decoder=decoder) as stage:
        out = stage(
            batch(
                [cut_video] * 2, start_s=np.array([math.nan, 0.5]), end_s=np.array([math.nan, 1.0])
            )
        )
    assert list(out[schema.ERROR]) == ["", ""]
    if decoder == DECODER_DECORD:
        fallback = f"{DECODER_PYAV} (decord misnumbers the frames after a hidden pre-roll)"
        assert out[schema.DECODER].tolist() == [fallback] * 2
    np.testing.assert_allclose(out[schema.DURATION_S], shown / CLIP_FPS, atol=1e-3)
    for (start_s, end_s), times, frames in zip(
        [(0.0, shown / CLIP_FPS), (0.5, 1.0)],
        out[schema.FRAME_TIMES_S],
        out[schema.FRAMES],
        strict=True,
    ):
        named = CUT_FRAME + np.round(times * CLIP_FPS).astype(int)
        assert nearest_written_frames(frames, CLIP_FRAMES) == named.tolist()
        if sampling == SAMPLING_KEYFRAME:
            assert set((named - CUT_FRAME).tolist()) <= set(CUT_KEYFRAMES), named
        else:  # one frame shown during each chunk
            chunk = (end_s - start_s) / FRAMES
            lows = start_s + np.arange(FRAMES) * chunk
            assert (times < lows + chunk - 1e-4).all(), times
            assert (times + 1 / CLIP_FPS > lows + 1e-4).all(), times
        if sampling == SAMPLING_UNIFORM:
            first, n = round(start_s * CLIP_FPS), round((end_s - start_s) * CLIP_FPS)
            expected = [first + int((i + 0.5) * n / FRAMES) for i in range(FRAMES)]
            assert np.round(times * CLIP_FPS).astype(int).tolist() == expected


@pytest.mark.parametrize("sampling", [SAMPLING_UNIFORM, SAMPLING_KEYFRAME])
@pytest.mark.parametrize("video", ["variable_rate_video", "cut_video"])
def test_seeks_in_variable_rate_and_cut_videos_start_at_the_keyframe(
    video: str, sampling: str, request: pytest.FixtureRequest
) -> None:
    """MP4 indexes keyframes a little after their timestamps where the B-frame delay varies
    (variable frame rates) or an edit list shifts the timeline (a cut), so a seek to a keyframe
    lands a group of pictures early; the packets before the keyframe are read past, not
    decoded. Each file decodes exactly the floor's frames: decoding from where the seek landed
    took 63 and 56 frames for uniform's 27 and 28, 20 and 13 for keyframe's 5 and 3."""
    path = request.getfixturevalue(video)
    with av.open(path) as container:
        index = demuxed_frames(container, container.streams.video[0])
    with DecodeStage(frames=FRAMES, image_size=32, sampling=sampling) as stage:
        out = stage(batch([path]))
    assert out[schema.ERROR].tolist() == [""]
    picked = np.searchsorted(index.starts_s, out[schema.FRAME_TIMES_S][0] + 1e-4) - 1
    assert out[schema.FRAMES_DECODED][0] == frames_to_reach(picked, index.keyframes)


def test_a_keyframe_target_is_decoded_once(clips: dict[str, str]) -> None:
    """16 frames of the 48-frame clip with a keyframe every 8: frames 16 and 40 are sampled
    keyframes, each followed by a target in its group of pictures. The pass decodes on from the
    keyframe to that target instead of seeking back and decoding the keyframe again."""
    uri = clips["x264-short-gop.mp4"]
    with av.open(uri) as container:
        index = demuxed_frames(container, container.streams.video[0])
    with DecodeStage(frames=16, image_size=32) as stage:
        out = stage(batch([uri]))
    picked = np.round(out[schema.FRAME_TIMES_S][0] * CLIP_FPS).astype(int)
    assert {16, 40} <= set(picked.tolist()) & set(index.keyframes.tolist())
    assert out[schema.FRAMES_DECODED][0] == frames_to_reach(picked, index.keyframes)


@pytest.mark.parametrize(("size", "mean_limit", "max_limit"), [(64, 0.0, 0), (40, 4.5, 32)])
def test_exact_sampling_gives_decords_frames(
    clips: dict[str, str], size: int, mean_limit: float, max_limit: int
) -> None:
    """PyAV's frames are decord's: the same frames (timestamps), bit-identical when no scaling
    is needed (64 px of a 96x64 clip). Scaled, they differ by the way each scales: decord into
    RGB, PyAV in YUV with chroma at half the output's resolution (cheaper, thumbnails.py's
    Thumbnailer), which these tiny frames of saturated colour texture show most: about 4 levels
    on average here, 1.1 to 1.9 at 224 px of the benchmark's 8-bit MP4 files (README). In
    MPEG-TS decord returns other frames than those it names: it hands such files to PyAV."""
    uris = list(clips.values())
    outputs = {}
    for decoder in (DECODER_PYAV, DECODER_DECORD):
        # 40, not 32: decord cannot scale to width 48 and would crop another window.
        with DecodeStage(frames=FRAMES, image_size=size, decoder=decoder) as stage:
            outputs[decoder] = stage(batch(uris))
    ours, theirs = outputs[DECODER_PYAV], outputs[DECODER_DECORD]
    assert list(ours[schema.ERROR]) == list(theirs[schema.ERROR]) == [""] * len(uris)
    by_pyav = [label.startswith(DECODER_PYAV) for label in theirs[schema.DECODER]]
    assert by_pyav == [uri.endswith(".ts") for uri in uris]
    np.testing.assert_array_equal(ours[schema.FRAME_TIMES_S], theirs[schema.FRAME_TIMES_S])
    np.testing.assert_allclose(ours[schema.DURATION_S], theirs[schema.DURATION_S], rtol=1e-6)
    difference = np.abs(ours[schema.FRAMES].astype(int) - theirs[schema.FRAMES])
    assert difference.mean() <= mean_limit and difference.max() <= max_limit, (
        difference.mean(),
        difference.max(),
    )


@pytest.mark.parametrize(
    ("codec", "pix_fmt", "options"),
    [
        ("libx265", "yuv420p10le", {"preset": "fast", "x265-params": "log-level=none"}),
        ("prores_ks", "yuv422p10le", {}),
    ],
)
def test_frames_of_more_than_8_bits_are_scaled_at_full_chroma(
    tmp_path: Path, codec: str, pix_fmt: str, options: dict[str, str]
) -> None:
    """10-bit frames (HEVC as phones record it, ProRes) are scaled into 8-bit planar RGB, chroma
    at full resolution: at 32 px of the 96x64 clip (a 2x shrink) each thumbnail is within a level
    on average of the full-precision frame's 2x2 means. Scaled in their own YUV format, chroma
    at half resolution, the same thumbnails were about 4 levels away (bench/decode.py)."""
    uri = str(tmp_path / f"ten-bit-{codec}.mov")
    write_textured_clip(Path(uri), codec, options, pix_fmt)
    with DecodeStage(frames=FRAMES, image_size=32) as stage:
        out = stage(batch([uri]))
    assert list(out[schema.ERROR]) == [""]

    with av.open(uri) as container:
        frames = list(container.decode(video=0))
    assert frames[0].format.name == pix_fmt
    indices = np.round(out[schema.FRAME_TIMES_S][0] * CLIP_FPS).astype(int)
    assert indices.tolist() == [int((i + 0.5) * CLIP_FRAMES / FRAMES) for i in range(FRAMES)]
    for got, index in zip(out[schema.FRAMES][0], indices, strict=True):
        full = frames[index].to_ndarray(format="rgb48le").astype(np.float64) / 257
        means = full.reshape(32, 2, 48, 2, 3).mean(axis=(1, 3))[:, 8:40]
        assert np.abs(got - means).mean() < 1.0, (index, np.abs(got - means).mean())


class CountingReader(io.FileIO):
    """A file that counts the bytes read from it."""

    bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


@pytest.mark.parametrize(
    ("name", "codec", "pix_fmt"),
    [
        ("prores.mov", "prores_ks", "yuv422p10le"),
        ("mjpeg.mov", "mjpeg", "yuvj420p"),
        ("mjpeg.avi", "mjpeg", "yuvj420p"),
    ],
)
def test_intra_only_files_are_indexed_from_their_containers_list(
    tmp_path: Path, clips: dict[str, str], name: str, codec: str, pix_fmt: str
) -> None:
    """ProRes and MJPEG in MOV and AVI are indexed from the container's list of frames, without
    reading a frame: the index demuxing the whole file gives. A copy cut short, whose list names
    frames it lost, is demuxed instead and becomes a truncated row; other codecs are demuxed."""
    intact, cut = tmp_path / name, tmp_path / f"cut-{name}"
    # The MOV's list in front of its frames (faststart), so the cut copy still opens.
    write_textured_clip(intact, codec, {}, pix_fmt, container_options={"movflags": "+faststart"})
    data = intact.read_bytes()
    cut.write_bytes(data[: len(data) * 3 // 5])

    with CountingReader(intact) as file, av.open(file) as container:
        stream = container.streams.video[0]
        opened = file.bytes_read
        listed = listed_frames(container, stream)
        assert listed is not None and file.bytes_read == opened
        demuxed = demuxed_frames(container, stream)
        assert file.bytes_read > opened
    np.testing.assert_array_equal(listed.pts, demuxed.pts)
    np.testing.assert_array_equal(listed.keyframes, demuxed.keyframes)
    assert (listed.time_base, listed.end_pts) == (demuxed.time_base, demuxed.end_pts)
    for unlisted in (cut, Path(clips["x264-no-bframes.mp4"])):
        with av.open(str(unlisted)) as container:
            assert listed_frames(container, container.streams.video[0]) is None

    with DecodeStage(frames=FRAMES, image_size=32) as stage:
        out = stage(batch([str(intact), str(cut)]))
    assert out[schema.ERROR][0] == ""
    indices = np.round(out[schema.FRAME_TIMES_S][0] * CLIP_FPS).astype(int)
    assert indices.tolist() == [int((i + 0.5) * CLIP_FRAMES / FRAMES) for i in range(FRAMES)]
    assert error_category(out[schema.ERROR][1]) == TRUNCATED, out[schema.ERROR][1]


def write_hdr_clip(path: Path, transfer: int, *, tag_gamut: bool) -> None:
    """The textured clip mastered as HDR, losslessly: the decoder returns exactly the HDR
    frames."""
    video = np.stack([textured_frame(i) for i in range(CLIP_FRAMES)])
    synthetic.write_hdr_mp4(path, video, transfer=transfer, fps=CLIP_FPS, tag_gamut=tag_gamut)


@pytest.fixture(scope="module")
def hdr_stage() -> Iterator[DecodeStage]:
    """One stage for the HDR cases: its decoder process sets each tone-mapping scaler up once."""
    with DecodeStage(frames=FRAMES, image_size=32) as stage:
        yield stage


@pytest.mark.parametrize(
    ("transfer", "tag_gamut"),
    [(16, True), (18, True), (16, False)],
    ids=["pq", "hlg", "pq-no-gamut"],
)
def test_hdr_frames_are_tone_mapped_to_the_sdr_they_show(
    tmp_path: Path, hdr_stage: DecodeStage, transfer: int, tag_gamut: bool
) -> None:
    """An HDR clip (PQ or HLG, BT.2020, the gamut tagged or not) made from SDR frames comes back
    as those frames: each 32-px thumbnail is within 1.5 levels on average of the SDR frame's 2x2
    means. Its HDR values read as SDR, as before, are tens of levels away."""
    uri = str(tmp_path / f"hdr-{transfer}.mp4")
    write_hdr_clip(Path(uri), transfer, tag_gamut=tag_gamut)
    out = hdr_stage(batch([uri]))
    assert list(out[schema.ERROR]) == [""]

    with av.open(uri) as container:
        frames = list(container.decode(video=0))
    assert (frames[0].color_trc, frames[0].color_primaries) == (transfer, 9 if tag_gamut else 2)
    indices = np.round(out[schema.FRAME_TIMES_S][0] * CLIP_FPS).astype(int)
    for got, index in zip(out[schema.FRAMES][0], indices, strict=True):
        shown = textured_frame(int(index)).astype(np.float64)
        shown = shown.reshape(32, 2, 48, 2, 3).mean(axis=(1, 3))[:, 8:40]
        assert np.abs(got - shown).mean() < 1.5, (index, np.abs(got - shown).mean())
        coded = frames[index].to_ndarray(format="rgb48le").astype(np.float64) / 257
        coded = coded.reshape(32, 2, 48, 2, 3).mean(axis=(1, 3))[:, 8:40]
        assert np.abs(coded - shown).mean() > 10


@pytest.fixture(scope="module")
def program_stream(tmp_path_factory: pytest.TempPathFactory) -> str:
    """MPEG-2 in MPEG-PS (DVD and old broadcast files), a keyframe every 8 frames, two B-frames
    between references, groups of pictures open (their first B-frames refer to the group
    before) as DVD encoders leave them."""
    path = tmp_path_factory.mktemp("program_stream") / "mpeg2-short-gop.mpg"
    write_textured_clip(path, "mpeg2video", {"g": "8", "bf": "2", "b": "2000000"})
    return str(path)


@pytest.fixture(scope="module")
def ogg_stream(tmp_path_factory: pytest.TempPathFactory) -> str:
    """VP8 in Ogg (web video), a keyframe every 8 frames."""
    path = tmp_path_factory.mktemp("ogg_stream") / "vp8-short-gop.ogv"
    write_textured_clip(path, "libvpx", {"g": "8", "b": "1000000"})
    return str(path)


@pytest.mark.parametrize("container_format", ["mpegts", "mpeg", "ogg"])
def test_files_without_a_seek_index(
    clips: dict[str, str], program_stream: str, ogg_stream: str, container_format: str
) -> None:
    """MPEG-TS, MPEG-PS and Ogg carry no seek index, and a seek to a timestamp lands groups of
    pictures away. MPEG-TS and MPEG-PS are sought by byte position (from the packet before each
    keyframe's); Ogg is read from the start, the packets before each needed keyframe read past
    undecoded. Either way only what the sampled frames need is decoded (the floor's frames,
    where all three read the 48-frame file from the start before), and the sampled frames are
    exactly those of a full decode."""
    uri = {"mpegts": clips["x264-short-gop.ts"], "mpeg": program_stream, "ogg": ogg_stream}[
        container_format
    ]
    with DecodeStage(frames=FRAMES, image_size=64) as stage:
        out = stage(batch([uri]))
    with av.open(uri) as container:
        assert container.format.name == container_format
        every = np.stack(
            [f.to_ndarray(format="rgb24")[:, 16:80] for f in container.decode(video=0)]
        )
    with av.open(uri) as container:
        index = demuxed_frames(container, container.streams.video[0])
    indices = np.round(out[schema.FRAME_TIMES_S][0] * CLIP_FPS).astype(int)
    assert indices.tolist() == [int((i + 0.5) * CLIP_FRAMES / FRAMES) for i in range(FRAMES)]
    np.testing.assert_array_equal(out[schema.FRAMES][0], every[indices])
    decoded = int(out[schema.FRAMES_DECODED][0])
    assert decoded == frames_to_reach(indices, index.keyframes) < indices[-1] + 1


@pytest.mark.parametrize(
    ("suffix", "codec", "options"),
    [
        (".ts", "libx264", {"preset": "medium", "g": "8", "keyint_min": "8"}),
        (".mpg", "mpeg2video", {"g": "8", "bf": "2", "b": "2000000"}),
    ],
)
@pytest.mark.parametrize("decoder", DECODERS)
def test_recordings_joined_end_to_end_are_one_timeline(
    tmp_path: Path, suffix: str, codec: str, options: dict[str, str], decoder: str
) -> None:
    """Two recordings joined byte for byte (``cat a.ts b.ts``, as DVR and broadcast captures are
    assembled) restart their timestamps halfway. Players show the second after the first, and
    the stage samples them so: a 4-s video, not two 2-s ones laid over each other, its frames
    those of a full decode in order, half of them from the second recording, decoding only
    what they need. decord sorts the two into each other, and nvdec's frame numbers would
    repeat: PyAV decodes such files for both."""
    parts = [tmp_path / f"part-{k}{suffix}" for k in range(2)]
    for k, part in enumerate(parts):
        write_textured_clip(part, codec, options, first=k * CLIP_FRAMES)
    uri = tmp_path / f"joined{suffix}"
    uri.write_bytes(parts[0].read_bytes() + parts[1].read_bytes())
    with DecodeStage(frames=FRAMES, image_size=64, decoder=decoder) as stage:
        out = stage(batch([str(uri)]))
    assert out[schema.ERROR].tolist() == [""]
    assert out[schema.DECODER][0].startswith(DECODER_PYAV)
    assert (
        2 * CLIP_FRAMES / CLIP_FPS <= out[schema.DURATION_S][0] < 2 * CLIP_FRAMES / CLIP_FPS + 0.2
    )
    with av.open(str(uri)) as container:
        every = np.stack(
            [f.to_ndarray(format="rgb24")[:, 16:80] for f in container.decode(video=0)]
        )
    with av.open(str(uri)) as container:
        index = demuxed_frames(container, container.streams.video[0])
    assert len(every) == len(index.pts) == 2 * CLIP_FRAMES
    picked = np.searchsorted(index.starts_s, out[schema.FRAME_TIMES_S][0] + 1e-4) - 1
    assert (np.diff(picked) > 0).all() and (picked >= CLIP_FRAMES).sum() == FRAMES // 2
    np.testing.assert_array_equal(out[schema.FRAMES][0], every[picked])
    assert out[schema.FRAMES_DECODED][0] == frames_to_reach(picked, index.keyframes)


def test_fast_frames_are_true_frames_and_cheaper(clips: dict[str, str]) -> None:
    """``fast`` skips non-reference frames and deblocking: what comes back is still the frame
    at its timestamp (as a full decode gives it), for fewer frames decoded."""
    uri = clips["x264-long-gop.mp4"]
    decoded = {}
    for sampling in (SAMPLING_UNIFORM, SAMPLING_FAST, SAMPLING_KEYFRAME):
        with DecodeStage(frames=FRAMES, image_size=32, sampling=sampling) as stage:
            out = stage(batch([uri]))
        decoded[sampling] = int(out[schema.FRAMES_DECODED][0])
        if sampling == SAMPLING_FAST:
            fast = out
    assert decoded[SAMPLING_KEYFRAME] < decoded[SAMPLING_FAST] < decoded[SAMPLING_UNIFORM]

    indices = np.round(fast[schema.FRAME_TIMES_S][0] * CLIP_FPS).astype(int)
    thumbnail = Thumbnailer(32, threads=1)  # as the stage scales and crops
    with av.open(uri) as container:
        every = [thumbnail(f) for f in container.decode(video=0)]
    difference = np.abs(fast[schema.FRAMES][0].astype(int) - np.stack(every)[indices])
    # Skipped deblocking: under 1 level on average at 224 px of real footage (bench/decode.py);
    # on a 96x64 clip block edges are a larger share of the picture.
    assert difference.mean() < 3.0, difference.mean()


@pytest.mark.parametrize("decoder", DECODERS)
def test_clips_of_one_file_are_decoded_in_one_pass(
    clips: dict[str, str], decoder: str, videos: list[str]
) -> None:
    uri = clips["x264-short-gop.mp4"]
    spans = [(0.25 * i, 0.25 * i + 0.5) for i in range(7)]
    uris = [uri] * len(spans) + [videos[0]]
    starts = np.array([s for s, _ in spans] + [math.nan])
    ends = np.array([e for _, e in spans] + [math.nan])
    with DecodeStage(frames=FRAMES, image_size=32, decoder=decoder) as stage:
        together = stage(batch(uris, start_s=starts, end_s=ends))
        assert stage.passes == 2  # one per file
        alone = [
            stage(batch([u], start_s=starts[i : i + 1], end_s=ends[i : i + 1]))
            for i, u in enumerate(uris)
        ]

    assert list(together[schema.ERROR]) == [""] * len(uris)
    for i, single in enumerate(alone):
        np.testing.assert_array_equal(together[schema.FRAMES][i], single[schema.FRAMES][0])
        np.testing.assert_array_equal(
            together[schema.FRAME_TIMES_S][i], single[schema.FRAME_TIMES_S][0]
        )
    shared = together[schema.FRAMES_DECODED][: len(spans)].sum()
    assert shared < sum(int(a[schema.FRAMES_DECODED][0]) for a in alone[: len(spans)])


def test_targets_and_their_floor() -> None:
    keyframes = np.array([0, 10, 20])
    # Frames 5 and 7 share the first GOP; the second GOP holds none; 25 starts from keyframe 20.
    assert frames_to_reach(np.array([7, 5, 25]), keyframes) == 8 + 6
    starts, end = constant_rate_starts(30, *CONSTANT_RATES[0])
    fast = choose_targets(starts, end, 0, 30, 3, sampling=SAMPLING_FAST, keyframes=keyframes)
    assert [(t.want, t.exact) for t in fast] == [(0, True), (10, True), (20, True)]
    fast = choose_targets(starts, end, 0, 30, 3, sampling=SAMPLING_FAST, keyframes=np.array([0]))
    # The last chunk's target is the last of its group of pictures: its first reference frame.
    assert [(t.want, t.lo, t.hi, t.exact) for t in fast] == [
        (0, 0, 1, True),
        (15, 10, 20, False),
        (20, 20, 30, False),
    ]
    keyframe = choose_targets(
        starts, end, 12, 30, 3, sampling=SAMPLING_KEYFRAME, keyframes=keyframes
    )
    assert [t.want for t in keyframe] == [20, 20, 20]


def test_sampling_is_part_of_the_model_id() -> None:
    import argparse

    from jobs.index import add_decode_arguments, add_model_arguments, model_spec
    from pipelines.encode import ModelSpec

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    add_decode_arguments(parser)
    args = ["--model", "tiny", "--sampling", SAMPLING_FAST, "--decoder", DECODER_DECORD]
    spec = model_spec(parser.parse_args(args))

    assert (spec.sampling, spec.decoder) == (SAMPLING_FAST, DECODER_DECORD)
    uniform = ModelSpec("tiny").build().model_id
    assert model_spec(parser.parse_args(["--model", "tiny"])).build().model_id == uniform
    assert spec.build().model_id == f"{uniform}/sampling-{SAMPLING_FAST}"
