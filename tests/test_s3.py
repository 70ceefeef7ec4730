"""The index job with manifest, videos and tables on S3: a real S3 server (moto) on loopback.

moto runs in its own process and is reached over HTTP by every client the job uses: pyarrow in
the driver and in the decoder processes of Ray's actors, LanceDB's Rust object store in the driver.
Nothing is mocked.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from jobs import index as index_job
from jobs import search as search_job
from pipelines.decode import DecodeStage
from pipelines.encode import EncodeStage, ModelSpec
from pipelines.storage import StorageOptions

BUCKET = "corpus"
KEY_ID, SECRET = "moto-key", "moto-secret"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """``moto_server`` on a free loopback port, in its own process; yields its endpoint URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        if server.poll() is not None:
            pytest.fail(f"moto_server exited with status {server.returncode} (port {port} taken?)")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                pytest.fail("moto_server did not listen within 60 s")
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture
def s3_env(ray_session: dict, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> StorageOptions:
    """The job's environment points at the local S3 server. Ray is started first (this fixture
    depends on it), so its workers do not see these variables: only what the job hands them
    explicitly lets them read the videos."""
    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
        # No instance-metadata lookups: there is no EC2 here, only slow timeouts.
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    return StorageOptions.from_env()


def test_storage_options_from_env_for_pyarrow_and_lancedb() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://ignored:1",
        "AWS_ENDPOINT_URL_S3": "minio:9000",
        "AWS_ALLOW_HTTP": "true",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
    }
    options = StorageOptions.from_env(env)
    assert options.endpoint == "http://minio:9000"  # the S3-specific variable wins
    assert options.region == "eu-west-1"
    assert "secret" not in repr(options)
    assert options.lancedb_options("s3://bucket/db") == {
        "aws_endpoint": "http://minio:9000",
        "aws_region": "eu-west-1",
        "aws_access_key_id": "key",
        "aws_secret_access_key": "secret",
        "allow_http": "true",
    }
    assert options.lancedb_options("/local/db") == {}
    fs, path = options.filesystem("s3://bucket/videos/a%20b.mp4")
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/videos/a b.mp4"
    assert StorageOptions.from_env({"AWS_ENDPOINT": "ceph:80"}).endpoint == "https://ceph:80"
    with pytest.raises(ValueError, match="no bucket"):
        options.filesystem("s3:///key")


def upload(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as out:
        out.write(data)


def write_manifest(fs: pafs.FileSystem, rows: pa.Table) -> None:
    with fs.open_output_stream(f"{BUCKET}/manifest/part-00000.parquet") as out:
        pq.write_table(rows, out)


def read(db: lancedb.DBConnection, name: str) -> pa.Table:
    return db.open_table(name).to_arrow().sort_by("video_id")


def test_index_and_reindex_cycle_on_s3(
    s3_env: StorageOptions, sample_corpus: Path, capsys: pytest.CaptureFixture
) -> None:
    import ray

    @ray.remote(num_cpus=0)
    def worker_endpoint() -> str | None:
        import os

        return os.environ.get("AWS_ENDPOINT_URL")

    # The premise of this test: a worker cannot find the server from its own environment.
    assert ray.get(worker_endpoint.remote()) != s3_env.endpoint

    fs = pafs.S3FileSystem(
        endpoint_override=s3_env.endpoint,
        access_key=KEY_ID,
        secret_key=SECRET,
        region="us-east-1",
        allow_bucket_creation=True,
    )
    fs.create_dir(BUCKET)
    local = pads.dataset(str(sample_corpus / "manifest")).to_table().sort_by("video_id")
    local = local.slice(0, 9)
    files = [Path(uri) for uri in local["uri"].to_pylist()]
    for file in files:
        upload(fs, f"{BUCKET}/videos/{file.name}", file.read_bytes())
    s3_uris = pa.array([f"s3://{BUCKET}/videos/{file.name}" for file in files])
    corpus = local.set_column(local.schema.get_field_index("uri"), "uri", s3_uris)
    ids = corpus["video_id"].to_pylist()
    gone = pa.table(
        {
            "video_id": ["never-uploaded"],
            "uri": [f"s3://{BUCKET}/videos/never-uploaded.mp4"],
            "caption": pa.array([["nothing"]], pa.list_(pa.string())),
            "split": ["test"],
        }
    )

    db_uri = f"s3://{BUCKET}/db"
    args = ["--manifest", f"s3://{BUCKET}/manifest", "--db", db_uri, "--model", "tiny",
            "--batch-size", "2", "--gpus-per-actor", "0", "--log-level", "WARNING"]  # fmt: skip

    # 1. Index six videos and one whose object does not exist.
    write_manifest(fs, pa.concat_tables([corpus.slice(0, 6), gone]))
    assert index_job.main([*args, "--table", "videos"]) == 0
    assert "plan: new=6, missing=1, deleted=0" in capsys.readouterr().out
    db = lancedb.connect(db_uri, storage_options=s3_env.lancedb_options(db_uri))
    first = read(db, "videos")
    assert first["video_id"].to_pylist() == ids[:6]
    assert pc.all(pc.starts_with(first["uri"], f"s3://{BUCKET}/videos/")).as_py()
    errors = read(db, "videos_errors")
    assert errors["video_id"].to_pylist() == ["never-uploaded"]
    assert errors["error"][0].as_py().startswith("missing file")

    # 2. Add a video, overwrite one with other bytes, drop one (and the missing one).
    changed, dropped, added, donor = ids[1], ids[2], ids[6], files[8]
    # A different size guarantees a new fingerprint: S3's LastModified has 1 s resolution.
    assert donor.stat().st_size != files[1].stat().st_size
    upload(fs, f"{BUCKET}/videos/{files[1].name}", donor.read_bytes())
    new_manifest = corpus.filter(pc.is_in(corpus["video_id"], pa.array([*ids[:2], *ids[3:7]])))
    write_manifest(fs, new_manifest)
    assert index_job.main([*args, "--table", "videos"]) == 0
    out = capsys.readouterr().out
    assert "plan: new=1, changed=1, unchanged=4, deleted=2" in out
    assert "indexed     2 videos" in out and "deleted     2;" in out

    second = read(db, "videos")
    assert second["video_id"].to_pylist() == sorted([*ids[:2], *ids[3:7]])
    assert dropped not in second["video_id"].to_pylist()
    assert db.open_table("videos_errors").count_rows() == 0
    before = {row["video_id"]: row for row in first.to_pylist()}
    for row in second.to_pylist():
        if row["video_id"] in (changed, added):
            continue
        assert row == before[row["video_id"]], f"{row['video_id']} was rewritten"
    changed_at = second.filter(pc.equal(second["video_id"], changed))["indexed_at"][0].as_py()
    assert changed_at > before[changed]["indexed_at"]

    # 3. Unchanged: nothing to do.
    assert index_job.main([*args, "--table", "videos"]) == 0
    assert "plan: unchanged=6, deleted=0" in capsys.readouterr().out
    assert read(db, "videos").equals(second)

    # 4. The two re-encoded rows hold what a fresh encode of the objects' current bytes gives
    # (read here, outside Ray, with the same options).
    encode = EncodeStage(ModelSpec("tiny"))
    frames, size = encode.model.config.frames, encode.model.image_size
    rows = second.filter(pc.is_in(second["video_id"], pa.array([changed, added])))
    with DecodeStage(frames=frames, image_size=size, storage=s3_env) as decode:
        fresh = encode(
            decode(
                {
                    "video_id": rows["video_id"].to_numpy(zero_copy_only=False),
                    "uri": rows["uri"].to_numpy(zero_copy_only=False),
                }
            )
        )
    assert fresh["error"].to_pylist() == ["", ""]
    np.testing.assert_allclose(
        np.stack(rows["vector"].to_numpy(zero_copy_only=False)),
        np.stack(fresh["vector"].to_numpy(zero_copy_only=False)),
        atol=1e-5,
    )
    changed_row = rows.filter(pc.equal(rows["video_id"], changed))
    assert not np.allclose(changed_row["vector"][0].as_py(), before[changed]["vector"], atol=1e-3)

    # 5. Search reads the same table through the same options.
    capsys.readouterr()
    query = ["a red circle", "--db", db_uri, "--table", "videos", "--model", "tiny", "-k", "3"]
    assert search_job.main([*query, "--log-level", "WARNING"]) == 0
    hits = [line for line in capsys.readouterr().out.splitlines() if "s3://" in line]
    assert len(hits) == 3


def test_the_search_service_reads_video_ranges_and_frames_from_s3(
    s3_env: StorageOptions, sample_corpus: Path
) -> None:
    """What ``/video`` and ``/thumbnail`` do for an ``s3://`` uri (``pipelines.serve.media``)."""
    import io

    from PIL import Image

    from pipelines.serve.media import MediaReader, parse_range

    fs = pafs.S3FileSystem(
        endpoint_override=s3_env.endpoint, access_key=KEY_ID, secret_key=SECRET,
        region="us-east-1", allow_bucket_creation=True,
    )  # fmt: skip
    fs.create_dir("media")
    local = sorted((sample_corpus / "videos").glob("*.mp4"))[0]
    data = local.read_bytes()
    upload(fs, "media/clip.mp4", data)
    media, uri = MediaReader(s3_env), "s3://media/clip.mp4"

    assert media.size(uri) == len(data)
    wanted = parse_range("bytes=100-1099", len(data))
    assert media.read(uri, wanted) == data[100:1100]
    assert b"".join(media.stream(uri)) == data
    from_s3 = Image.open(io.BytesIO(media.thumbnail(uri, 1.0)))
    from_disk = Image.open(io.BytesIO(MediaReader().thumbnail(str(local), 1.0)))
    assert from_s3.size == from_disk.size == (96, 96)
    assert np.array_equal(np.asarray(from_s3), np.asarray(from_disk))
    with pytest.raises(FileNotFoundError):
        media.size("s3://media/absent.mp4")


def test_the_writer_lease_on_s3_refuses_a_second_writer_and_is_freed(
    s3_env: StorageOptions,
) -> None:
    from pipelines.lease import WriterBusyError, WriterLease, active_writer

    fs = pafs.S3FileSystem(
        access_key=KEY_ID, secret_key=SECRET, endpoint_override=s3_env.endpoint,
        region="us-east-1", allow_bucket_creation=True,
    )  # fmt: skip
    fs.create_dir("leases")
    db = "s3://leases/db"
    with WriterLease(db_uri=db, table="videos", command="first job"):
        assert fs.get_file_info("leases/db/videos.writer-lease.json").type == pafs.FileType.File
        with pytest.raises(WriterBusyError, match="first job"):
            WriterLease(db_uri=db, table="videos").acquire()
        assert active_writer(db, "videos") is not None
    assert fs.get_file_info("leases/db/videos.writer-lease.json").type == pafs.FileType.NotFound
    WriterLease(db_uri=db, table="videos").acquire().release()
