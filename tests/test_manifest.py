"""Manifest reading, validation and fingerprints, on real Parquet shards and real files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipelines import schema
from pipelines.decode import MISSING_FILE, DecodeStage, error_category
from pipelines.manifest import ManifestError, attach_fingerprints, read_manifest


def write_shard(shard: Path, **columns: list | pa.Array) -> Path:
    shard.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), shard)
    return shard


def two_shards(folder: Path) -> Path:
    write_shard(folder / "part-00000.parquet", video_id=["a", "b"], uri=["/v/a.mp4", "/v/b.mp4"])
    write_shard(folder / "part-00001.parquet", video_id=["c"], uri=["/v/c.mp4"])
    return folder


def test_reads_every_shard_of_a_folder_in_sorted_order(tmp_path: Path) -> None:
    folder = two_shards(tmp_path / "m")
    write_shard(folder / "x-more" / "part-00002.parquet", video_id=["d"], uri=["/v/d.mp4"])
    write_shard(folder / "_ignored.parquet", video_id=["x"], uri=["/v/x.mp4"])
    (folder / "notes.txt").write_text("not a shard")

    table = read_manifest(folder)

    assert table[schema.VIDEO_ID].to_pylist() == ["a", "b", "c", "d"]
    assert table.schema.field(schema.VIDEO_ID).type == pa.string()


def test_accepts_a_file_a_list_and_a_file_uri(tmp_path: Path) -> None:
    folder = two_shards(tmp_path / "m")
    first, second = sorted(folder.glob("*.parquet"))

    assert read_manifest(first).num_rows == 2
    assert read_manifest([second, str(first)])[schema.VIDEO_ID].to_pylist() == ["c", "a", "b"]
    assert read_manifest(f"file://{folder}").num_rows == 3


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ({"uri": ["/v/a.mp4"]}, "missing required column(s) 'video_id'"),
        ({"video_id": ["a"], "path": ["/v/a.mp4"]}, "missing required column(s) 'uri'"),
    ],
)
def test_missing_required_column_names_the_shard(
    tmp_path: Path, columns: dict, expected: str
) -> None:
    folder = two_shards(tmp_path / "m")
    bad = write_shard(folder / "part-00009.parquet", **columns)

    with pytest.raises(ManifestError) as err:
        read_manifest(folder)

    assert str(bad) in str(err.value)
    assert expected in str(err.value)


def test_duplicate_id_names_both_shards_and_rows(tmp_path: Path) -> None:
    folder = two_shards(tmp_path / "m")
    write_shard(folder / "part-00002.parquet", video_id=["e", "b"], uri=["/v/e.mp4", "/v/b2.mp4"])

    with pytest.raises(ManifestError) as err:
        read_manifest(folder)

    message = str(err.value)
    assert "duplicate video_id 'b'" in message
    assert f"{folder / 'part-00000.parquet'} row 1" in message
    assert f"{folder / 'part-00002.parquet'} row 1" in message


@pytest.mark.parametrize(
    ("ids", "uris", "expected"),
    [
        (["a", "b", "c"], ["/v/a.mp4", None, "/v/c.mp4"], "row 1: null uri"),
        (["a", "b", "c"], ["/v/a.mp4", "/v/b.mp4", ""], "row 2: empty uri"),
        (["a", None, None], ["/v/a.mp4", "/v/b.mp4", "/v/c.mp4"], "row 1: null video_id (1 more"),
    ],
)
def test_null_or_empty_key_columns_name_shard_and_row(
    tmp_path: Path, ids: list, uris: list, expected: str
) -> None:
    folder = two_shards(tmp_path / "m")
    bad = write_shard(folder / "part-00005.parquet", video_id=ids, uri=uris)

    with pytest.raises(ManifestError) as err:
        read_manifest(folder)

    assert f"{bad} {expected}" in str(err.value)


@pytest.mark.parametrize(
    ("start_s", "end_s", "expected"),
    [
        ([0, 5], [2.5, 5.0], "row 1: end_s 5 is not after start_s 5"),
        ([0, 3], [2.5, 1.0], "row 1: end_s 1 is not after start_s 3"),
        ([None, None], [2.0, -1.0], "row 1: negative end_s (-1)"),
        (
            [None, None],
            [0.0, 2.0],
            "row 0: end_s 0 is not after the video's start (start_s is null)",
        ),
        (None, [2.0, 0.0], "row 1: end_s 0 is not after the video's start (start_s is null)"),
        ([0, -0.5], [1.0, 2.0], "row 1: negative start_s (-0.5)"),
        ([0, float("nan")], [1.0, 2.0], "row 1: start_s is nan, not a number of seconds"),
        ([0, 1], [float("inf"), 2.0], "row 0: end_s is inf, not a number of seconds"),
        ([0, float("-inf")], None, "row 1: start_s is -inf, not a number of seconds"),
    ],
)
def test_every_clip_range_that_names_no_clip_is_refused_naming_shard_and_row(
    tmp_path: Path, start_s: list | None, end_s: list | None, expected: str
) -> None:
    columns: dict[str, pa.Array] = {}
    if start_s is not None:
        columns["start_s"] = pa.array(start_s, pa.float64())
    if end_s is not None:
        columns["end_s"] = pa.array(end_s, pa.float64())
    shard = write_shard(
        tmp_path / "m" / "p.parquet", video_id=["a", "b"], uri=["/v/a.mp4", "/v/b.mp4"], **columns
    )
    with pytest.raises(ManifestError) as err:
        read_manifest(shard)
    assert str(err.value) == f"{shard} {expected}"


def test_clip_ranges_that_name_a_clip_are_accepted(tmp_path: Path) -> None:
    shard = write_shard(
        tmp_path / "m" / "p.parquet",
        video_id=["whole", "from", "to", "both", "past_end"],
        uri=[f"/v/{n}.mp4" for n in range(5)],
        start_s=[None, 1.0, None, 0.0, 1.8],
        end_s=[None, None, 2.0, 0.5, 1000.0],
    )
    table = read_manifest(shard)
    assert table["end_s"].to_pylist() == [None, None, 2.0, 0.5, 1000.0]


def test_caption_is_normalised_and_extra_columns_are_carried(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    write_shard(
        folder / "part-0.parquet",
        video_id=["a", "b"],
        uri=["/v/a.mp4", "/v/b.mp4"],
        caption=["a red square", None],
        source=["camera-1", "camera-2"],
    )
    write_shard(
        folder / "part-1.parquet",
        video_id=pa.array([7], pa.int64()),
        uri=["/v/c.mp4"],
        caption=pa.array([["two", "captions"]], pa.list_(pa.large_string())),
        start_s=pa.array([1], pa.int32()),
        end_s=[3.5],
    )

    table = read_manifest(folder)

    assert table.schema.field(schema.CAPTION).type == pa.list_(pa.string())
    assert table[schema.CAPTION].to_pylist() == [["a red square"], None, ["two", "captions"]]
    assert table["source"].to_pylist() == ["camera-1", "camera-2", None]
    assert table[schema.VIDEO_ID].to_pylist() == ["a", "b", "7"]
    assert table[schema.START_S].to_pylist() == [None, None, 1.0]
    assert table.schema.field(schema.END_S).type == pa.float64()


def test_bad_caption_type_is_an_error(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "p.parquet", video_id=["a"], uri=["/v/a.mp4"], caption=[3])
    with pytest.raises(ManifestError, match="caption"):
        read_manifest(shard)


def test_relative_uris_resolve_against_the_shard_folder(tmp_path: Path) -> None:
    shard = write_shard(
        tmp_path / "m" / "sub" / "p.parquet",
        video_id=["a", "b", "c", "d"],
        uri=["videos/a.mp4", "/abs/b.mp4", "s3://bucket/c.mp4", "./x/../../d.mp4"],
    )
    table = read_manifest(tmp_path / "m")
    assert table[schema.URI].to_pylist() == [
        f"{shard.parent}/videos/a.mp4",
        "/abs/b.mp4",
        "s3://bucket/c.mp4",
        f"{shard.parent.parent}/d.mp4",
    ]


def test_missing_or_empty_source_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no \\*.parquet files"):
        read_manifest(tmp_path / "empty")


def make_files(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"video {i}.mp4"
        path.write_bytes(b"x" * (i + 1))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("list_threshold", [1, 1000])
def test_fingerprints_follow_the_bytes(tmp_path: Path, list_threshold: int) -> None:
    """Same answers whether folders are listed (threshold 1) or each file is looked up."""
    paths = make_files(tmp_path / "videos", 4)
    uris = [*paths, str(tmp_path / "videos" / "gone.mp4"), str(tmp_path / "no-dir" / "x.mp4")]
    table = pa.table({schema.VIDEO_ID: list("abcdef"), schema.URI: uris})

    before = attach_fingerprints(table, list_threshold=list_threshold)[schema.FINGERPRINT]
    assert before.null_count == 2
    assert before[4].as_py() is None and before[5].as_py() is None
    assert len(set(before.to_pylist()[:4])) == 4

    # Same size, new content: only the modification time tells them apart.
    st = os.stat(paths[1])
    Path(paths[1]).write_bytes(b"y" * st.st_size)
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    Path(paths[2]).write_bytes(b"longer than before")

    after = attach_fingerprints(table, list_threshold=list_threshold)[schema.FINGERPRINT]
    changed = [b != a for b, a in zip(before.to_pylist(), after.to_pylist(), strict=True)]
    assert changed == [False, True, True, False, False, False]


def test_given_fingerprints_are_kept_and_gaps_filled(tmp_path: Path) -> None:
    paths = make_files(tmp_path / "videos", 2)
    table = pa.table(
        {
            schema.VIDEO_ID: ["a", "b"],
            schema.URI: [f"file://{paths[0].replace(' ', '%20')}", paths[1]],
            schema.FINGERPRINT: [None, "etag-123"],
        }
    )
    out = attach_fingerprints(table)
    assert out.column_names == table.column_names
    assert out[schema.FINGERPRINT].to_pylist() == [
        f"1:{os.stat(paths[0]).st_mtime_ns}",
        "etag-123",
    ]


def test_clip_bounds_are_part_of_the_fingerprint(tmp_path: Path) -> None:
    paths = make_files(tmp_path / "videos", 1) * 4
    table = pa.table(
        {
            schema.VIDEO_ID: ["whole", "clip", "from", "missing"],
            schema.URI: [*paths[:3], str(tmp_path / "gone.mp4")],
            schema.START_S: pa.array([None, 1.5, 2.0, 1.0], pa.float64()),
            schema.END_S: pa.array([None, 4.0, None, 2.0], pa.float64()),
        }
    )
    plain = f"1:{os.stat(paths[0]).st_mtime_ns}"
    assert attach_fingerprints(table)[schema.FINGERPRINT].to_pylist() == [
        plain, f"{plain}@1.5-4", f"{plain}@2-", None
    ]  # fmt: skip


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[pafs.S3FileSystem, str]]:
    """A local S3 (moto) with one bucket; yields the filesystem and the URI query to reach it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        for key, value in {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            env.setenv(key, value)
        fs = pafs.S3FileSystem(
            endpoint_override=f"{host}:{port}",
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
        )
        fs.create_dir("corpus")
        yield fs, f"?endpoint_override={host}%3A{port}&scheme=http&region=us-east-1"
    server.stop()


def test_s3_manifest_fingerprints_and_decode(s3, sample_corpus: Path) -> None:
    """A manifest on S3 with relative URIs: read, fingerprinted by listing, decoded via a copy."""
    fs, query = s3
    videos = sorted((sample_corpus / "videos").glob("*.mp4"))[:3]
    for i, video in enumerate(videos):
        with fs.open_output_stream(f"corpus/videos/v{i}.mp4") as f:
            f.write(video.read_bytes())
    with fs.open_output_stream("corpus/manifest/part-0.parquet") as f:
        uris = ["../videos/v0.mp4", "../videos/v1.mp4", "../videos/v2.mp4", "../videos/gone.mp4"]
        pq.write_table(pa.table({"video_id": list("abcd"), "uri": uris}), f)

    table = read_manifest(f"s3://corpus/manifest{query}")
    assert table[schema.URI][0].as_py() == f"s3://corpus/videos/v0.mp4{query}"

    for threshold in (1, 1000):
        fingerprints = attach_fingerprints(table, list_threshold=threshold)
        sizes = [fp and fp.split(":")[0] for fp in fingerprints[schema.FINGERPRINT].to_pylist()]
        assert sizes == [*(str(v.stat().st_size) for v in videos), None]

    columns = {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
    with DecodeStage(frames=4, image_size=32) as stage:
        out = stage(columns)
        local = np.array([str(v) for v in videos])
        expected = stage({schema.VIDEO_ID: np.array(list("abc")), schema.URI: local})
    assert [error_category(e) for e in out[schema.ERROR]] == ["", "", "", MISSING_FILE]
    np.testing.assert_array_equal(out[schema.FRAMES][:3], expected[schema.FRAMES])
