"""The evaluation job end to end (real Ray, LanceDB tables and decoded videos), and its ANN
bookkeeping on a real IVF_PQ index."""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from centerclip.metrics import (
    ann_recall_at_k,
    chance_recall_at_k_curve,
    chance_recall_metrics,
    chance_retrieval_metrics,
    ranks_from_similarity,
    retrieval_ranks,
)
from jobs import cli
from jobs import evaluate as evaluate_job
from jobs import index as index_job
from pipelines import schema
from pipelines.encode import ModelSpec
from pipelines.evaluate import (
    AnnRanks,
    EvaluateConfig,
    EvaluationReport,
    ann_ranks,
    encode_captions,
    gallery_filter,
    missing_reasons,
    run_evaluation,
    split_queries,
)
from pipelines.evaluate.ranks import exact_ranks
from pipelines.search import encode_queries, nearest
from pipelines.write import build_ann_index

CPU_ONLY = ["--gpus-per-actor", "0"]
BROKEN = "broken-video"  # in the index manifest, fails to decode
NEVER_INDEXED = "never-indexed"  # only in the evaluation manifest
METRIC_KEYS = {"R@1", "R@5", "R@10", "MdR", "MnR"}


def _write_manifest(folder: Path, table: pa.Table) -> str:
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-00000.parquet")
    return str(folder)


@pytest.fixture(scope="module")
def indexed(ray_session: dict, sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    """The sample corpus plus one undecodable video, indexed once with the tiny preset, and an
    evaluation manifest that also names a captioned test video the index never saw."""
    folder = tmp_path_factory.mktemp("evaluate")
    corpus = pads.dataset(str(sample_corpus / "manifest")).to_table()
    broken = folder / "broken.mp4"
    broken.write_text("not a video\n" * 50)

    def rows(video_id: str, uri: str, captions: list[str]) -> pa.Table:
        return pa.table(
            {
                "video_id": [video_id],
                "uri": [uri],
                "caption": pa.array([captions], pa.list_(pa.string())),
                "split": ["test"],
            }
        )

    with_broken = pa.concat_tables([corpus, rows(BROKEN, str(broken), ["a broken clip"])])
    index_manifest = _write_manifest(folder / "index-manifest", with_broken)
    never = rows(NEVER_INDEXED, corpus["uri"][0].as_py(), ["never seen", "not indexed at all", ""])
    eval_manifest = _write_manifest(
        folder / "eval-manifest", pa.concat_tables([with_broken, never])
    )
    db = folder / "db"
    status = index_job.main(
        ["--manifest", index_manifest, "--db", str(db), "--table", "videos", "--model", "tiny",
         *CPU_ONLY, "--log-level", "WARNING"]
    )  # fmt: skip
    assert status == 0
    return {"db": db, "manifest": eval_manifest, "folder": folder}


def _evaluate(indexed: dict, out: Path, *extra: str, db: Path | None = None) -> int:
    return evaluate_job.main(
        ["--manifest", indexed["manifest"], "--db", str(db or indexed["db"]), "--table", "videos",
         "--model", "tiny", "--out", str(out), "--log-level", "WARNING", *extra]
    )  # fmt: skip


def test_evaluation_writes_the_documented_outputs_and_reports_missing_videos(
    indexed: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert _evaluate(indexed, tmp_path, "--split", "test") == 0
    out = capsys.readouterr().out
    assert "R@1" in out and "t2v exact" in out and "v2t ANN@10" in out
    assert "t2v chance" in out and "v2t chance" in out
    assert "ANN index:    none" in out and "--build-index" in out
    assert "left out:     3 captions of 2 videos" in out
    assert BROKEN in out and NEVER_INDEXED in out
    assert "skipped:      1 null or blank captions (no queries)" in out

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["skipped_captions"] == {
        "num_captions": 1,
        "captions": [{"video_id": NEVER_INDEXED, "caption_index": 2, "reason": "blank caption"}],
    }
    assert (tmp_path / "recall_at_k.png").stat().st_size > 10_000
    for direction in ("t2v", "v2t"):
        assert set(metrics[direction]) == METRIC_KEYS
        assert set(metrics["ann"][direction]) >= METRIC_KEYS
    assert metrics["model_id"] == "tiny@untrained-seed0/T8-B2-S4-K32-kmedoids-euclidean-it20"
    manifest = pads.dataset(indexed["manifest"]).to_table()
    test = manifest.filter(pa.compute.equal(manifest["split"], "test"))
    all_captions = sum(len(c) for c in test["caption"].to_pylist())
    assert metrics["num_videos"] == test.num_rows - 2
    assert metrics["num_queries"] == all_captions - 3 - 1  # the missing videos' and the blank
    assert metrics["ann"]["index"] is None and metrics["ann_recall@10"] == 1.0

    missing = {v["video_id"]: v for v in metrics["missing"]["videos"]}
    assert metrics["missing"]["num_captions"] == 3 and metrics["missing"]["num_videos"] == 2
    assert missing[BROKEN]["reason"].startswith("failed (decode): not a video")
    assert missing[NEVER_INDEXED] == {
        "video_id": NEVER_INDEXED, "reason": "not indexed", "num_captions": 2,
    }  # fmt: skip

    ranks = pq.read_table(tmp_path / "ranks.parquet")
    assert ranks.num_rows == all_captions - 1  # a row per query: not the blank caption
    left_out = ranks.filter(pa.compute.is_valid(ranks[schema.MISSING]))
    assert sorted(set(left_out["video_id"].to_pylist())) == sorted([BROKEN, NEVER_INDEXED])
    assert left_out[schema.T2V_RANK].null_count == left_out.num_rows

    # Chance level of the videos evaluated, whatever their order (uncaptioned ones own 0).
    evaluated = ranks.filter(pa.compute.is_null(ranks[schema.MISSING]))
    own = list(Counter(evaluated["video_id"].to_pylist()).values())
    own += [0] * (metrics["num_videos"] - len(own))
    assert metrics["chance"] == chance_retrieval_metrics(np.array(own))
    assert metrics["chance"]["t2v"]["R@1"] == pytest.approx(100 / metrics["num_videos"])

    # report.html: the metrics, the plot inlined, and the worst queries worst first, each with
    # the right video's thumbnail beside the top-ranked one's (JPEG data URIs).
    report = (tmp_path / "report.html").read_text()
    assert metrics["model_id"] in report and "<svg" in report and "R@10" in report
    worst = evaluated.sort_by([(schema.T2V_RANK, "descending"), (schema.QUERY, "ascending")])
    worst = worst.slice(0, 20)
    rows = re.findall(r"<td class='rank'>(\d+)</td><td class='caption'>(.*?)</td>", report)
    assert [(int(r), html.unescape(c)) for r, c in rows] == list(
        zip(worst[schema.T2V_RANK].to_pylist(), worst[schema.CAPTION].to_pylist(), strict=True)
    )
    images = re.findall(r'<img src="data:image/jpeg;base64,([^"]+)"', report)
    assert len(images) == 2 * len(rows)
    for data in images[:4]:
        assert Image.open(io.BytesIO(base64.b64decode(data))).format == "JPEG"


def test_exact_ranks_match_the_table_and_ann_agrees_with_exact(
    indexed: dict, tmp_path: Path
) -> None:
    """Every caption of both splits; the ranks are recomputed here from the stored vectors."""
    assert _evaluate(indexed, tmp_path) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    ranks = pq.read_table(tmp_path / "ranks.parquet").filter(
        pa.compute.is_null(pa.compute.field(schema.MISSING))
    )
    table = lancedb.connect(str(indexed["db"])).open_table("videos").to_arrow()
    ids = table["video_id"].to_pylist()
    videos = np.stack(table["vector"].to_numpy(zero_copy_only=False))
    model = ModelSpec("tiny").build()
    text = encode_queries(model, ranks["caption"].to_pylist())
    target = [ids.index(v) for v in ranks["video_id"].to_pylist()]
    expected = ranks_from_similarity(text @ videos.T, target).numpy()
    assert ranks[schema.T2V_RANK].to_numpy().tolist() == expected.tolist()

    # No index: LanceDB searched every row, so ANN is exact up to its top 10.
    assert metrics["ann_recall@10"] == 1.0
    found = ranks.filter(pa.compute.is_valid(ranks[schema.ANN_T2V_RANK]))
    assert found[schema.ANN_T2V_RANK].to_pylist() == found[schema.T2V_RANK].to_pylist()
    assert (found[schema.T2V_RANK].to_numpy() <= 10).all()
    assert (ranks.num_rows - found.num_rows) == int((expected > 10).sum())
    for direction in ("t2v", "v2t"):
        exact, ann = metrics[direction], metrics["ann"][direction]
        assert ann["ann_recall@10"] == 1.0
        assert {k: ann[k] for k in ("R@1", "R@5", "R@10")} == {
            k: exact[k] for k in ("R@1", "R@5", "R@10")
        }
        if ann["beyond_k"]:  # ranks past 10 are unknown to a top-10 search
            assert ann["MnR"] is None and ann["MnR_lower_bound"] <= exact["MnR"]
        else:
            assert ann["MnR"] == pytest.approx(exact["MnR"])


def test_build_index_on_a_small_table_reports_what_the_index_covers(
    indexed: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    db = tmp_path / "db"
    shutil.copytree(indexed["db"], db)  # --build-index writes to the table
    assert _evaluate(indexed, tmp_path / "out", "--split", "test", "--build-index", db=db) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    index = metrics["ann"]["index"]
    assert metrics["ann"]["index_built_now"]
    assert (index["type"], index["distance"]) == ("IVF_PQ", "cosine")
    # LanceDB trains IVF_PQ on 256+ rows only: the 16 rows stay searched exactly.
    assert (index["indexed_rows"], index["unindexed_rows"]) == (0, 16)
    assert "covering 0 of 16 rows" in capsys.readouterr().out
    assert metrics["ann_recall@10"] == 1.0
    assert {k: metrics["ann"]["t2v"][k] for k in METRIC_KEYS} == metrics["t2v"]


def test_a_table_indexed_with_another_model_fails_clearly(
    indexed: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    status = cli.main(
        ["evaluate", "--manifest", indexed["manifest"], "--db", str(indexed["db"]), "--table",
         "videos", "--model", "tiny", "--centers", "16", "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert status == 1
    err = capsys.readouterr().err
    assert "error: the table was indexed with tiny@untrained-seed0/T8-B2-S4-K32-" in err
    assert "not tiny@untrained-seed0/T8-B2-S4-K16-" in err
    assert not (tmp_path / "out").exists()


def test_text_encoding_on_a_ray_actor_pool_matches_in_process(
    ray_session: dict, indexed: dict
) -> None:
    captions = [f"caption number {i}" for i in range(40)]
    config = EvaluateConfig(
        manifest=indexed["manifest"], db=str(indexed["db"]), table="videos",
        model=ModelSpec("tiny"), out=Path("unused"), text_batch_size=16, ray_min_captions=0,
        gpus_per_actor=0,
    )  # fmt: skip
    model = ModelSpec("tiny").build()
    on_ray = encode_captions(model, captions, config)
    assert on_ray.shape == (40, 128)
    np.testing.assert_allclose(on_ray, encode_queries(model, captions), atol=1e-5)


def test_split_queries_gives_one_query_per_caption_and_keeps_uncaptioned_videos() -> None:
    manifest = pa.table(
        {
            "video_id": ["a", "b", "c", "d"],
            "caption": pa.array(
                [["a0", "", "a2"], None, ["c0", None, "c2", " \t"], ["d0"]],
                pa.list_(pa.string()),
            ),
            "split": ["test", "test", "test", "train"],
        }
    )
    videos, queries, skipped = split_queries(manifest, "test")
    assert videos["video_id"].to_pylist() == ["a", "b", "c"]
    assert queries["video_id"].to_pylist() == ["a", "a", "c", "c"]
    assert queries[schema.CAPTION_INDEX].to_pylist() == [0, 2, 0, 2]
    assert queries["caption"].to_pylist() == ["a0", "a2", "c0", "c2"]
    # Null and blank captions are no queries, and none is dropped unseen.
    assert skipped.to_pylist() == [
        {"video_id": "a", schema.CAPTION_INDEX: 1, "reason": "blank caption"},
        {"video_id": "c", schema.CAPTION_INDEX: 1, "reason": "null caption"},
        {"video_id": "c", schema.CAPTION_INDEX: 3, "reason": "blank caption"},
    ]
    with pytest.raises(ValueError, match=r"no manifest rows; the splits are \['test', 'train'\]"):
        split_queries(manifest, "val")


def _results(rows: list[tuple[int, float]]) -> pa.Table:
    query, score = zip(*rows, strict=True)
    return pa.table(
        {schema.QUERY: pa.array(query, pa.int64()), schema.SCORE: pa.array(score, pa.float32())}
    )


def test_ann_ranks_count_ties_against_the_query_and_leave_misses_unknown() -> None:
    # Query 0: right answer second, tied with the first -> rank 2. Query 1: right answer absent.
    # Query 2: two right answers, the better one third. Query 3: no results at all.
    results = _results([(0, 0.9), (0, 0.9), (0, 0.1), (1, 0.8), (1, 0.7), (2, 0.9), (2, 0.8),
                        (2, 0.7), (2, 0.6)])  # fmt: skip
    item = np.array([5, 6, 7, 1, 2, 3, 4, 8, 9])
    right = np.array([0, 1, 0, 0, 0, 0, 0, 1, 1], bool)
    ranks = ann_ranks(results, num_queries=4, item=item, right=right, k=10)
    assert ranks.found.tolist() == [True, False, True, False]
    assert ranks.ranks[ranks.found].tolist() == [2, 3]
    assert ranks.top[0, :4].tolist() == [5, 6, 7, -1]
    assert ranks.lower_bounds().tolist() == [2, 11, 3, 11]

    metrics = ranks.metrics()
    assert metrics["R@1"] == 0.0 and metrics["R@5"] == 50.0 and metrics["beyond_k"] == 2
    assert metrics["MdR"] is None and metrics["MdR_lower_bound"] == 7.0  # (3 + 11) / 2
    assert metrics["MnR"] is None and metrics["MnR_lower_bound"] == 6.75


def test_ann_median_is_known_when_both_middle_ranks_were_found() -> None:
    ranks = AnnRanks(
        ranks=np.array([1, 2, 3, 0]), found=np.array([True, True, True, False]),
        top=np.zeros((4, 10), np.int64), k=10,
    )  # fmt: skip
    metrics = ranks.metrics()
    assert metrics["MdR"] == 2.5 and metrics["MnR"] is None


def test_ann_ranks_equal_exact_ranks_wherever_a_real_ivf_pq_index_returns_the_exact_top_10(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    videos = rng.normal(size=(600, 32)).astype(np.float32)
    videos /= np.linalg.norm(videos, axis=1, keepdims=True)
    target = rng.integers(0, 600, size=200)
    queries = videos[target] + rng.normal(scale=0.15, size=(200, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(videos.reshape(-1)), 32)
    table = lancedb.connect(str(tmp_path)).create_table(
        "videos", pa.table({schema.VIDEO_ID: [f"v{i}" for i in range(600)], "vector": vectors})
    )
    build_ann_index(table, rows=600, dim=32)
    assert table.index_stats(table.list_indices()[0].name).num_indexed_rows == 600

    sim = queries @ videos.T
    exact_ranks = ranks_from_similarity(sim, target).numpy()
    exact_top = np.argsort(-sim, axis=1)[:, :10]
    # A cheap search (one partition, PQ distances) loses neighbours: the index really is used.
    for settings, lossy in (({"nprobes": 1, "refine_factor": None}, True), ({}, False)):
        found = nearest(table, queries, k=10, **settings)
        item = np.array([int(v[1:]) for v in found[schema.VIDEO_ID].to_pylist()])
        right = item == target[found[schema.QUERY].to_numpy()]
        ann = ann_ranks(found, num_queries=200, item=item, right=right, k=10)
        recall = ann_recall_at_k(exact_top, ann.top)
        assert (recall < 0.9) if lossy else (recall > 0.9), (settings, recall)
    # With the default refinement the scores are exact cosines: where the index returned the
    # exact top 10, it found the target exactly when the exact rank is within 10, at that rank.
    same_top = np.array([set(a) == set(e) for a, e in zip(ann.top, exact_top, strict=True)])
    assert same_top.mean() > 0.5
    assert (ann.found[same_top] == (exact_ranks[same_top] <= 10)).all()
    agree = same_top & ann.found
    assert (ann.ranks[agree] == exact_ranks[agree]).all()


def test_gallery_filter_uses_the_split_column_only_when_it_selects_the_gallery(
    tmp_path: Path,
) -> None:
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.ones(8, np.float32)), 2)
    table = lancedb.connect(str(tmp_path)).create_table(
        "videos",
        pa.table(
            {
                schema.VIDEO_ID: ["a", "b", "c", "d"],
                schema.MODEL_ID: ["m", "m", "m", "other"],
                schema.SPLIT: ["test", "test", "train", "test"],
                "vector": vectors,
            }
        ),
    )

    def gallery(ids: list[str], splits: list[str]) -> pa.Table:
        return pa.table({schema.VIDEO_ID: ids, schema.SPLIT: splits})

    where = "model_id IN ('m')"
    by_split = gallery_filter(table, where, "test", gallery(["a", "b"], ["test", "test"]))
    assert by_split == "model_id IN ('m') AND split IN ('test')"
    assert table.count_rows(by_split) == 2
    # The manifest moved "b" to another split since indexing: the table's column is stale.
    by_ids = gallery_filter(table, where, "test", gallery(["a"], ["test"]))
    assert by_ids == "model_id IN ('m') AND video_id IN ('a')"
    assert gallery_filter(table, where, None, gallery(["a", "c"], ["test", "train"])) == (
        "model_id IN ('m') AND video_id IN ('a','c')"
    )


def test_missing_videos_are_explained_by_the_errors_table_or_the_other_model(
    tmp_path: Path,
) -> None:
    now = pa.array([0], schema.TIMESTAMP)
    errors = lancedb.connect(str(tmp_path)).create_table(
        "videos_errors",
        pa.table(
            {
                schema.VIDEO_ID: ["bad"],
                schema.URI: ["bad.mp4"],
                schema.STAGE: ["decode"],
                schema.ERROR: ["truncated: moov atom not found"],
                schema.FINGERPRINT: ["1:2"],
                schema.MODEL_ID: ["m"],
                schema.AT: now,
            },
            schema=schema.ERRORS_SCHEMA,
        ),
    )
    reasons = missing_reasons(errors, ["bad", "old", "new"], {"old": "m-previous"})
    assert reasons == {
        "bad": "failed (decode): truncated: moov atom not found",
        "old": "indexed with another model: m-previous",
        "new": "not indexed",
    }
    assert missing_reasons(None, ["new"], {}) == {"new": "not indexed"}


def _best_ranks_of_every_ranking(num_candidates: int, num_right: list[int]) -> np.ndarray:
    """For each query (``c`` right answers: candidates ``0..c-1``) and every ordering of the
    candidates, equally likely under a random ranking: the best right answer's 1-based rank."""
    orderings = list(itertools.permutations(range(num_candidates)))
    return np.array(
        [1 + min(order.index(item) for item in range(right)) for right in num_right
         for order in orderings]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("num_candidates", "num_right"),
    [(6, [1]), (7, [1]), (6, [2]), (6, [3]), (6, [1, 2, 3]), (5, [2, 2, 1]), (4, [4]), (1, [1])],
)
def test_chance_metrics_equal_those_of_every_random_ranking(
    num_candidates: int, num_right: list[int]
) -> None:
    """Exhaustive: every permutation is one equally likely random ranking, so the pooled ranks
    are the exact distribution (each query gets as many as the others)."""
    best = _best_ranks_of_every_ranking(num_candidates, num_right)
    chance = chance_recall_metrics(num_candidates, num_right)
    for k in (1, 5, 10):
        assert chance[f"R@{k}"] == pytest.approx((best <= k).mean() * 100, abs=1e-9)
    assert chance["MnR"] == pytest.approx(best.mean())
    assert chance["MdR"] == np.median(best)
    ks = list(range(1, num_candidates + 3))
    expected = [(best <= k).mean() * 100 for k in ks]
    assert chance_recall_at_k_curve(num_candidates, num_right, ks) == pytest.approx(expected)


def test_chance_level_of_8_videos_makes_r10_of_100_percent_meaningless() -> None:
    two_each = chance_retrieval_metrics(np.full(8, 2))
    assert two_each["t2v"] == {"R@1": 12.5, "R@5": 62.5, "R@10": 100.0, "MdR": 4.5, "MnR": 4.5}
    # Video-to-text ranks 16 captions and a video counts the better of its 2.
    assert two_each["v2t"]["R@1"] == pytest.approx(2 / 16 * 100)
    assert two_each["v2t"]["R@10"] == pytest.approx((1 - (6 * 5) / (16 * 15)) * 100)
    assert two_each["v2t"]["MnR"] == pytest.approx(17 / 3)
    # An uncaptioned video is a text-to-video candidate, not a video-to-text query.
    mixed = chance_retrieval_metrics([2, 0, 1, 3])
    assert mixed == {
        "t2v": chance_recall_metrics(4, [1] * 6),
        "v2t": chance_recall_metrics(6, [2, 1, 3]),
    }
    # MSR-VTT's 1k-A test split: 1000 videos, 20 captions each (only the first in t2v there).
    msrvtt = chance_retrieval_metrics(np.full(1000, 20))
    assert msrvtt["t2v"]["R@1"] == pytest.approx(0.1) and msrvtt["t2v"]["MdR"] == 500.5
    assert msrvtt["v2t"]["R@1"] == pytest.approx(0.1)
    assert msrvtt["v2t"]["MnR"] == pytest.approx(20001 / 21)


def test_chance_metrics_reject_impossible_counts() -> None:
    with pytest.raises(ValueError, match="1 to 3 right answers"):
        chance_recall_metrics(3, [0, 1])
    with pytest.raises(ValueError, match="1 to 3 right answers"):
        chance_recall_metrics(3, [4])
    with pytest.raises(ValueError, match="at least one caption"):
        chance_retrieval_metrics([0, 0])
    with pytest.raises(ValueError, match="cut-offs"):
        chance_recall_at_k_curve(3, [1], [0, 1])


def test_the_printed_table_has_a_chance_row_per_direction() -> None:
    exact = {"R@1": 50.0, "R@5": 100.0, "R@10": 100.0, "MdR": 1.5, "MnR": 1.6}
    ann = {**exact, "ann_recall@10": 1.0, "beyond_k": 0}
    metrics = {
        "model_id": "tiny@untrained-seed0", "split": "test", "num_queries": 16, "num_videos": 8,
        "num_videos_without_captions": 0, "t2v": exact, "v2t": exact,
        "chance": chance_retrieval_metrics(np.full(8, 2)), "ann_recall@10": 1.0,
        "ann": {"index_note": "none", "v2t_index_note": "none", "k": 10, "nprobes": None,
                "refine_factor": 10, "t2v": ann, "v2t": ann},
        "missing": {"num_captions": 0, "num_videos": 0, "videos": []},
        "skipped_captions": {"num_captions": 0, "captions": []},
    }  # fmt: skip
    lines = EvaluationReport(metrics=metrics, ranks=pa.table({})).format().splitlines()
    rows = {line[:16].strip(): line[16:].split() for line in lines if "chance" in line[:16]}
    assert rows["t2v chance"] == ["12.5", "62.5", "100.0", "4.5", "4.5"]
    assert rows["v2t chance"][0] == "12.5"
    assert "random ranking of 8 videos (t2v) / 16 captions (v2t" in lines[-3]


def test_chunked_exact_ranks_give_the_dense_figures(indexed: dict, tmp_path: Path) -> None:
    """Scored 7 captions at a time, the split gives exactly the figures and ranks of one chunk
    holding every caption (the whole ``[Q, V]`` matrix at once, as evaluation used to)."""
    reports = {
        chunk_rows: run_evaluation(
            EvaluateConfig(
                manifest=indexed["manifest"],
                db=str(indexed["db"]),
                table="videos",
                model=ModelSpec("tiny"),
                out=tmp_path / str(chunk_rows),
                exact_chunk_rows=chunk_rows,
            )
        )
        for chunk_rows in (7, 1_000_000)
    }
    reports["ray"] = run_evaluation(
        EvaluateConfig(
            manifest=indexed["manifest"],
            db=str(indexed["db"]),
            table="videos",
            model=ModelSpec("tiny"),
            out=tmp_path / "ray",
            exact_chunk_rows=7,
            ray_min_scores=0,
        )
    )
    dense = reports[1_000_000]
    assert dense.metrics["num_queries"] > 7
    for chunked in (reports[7], reports["ray"]):
        for key in ("t2v", "v2t", "num_queries", "num_videos", "ann_recall@10"):
            assert chunked.metrics[key] == dense.metrics[key]
        assert chunked.ranks.equals(dense.ranks)


def test_exact_ranks_as_ray_tasks_equal_the_dense_ranks_with_ties(
    ray_session: dict, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    # Entries of {-1, 0, 1} / 4: every dot product is exact in float32 in any order of its sums,
    # so each task's matmul gives the driver's values, and ties abound.
    text = (rng.integers(-1, 2, (57, 8)) / 4).astype(np.float32)
    video = (rng.integers(-1, 2, (13, 8)) / 4).astype(np.float32)
    caption_video = rng.permutation(np.arange(57) % 11)  # videos 11 and 12 own no caption
    with caplog.at_level("INFO", logger="pipelines.evaluate.ranks"):
        on_ray = exact_ranks(text, video, caption_video, chunk_rows=5, ray_min_scores=0)
    assert "12 caption chunks and 13 video chunks on Ray" in caplog.text
    local = exact_ranks(text, video, caption_video, chunk_rows=5)

    sim = torch.from_numpy(text @ video.T)
    dense = retrieval_ranks(sim, caption_video)
    for chunked in (on_ray, local):
        assert torch.equal(chunked.ranks.t2v, dense.t2v)
        assert torch.equal(chunked.ranks.v2t, dense.v2t)
        assert torch.equal(chunked.ranks.v2t_video, dense.v2t_video)
        # The top 10: a dense top 10's scores (which ids win a tie is either's choice).
        assert torch.equal(sim.gather(1, chunked.t2v_top), sim.topk(10, dim=1).values)
        by_video = sim.T[dense.v2t_video]  # [Vc, Q]
        assert torch.equal(by_video.gather(1, chunked.v2t_top), by_video.topk(10, dim=1).values)
