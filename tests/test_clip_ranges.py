"""Clip ranges end to end: a range that names no clip fails the job before any work with one line;
an ``end_s`` past the video's end is clamped, so the stored times and search's are the real ones."""

from __future__ import annotations

import re
from pathlib import Path

import av
import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import index as index_job
from jobs import search as search_job

TABLE = "videos"
CPU_ONLY = ["--model", "tiny", "--gpus-per-actor", "0", "--log-level", "WARNING"]


def _duration_s(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return float(stream.duration * stream.time_base)


def _manifest(folder: Path, table: pa.Table) -> Path:
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-0.parquet")
    return folder


@pytest.mark.parametrize(
    ("start_s", "end_s", "reason"),
    [
        (None, -1.0, "negative end_s (-1)"),
        (None, 0.0, "end_s 0 is not after the video's start (start_s is null)"),
        (1.0, 0.5, "end_s 0.5 is not after start_s 1"),
        (float("nan"), 2.0, "start_s is nan, not a number of seconds"),
    ],
)
def test_a_clip_range_that_names_no_clip_fails_before_any_work(
    sample_corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    start_s: float | None,
    end_s: float,
    reason: str,
) -> None:
    video = sorted((sample_corpus / "videos").glob("*.mp4"))[0]
    manifest = _manifest(
        tmp_path / "manifest",
        pa.table(
            {
                "video_id": ["whole", "clip"],
                "uri": [str(video)] * 2,
                "start_s": pa.array([None, start_s], pa.float64()),
                "end_s": pa.array([None, end_s], pa.float64()),
            }
        ),
    )
    db = tmp_path / "db"
    args = ["--manifest", str(manifest), "--db", str(db), "--table", TABLE, *CPU_ONLY]
    assert index_job.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {manifest / 'part-0.parquet'} row 1: {reason}"]
    assert not db.exists()  # nothing was started, nothing written


def test_end_past_the_video_is_clamped_in_the_table_and_in_search(
    ray_session: dict, sample_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    video = sorted((sample_corpus / "videos").glob("*.mp4"))[0]
    duration = _duration_s(video)
    start = round(duration - 0.5, 1)
    manifest = _manifest(
        tmp_path / "manifest",
        pa.table(
            {
                "video_id": ["tail", "within"],
                "uri": [str(video)] * 2,
                "start_s": [start, 0.0],
                "end_s": [1000.0, 1.0],
            }
        ),
    )
    db = tmp_path / "db"
    args = ["--manifest", str(manifest), "--db", str(db), "--table", TABLE, *CPU_ONLY]
    assert index_job.main(args) == 0
    capsys.readouterr()

    rows = lancedb.connect(str(db)).open_table(TABLE).to_arrow().sort_by("video_id")
    assert rows["video_id"].to_pylist() == ["tail", "within"]
    tail, within = rows.to_pylist()
    assert tail["end_s"] == pytest.approx(duration, abs=1e-3)
    assert tail["segment_start_s"][0] == pytest.approx(start)
    assert tail["segment_end_s"][-1] == pytest.approx(duration, abs=1e-3)
    assert within["end_s"] == 1.0 and within["segment_end_s"][-1] == pytest.approx(1.0)
    assert np.all(np.asarray(tail["segment_end_s"]) <= duration + 1e-3)

    # A rerun sees the same fingerprints (the manifest's bounds): nothing to do.
    assert index_job.main(args) == 0
    assert "indexed     0 videos" in capsys.readouterr().out

    search_args = [
        "a video",
        "--db",
        str(db),
        "--table",
        TABLE,
        "-k",
        "2",
        "--exact",
        "--model",
        "tiny",
    ]
    assert search_job.main(search_args) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if " tail " in line]
    assert len(lines) == 1
    shown = re.search(r"\[([\d.]+)s-([\d.]+)s\]", lines[0])
    assert shown is not None, lines[0]
    first, last = float(shown[1]), float(shown[2])
    # The best segment of the clip, within what the video holds (printed to 0.1 s).
    assert start - 0.05 <= first < last <= round(duration, 1) + 1e-9
