"""The writer's scalar indexes and maintenance on real LanceDB tables: every commit, delete and
query on ``video_id`` or ``model_id`` goes through an index that stays valid as the tables
change, and a long run's fragments stay bounded; new videos are appended exactly once."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipelines import schema, upsert, write
from pipelines.index import read_table_state
from pipelines.plan import NEW, REASON, plan_index
from pipelines.search import MomentsUnavailableError, check_model, model_filter, search_vectors
from pipelines.upsert import sql_in
from pipelines.write import (
    MAX_INDEX_SEGMENTS,
    MaintenanceSchedule,
    TableWriter,
    build_ann_index,
    delete_ids,
    fragment_count,
    maintain_table,
)

DIM, SEGMENTS = 8, 2


def encoded(ids: list[str], *, seed: int, error: str = "", dim: int = DIM) -> pa.Table:
    """What the encode stage hands the writer for ``ids``: unit vectors, or an ``error``."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(ids), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    n = len(ids)
    return pa.table(
        {
            schema.VIDEO_ID: pa.array(ids),
            schema.URI: pa.array([f"/videos/{i}.mp4" for i in ids]),
            schema.FINGERPRINT: pa.array(["10:20"] * n),
            schema.ERROR: pa.array([error] * n),
            schema.STAGE: pa.array([schema.STAGE_DECODE if error else ""] * n),
            schema.VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
            schema.SEGMENT_EMBEDDINGS: schema.multivectors(
                np.repeat(vectors[:, None], SEGMENTS, axis=1)
            ),
            schema.SEGMENT_START_S: pa.FixedSizeListArray.from_arrays(
                pa.array(np.zeros(n * SEGMENTS, np.float32)), SEGMENTS
            ),
            schema.SEGMENT_END_S: pa.FixedSizeListArray.from_arrays(
                pa.array(np.ones(n * SEGMENTS, np.float32)), SEGMENTS
            ),
        }
    )


def writer(db: Path, model_id: str = "model-a", dim: int = DIM, **options: int) -> TableWriter:
    return TableWriter(
        db_uri=str(db), table="videos", dim=dim, segments=SEGMENTS, model_id=model_id, **options
    )


def assert_indexes_valid(table, expected: dict[str, str], where: str, rows: int) -> None:
    """``expected`` column -> index type exist, cover every row, and answer ``where`` (which
    selects ``rows`` rows) through the index."""
    indexes = {tuple(index.columns): index for index in table.list_indices()}
    for column, index_type in expected.items():
        index = indexes[(column,)]
        assert index.index_type == index_type
        stats = table.index_stats(index.name)
        assert stats.num_unindexed_rows == 0
        assert stats.num_indexed_rows == table.count_rows()
    assert table.count_rows(where) == rows
    assert "ScalarIndexQuery" in table.search().where(where).explain_plan()


def ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(count)]


def test_scalar_indexes_exist_after_a_run_and_stay_valid_through_every_change(
    tmp_path: Path,
) -> None:
    first = writer(tmp_path, commit_rows=16)
    first.add(encoded(ids("v", 40), seed=0))
    first.add(encoded(ids("bad", 5), seed=1, error="truncated: at frame 3"))
    assert first.finish(index_min_rows=10**9).startswith("none")
    embeddings = {schema.VIDEO_ID: "BTree", schema.MODEL_ID: "Bitmap"}
    assert_indexes_valid(first.table, embeddings, sql_in(schema.VIDEO_ID, ["v007", "v039"]), 2)
    assert_indexes_valid(
        first.errors, {schema.VIDEO_ID: "BTree"}, sql_in("video_id", ["bad001"]), 1
    )

    # Upserts (10 replaced, 10 new), a video that now fails, a failed one that now encodes.
    second = writer(tmp_path, commit_rows=8)
    second.add(encoded([*ids("v", 10), *ids("w", 10), "bad000"], seed=2))
    second.add(encoded(["v020"], seed=3, error="decode: corrupt"))
    assert delete_ids(second.table, ["v030", "v031", "never-there"]) == 2
    second.finish(deleted=2, index_min_rows=10**9)
    table = second.table
    assert table.count_rows() == 40 + 10 + 1 - 1 - 2
    assert_indexes_valid(table, embeddings, sql_in(schema.VIDEO_ID, ["w009", "bad000", "v020"]), 2)
    assert_indexes_valid(second.errors, {schema.VIDEO_ID: "BTree"}, "video_id = 'v020'", 1)
    assert second.errors.count_rows() == 5 - 1 + 1
    # One row per key: upserts through the index never duplicate.
    keys = table.to_arrow()[schema.VIDEO_ID].to_pylist()
    assert len(keys) == len(set(keys))

    # Model switch, same shape: rows move from one model to the other through the index.
    switched = writer(tmp_path, model_id="model-b", commit_rows=100)
    switched.add(encoded(ids("v", 5), seed=4))
    switched.finish(index_min_rows=10**9)
    assert check_model(switched.table, "model-b") == 5
    assert_indexes_valid(switched.table, embeddings, model_filter("model-a"), 48 - 5)

    # Model switch to another width: the table is replaced, and its indexes come back.
    wider = writer(tmp_path, model_id="model-c", dim=2 * DIM, commit_rows=100)
    wider.add(encoded(ids("x", 12), seed=5, dim=2 * DIM))
    wider.finish(index_min_rows=10**9)
    assert wider.table.count_rows() == 12
    assert_indexes_valid(wider.table, embeddings, model_filter("model-c"), 12)


def test_deleting_ids_that_are_not_there_commits_nothing(tmp_path: Path) -> None:
    table = writer(tmp_path).errors
    version = table.version
    assert delete_ids(table, ids("absent", 1200)) == 0
    assert table.version == version


def test_maintenance_every_n_commits_bounds_the_fragments(tmp_path: Path) -> None:
    """30 one-row commits: without maintenance each adds a fragment; with maintenance every 5
    commits, the table never holds more than the compacted fragment plus 5 commits' worth."""
    fixed = {"commit_rows": 1, "adaptive_maintenance": False}
    unbounded = writer(tmp_path / "unbounded", maintain_every=10**9, **fixed)
    bounded = writer(tmp_path / "bounded", maintain_every=5, **fixed)
    most = 0
    for i in range(30):
        for target in (unbounded, bounded):
            target.add(encoded([f"v{i:03d}"], seed=i))
        most = max(most, fragment_count(bounded.table))
    assert fragment_count(unbounded.table) == 30
    assert bounded.stats.maintenance_runs == 6
    assert most <= 1 + 5
    assert_indexes_valid(
        bounded.table, {schema.VIDEO_ID: "BTree"}, sql_in(schema.VIDEO_ID, ["v000", "v024"]), 2
    )


def index_segments(table: lancedb.table.Table) -> dict[str, list[str]]:
    """Each index's segments (their uuids), oldest first."""
    segments: dict[str, list[str]] = {}
    for index in table.to_lance().list_indices():
        segments.setdefault(index["name"], []).append(index["uuid"])
    return segments


def test_vector_rows_join_an_index_as_a_segment_and_the_newest_merge_at_the_bound(
    tmp_path: Path,
) -> None:
    """Each maintenance folds the new rows into both vector indexes as one new segment, leaving
    the first untouched; with ``MAX_INDEX_SEGMENTS`` segments the newest merge into one. Every
    row stays indexed and findable by its own vectors; a maintenance with nothing new adds no
    segment."""
    # 64 dimensions: random unit vectors are near orthogonal there (cosine well below 1 between
    # any two of these 760 rows), and 8 PQ sub-vectors code them closely enough that a row's own
    # vector ranks it first whatever k-means' random start.
    dim = 64
    table_writer = writer(tmp_path, dim=dim, maintain_every=10**9, adaptive_maintenance=False)
    table_writer.add(encoded(ids("base", 600), seed=1, dim=dim))
    table_writer.flush()
    build_ann_index(table_writer.table, rows=600, dim=dim)
    indexes = table_writer.table.list_indices()
    vector_indexes = [index.name for index in indexes if index.index_type == "IvfPq"]
    assert len(vector_indexes) == 2  # the video vectors and the segments' multivectors
    first = {name: index_segments(table_writer.table)[name] for name in vector_indexes}

    def add_and_maintain(round_: int) -> tuple[pa.Table, set[str]]:
        """The round's new rows, and the steps the maintenance reports."""
        rows = encoded(ids(f"new{round_}-", 20), seed=100 + round_, dim=dim)
        table_writer.add(rows)
        table_writer.flush()
        return rows, set(maintain_table(table_writer.table))

    for round_ in range(1, MAX_INDEX_SEGMENTS):
        _, steps = add_and_maintain(round_)
        assert steps == {"compaction", "scalar_indexes", *vector_indexes}
        for name in vector_indexes:
            assert index_segments(table_writer.table)[name][0] == first[name][0]
            assert len(index_segments(table_writer.table)[name]) == 1 + round_
        if round_ == 1:
            table_writer.maintain()  # nothing new
            assert all(len(index_segments(table_writer.table)[n]) == 2 for n in vector_indexes)

    last, steps = add_and_maintain(MAX_INDEX_SEGMENTS)
    assert steps == {"compaction", "scalar_indexes", *(f"{n} (merge)" for n in vector_indexes)}
    table = table_writer.table
    for name in vector_indexes:
        assert index_segments(table)[name][0] == first[name][0]
        assert len(index_segments(table)[name]) == 2
        stats = table.index_stats(name)
        assert stats.num_unindexed_rows == 0 and stats.num_indexed_rows == table.count_rows()
    assert table.count_rows() == 600 + 20 * MAX_INDEX_SEGMENTS
    vector = np.asarray(last[schema.VECTOR][3].as_py(), dtype=np.float32)
    for column, query in ((schema.VECTOR, vector), (schema.SEGMENT_EMBEDDINGS, [vector])):
        hits = (
            table.search(query, vector_column_name=column)
            .nprobes(64)
            .refine_factor(100)
            .limit(1)
            .to_arrow()
        )
        assert hits[schema.VIDEO_ID].to_pylist() == [last[schema.VIDEO_ID][3].as_py()], column


def test_compaction_leaves_fragments_of_the_target_size_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two 300-row fragments: with a 300-row target a maintenance keeps both files; with the
    default target it merges them into one."""
    table_writer = writer(tmp_path, maintain_every=10**9, adaptive_maintenance=False)
    for part in ("a", "b"):
        table_writer.add(encoded(ids(part, 300), seed=ord(part)))
        table_writer.flush()
    before = sorted(f.fragment_id for f in table_writer.table.to_lance().get_fragments())
    assert len(before) == 2
    monkeypatch.setattr(write, "COMPACT_TARGET_ROWS", 300)
    table_writer.maintain()
    assert sorted(f.fragment_id for f in table_writer.table.to_lance().get_fragments()) == before
    monkeypatch.undo()
    table_writer.maintain()
    assert fragment_count(table_writer.table) == 1
    assert table_writer.table.count_rows() == 600


def test_maintenance_keeps_every_version_unless_given_an_age_to_prune(tmp_path: Path) -> None:
    """Without ``cleanup_older_than`` (the index job without ``--keep-versions-days``) every
    version stays restorable; with one, older versions go and the table reads the same."""
    table_writer = writer(tmp_path, maintain_every=10**9, adaptive_maintenance=False)
    first = None
    for part in ("a", "b", "c"):
        table_writer.add(encoded(ids(part, 10), seed=ord(part)))
        table_writer.flush()
        first = first or table_writer.table.version
    table_writer.maintain()
    assert len(table_writer.table.list_versions()) > 3
    table_writer.table.checkout(first)
    assert table_writer.table.count_rows() == 10
    table_writer.table.checkout_latest()
    table_writer.maintain(cleanup_older_than=timedelta(0))
    assert len(table_writer.table.list_versions()) == 1
    assert table_writer.table.count_rows() == 30


def _commits_until_due(schedule: MaintenanceSchedule, costs: list[tuple[int, float]]) -> int:
    """The 1-based commit of ``costs`` (rows, seconds) after which ``schedule`` calls a
    maintenance, or 0 if none does."""
    for number, (rows, seconds) in enumerate(costs, start=1):
        if schedule.committed(rows, seconds):
            return number
    return 0


def test_maintenance_is_due_once_the_slower_commits_cost_what_a_maintenance_costs() -> None:
    """Rent or buy: 100-row commits at 1 ms a row, each 0.1 s dearer than the one before (rows
    no index covers yet), after a maintenance that cost 1 s. The excess paid after commit n is
    0.1 (1 + 2 + ... + (n - 1)) s: 1.0 s after commit 5, over 1 s after commit 6."""
    schedule = MaintenanceSchedule(max_commits=50)
    schedule.maintained(1.0)
    growing = [(100, 0.1 + 0.1 * i) for i in range(20)]
    assert _commits_until_due(schedule, growing) == 6
    # Counting starts again after the maintenance, at its new price.
    schedule.maintained(0.25)
    assert _commits_until_due(schedule, growing) == 3  # 0.1 + 0.2 = 0.3 s > 0.25 s


def test_commits_of_steady_cost_per_row_call_no_maintenance_before_the_fragment_bound() -> None:
    """Commits whose cost per row stays the same (large and small ones alike, the cheapest
    first) pay nothing extra: only ``max_commits`` calls a maintenance, before the first one
    too."""
    steady = [(rows, rows * 0.001) for rows in (4096, 100, 4096, 7, 4096)] * 4
    assert _commits_until_due(MaintenanceSchedule(max_commits=12), steady) == 12
    schedule = MaintenanceSchedule(max_commits=12)
    schedule.maintained(5.0)
    assert _commits_until_due(schedule, steady) == 12


def test_before_the_first_maintenance_one_is_due_once_commits_cost_twice_their_cheapest() -> None:
    """No price yet: 100-row commits at 1 ms a row (0.1 s), then dearer by 0.1 s each. After
    commit n they cost 0.1 n s at their cheapest and 0.1 n (n - 1) / 2 s more: the excess passes
    the cheapest cost at n = 4 (0.6 s against 0.4 s; 0.3 s against 0.3 s at n = 3)."""
    growing = [(100, 0.1 + 0.1 * i) for i in range(20)]
    assert _commits_until_due(MaintenanceSchedule(max_commits=50), growing) == 4
    # Noise that never doubles the cost calls none before the bound.
    noisy = [(100, 0.1 * (1 + 0.5 * (i % 2))) for i in range(30)]
    assert _commits_until_due(MaintenanceSchedule(max_commits=30), noisy) == 30


def test_a_fixed_cadence_ignores_the_timings() -> None:
    growing = [(100, 0.1 * 2**i) for i in range(10)]
    assert _commits_until_due(MaintenanceSchedule(max_commits=7, adaptive=False), growing) == 7


@pytest.mark.parametrize("bad_model", ["model-z"])
def test_check_model_counts_through_the_index_and_names_the_other_models(
    tmp_path: Path, bad_model: str
) -> None:
    from pipelines.search import ModelMismatchError

    only = writer(tmp_path, commit_rows=100)
    only.add(encoded(ids("v", 6), seed=0))
    only.finish()
    assert check_model(only.table, "model-a") == 6
    with pytest.raises(ModelMismatchError, match="indexed with model-a, not model-z"):
        check_model(only.table, bad_model)


def flat_layout_table(db: Path, segments: np.ndarray) -> lancedb.table.Table:
    """A table as the index job wrote it before the multivector column: the ``[N, S, D]`` unit
    ``segments`` flattened into ``segment_vectors [S * D]``, the video vector their mean."""
    n = len(segments)
    vectors = segments.mean(axis=1)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    fields = [
        pa.field(schema.LEGACY_SEGMENT_VECTORS, pa.list_(pa.float32(), SEGMENTS * DIM))
        if f.name == schema.SEGMENT_EMBEDDINGS
        else f
        for f in schema.embeddings_schema(DIM, SEGMENTS)
    ]
    rows = encoded(ids("v", n), seed=0).drop_columns([schema.ERROR, schema.STAGE])
    rows = rows.set_column(
        rows.schema.get_field_index(schema.VECTOR),
        schema.VECTOR,
        pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM),
    )
    columns = {
        **{name: rows[name] for name in rows.column_names if name != schema.SEGMENT_EMBEDDINGS},
        schema.LEGACY_SEGMENT_VECTORS: pa.FixedSizeListArray.from_arrays(
            pa.array(segments.reshape(-1)), SEGMENTS * DIM
        ),
        schema.MODEL_ID: pa.array(["model-a"] * n),
        schema.INDEXED_AT: pa.array([datetime.now(timezone.utc)] * n, schema.TIMESTAMP),
    }
    table = pa.table(
        [columns.get(f.name, pa.nulls(n, f.type)) for f in fields], schema=pa.schema(fields)
    )
    return lancedb.connect(str(db)).create_table("videos", table)


def test_a_flat_segment_table_searches_and_moves_to_the_multivector_column_once(
    tmp_path: Path,
) -> None:
    """A table of the old layout answers vector searches (best segment from the flat column)
    and refuses moment ranking clearly; the writer moves its segments into the multivector
    column (continuing a move killed midway), drops the flat column, indexes both vector
    columns, and moment search then ranks by MaxSim through that index."""
    rng = np.random.default_rng(7)
    segments = rng.standard_normal((300, SEGMENTS, DIM)).astype(np.float32)
    segments /= np.linalg.norm(segments, axis=2, keepdims=True)
    table = flat_layout_table(tmp_path, segments)
    probes = [0, 150, 299]
    queries = segments[probes, 1]  # [3, D]: each video's second segment

    def own_hits(by: str, k: int) -> list:
        results = search_vectors(table, queries, model_id="model-a", k=k, exact=True, by=by)
        return [
            next(h for h in hits if h.video_id == f"v{i:03d}")
            for i, hits in zip(probes, results, strict=True)
        ]

    assert [h.segment for h in own_hits("vector", 300)] == [1, 1, 1]
    with pytest.raises(MomentsUnavailableError, match="re-run jobs.index"):
        own_hits("moments", 3)

    # A move killed after its first chunk: the first 100 rows moved, the flat column still there.
    table.add_columns([pa.field(schema.SEGMENT_EMBEDDINGS, schema.multivector_type(DIM))])
    moved_first = pa.table(
        {
            schema.VIDEO_ID: pa.array(ids("v", 100)),
            schema.SEGMENT_EMBEDDINGS: schema.multivectors(segments[:100]),
        }
    )
    table.merge_insert(schema.VIDEO_ID).when_matched_update_all().execute(moved_first)
    hits = own_hits("vector", 300)  # rows of either state
    assert [h.segment for h in hits] == [1, 1, 1]
    assert [h.segment_score for h in hits] == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)

    moving = writer(tmp_path)
    assert moving.segments_migrated == 200
    table = moving.table
    assert schema.LEGACY_SEGMENT_VECTORS not in table.schema.names
    stored = table.to_arrow().sort_by(schema.VIDEO_ID)[schema.SEGMENT_EMBEDDINGS].to_pylist()
    assert np.array_equal(np.array(stored, np.float32), segments)
    assert moving.finish(index_min_rows=100) == "built"
    indexed = {c for index in table.list_indices() for c in index.columns}
    assert {schema.VECTOR, schema.SEGMENT_EMBEDDINGS} <= indexed

    results = search_vectors(table, queries, model_id="model-a", k=3, by="moments")  # ANN
    for i, hits in zip(probes, results, strict=True):
        assert hits[0].video_id == f"v{i:03d}" and hits[0].segment == 1
        assert hits[0].segment_score == pytest.approx(1.0, abs=1e-5)
        assert [h.segment_score for h in hits] == sorted(
            (h.segment_score for h in hits), reverse=True
        )
    assert writer(tmp_path).segments_migrated == 0


def manifest_of(video_ids: list[str]) -> pa.Table:
    """The manifest rows the index job hands the writer for ``video_ids``."""
    return pa.table(
        {
            schema.VIDEO_ID: pa.array(video_ids),
            schema.URI: pa.array([f"/videos/{i}.mp4" for i in video_ids]),
            schema.FINGERPRINT: pa.array(["10:20"] * len(video_ids)),
        }
    )


def vectors_by_id(table) -> dict[str, list[float]]:
    return vectors_by_id_of(
        table.search().select([schema.VIDEO_ID, schema.VECTOR]).limit(None).to_arrow()
    )


def test_new_videos_are_appended_once_and_every_later_row_of_theirs_replaces_it(
    tmp_path: Path,
) -> None:
    """New videos (appended), known ones (upserted), a video twice in one batch and a replayed
    block: one row per video, holding the vector written last."""
    before = writer(tmp_path)
    before.add(encoded(ids("old", 4), seed=0))
    before.finish(index_min_rows=10**9)
    every = ids("new", 6) + ids("old", 4)
    run = writer(
        tmp_path, manifest=manifest_of(every), new_ids=pa.array(ids("new", 6)), commit_rows=10**9
    )
    run.add(encoded(ids("new", 6) + ids("old", 4), seed=1))
    run.add(encoded(["new000"], seed=2))  # the same video again before the commit
    run.flush()
    run.add(encoded(ids("new", 3), seed=3))  # a replayed block after the commit
    run.flush()
    run.finish(index_min_rows=10**9)

    table = run.table
    assert table.count_rows() == 10
    assert sorted(vectors_by_id(table)) == sorted(every)
    latest = {
        **vectors_by_id_of(encoded(every, seed=1)),
        **vectors_by_id_of(encoded(["new000"], seed=2)),
        **vectors_by_id_of(encoded(ids("new", 3), seed=3)),
    }
    stored = vectors_by_id(table)
    for video_id, vector in latest.items():
        np.testing.assert_allclose(stored[video_id], vector, rtol=1e-6)
    assert run.stats.indexed == 10 + 1 + 3
    assert_indexes_valid(table, {schema.VIDEO_ID: "BTree"}, sql_in(schema.VIDEO_ID, every), 10)


def vectors_by_id_of(rows: pa.Table) -> dict[str, list[float]]:
    return dict(
        zip(rows[schema.VIDEO_ID].to_pylist(), rows[schema.VECTOR].to_pylist(), strict=True)
    )


def test_a_new_video_that_fails_then_indexes_in_one_run_keeps_no_error_row(
    tmp_path: Path,
) -> None:
    run = writer(
        tmp_path, manifest=manifest_of(["v000"]), new_ids=pa.array(["v000"]), commit_rows=1
    )
    run.add(encoded(["v000"], seed=0, error="decode: truncated"))
    assert run.errors.count_rows() == 1
    run.add(encoded(["v000"], seed=1))
    run.finish(index_min_rows=10**9)
    assert run.table.count_rows() == 1
    assert run.errors.count_rows() == 0


def test_a_run_killed_after_appending_reruns_without_duplicates(tmp_path: Path) -> None:
    """The rerun's plan sees what the killed run appended as indexed: it appends only the rest,
    and writing a committed video again (a replay) still leaves one row."""
    every = ids("v", 12)
    killed = writer(tmp_path, manifest=manifest_of(every), new_ids=pa.array(every), commit_rows=4)
    killed.add(encoded(every[:8], seed=0))  # two commits, then the process dies
    assert killed.table.count_rows() == 8
    del killed

    indexed, failed = read_table_state(str(tmp_path), "videos")
    plan = plan_index(manifest_of(every), indexed=indexed, failed=failed, model_id="model-a")
    assert plan.counts == {"unchanged": 8, NEW: 4}
    new_ids = plan.todo.filter(pc.equal(plan.todo[REASON], NEW))[schema.VIDEO_ID]
    rerun = writer(tmp_path, manifest=manifest_of(every), new_ids=new_ids, commit_rows=4)
    rerun.add(encoded(every[8:], seed=1))
    rerun.add(encoded(every[:2], seed=2))
    rerun.finish(index_min_rows=10**9)
    assert rerun.table.count_rows() == 12
    assert sorted(vectors_by_id(rerun.table)) == every


def test_new_ids_without_a_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="new_ids needs the manifest"):
        writer(tmp_path, new_ids=pa.array(["v000"]))


def test_an_upsert_replaces_and_inserts_in_one_version_found_through_the_index(
    tmp_path: Path,
) -> None:
    """Replacing rows and inserting others is one commit: the version before holds every old
    row, the next one every new row; a fragment whose rows were all replaced is dropped; the
    rows to replace are looked up with a filter the ``video_id`` index answers; a video twice in
    one batch keeps its last row."""
    run = writer(tmp_path, commit_rows=10**9, maintain_every=10**9, adaptive_maintenance=False)
    run.add(encoded(ids("a", 3), seed=0))
    run.flush()
    run.add(encoded(ids("b", 3), seed=1))
    run.flush()
    first_fragment, second_fragment = (f.fragment_id for f in run.table.to_lance().get_fragments())
    before = run.table.version
    replacing = [*ids("a", 3), "b001", "c000", "b001"]
    run.add(encoded(replacing, seed=2))
    run.flush()

    table = run.table
    assert table.version == before + 1
    stored = vectors_by_id(table)
    assert sorted(stored) == sorted([*ids("a", 3), *ids("b", 3), "c000"])
    written = encoded(replacing, seed=2)[schema.VECTOR].to_pylist()
    latest = {**dict(zip(replacing, written, strict=True)), "b001": written[-1]}
    for video_id, vector in latest.items():
        np.testing.assert_allclose(stored[video_id], vector, rtol=1e-6)
    np.testing.assert_allclose(
        stored["b000"], encoded(ids("b", 3), seed=1)[schema.VECTOR].to_pylist()[0], rtol=1e-6
    )
    fragments = [f.fragment_id for f in table.to_lance().get_fragments()]
    assert first_fragment not in fragments and second_fragment in fragments

    table.checkout(before)
    assert sorted(vectors_by_id(table)) == sorted(ids("a", 3) + ids("b", 3))
    table.checkout_latest()
    maintain_table(table)  # the index covers every row
    lookup = table.to_lance().scanner(
        columns=[], filter=sql_in(schema.VIDEO_ID, replacing), with_row_address=True
    )
    assert "ScalarIndexQuery" in lookup.explain_plan()


def test_an_upsert_preempted_by_another_writers_commit_starts_again_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process compacts the table between an upsert's lookup and its commit (Lance's
    retryable ``CommitConflictError``): the upsert is redone on the compacted version."""
    run = writer(tmp_path, commit_rows=10**9, maintain_every=10**9, adaptive_maintenance=False)
    for block in range(3):
        run.add(encoded(ids(f"b{block}", 3), seed=block))
        run.flush()
    lookup = upsert.IndexedUpsert._deleted_in_fragments
    compactions = []

    def lookup_then_another_writer_compacts(self, dataset, keys):
        found = lookup(self, dataset, keys)
        if not compactions:
            other = lancedb.connect(str(tmp_path)).open_table("videos")
            maintain_table(other)
            compactions.append(other.version)
        return found

    monkeypatch.setattr(
        upsert.IndexedUpsert, "_deleted_in_fragments", lookup_then_another_writer_compacts
    )
    replacing = [*ids("b0", 3), "c000"]
    run.add(encoded(replacing, seed=9))
    run.flush()

    assert compactions and run.table.version > compactions[0]
    stored = vectors_by_id(run.table)
    assert sorted(stored) == sorted([*ids("b0", 3), *ids("b1", 3), *ids("b2", 3), "c000"])
    for video_id, vector in vectors_by_id_of(encoded(replacing, seed=9)).items():
        np.testing.assert_allclose(stored[video_id], vector, rtol=1e-6)
