"""One writer per table (pipelines/lease.py), on real Ray, real LanceDB tables and real videos.

The concurrent tests start the first job as its own driver process on the session's Ray and
synchronise on its lease record appearing (taken before any work), never on a sleep.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest
from index_configs import cpu_index_config

from jobs import index as index_job
from pipelines.index import IndexConfig, run_index
from pipelines.lease import LeaseLostError, WriterBusyError, WriterLease, active_writer, lease_path

REPO = Path(__file__).resolve().parents[1]
TABLE = "videos"
CPU_ONLY = ["--gpus-per-actor", "0"]
# A commit per decoded block of one video: the first job is still writing long after its lease
# appears, and a kill after its first commit leaves work for the next run.
COMMIT_EVERY_BLOCK = ["--batch-size", "1", "--commit-rows", "1"]
WAIT_S = 240


def config(manifest: Path, db: Path, **changes: object) -> IndexConfig:
    return cpu_index_config(manifest, db, TABLE, **changes)


def read(db: Path) -> pa.Table:
    return lancedb.connect(str(db)).open_table(TABLE).to_arrow().sort_by("video_id")


def manifest_ids(manifest: Path) -> list[str]:
    return sorted(pads.dataset(str(manifest)).to_table()["video_id"].to_pylist())


def table_missing_rows(indexed_db: Path, tmp_path: Path, rows: int = 4) -> Path:
    """A copy of the indexed table without its first ``rows`` videos: work for a short job."""
    db = Path(shutil.copytree(indexed_db, tmp_path / "db"))
    table = lancedb.connect(str(db)).open_table(TABLE)
    ids = sorted(table.to_arrow()["video_id"].to_pylist())[:rows]
    table.delete("video_id IN (" + ",".join(f"'{video_id}'" for video_id in ids) + ")")
    return db


def start_driver(manifest: Path, db: Path, address: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.index", "--manifest", str(manifest), "--db", str(db),
         "--table", TABLE, "--model", "tiny", *CPU_ONLY, *COMMIT_EVERY_BLOCK,
         "--address", address, "--log-level", "INFO", "--verbose"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def wait_for(condition: Callable[[], bool], driver: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if driver.poll() is not None:
            pytest.fail(f"the driver ended before {what}:\n{driver.stdout.read()}")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            driver.kill()
            pytest.fail(f"no {what} within {WAIT_S} s")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def indexed_db(
    ray_session: dict, sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    db = tmp_path_factory.mktemp("lease") / "db"
    run_index(config(sample_corpus / "manifest", db))
    return db


def test_a_second_writer_is_refused_by_name_and_a_released_lease_is_free(tmp_path: Path) -> None:
    with WriterLease(db_uri=str(tmp_path), table=TABLE, command="first job") as first:
        record = json.loads(Path(first.path).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with pytest.raises(WriterBusyError) as refused:
            WriterLease(db_uri=str(tmp_path), table=TABLE).acquire()
        message = str(refused.value)
        assert "\n" not in message
        for part in (socket.gethostname(), f"pid {os.getpid()}", record["started_at"], "first job"):
            assert part in message
        assert "wait for it to end" in message
        assert active_writer(str(tmp_path), TABLE) is not None
    assert not Path(lease_path(str(tmp_path), TABLE)).exists()
    assert active_writer(str(tmp_path), TABLE) is None
    WriterLease(db_uri=str(tmp_path), table=TABLE).acquire().release()


def test_the_heartbeat_renews_and_a_lease_left_by_another_host_expires(tmp_path: Path) -> None:
    path = Path(lease_path(str(tmp_path), TABLE))
    with WriterLease(db_uri=str(tmp_path), table=TABLE, heartbeat_s=0.05, expire_s=1.0):
        first = json.loads(path.read_text())["renewed_at"]
        deadline = time.monotonic() + 30
        while json.loads(path.read_text())["renewed_at"] == first:
            assert time.monotonic() < deadline, "the heartbeat never renewed the lease"
            time.sleep(0.01)

    # Another host's record (its process cannot be looked up): live while renewed, stale once
    # older than the expiry.
    record = {"token": "theirs", "host": "elsewhere", "pid": 1, "started_at": "then",
              "command": "python -m jobs.index ...", "renewed_at": time.time()}  # fmt: skip
    path.write_text(json.dumps(record))
    with pytest.raises(WriterBusyError, match="host elsewhere, pid 1"):
        WriterLease(db_uri=str(tmp_path), table=TABLE, expire_s=60).acquire()
    path.write_text(json.dumps(record | {"renewed_at": time.time() - 61}))
    with WriterLease(db_uri=str(tmp_path), table=TABLE, expire_s=60) as taken:
        assert json.loads(path.read_text())["token"] != "theirs"
        taken.check()
    assert not path.exists()


def test_a_lease_taken_over_stops_its_writer_before_the_next_commit(tmp_path: Path) -> None:
    path = Path(lease_path(str(tmp_path), TABLE))
    # No heartbeat thread runs during the test: the heartbeat is called by hand.
    lease = WriterLease(db_uri=str(tmp_path), table=TABLE, heartbeat_s=3600, expire_s=7200)
    with lease:
        assert lease.renew()
        record = json.loads(path.read_text())
        path.write_text(json.dumps(record | {"token": "theirs", "host": "elsewhere"}))
        assert not lease.renew()
        with pytest.raises(LeaseLostError, match="taken over by host elsewhere"):
            lease.check()
    assert json.loads(path.read_text())["token"] == "theirs"  # the other job's: left alone


def test_a_second_job_is_refused_and_a_sigkilled_first_jobs_lease_does_not_block_the_next(
    ray_session: dict,
    indexed_db: Path,
    sample_corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two jobs at once on one table: the second refuses at once, naming the first; the first,
    SIGKILLed after its first commit, leaves a lease that does not block the next run, which
    writes everything once (one driver process serves both checks: each costs ~25 s here)."""
    manifest, db = sample_corpus / "manifest", table_missing_rows(indexed_db, tmp_path)
    first = start_driver(manifest, db, ray_session["address"])
    wait_for(Path(lease_path(str(db), TABLE)).exists, first, "the writer lease")

    status = index_job.main(
        ["--manifest", str(manifest), "--db", str(db), "--table", TABLE, "--model", "tiny",
         *CPU_ONLY],
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert status == 1
    assert err.count("\n") == 0 and err.startswith("error: table videos is being written")
    assert f"pid {first.pid}" in err and "jobs.index" in err
    assert first.poll() is None, "the first job should still be running"

    assert first.stdout is not None
    for line in first.stdout:  # killed after its first commit, lease held
        if "committed" in line:
            break
    first.send_signal(signal.SIGKILL)
    first.wait()
    record = json.loads(Path(lease_path(str(db), TABLE)).read_text())
    assert record["pid"] == first.pid  # left behind, and well within its expiry
    assert time.time() - record["renewed_at"] < 30

    expected = manifest_ids(manifest)
    left = read(db).num_rows
    assert len(expected) - 4 < left <= len(expected)  # the killed job's commits stayed
    summary = run_index(config(manifest, db))
    assert summary.indexed == len(expected) - left  # only what the killed job left
    assert read(db)["video_id"].to_pylist() == expected  # each video once
    assert not Path(lease_path(str(db), TABLE)).exists()


def test_a_table_with_duplicate_ids_is_planned_and_repaired_keeping_the_newest_row(
    indexed_db: Path, sample_corpus: Path, tmp_path: Path
) -> None:
    db = Path(shutil.copytree(indexed_db, tmp_path / "db"))
    table = lancedb.connect(str(db)).open_table(TABLE)
    clean = read(db)
    # What two writers at once left: 3 ids twice, the later copies with other vectors.
    copies = clean.slice(0, 3)
    newer = pc.add(copies["indexed_at"], pa.scalar(timedelta(hours=1)))
    flipped = pa.FixedSizeListArray.from_arrays(
        pc.negate(copies["vector"].combine_chunks().flatten()),
        copies.schema.field("vector").type.list_size,
    )
    copies = copies.set_column(copies.schema.get_field_index("indexed_at"), "indexed_at", newer)
    copies = copies.set_column(copies.schema.get_field_index("vector"), "vector", flipped)
    table.add(copies)
    assert table.count_rows() == clean.num_rows + 3

    manifest = sample_corpus / "manifest"
    dry = run_index(config(manifest, db, dry_run=True))  # the plan no longer fails on them
    assert dry.plan == {"unchanged": clean.num_rows}
    summary = run_index(config(manifest, db))
    assert summary.duplicates_removed == 3
    assert "repaired    3 duplicate rows" in summary.format()
    repaired = read(db)
    assert repaired["video_id"].equals(clean["video_id"])
    kept = np.array(repaired["vector"].to_pylist()[:3])
    assert np.allclose(kept, -np.array(clean["vector"].to_pylist()[:3]))  # the newest copies
    assert run_index(config(manifest, db)).duplicates_removed == 0


def test_a_dry_run_takes_no_lease_and_reports_the_job_writing(
    indexed_db: Path, sample_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--manifest", str(sample_corpus / "manifest"), "--db", str(indexed_db),
            "--table", TABLE, "--model", "tiny", *CPU_ONLY, "--dry-run"]  # fmt: skip
    with WriterLease(db_uri=str(indexed_db), table=TABLE, command="the other job"):
        assert index_job.main(args) == 0
    captured = capsys.readouterr()
    assert "plan: unchanged=16" in captured.out + captured.err
    assert "another index job is writing videos now (host" in captured.err
    assert "the other job" in captured.err
    assert index_job.main(args) == 0  # and with no writer, no warning
    assert "another index job" not in capsys.readouterr().err
