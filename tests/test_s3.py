"""S3 access beside the index job (the search service's media reads, the writer lease) against
moto on loopback, and the storage options. The jobs end to end run against SeaweedFS, a real S3
server, in tests/test_seaweedfs.py.

moto runs in its own process and is reached over HTTP by every client used: pyarrow, LanceDB's
Rust object store. Nothing is mocked in process.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest

from pipelines.storage import StorageOptions

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
