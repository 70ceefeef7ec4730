"""Files that exist but are no readable video file get a category that says what is there:
``not a regular file`` (directory, pipe, device), ``permission denied``, ``symlink loop``."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import schema
from pipelines.decode import (
    MISSING_FILE,
    NOT_A_REGULAR_FILE,
    PERMISSION_DENIED,
    SYMLINK_LOOP,
    DecodeStage,
    error_category,
    unreadable_file_error,
)
from pipelines.encode import ModelSpec
from pipelines.index import IndexConfig, run_index
from pipelines.resources import ResourceRequest

NOBODY = 65534


@pytest.fixture
def odd_files(tmp_path: Path) -> dict[str, str]:
    """One path per odd kind of file, by the category it must get."""
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.mp4"
    folder.mkdir()
    loop_a, loop_b = tmp_path / "loop-a.mp4", tmp_path / "loop-b.mp4"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    dangling = tmp_path / "dangling.mp4"
    dangling.symlink_to(tmp_path / "nowhere.mp4")
    return {
        "fifo": str(fifo),
        "device": "/dev/zero",
        "directory": str(folder),
        "loop": str(loop_a),
        "missing": str(tmp_path / "gone.mp4"),
        "dangling": str(dangling),
    }


EXPECTED = {
    "fifo": NOT_A_REGULAR_FILE,
    "device": NOT_A_REGULAR_FILE,
    "directory": NOT_A_REGULAR_FILE,
    "loop": SYMLINK_LOOP,
    "missing": MISSING_FILE,
    "dangling": MISSING_FILE,
}


def test_each_odd_file_gets_its_own_category(odd_files: dict[str, str]) -> None:
    got = {name: unreadable_file_error(path) for name, path in odd_files.items()}
    assert {name: error_category(error or "") for name, error in got.items()} == EXPECTED
    assert got["fifo"].endswith("is a named pipe (FIFO)")
    assert got["device"] == "not a regular file: /dev/zero is a character device"
    assert got["directory"].endswith("is a directory")


@pytest.fixture
def unreadable_file() -> Iterator[Path]:
    """A chmod-000 file in a folder everyone may search (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="perm-"))
    folder.chmod(0o755)
    path = folder / "secret.mp4"
    path.write_bytes(b"\0" * 64)
    path.chmod(0o000)
    yield path
    shutil.rmtree(folder)


def _classify(path: Path) -> str | None:
    """``unreadable_file_error(path)`` as a user for whom chmod 000 means no access: this
    process where it is no root, else a forked child that drops to ``nobody`` (root reads any
    file) and only stats and opens, then exits."""
    if os.geteuid() != 0:
        return unreadable_file_error(str(path))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no Python cleanup, no return into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write_end, str(unreadable_file_error(str(path))).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as result:
        answer = result.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        pytest.skip(f"running as root and cannot drop to uid {NOBODY} to test a chmod-000 file")
    return answer


# pylance warns at every fork once an earlier test's writer has imported it; the child here only
# stats and opens one file, then leaves with os._exit, never touching Lance.
@pytest.mark.filterwarnings("ignore:lance is not fork-safe:UserWarning")
def test_a_file_the_job_may_not_read_is_permission_denied(unreadable_file: Path) -> None:
    assert _classify(unreadable_file) == f"{PERMISSION_DENIED}: {unreadable_file}"
    # Root reads it: nothing to report.
    if os.geteuid() == 0:
        assert unreadable_file_error(str(unreadable_file)) is None


def test_decode_stage_refuses_odd_files_without_reading_them(odd_files: dict[str, str]) -> None:
    # Pipes and devices given to the stage directly go to the decoder and its timeout (the
    # stalled-read test in test_decode.py); the index job refuses them before decoding.
    names = [n for n in odd_files if n not in ("fifo", "device")]
    with DecodeStage(frames=4, image_size=32, timeout_s=30) as stage:
        out = stage(
            {
                schema.VIDEO_ID: np.array(names),
                schema.URI: np.array([odd_files[n] for n in names]),
            }
        )
    assert [error_category(e) for e in out[schema.ERROR]] == [EXPECTED[n] for n in names]


def test_index_job_records_the_category_of_each_unreadable_file(
    ray_session: dict, sample_corpus: Path, odd_files: dict[str, str], tmp_path: Path
) -> None:
    video = sorted((sample_corpus / "videos").glob("*.mp4"))[0]
    names = [*odd_files, "video"]
    uris = [*odd_files.values(), str(video)]
    manifest = tmp_path / "manifest"
    manifest.mkdir()
    pq.write_table(pa.table({"video_id": names, "uri": uris}), manifest / "part-0.parquet")
    config = IndexConfig(
        manifest=str(manifest),
        db=str(tmp_path / "db"),
        table="videos",
        model=ModelSpec("tiny"),
        resources=ResourceRequest(gpus_per_actor=0),
    )
    summary = run_index(config)
    assert summary.indexed == 1
    db = lancedb.connect(str(tmp_path / "db"))
    errors = db.open_table(schema.errors_table_name("videos")).to_arrow()
    got = dict(zip(errors["video_id"].to_pylist(), errors["error"].to_pylist(), strict=True))
    assert {name: error_category(error) for name, error in got.items()} == EXPECTED
