"""Unchanged means unchanged: a rerun with nothing to do writes no row and no table version,
missing files included; a missing file's row is rewritten only when its reason changes."""

from __future__ import annotations

import os
from pathlib import Path

import lancedb
import pyarrow as pa
import pyarrow.parquet as pq
from index_configs import cpu_index_config

from pipelines import schema
from pipelines.index import run_index

TABLE = "videos"


def _versions(db: Path) -> dict[str, list[int]]:
    conn = lancedb.connect(str(db))
    return {
        name: [v["version"] for v in conn.open_table(name).list_versions()]
        for name in (TABLE, schema.errors_table_name(TABLE))
    }


def _errors(db: Path) -> dict[str, tuple[str, object]]:
    rows = lancedb.connect(str(db)).open_table(schema.errors_table_name(TABLE)).to_arrow()
    return {r["video_id"]: (r["error"], r["at"]) for r in rows.to_pylist()}


def test_unchanged_rerun_with_missing_files_writes_no_version(
    ray_session: dict, sample_corpus: Path, tmp_path: Path
) -> None:
    videos = sorted((sample_corpus / "videos").glob("*.mp4"))[:2]
    pipe = tmp_path / "pipe.mp4"
    os.mkfifo(pipe)
    moved = tmp_path / "moved.mp4"
    manifest = tmp_path / "manifest"
    manifest.mkdir()
    ids = ["v0", "v1", "gone", "moved", "pipe"]
    uris = [*map(str, videos), str(tmp_path / "gone.mp4"), str(moved), str(pipe)]
    pq.write_table(pa.table({"video_id": ids, "uri": uris}), manifest / "part-0.parquet")
    db = tmp_path / "db"
    config = cpu_index_config(manifest, db, TABLE)
    first = run_index(config)
    assert first.indexed == 2
    versions, errors = _versions(db), _errors(db)
    assert {k: v[0].split(":")[0] for k, v in errors.items()} == {
        "gone": "missing file",
        "moved": "missing file",
        "pipe": "not a regular file",
    }

    again = run_index(config)
    assert again.plan == {"unchanged": 2, "missing": 3}
    assert again.indexed == 0 and again.failed == 0
    assert _versions(db) == versions
    assert _errors(db) == errors  # same rows, same `at`: nothing rewritten

    # One missing file's state changes (a directory now stands at its path): only its row is
    # rewritten, in one commit of the errors table.
    moved.mkdir()
    changed = run_index(config)
    assert changed.failed == 1
    now = _errors(db)
    assert now["moved"][0] == f"not a regular file: {moved} is a directory"
    assert {k: now[k] for k in ("gone", "pipe")} == {k: errors[k] for k in ("gone", "pipe")}
    assert len(_versions(db)[schema.errors_table_name(TABLE)]) > len(
        versions[schema.errors_table_name(TABLE)]
    )
