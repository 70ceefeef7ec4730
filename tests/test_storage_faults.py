"""Storage faults end in one line with the remedy, and the rerun after the fix completes."""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lancedb
import pytest

from jobs import index as index_job
from pipelines.faults import storage_fault
from pipelines.write import TableWriter, open_table

CPU_ONLY = ["--gpus-per-actor", "0"]
VIDEOS = 16  # the sample corpus


def index(corpus: Path, db: Path, *extra: str) -> int:
    return index_job.main(
        ["--manifest", str(corpus / "manifest"), "--db", str(db), "--table", "videos",
         "--model", "tiny", *CPU_ONLY, "--log-level", "WARNING", *extra]
    )  # fmt: skip


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


def assert_complete(db: Path) -> None:
    ids = lancedb.connect(str(db)).open_table("videos").to_arrow()["video_id"].to_pylist()
    assert len(ids) == len(set(ids)) == VIDEOS


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs filled to the last byte; remounted larger with ``grow``."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or 'mount failed'}")
    try:
        filler = os.open(mount_point / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(filler, b"\0" * 4096):
                pass
        except OSError as err:
            assert err.errno == errno.ENOSPC
        finally:
            os.close(filler)
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def grow(mount_point: Path) -> None:
    subprocess.run(
        ["mount", "-o", "remount,size=64m", str(mount_point)], check=True, capture_output=True
    )


def test_a_full_disk_is_one_line_and_the_rerun_after_growing_it_completes(
    ray_session: dict, sample_corpus: Path, full_disk: Path, capsys: pytest.CaptureFixture
) -> None:
    db = full_disk / "db"
    assert index(sample_corpus, db) == 1
    err = capsys.readouterr().err
    [line] = error_lines(err)
    assert line.startswith("error: no space left on the device that holds the database (--db)")
    assert "Traceback" not in err

    grow(full_disk)
    assert index(sample_corpus, db) == 0
    assert_complete(db)


def test_a_damaged_table_names_its_last_complete_version_and_how_to_restore_it(
    ray_session: dict, sample_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    db = tmp_path / "db"
    assert index(sample_corpus, db, "--commit-rows", "4", "--batch-size", "4") == 0
    newest = max((db / "videos.lance" / "data").iterdir(), key=lambda f: f.stat().st_mtime_ns)
    newest.unlink()
    capsys.readouterr()

    assert index(sample_corpus, db) == 1
    err = capsys.readouterr().err
    [line] = error_lines(err)
    assert f"the table videos in {db} is damaged: a file it needs is missing" in line
    assert newest.name in line
    assert "Traceback" not in err
    restore = re.search(r'restore it with python -c "(?P<code>[^"]+)", then rerun', line)
    assert restore, line

    subprocess.run([sys.executable, "-c", restore["code"]], check=True, capture_output=True)
    assert index(sample_corpus, db) == 0
    assert_complete(db)


def without_write_override() -> list[str]:
    """The command prefix under which mode bits bind this test's user: root ignores them unless
    its ``CAP_DAC_OVERRIDE`` is dropped (``setpriv``, util-linux)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot refuse root")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


def test_a_database_folder_the_job_may_not_write_is_one_line_and_nothing_is_written(
    sample_corpus: Path, tmp_path: Path
) -> None:
    """The --db folder exists but this user may not write in it: one line with the remedy, before
    any work, and the folder is left as it was."""
    db = tmp_path / "db"
    db.mkdir(mode=0o555)
    done = subprocess.run(
        [*without_write_override(), sys.executable, "-m", "jobs.index",
         "--manifest", str(sample_corpus / "manifest"), "--db", str(db), "--table", "videos",
         "--model", "tiny", *CPU_ONLY],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "CENTERCLIP_LOG_DIR": str(tmp_path / "logs")},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    [line] = error_lines(done.stderr)
    assert line.startswith("error: permission denied by the database's storage (--db)"), line
    assert "give this user write access" in line and "Traceback" not in done.stderr
    assert list(db.iterdir()) == []


def test_a_table_folder_without_any_version_is_created_over(tmp_path: Path) -> None:
    """What a creation cut short leaves (seen after a full disk): the folder, no version."""
    db = tmp_path / "db"
    for name in ("videos", "videos_errors"):
        (db / f"{name}.lance" / "_versions").mkdir(parents=True)
    assert open_table(lancedb.connect(str(db)), "videos") is None  # what the plan reads
    writer = TableWriter(db_uri=str(db), table="videos", dim=8, segments=2, model_id="m")
    assert writer.table.count_rows() == writer.errors.count_rows() == 0


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("on_s3", ["manifest", "db"])
def test_an_unreachable_object_store_is_one_line(
    ray_session: dict,
    sample_corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    on_s3: str,
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    manifest = "s3://bucket/manifest" if on_s3 == "manifest" else str(sample_corpus / "manifest")
    status = index_job.main(
        ["--manifest", manifest, "--db", "s3://bucket/db", "--table", "videos", "--model", "tiny",
         *CPU_ONLY, "--log-level", "WARNING"]
    )  # fmt: skip
    assert status == 1
    err = capsys.readouterr().err
    [line] = error_lines(err)
    assert line.startswith("error: cannot reach the object store at ")
    assert endpoint.split("//")[-1] in line
    assert "check AWS_ENDPOINT_URL" in line and "Traceback" not in err


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # LanceDB when the server went away mid-job (seen in tests/test_seaweedfs.py).
        (
            "External error: LanceError(IO): Generic S3 error: Error performing GET "
            "http://127.0.0.1:50301/restart/db/videos.lance/data/0111.lance in 466ms, after 3 "
            "retries, max_retries: 3, retry_timeout: 180s - HTTP error: error sending request",
            "cannot reach the object store at http://127.0.0.1:50301:",
        ),
        # pyarrow with a wrong secret key (SeaweedFS answers 403 to HeadObject).
        (
            "cannot open manifest location s3://b/manifest: When getting information for key "
            "'manifest' in bucket 'b': AWS Error ACCESS_DENIED during HeadObject operation",
            "the object store refused these credentials:",
        ),
    ],
)
def test_object_store_messages_seen_from_a_real_server_are_recognised(
    message: str, expected: str
) -> None:
    assert storage_fault(RuntimeError(message)).startswith(expected)
