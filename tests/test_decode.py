"""The decode stage on real files: sampling, resizing, and every way a video can be bad."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipelines import schema, synthetic
from pipelines.decode import (
    BAD_CLIP,
    DECODER_CRASHED,
    SAMPLING_RANDOM,
    TIMEOUT,
    DecodeStage,
    error_category,
    sample_indices,
)
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


def test_every_damaged_input_becomes_an_error_row(
    stage: DecodeStage, damaged: dict[str, str], videos: list[str]
) -> None:
    ids = list(damaged)
    out = stage(batch([damaged[k] for k in ids] + [videos[1]]))

    for i, key in enumerate(ids):
        expected = synthetic.DAMAGED_EXPECTED[key]
        assert error_category(out[schema.ERROR][i]) == expected, (key, out[schema.ERROR][i])
        if expected:
            assert not out[schema.FRAMES][i].any()
            assert np.isnan(out[schema.FRAME_TIMES_S][i]).all()
            assert np.isnan(out[schema.DURATION_S][i])
    assert out[schema.ERROR][-1] == ""


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
    }
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


@pytest.mark.parametrize(("n", "t"), [(24, 6), (25, 12), (7, 3), (3, 6), (1, 4), (1000, 12)])
def test_uniform_indices_are_chunk_centres(n: int, t: int) -> None:
    expected = [int((i + 0.5) * n / t) for i in range(t)]
    assert sample_indices(n, t).tolist() == expected


def test_uniform_sampling_on_a_real_video(stage: DecodeStage, videos: list[str]) -> None:
    out = stage(batch([videos[0]]))
    fps = 10
    n = round(float(out[schema.DURATION_S][0]) * fps)
    expected = np.array([int((i + 0.5) * n / FRAMES) for i in range(FRAMES)]) / fps
    np.testing.assert_allclose(out[schema.FRAME_TIMES_S][0], expected, atol=1e-4)


@pytest.mark.parametrize(("n", "t"), [(24, 6), (25, 7), (5, 8), (300, 12)])
def test_random_indices_stay_inside_their_chunks(n: int, t: int) -> None:
    rng = np.random.default_rng(0)
    draws = np.stack([sample_indices(n, t, sampling=SAMPLING_RANDOM, rng=rng) for _ in range(200)])
    low = np.floor(np.arange(t) * n / t)
    high = np.ceil((np.arange(t) + 1) * n / t) - 1
    assert (draws >= low).all() and (draws <= high).all()
    if n >= 2 * t:
        assert len({tuple(d) for d in draws}) > 100


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
    # Shorter side 96 -> 48 makes the frame 80 wide; the centre 48 columns are all blue.
    pixels = out[schema.FRAMES][0].reshape(-1, 3).astype(int)
    assert np.abs(pixels - synthetic.COLOURS["blue"]).max() < 40


@pytest.mark.timeout(60)
def test_a_stalled_read_times_out_and_the_stage_recovers(fifo: str, videos: list[str]) -> None:
    with DecodeStage(frames=FRAMES, image_size=SIZE, timeout_s=1.0) as decode:
        began = time.monotonic()
        out = decode(batch([fifo, videos[0]]))
        elapsed = time.monotonic() - began

        assert error_category(out[schema.ERROR][0]) == TIMEOUT
        assert "1s" in out[schema.ERROR][0]
        assert out[schema.ERROR][1] == ""
        assert out[schema.FRAMES][1].any()
        assert elapsed < 30


@pytest.mark.timeout(60)
def test_a_crashed_decoder_is_an_error_row(fifo: str, videos: list[str]) -> None:
    with DecodeStage(frames=FRAMES, image_size=SIZE, timeout_s=30.0) as decode:
        assert decode(batch([videos[0]]))[schema.ERROR][0] == ""
        pid = decode.decoder_pid
        # The child is stuck opening the pipe when the "segfault" arrives.
        threading.Timer(0.5, os.kill, (pid, signal.SIGSEGV)).start()

        out = decode(batch([fifo, videos[1]]))

        assert error_category(out[schema.ERROR][0]) == DECODER_CRASHED
        assert "SIGSEGV" in out[schema.ERROR][0]
        assert out[schema.ERROR][1] == ""
        assert decode.decoder_pid not in (None, pid)
