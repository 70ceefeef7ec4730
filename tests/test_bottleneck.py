"""The bottleneck report: which stage bounds the job, from costs the real stages measured."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads
import pytest

from pipelines import schema
from pipelines.bottleneck import DECODE, ENCODE, decode_cpus_per_encoder, find_bottleneck
from pipelines.decode import DecodeStage
from pipelines.encode import EncodeStage, ModelSpec
from pipelines.synthetic import write_sample_corpus


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Two 640x480 videos of 6 s at 25 fps: a decode batch."""
    out = tmp_path_factory.mktemp("bottleneck")
    write_sample_corpus(
        out, videos=2, seed=3, shards=1, width=640, height=480, fps=25, seconds=(6.0, 6.0),
        workers=1,
    )  # fmt: skip
    rows = pads.dataset(str(out / "manifest")).to_table()
    return {
        name: np.array(rows[name].to_pylist(), object) for name in (schema.VIDEO_ID, schema.URI)
    }


def measured_costs(
    batch: dict[str, np.ndarray], *, frames: int, image_size: int, model: ModelSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Per-video decode seconds and encode seconds, from the stages' own columns. A single
    decoder child, one thread: its wall seconds per video are its CPU-seconds."""
    with DecodeStage(frames=frames, image_size=image_size) as decode:
        decoded = decode(batch)
    assert not any(decoded[schema.ERROR])
    encode = EncodeStage(model, torch_threads=1)
    model_frames, model_size = encode.model.config.frames, encode.model.image_size
    for_model = decoded
    if (frames, image_size) != (model_frames, model_size):
        with DecodeStage(frames=model_frames, image_size=model_size) as decode:
            for_model = decode(batch)
    encoded = encode(for_model)
    return decoded[schema.DECODE_S], encoded[schema.ENCODE_S].to_numpy()


def test_slow_decoding_is_named_as_the_bound(videos: dict[str, np.ndarray]) -> None:
    # 48 frames scaled to 448 px from 640x480 video against the tiny model (8 frames at 64 px).
    decode_s, encode_s = measured_costs(videos, frames=48, image_size=448, model=ModelSpec("tiny"))
    report = find_bottleneck(decode_s, encode_s, decode_cpus=1, encode_actors=1)
    assert report.stage == DECODE, report.describe()
    assert report.balanced_decode_cpus_per_encoder > 1
    assert report.describe().startswith("bound by decode: add CPUs")


def test_slow_encoding_is_named_as_the_bound(videos: dict[str, np.ndarray]) -> None:
    # ViT-B/32 at 12 frames on one thread against a decode of 8 frames at 64 px.
    decode_s, encode_s = measured_costs(
        videos, frames=8, image_size=64, model=ModelSpec("ViT-B-32-center")
    )
    report = find_bottleneck(decode_s, encode_s, decode_cpus=1, encode_actors=1)
    assert report.stage == ENCODE, report.describe()
    assert report.balanced_decode_cpus_per_encoder < 1
    assert report.describe().startswith("bound by encode")


def test_capacities_and_balance_from_constructed_costs() -> None:
    # 0.5 core-s to decode, 0.5 ms to encode: 1,000 decode CPUs keep one GPU busy.
    report = find_bottleneck([0.4, 0.6], 0.0005, decode_cpus=64, encode_actors=2)
    assert report.stage == DECODE
    assert report.decode_videos_per_s == pytest.approx(128)
    assert report.encode_videos_per_s == pytest.approx(4000)
    assert report.videos_per_s == pytest.approx(128)
    assert report.balanced_decode_cpus_per_encoder == pytest.approx(1000)
    assert report.decode_cpus_for_balance == pytest.approx(2000)
    assert "add CPUs (2000 would keep up)" in report.describe()
    assert "\n" not in report.describe()
    balanced = find_bottleneck(0.01, 0.01, decode_cpus=4, encode_actors=4)
    assert balanced.stage == "balanced" and balanced.describe().startswith("balanced")
    assert decode_cpus_per_encoder(0.01, 0.02) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("decode", "encode", "cpus", "actors", "message"),
    [
        ([], 0.1, 1, 1, "decode_cpu_s: no measurements"),
        (0.1, [float("nan")], 1, 1, "encode_s: the mean cost must be positive"),
        (0.0, 0.1, 1, 1, "decode_cpu_s: the mean cost must be positive"),
        (0.1, 0.1, 0, 1, "decode_cpus must be positive"),
        (0.1, 0.1, 1, 0, "encode_actors must be positive"),
    ],
)
def test_meaningless_inputs_are_refused(
    decode: object, encode: object, cpus: float, actors: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        find_bottleneck(decode, encode, decode_cpus=cpus, encode_actors=actors)  # type: ignore[arg-type]
