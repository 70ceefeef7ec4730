"""The index job end to end on real videos, real Ray and real LanceDB tables."""

from __future__ import annotations

import re
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from jobs import index as index_job
from pipelines.synthetic import (
    DAMAGED_AUDIO_ONLY,
    DAMAGED_COVER_ONLY,
    DAMAGED_EMPTY,
    DAMAGED_MISSING,
    DAMAGED_TEXT,
    DAMAGED_TRUNCATED,
    SHORT_ONE_FRAME,
    SHORT_THREE_FRAMES,
    write_damaged_videos,
)
from pipelines.write import fragment_count

REPO = Path(__file__).resolve().parents[1]
CPU_ONLY = ["--gpus-per-actor", "0"]
EXPECTED_FAILURES = {
    DAMAGED_EMPTY: "empty file",
    DAMAGED_TRUNCATED: "truncated",
    DAMAGED_TEXT: "not a video",
    DAMAGED_MISSING: "missing file",
    DAMAGED_AUDIO_ONLY: "no video stream",
    DAMAGED_COVER_ONLY: "no video stream",
}


def manifest_rows(corpus: Path) -> pa.Table:
    return pads.dataset(str(corpus / "manifest")).to_table()


def write_manifest(folder: Path, table: pa.Table) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "part-00000.parquet")
    return folder


@pytest.fixture(scope="module")
def mixed_manifest(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample corpus plus every kind of damaged input."""
    folder = tmp_path_factory.mktemp("mixed")
    good = manifest_rows(sample_corpus)
    damaged = write_damaged_videos(folder / "damaged", good_video=Path(good["uri"][0].as_py()))
    extra = pa.table(
        {
            "video_id": list(damaged),
            "uri": list(damaged.values()),
            "caption": pa.array([None] * len(damaged), pa.list_(pa.string())),
            "split": ["test"] * len(damaged),
        }
    )
    return write_manifest(folder / "manifest", pa.concat_tables([good, extra]))


def run_index(*args: str) -> int:
    return index_job.main([*args, "--log-level", "WARNING"])


def read(db: Path, table: str) -> pa.Table:
    return lancedb.connect(str(db)).open_table(table).to_arrow().sort_by("video_id")


def test_index_records_every_good_video_once_and_every_bad_one_with_its_reason(
    ray_session: dict, mixed_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    db = tmp_path / "db"
    status = run_index(
        "--manifest", str(mixed_manifest), "--db", str(db), "--table", "videos",
        "--model", "tiny", "--batch-size", "4", *CPU_ONLY,
    )  # fmt: skip
    assert status == 0
    out = capsys.readouterr().out
    assert out.count("plan: ") == 1
    # 22 videos on 4 CPUs: single-thread encode actors that decode their own videos (the
    # two-node test runs the other graph, a decode pool feeding the encode actors).
    assert "each decoding its own videos" in out

    manifest = pads.dataset(str(mixed_manifest)).to_table()
    table = read(db, "videos")
    errors = read(db, "videos_errors")
    good_ids = sorted(set(manifest["video_id"].to_pylist()) - set(EXPECTED_FAILURES))
    assert table["video_id"].to_pylist() == good_ids  # each exactly once
    assert SHORT_ONE_FRAME in good_ids and SHORT_THREE_FRAMES in good_ids
    vectors = np.stack(table["vector"].to_numpy(zero_copy_only=False))
    assert vectors.shape == (len(good_ids), 128)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 128)
    assert set(table["model_id"].to_pylist()) == {
        "tiny@untrained-seed0/T8-B2-S4-K32-kmedoids-euclidean-it20"
    }
    assert all(table["fingerprint"].to_pylist()) and all(table["indexed_at"].to_pylist())
    segment_vectors = np.array(table["segment_embeddings"].to_pylist(), np.float32)
    assert segment_vectors.shape == (len(good_ids), 4, 128)
    assert np.allclose(np.linalg.norm(segment_vectors, axis=2), 1.0, atol=1e-4)
    starts = np.array(table["segment_start_s"].to_pylist())
    ends = np.array(table["segment_end_s"].to_pylist())
    assert (starts[:, 0] == 0).all() and (ends >= starts).all()
    regular = np.array([not v.startswith("short-") for v in good_ids])
    assert (ends[regular] > starts[regular]).all()  # frames repeat in the short videos

    # The summary's counts are the tables' rows, and it says how to read the errors.
    indexed = int(re.search(r"^indexed +(\d+) videos", out, re.MULTILINE).group(1))
    failed = int(re.search(r"^failed +(\d+) \(", out, re.MULTILINE).group(1))
    assert (indexed, failed) == (table.num_rows, errors.num_rows)
    assert f"videos: {table.num_rows} rows; videos_errors: {errors.num_rows} rows" in out
    opened = lancedb.connect(str(db))
    fragments = [fragment_count(opened.open_table(t)) for t in ("videos", "videos_errors")]
    assert f"(fragments: {fragments[0]} and {fragments[1]})" in out
    assert "open_table('videos_errors')" in out
    # Where the time went: costs per video, the bounding stage, the decoder.
    assert re.search(r"^per video   decode [\d.]+ core-s, \d+ frames decoded, encode", out, re.M)
    assert re.search(r"^bottleneck  (bound by (decode|encode)|balanced)", out, re.MULTILINE)
    assert re.search(r"^decoded by  pyav: \d+", out, re.MULTILINE)

    reasons = dict(zip(errors["video_id"].to_pylist(), errors["error"].to_pylist(), strict=True))
    assert sorted(reasons) == sorted(EXPECTED_FAILURES)
    for video_id, category in EXPECTED_FAILURES.items():
        assert reasons[video_id].startswith(category), reasons[video_id]
    assert set(errors["stage"].to_pylist()) <= {"read", "decode"}


def test_rerun_on_an_unchanged_manifest_does_no_work(
    ray_session: dict, sample_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["--manifest", str(sample_corpus / "manifest"), "--db", str(tmp_path / "db"),
            "--table", "videos", "--model", "tiny", *CPU_ONLY]  # fmt: skip
    assert run_index(*args) == 0
    first = read(tmp_path / "db", "videos")
    capsys.readouterr()
    assert run_index(*args) == 0
    out = capsys.readouterr().out
    assert "plan: unchanged=16, deleted=0" in out
    assert "indexing" not in out  # nothing to do: no progress to report
    assert re.search(r"^indexed +0 videos", out, re.MULTILINE)
    assert read(tmp_path / "db", "videos").equals(first)


def without_uri(table: pa.Table) -> pa.Table:
    return table.drop_columns(["uri"])


def with_duplicate_id(table: pa.Table) -> pa.Table:
    ids = table["video_id"].to_pylist()
    return table.set_column(0, "video_id", pa.array(["a", "a", *ids[2:]]))


def with_null_uri(table: pa.Table) -> pa.Table:
    uris = table["uri"].to_pylist()
    return table.set_column(1, "uri", pa.array([None, *uris[1:]], pa.string()))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (without_uri, "missing required column(s) 'uri'"),
        (with_duplicate_id, "duplicate video_id 'a'"),
        (with_null_uri, "null uri"),
    ],
)
def test_bad_manifest_fails_before_any_work(
    sample_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture, change, message: str
) -> None:
    manifest = write_manifest(tmp_path / "manifest", change(manifest_rows(sample_corpus)))
    status = run_index(
        "--manifest", str(manifest), "--db", str(tmp_path / "db"), "--table", "videos",
        "--model", "tiny",
    )  # fmt: skip
    assert status == 1
    err = capsys.readouterr().err
    assert message in err and "part-00000.parquet" in err
    assert not (tmp_path / "db").exists()


def test_bad_flag_fails_fast_naming_the_flag(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_index("--manifest", "m", "--db", "d", "--table", "t", "--model", "tiny",
                  "--batch-size", "0")  # fmt: skip
    assert exit_info.value.code == 2
    assert "--batch-size: must be a positive integer" in capsys.readouterr().err


def test_gpu_actors_receive_distinct_gpu_ids(
    ray_session: dict, sample_corpus: Path, tmp_path: Path
) -> None:
    from pipelines.encode import ModelSpec
    from pipelines.index import IndexConfig
    from pipelines.index import run_index as run_index_in_process
    from pipelines.resources import ResourceRequest

    # A setting no other test uses: this run's actors are the ones naming this model.
    model = ModelSpec("tiny", overrides={"centers": 30})
    summary = run_index_in_process(
        IndexConfig(
            manifest=str(sample_corpus / "manifest"),
            db=str(tmp_path / "db"),
            table="videos",
            model=model,
            resources=ResourceRequest(encode_actors=2, gpus_per_actor=1, batch_size=2),
        )
    )
    assert summary.indexed == 16
    # Each actor states its placement when it starts, in its Ray log file, whether or not the
    # pool gave it work (it hands every block to one actor when decoding is the bottleneck).
    started = re.compile(
        rf"encode actor node=\S+ gpus=(\S+) pid=\d+: {re.escape(summary.model_id)} "
    )
    logs = Path(ray_session["session_dir"]) / "logs"
    gpus = [m[1] for f in logs.glob("worker-*.err") for m in started.finditer(f.read_text())]
    assert sorted(gpus) == ["0", "1"], gpus
    for label in summary.videos_by_worker:
        assert label.split("gpus=")[1].split()[0] in gpus
