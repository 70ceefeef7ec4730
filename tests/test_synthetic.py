"""The synthetic corpus: real, decodable H.264 files whose captions say what is on screen."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from jobs import sample
from pipelines import schema, synthetic
from pipelines.decode import DecodeStage
from pipelines.manifest import read_manifest

SHAPE_WORDS = "|".join(synthetic.SHAPES)


def colour_share(frames: np.ndarray, name: str) -> float:
    """Share of the pixels of ``frames`` [..., 3] within 40 levels of colour ``name``."""
    pixels = frames.reshape(-1, 3).astype(np.int32)
    return float((np.abs(pixels - synthetic.COLOURS[name]).max(axis=1) < 40).mean())


def test_corpus_layout_and_manifest(sample_corpus: Path) -> None:
    shards = sorted((sample_corpus / "manifest").glob("*.parquet"))
    assert [s.name for s in shards] == ["part-00000.parquet", "part-00001.parquet"]
    table = read_manifest(sample_corpus / "manifest")

    assert table.num_rows == 16
    assert table.schema.field(schema.CAPTION).type == pa.list_(pa.string())
    assert set(table[schema.SPLIT].to_pylist()) == {synthetic.SPLIT_TRAIN, synthetic.SPLIT_TEST}
    for uri, captions in zip(
        table[schema.URI].to_pylist(), table[schema.CAPTION].to_pylist(), strict=True
    ):
        assert Path(uri).is_absolute() and Path(uri).stat().st_size > 0
        assert 2 <= len(captions) <= 3 and len(set(captions)) == len(captions)


def test_videos_show_what_their_captions_say(sample_corpus: Path) -> None:
    table = read_manifest(sample_corpus / "manifest")
    with DecodeStage(frames=4, image_size=64) as stage:
        out = stage(
            {
                schema.VIDEO_ID: table[schema.VIDEO_ID].to_numpy(zero_copy_only=False),
                schema.URI: table[schema.URI].to_numpy(zero_copy_only=False),
            }
        )
    assert list(out[schema.ERROR]) == [""] * table.num_rows

    for frames, captions in zip(out[schema.FRAMES], table[schema.CAPTION].to_pylist(), strict=True):
        for caption in captions:
            background = re.search(r"(\w+) background", caption).group(1)
            colour = re.search(rf"(\w+) (?:{SHAPE_WORDS})", caption).group(1)
            assert colour_share(frames, background) > 0.4, caption
            assert colour_share(frames, colour) > 0.01, caption


def test_grammar_offers_distinct_high_contrast_scenes() -> None:
    grammar = synthetic.scene_grammar()
    assert len(set(grammar)) == len(grammar) > 2000
    for scene in grammar:
        assert scene.background != scene.colour
        distance = math.dist(synthetic.COLOURS[scene.background], synthetic.COLOURS[scene.colour])
        assert distance >= 150


def test_same_seed_gives_the_same_bytes_in_parallel_or_not(tmp_path: Path) -> None:
    serial = synthetic.write_sample_corpus(tmp_path / "a", videos=8, seed=3, workers=1)
    pooled = synthetic.write_sample_corpus(tmp_path / "b", videos=8, seed=3, workers=2)
    other = synthetic.write_sample_corpus(tmp_path / "c", videos=8, seed=4, workers=1)
    a, b, c = (read_manifest(m) for m in (serial, pooled, other))

    assert a[schema.CAPTION].equals(b[schema.CAPTION])
    assert a[schema.SPLIT].equals(b[schema.SPLIT])
    for x, y in zip(a[schema.URI].to_pylist(), b[schema.URI].to_pylist(), strict=True):
        assert Path(x).read_bytes() == Path(y).read_bytes()
    assert a[schema.CAPTION].to_pylist() != c[schema.CAPTION].to_pylist()


@pytest.mark.parametrize(("videos", "fraction", "tests"), [(2, 0.2, 1), (10, 0.3, 3), (5, 0.0, 0)])
def test_split_sizes(tmp_path: Path, videos: int, fraction: float, tests: int) -> None:
    folder = synthetic.write_sample_corpus(
        tmp_path, videos=videos, test_fraction=fraction, shards=3, seconds=(0.3, 0.3), workers=1
    )
    splits = read_manifest(folder)[schema.SPLIT].to_pylist()
    assert splits.count(synthetic.SPLIT_TEST) == tests
    assert len(list(folder.glob("*.parquet"))) == min(3, videos)


def test_damaged_inputs_are_written(sample_corpus: Path, tmp_path: Path) -> None:
    good = Path(read_manifest(sample_corpus / "manifest")[schema.URI][0].as_py())
    made = synthetic.write_damaged_videos(tmp_path, good_video=good)

    assert set(made) == set(synthetic.DAMAGED_EXPECTED)
    assert Path(made[synthetic.DAMAGED_EMPTY]).stat().st_size == 0
    assert not Path(made[synthetic.DAMAGED_MISSING]).exists()
    truncated = Path(made[synthetic.DAMAGED_TRUNCATED]).read_bytes()
    assert good.read_bytes().startswith(truncated) and len(truncated) < good.stat().st_size


def test_sample_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = sample.main(
        [
            "--out",
            str(tmp_path),
            "--videos",
            "5",
            "--shards",
            "2",
            "--test-fraction",
            "0.4",
            "--seed",
            "1",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "test: 2 videos" in printed and "train: 3 videos" in printed
    assert str(tmp_path / "manifest") in printed
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 5

    with pytest.raises(SystemExit):
        sample.main(["--out", str(tmp_path), "--videos", "0"])
