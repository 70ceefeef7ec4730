"""Incremental re-indexing and fault tolerance, on real videos, a real Ray and real LanceDB tables.

One scenario serves every test: a copy of the sample corpus is indexed (the *base* table), then
the manifest changes (3 videos added, the bytes of 2 changed, 2 deleted) and the new manifest is
indexed from scratch into a second table (the *clean* result). Each test copies a table, does
something to it and compares with the clean result.
"""

from __future__ import annotations

import functools
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from index_configs import cpu_index_config

from jobs import index as index_job
from pipelines.encode import ModelSpec
from pipelines.index import IndexConfig, IndexSummary, load_plan, run_index
from pipelines.resources import ResourceRequest
from pipelines.search import ModelMismatchError, search
from pipelines.synthetic import write_sample_corpus

REPO = Path(__file__).resolve().parents[1]
TABLE = "videos"
TINY = ModelSpec("tiny")
# The session's Ray declares 2 GPUs that do not exist: encode on CPU.
CPU_ONLY = ["--gpus-per-actor", "0"]
# One encode task per decoded block (4 videos) and a commit for each: a kill lands between
# commits. A larger encode batch would gather the blocks of a small run into one commit.
COMMIT_EVERY_BLOCK = ["--batch-size", "1", "--commit-rows", "1"]
ADDED, CHANGED, DELETED = 3, 2, 2
# Encode actors, with (CPU-only plans) or without their own decoding.
ENCODE_ACTOR_TITLES = ("ray::MapWorker(MapBatches(EncodeStage))",
                       "ray::MapWorker(MapBatches(DecodeEncodeStage))")  # fmt: skip
# How often a kill point is checked: an encode task takes 0.1 s or more, and scanning /proc more
# often would take CPU from the job under test.
POLL_S = 0.02


@dataclass(frozen=True)
class Scenario:
    base_db: Path
    """The base table: the original 16 videos."""
    manifest: Path
    """The changed manifest: 16 + 3 - 2 = 17 videos, 2 of them with new bytes."""
    clean_db: Path
    """The changed manifest indexed from scratch."""


def config(manifest: Path, db: Path, **changes: object) -> IndexConfig:
    return cpu_index_config(manifest, db, TABLE, **changes)


@functools.cache
def model_id(spec: ModelSpec) -> str:
    return spec.build().model_id


def write_manifest(folder: Path, table: pa.Table) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "part-00000.parquet")
    return folder


def read(db: Path) -> pa.Table:
    return lancedb.connect(str(db)).open_table(TABLE).to_arrow().sort_by("video_id")


def vectors(table: pa.Table, column: str = "vector") -> np.ndarray:
    return np.array(table[column].to_pylist(), np.float32)


def copy_db(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "db"))


def assert_equals_clean(db: Path, clean_db: Path) -> None:
    """Same rows (ids, bytes, model, manifest columns) and the same vectors as a clean index."""
    table, clean = read(db), read(clean_db)
    assert table["video_id"].to_pylist() == clean["video_id"].to_pylist()
    for column in ("uri", "fingerprint", "model_id", "caption", "split"):
        assert table[column].equals(clean[column]), column
    for column in ("vector", "segment_embeddings"):
        assert np.allclose(vectors(table, column), vectors(clean, column), atol=1e-5), column


@pytest.fixture(scope="module")
def scenario(
    ray_session: dict, sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> Scenario:
    root = tmp_path_factory.mktemp("reindex")
    videos = root / "videos"
    shutil.copytree(sample_corpus / "videos", videos)
    original = pads.dataset(str(sample_corpus / "manifest")).to_table().sort_by("video_id")
    names = pc.replace_substring_regex(original["uri"], r"^.*/", "")
    original = original.set_column(
        original.schema.get_field_index("uri"),
        "uri",
        pc.binary_join_element_wise(str(videos), names, "/"),
    )
    base_manifest = write_manifest(root / "manifest-base", original)
    base_db = root / "base-db"
    assert run_index(config(base_manifest, base_db)).indexed == original.num_rows

    # Fresh videos: 3 become new manifest rows, 2 replace the bytes of existing files.
    fresh = root / "fresh"
    write_sample_corpus(fresh, videos=ADDED + CHANGED, seed=99, shards=1, workers=1)
    fresh_rows = pads.dataset(str(fresh / "manifest")).to_table().sort_by("video_id")
    added = fresh_rows.slice(0, ADDED)
    added = added.set_column(0, "video_id", pa.array([f"added-{i}" for i in range(ADDED)]))
    uris = original["uri"].to_pylist()
    for source, target in zip(fresh_rows["uri"].to_pylist()[ADDED:], uris[:CHANGED], strict=True):
        shutil.copyfile(source, target)
    kept = original.slice(0, original.num_rows - DELETED)
    for uri in uris[-DELETED:]:
        os.unlink(uri)
    manifest = write_manifest(root / "manifest-new", pa.concat_tables([kept, added]))
    clean_db = root / "clean-db"
    assert run_index(config(manifest, clean_db)).indexed == kept.num_rows + ADDED
    return Scenario(base_db=base_db, manifest=manifest, clean_db=clean_db)


def test_rerun_on_an_unchanged_manifest_decodes_and_encodes_nothing(
    scenario: Scenario, tmp_path: Path
) -> None:
    db = copy_db(scenario.clean_db, tmp_path)
    before = read(db)
    versions = lancedb.connect(str(db)).open_table(TABLE).version
    summary = run_index(config(scenario.manifest, db))
    assert summary.plan == {"unchanged": before.num_rows}
    assert summary.indexed == summary.failed == summary.deleted == 0
    # No pipeline ran: Ray was never asked for resources and no worker saw a video.
    assert summary.videos_by_worker == {} and summary.resources == ""
    assert "startup" not in summary.seconds
    assert summary.ann_index == "unchanged"
    assert read(db).equals(before)
    assert lancedb.connect(str(db)).open_table(TABLE).version == versions  # nothing committed


def test_add_change_delete_encodes_exactly_the_difference(
    scenario: Scenario, tmp_path: Path
) -> None:
    db = copy_db(scenario.base_db, tmp_path)
    summary = run_index(config(scenario.manifest, db))
    unchanged = 16 - CHANGED - DELETED
    assert summary.plan == {"new": ADDED, "changed": CHANGED, "unchanged": unchanged}
    assert summary.deleted == DELETED
    assert summary.indexed == ADDED + CHANGED and summary.failed == 0
    assert sum(summary.videos_by_worker.values()) == ADDED + CHANGED  # encoded, not just planned
    assert_equals_clean(db, scenario.clean_db)
    assert read(db)["model_id"].unique().to_pylist() == [model_id(TINY)]


def test_manifest_column_edits_update_rows_in_place_and_a_new_clip_is_reencoded(
    scenario: Scenario, tmp_path: Path
) -> None:
    db = copy_db(scenario.clean_db, tmp_path)
    before = read(db)
    rows = pads.dataset(str(scenario.manifest)).to_table().sort_by("video_id")
    count = rows.num_rows
    # Video 0 moved (same bytes and mtime, so the same fingerprint: what an object store's ETag
    # gives a copied object), video 1 re-captioned, video 2 moved to the other split.
    moved = tmp_path / "moved.mp4"
    shutil.copy2(rows["uri"][0].as_py(), moved)
    uris, captions, splits = (rows[c].to_pylist() for c in ("uri", "caption", "split"))
    uris[0] = str(moved)
    captions[1] = ["a caption written later"]
    splits[2] = "train" if splits[2] == "test" else "test"
    edited = rows
    for name, values in (("uri", uris), ("caption", captions), ("split", splits)):
        index = edited.schema.get_field_index(name)
        edited = edited.set_column(index, name, pa.array(values, edited.schema.field(name).type))
    manifest = write_manifest(tmp_path / "manifest", edited)

    summary = run_index(config(manifest, db))
    assert summary.plan == {"metadata_changed": 3, "unchanged": count - 3}
    assert summary.metadata_updated == 3 and summary.indexed == summary.failed == 0
    assert summary.resources == "" and summary.videos_by_worker == {}  # nothing decoded
    after = read(db)
    assert after["uri"].to_pylist() == uris
    assert after["caption"].to_pylist() == captions
    assert after["split"].to_pylist() == splits
    for column in ("vector", "segment_embeddings", "fingerprint", "indexed_at"):
        assert after[column].equals(before[column]), column
    assert run_index(config(manifest, db)).plan == {"unchanged": count}

    # A clip of one video is another embedding: that video alone is encoded again.
    clip = [0.5] + [None] * (count - 1), [1.5] + [None] * (count - 1)
    clipped = edited.append_column("start_s", pa.array(clip[0], pa.float64()))
    clipped = clipped.append_column("end_s", pa.array(clip[1], pa.float64()))
    summary = run_index(config(write_manifest(tmp_path / "manifest-clip", clipped), db))
    assert summary.plan == {"changed": 1, "unchanged": count - 1} and summary.indexed == 1
    after = read(db)
    assert after["fingerprint"][0].as_py() == before["fingerprint"][0].as_py() + "@0.5-1.5"
    assert after["segment_start_s"][0].as_py()[0] == 0.5
    assert after["segment_end_s"][0].as_py()[-1] == 1.5
    assert not np.allclose(vectors(after)[0], vectors(before)[0], atol=1e-3)
    assert np.array_equal(vectors(after)[1:], vectors(before)[1:])


def start_driver(*args: str, address: str) -> subprocess.Popen[str]:
    """The index job as its own driver process on the session's Ray (killable alone)."""
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.index", *args, "--table", TABLE, *CPU_ONLY,
         "--address", address, "--log-level", "INFO", "--verbose"],  # the writer's log lines
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def descendants() -> dict[int, str]:
    """``pid -> command line`` of every process below this one (Ray's workers are children of
    this process; other Ray instances on the machine are not), read from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            # The command name in field 2 may hold spaces; the parent pid follows its ")".
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
        except (ValueError, OSError):  # not a process, or one that exited while we looked
            continue
    found, frontier = {}, [os.getpid()]
    while frontier:
        for pid in children.get(frontier.pop(), []):
            try:
                found[pid] = (Path("/proc") / str(pid) / "cmdline").read_text().replace("\0", " ")
            except OSError:
                continue
            frontier.append(pid)
    return found


def encode_actors(*, busy: bool = False) -> list[int]:
    """Pids of this session's encode actors; with ``busy``, only those executing a batch right
    now (Ray titles a busy actor ``<class>.submit``)."""
    titles = tuple(f"{title}.submit" if busy else title for title in ENCODE_ACTOR_TITLES)
    return [pid for pid, command in descendants().items() if command.startswith(titles)]


@pytest.fixture
def no_encode_actors_left() -> None:
    """Waits until earlier tests' encode actors are gone, for a test that watches for busy ones:
    those of a SIGKILLed driver can finish their batch after it died."""
    deadline = time.monotonic() + 30
    while encode_actors() and time.monotonic() < deadline:
        time.sleep(0.2)


def kill_driver_when(
    driver: subprocess.Popen[str], due: Callable[[int], bool], *, timeout_s: float = 240
) -> None:
    """SIGKILL ``driver`` as soon as ``due(commits so far)`` holds, checked on every log line and
    every ``POLL_S``. Fails when the driver ends first."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert driver.stdout is not None
        for line in driver.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    commits, log, deadline = 0, [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=POLL_S)
        except queue.Empty:
            line = ""
        if line is None:
            pytest.fail("the job ended before the kill point:\n" + "".join(log[-30:]))
        if line:
            log.append(line)
        commits += "committed" in line
        if due(commits):
            driver.send_signal(signal.SIGKILL)
            driver.wait()
            return
    driver.kill()
    pytest.fail("the kill point never came:\n" + "".join(log[-30:]))


KILL_POINTS: dict[str, Callable[[int], bool]] = {
    # An encode actor is busy with a batch: the driver dies with work in flight.
    "during-encoding": lambda commits: bool(encode_actors(busy=True)),
    # The 5 videos travel and commit as two blocks (4 and 1): the first commit leaves the other.
    "between-commits": lambda commits: commits == 1,
}


@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_sigkilled_reindex_rerun_ends_with_exactly_the_clean_result(
    ray_session: dict, scenario: Scenario, tmp_path: Path, kill_point: str, no_encode_actors_left
) -> None:
    db = copy_db(scenario.base_db, tmp_path)
    driver = start_driver(
        "--manifest", str(scenario.manifest), "--db", str(db), "--model", "tiny",
        *COMMIT_EVERY_BLOCK, address=ray_session["address"],
    )  # fmt: skip
    kill_driver_when(driver, KILL_POINTS[kill_point])
    assert driver.returncode == -signal.SIGKILL

    # The rerun plans only what the killed run did not commit, and does exactly that.
    _, remaining = load_plan(config(scenario.manifest, db), model_id(TINY))
    assert remaining.todo.num_rows > 0, "the job should have been killed before its end"
    if kill_point == "between-commits":
        assert remaining.todo.num_rows < ADDED + CHANGED
    summary = run_index(config(scenario.manifest, db))
    assert summary.indexed == remaining.todo.num_rows
    assert_equals_clean(db, scenario.clean_db)


def search_ids(db: Path, model: ModelSpec) -> set[str]:
    """Every video a text query returns (k above the table's size) with ``model``."""
    hits = search(
        db_uri=str(db), table_name=TABLE, model=model.build(), queries=["a red circle"], k=100
    )
    return {hit.video_id for hit in hits[0]}


def ids_of(table: pa.Table, model: str) -> set[str]:
    return set(table.filter(pc.equal(table["model_id"], model))["video_id"].to_pylist())


def test_model_switch_reencodes_every_row_and_queries_never_mix_models(
    ray_session: dict, scenario: Scenario, tmp_path: Path
) -> None:
    db = copy_db(scenario.clean_db, tmp_path)
    old, new = TINY, ModelSpec("tiny", overrides={"centers": 16})
    old_id, new_id = model_id(old), model_id(new)
    # A switch stopped midway: only the test split re-encoded (the other rows kept, not deleted),
    # the state a killed switch leaves (the SIGKILL tests show a rerun finishes such a run).
    partial = run_index(config(scenario.manifest, db, model=new, split="test", keep_deleted=True))
    assert partial.indexed > 0 and partial.deleted == 0

    # Midway the table holds both models' rows; each model's queries see only its own.
    midway = read(db)
    assert ids_of(midway, old_id) and ids_of(midway, new_id)
    assert search_ids(db, old) == ids_of(midway, old_id)
    assert search_ids(db, new) == ids_of(midway, new_id)

    summary = run_index(config(scenario.manifest, db, model=new))
    assert summary.plan == {
        "model_changed": len(ids_of(midway, old_id)),
        "unchanged": len(ids_of(midway, new_id)),
    }
    done = read(db)
    assert done["model_id"].unique().to_pylist() == [new_id]
    assert done["video_id"].equals(read(scenario.clean_db)["video_id"])
    assert search_ids(db, new) == set(done["video_id"].to_pylist())
    with pytest.raises(ModelMismatchError, match=re.escape(f"not {old_id}")):
        search_ids(db, old)


def test_model_switch_to_another_shape_replaces_the_table_and_can_be_rolled_back(
    ray_session: dict, scenario: Scenario, tmp_path: Path
) -> None:
    db = copy_db(scenario.clean_db, tmp_path)
    before = read(db)
    version = lancedb.connect(str(db)).open_table(TABLE).version
    # Without clustering every frame is a segment: 8 segment vectors per video instead of 4.
    meanp = ModelSpec("tiny", overrides={"method": "none"})
    summary = run_index(config(scenario.manifest, db, model=meanp))
    assert summary.plan == {"model_changed": before.num_rows}
    assert summary.indexed == before.num_rows
    after = read(db)
    assert after["model_id"].unique().to_pylist() == [model_id(meanp)]
    assert after.schema.field("segment_start_s").type.list_size == 8
    assert vectors(after, "segment_embeddings").shape == (before.num_rows, 8, 128)
    assert after["video_id"].equals(before["video_id"])

    # The README's rollback: restore the version before the bad re-index.
    table = lancedb.connect(str(db)).open_table(TABLE)
    table.restore(version)
    assert read(db).equals(before)


def test_encode_actor_killed_mid_run_is_replaced_and_every_video_indexed(
    ray_session: dict, scenario: Scenario, tmp_path: Path, no_encode_actors_left
) -> None:
    # Each video three times under different ids: enough batches that the actor is still busy.
    rows = pads.dataset(str(scenario.manifest)).to_table()
    copies = [
        rows.set_column(0, "video_id", pc.binary_join_element_wise(rows["video_id"], f"-{i}", ""))
        for i in range(3)
    ]
    manifest = write_manifest(tmp_path / "manifest", pa.concat_tables(copies))
    job = config(
        manifest,
        tmp_path / "db",
        resources=ResourceRequest(gpus_per_actor=0, batch_size=1),
        commit_rows=4,
    )
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_index, job)
        killed = wait_and_kill_busy_encode_actor(until=running.done)
        summary: IndexSummary = running.result(timeout=300)

    assert summary.indexed == 3 * rows.num_rows and summary.failed == 0
    survivors = {w: n for w, n in summary.videos_by_worker.items() if f"pid={killed}" not in w}
    assert survivors, f"no replacement actor encoded anything: {summary.videos_by_worker}"
    table, clean = read(tmp_path / "db"), read(scenario.clean_db)
    assert table.num_rows == len(set(table["video_id"].to_pylist())) == 3 * rows.num_rows
    # Every copy carries the clean vector of its video, the retried batch included.
    for i in range(3):
        copy = table.filter(pc.ends_with(table["video_id"], f"-{i}"))
        assert np.allclose(vectors(copy), vectors(clean), atol=1e-5)


def wait_and_kill_busy_encode_actor(*, until: Callable[[], bool], timeout_s: float = 240) -> int:
    """SIGKILL the first encode actor seen executing a batch; returns its pid."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not until():
        for pid in encode_actors(busy=True):
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(POLL_S)
    pytest.fail("no encode actor was seen busy before the job ended")


def test_max_error_rate_exceeded_fails_with_exit_status_3_after_committing(
    ray_session: dict, scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    db = copy_db(scenario.base_db, tmp_path)
    rows = pads.dataset(str(scenario.manifest)).to_table()
    missing = rows.slice(0, 2)
    missing = missing.set_column(0, "video_id", pa.array(["gone-0", "gone-1"]))
    missing = missing.set_column(1, "uri", pa.array([str(tmp_path / "nowhere.mp4")] * 2))
    manifest = write_manifest(tmp_path / "manifest", pa.concat_tables([rows, missing]))
    args = ["--manifest", str(manifest), "--db", str(db), "--table", TABLE, "--model", "tiny",
            *CPU_ONLY, "--log-level", "WARNING"]  # fmt: skip

    # This run's videos: 5 to encode, 2 missing files: 2 of 7 fail.
    assert index_job.main([*args, "--max-error-rate", "0.2"]) == 3
    err = capsys.readouterr().err
    assert "error: 2 of 7 videos failed (28.6%), above --max-error-rate 20.0%" in err
    # What succeeded was committed: a rerun (default threshold: never fail) encodes nothing.
    assert index_job.main(args) == 0
    assert "indexed     0 videos" in capsys.readouterr().out
