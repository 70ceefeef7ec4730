"""Search over a real index of decoded videos: by vector, by text through the job, and the
segment a hit points at."""

from __future__ import annotations

import re
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from jobs import cli
from jobs import index as index_job
from jobs import search as search_job
from pipelines import schema
from pipelines.search import open_index, search_vectors

MODEL_ID = "tiny@untrained-seed0/T8-B2-S4-K32-kmedoids-euclidean-it20"


@pytest.fixture(scope="module")
def indexed(ray_session: dict, sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    """The sample corpus indexed once with the tiny preset: ``(db, rows of the table)``."""
    db = tmp_path_factory.mktemp("search") / "db"
    status = index_job.main(
        ["--manifest", str(sample_corpus / "manifest"), "--db", str(db), "--table", "videos",
         "--model", "tiny", "--gpus-per-actor", "0", "--log-level", "WARNING"]
    )  # fmt: skip
    assert status == 0
    return db, open_index(str(db), "videos").to_arrow().sort_by(schema.VIDEO_ID)


def _vectors(column: pa.ChunkedArray) -> np.ndarray:
    return np.stack(column.to_numpy(zero_copy_only=False)).astype(np.float32)


@pytest.mark.parametrize("exact", [False, True])
def test_a_videos_own_embedding_finds_it_first(indexed: tuple, exact: bool) -> None:
    db, rows = indexed
    vectors = _vectors(rows[schema.VECTOR])  # [16, 128]
    results = search_vectors(
        open_index(str(db), "videos"), vectors, model_id=MODEL_ID, k=5, exact=exact
    )
    assert len(results) == rows.num_rows
    for video_id, hits, row in zip(rows[schema.VIDEO_ID].to_pylist(), results, rows.to_pylist(),
                                   strict=True):  # fmt: skip
        assert len(hits) == 5
        assert hits[0].video_id == video_id and hits[0].uri == row[schema.URI]
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert row[schema.SEGMENT_START_S][hits[0].segment] == hits[0].segment_start_s
        assert 0.0 <= hits[0].segment_start_s <= hits[0].segment_end_s


def test_a_segment_embedding_points_at_that_segment(indexed: tuple) -> None:
    db, rows = indexed
    table = open_index(str(db), "videos")
    for row in rows.to_pylist():
        segments = np.asarray(row[schema.SEGMENT_EMBEDDINGS], np.float32)  # [4, 128]
        # An untrained model's segments differ little (cosine ~0.9997) but far beyond float32
        # error; segments of a static clip can coincide, and those cannot be told apart.
        scores = segments @ segments.T  # [4, 4]
        distinct = [j for j in range(4) if np.delete(scores[j], j).max() < scores[j, j] - 1e-5]
        assert distinct
        for j in distinct:
            hits = search_vectors(table, segments[j : j + 1], model_id=MODEL_ID, k=16)[0]
            own = next(h for h in hits if h.video_id == row[schema.VIDEO_ID])
            assert own.segment == j
            assert own.segment_score == pytest.approx(1.0, abs=1e-5)
            assert (own.segment_start_s, own.segment_end_s) == pytest.approx(
                (row[schema.SEGMENT_START_S][j], row[schema.SEGMENT_END_S][j])
            )
            # Ranked by moments (MaxSim), the segment's own video comes first, at that segment.
            [first, *_] = search_vectors(
                table, segments[j : j + 1], model_id=MODEL_ID, k=3, by="moments"
            )[0]
            assert (first.video_id, first.segment) == (row[schema.VIDEO_ID], j)
            assert first.segment_score == pytest.approx(1.0, abs=1e-5)
            assert first.score == pytest.approx(float(np.dot(row[schema.VECTOR], segments[j])))


def test_search_job_prints_hits_with_scores_segment_spans_and_uris(
    indexed: tuple, capsys: pytest.CaptureFixture
) -> None:
    db, rows = indexed
    query = rows[schema.CAPTION][0].as_py()[0]
    argv = ["--db", str(db), "--table", "videos", "--model", "tiny", "-k", "3", query]
    assert search_job.main(argv) == 0
    printed = capsys.readouterr().out
    assert cli.main(["search", *argv]) == 0
    assert capsys.readouterr().out == printed  # `centerclip search` is the same job

    lines = printed.splitlines()
    assert lines[0] == f'query: "{query}"'
    hit = re.compile(r"^\s+(\d)\. (-?\d\.\d{3})  (\S+)  \[(\d+\.\d)s-(\d+\.\d)s\]  (\S+)$")
    matches = [hit.match(line) for line in lines[1:]]
    assert len(matches) == 3 and all(matches), lines
    uris = dict(zip(rows[schema.VIDEO_ID].to_pylist(), rows[schema.URI].to_pylist(), strict=True))
    for rank, match in enumerate(matches, start=1):
        assert int(match[1]) == rank
        assert uris[match[3]] == match[6]
        assert float(match[4]) <= float(match[5])


def test_search_with_another_model_fails_clearly(
    indexed: tuple, capsys: pytest.CaptureFixture
) -> None:
    db, _ = indexed
    status = search_job.main(
        ["--db", str(db), "--table", "videos", "--model", "tiny", "--centers", "16", "a query"]
    )
    assert status == 1
    err = capsys.readouterr().err
    assert f"error: the table was indexed with {MODEL_ID}, not tiny@" in err
    assert "K16" in err and "re-index" in err


def test_a_table_of_the_flat_segment_layout_searches_then_migrates_without_re_encoding(
    indexed: tuple, sample_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A table an earlier version indexed (segments in the flat ``segment_vectors``): search by
    vector works and points at the right segment, ranking by moments is a clear error, and the
    next ``jobs.index`` run moves the segments to the multivector column without encoding."""
    _, rows = indexed
    flat = pa.FixedSizeListArray.from_arrays(
        rows[schema.SEGMENT_EMBEDDINGS].combine_chunks().flatten().flatten(), 4 * 128
    )
    old = rows.drop_columns([schema.SEGMENT_EMBEDDINGS]).append_column(
        schema.LEGACY_SEGMENT_VECTORS, flat
    )
    db = tmp_path / "db"
    lancedb.connect(str(db)).create_table("videos", old)
    segments = np.array(rows[schema.SEGMENT_EMBEDDINGS].to_pylist(), np.float32)  # [V, 4, 128]
    table = open_index(str(db), "videos")
    for hits, row, own in zip(
        search_vectors(table, segments[:, 2], model_id=MODEL_ID, k=16, exact=True),
        rows.to_pylist(),
        segments,
        strict=True,
    ):
        hit = next(h for h in hits if h.video_id == row[schema.VIDEO_ID])
        assert hit.segment == int(np.argmax(own @ own[2]))
        assert hit.segment_score == pytest.approx(1.0, abs=1e-5)

    argv = ["--db", str(db), "--table", "videos", "--model", "tiny", "--by", "moments", "a q"]
    assert search_job.main(argv) == 1
    assert "re-run jobs.index on it once" in capsys.readouterr().err
    assert search_job.main([*argv, "--hybrid"]) == 1
    assert "--hybrid fuses the whole-video ranking" in capsys.readouterr().err

    status = index_job.main(
        ["--manifest", str(sample_corpus / "manifest"), "--db", str(db), "--table", "videos",
         "--model", "tiny", "--gpus-per-actor", "0", "--log-level", "WARNING"]
    )  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "unchanged=16" in printed
    assert "migrated    the segments of 16 rows to the multivector column" in printed
    after = open_index(str(db), "videos").to_arrow().sort_by(schema.VIDEO_ID)
    assert schema.LEGACY_SEGMENT_VECTORS not in after.column_names
    assert after[schema.INDEXED_AT].equals(rows[schema.INDEXED_AT])  # nothing re-encoded
    assert np.array_equal(np.array(after[schema.SEGMENT_EMBEDDINGS].to_pylist()), segments)
    assert search_job.main(argv) == 0
