"""The search service over HTTP on loopback: a real index, Ray Serve on the session's Ray, a
real browser on the page. One service start for the whole module.

The table holds the 16-video sample corpus and two videos whose content changes halfway (with
each half as a clip of its own). One sample video is re-captioned with a word no video shows, the
one the vector search ranks last for it, to check that hybrid search finds it.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from headless_chromium import Browser, find_chromium
from PIL import Image

from jobs import index as index_job
from jobs import serve as serve_job
from pipelines import schema
from pipelines.display import TRANSFER_HLG, TRANSFER_PQ
from pipelines.encode import ModelSpec
from pipelines.search import encode_queries, open_index, search_vectors
from pipelines.serve.media import MediaReader
from pipelines.synthetic import (
    COLOURS,
    write_hdr_mp4,
    write_interlaced_mp4,
    write_mp4,
    write_two_part_videos,
)

TWO_PART_VIDEOS = 2
HYBRID_WORD = "zanzibar"
ARTIFACTS = Path(__file__).parent / "artifacts"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def index(manifests: list[Path], db: Path) -> None:
    argv = ["--manifest", *map(str, manifests), "--db", str(db), "--table", "videos",
            "--model", "tiny", "--gpus-per-actor", "0", "--log-level", "WARNING"]  # fmt: skip
    assert index_job.main(argv) == 0


@pytest.fixture(scope="module")
def indexed(ray_session: dict, sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    """``(db, the re-captioned video's id)``: the table, indexed, then re-captioned."""
    from pipelines.search import search

    root = tmp_path_factory.mktemp("serve")
    # A copy of the shared sample manifest (its uris are absolute), so re-captioning stays here.
    sample = root / "sample-manifest"
    shutil.copytree(sample_corpus / "manifest", sample)
    two_part = write_two_part_videos(root / "two-part", videos=TWO_PART_VIDEOS, seed=3)
    db = root / "db"
    index([sample, two_part], db)

    # The sample video the vector search ranks last for the word: it gets the word as a caption.
    model = ModelSpec("tiny").build()
    rows = open_index(str(db), "videos").count_rows()
    hits = search(db_uri=str(db), table_name="videos", model=model, queries=[HYBRID_WORD],
                  k=rows, exact=True)[0]  # fmt: skip
    target = next(h.video_id for h in reversed(hits) if h.video_id.startswith("syn-"))
    for shard in sorted(sample.glob("*.parquet")):
        table = pq.read_table(shard)
        captions = [
            [*c, f"the {HYBRID_WORD} ferry"] if v == target else c
            for v, c in zip(table[schema.VIDEO_ID].to_pylist(),
                            table[schema.CAPTION].to_pylist(), strict=True)
        ]  # fmt: skip
        column = table.schema.get_field_index(schema.CAPTION)
        table = table.set_column(column, schema.CAPTION, [captions])
        pq.write_table(table, shard)
    index([sample, two_part], db)  # captions only: an in-place update, nothing re-encoded
    return db, target


@pytest.fixture(scope="module")
def service(indexed: tuple) -> Iterator[str]:
    """The service on a free loopback port (and a second app, under /mismatch, serving the same
    table with another model's settings); Serve is shut down after the module."""
    from ray import serve

    from pipelines.serve.deployment import (
        ServiceResources,
        application,
        start_service,
        stop_service,
    )
    from pipelines.serve.service import ServeConfig

    db, _ = indexed
    resources = ServiceResources(replicas=1, replica_cpus=0.5)
    url = start_service(
        ServeConfig(db=str(db), table="videos", model=ModelSpec("tiny")),
        port=free_port(),
        resources=resources,
        timeout_s=240,
    )
    other = ServeConfig(db=str(db), table="videos", model=ModelSpec("tiny", None, {"centers": 16}))
    serve.run(application(other, resources), name="mismatch", route_prefix="/mismatch")
    yield url
    stop_service()


def get(url: str, *, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def get_json(url: str) -> tuple[int, Any]:
    status, _, body = get(url)
    return status, json.loads(body)


def search_url(service: str, **params: Any) -> str:
    return f"{service}/search?{urllib.parse.urlencode(params)}"


def table_rows(db: Path) -> dict[str, dict]:
    rows = open_index(str(db), "videos").to_arrow().to_pylist()
    return {row[schema.VIDEO_ID]: row for row in rows}


def test_health_names_the_model_and_the_rows(service: str, indexed: tuple) -> None:
    status, body = get_json(f"{service}/health")
    assert status == 200
    assert body["status"] == "ok" and body["table"] == "videos"
    assert body["model_id"].startswith("tiny@untrained-seed0/")
    assert body["rows"] == 16 + 3 * TWO_PART_VIDEOS


def test_search_returns_scored_hits_with_segment_spans_and_captions(
    service: str, indexed: tuple
) -> None:
    rows = table_rows(indexed[0])
    status, body = get_json(search_url(service, q="two red circles moving left", k=5))
    assert status == 200 and body["query"] == "two red circles moving left"
    hits = body["hits"]
    assert len(hits) == 5
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for hit in hits:
        row = rows[hit["video_id"]]
        assert hit["uri"] == row[schema.URI]
        assert hit["captions"] == row[schema.CAPTION]
        assert hit["start_s"] == pytest.approx(
            row[schema.SEGMENT_START_S][hit["segment"]], abs=1e-3
        )
        assert hit["end_s"] == pytest.approx(row[schema.SEGMENT_END_S][hit["segment"]], abs=1e-3)
        assert hit["start_s"] <= hit["end_s"]
        # The cosine with the video embedding, and the best segment's is the largest of its S.
        assert -1.0 <= hit["score"] <= 1.0 and hit["segment_score"] >= hit["score"] - 0.05


def test_search_keeps_to_a_split(service: str, indexed: tuple) -> None:
    rows = table_rows(indexed[0])
    status, body = get_json(search_url(service, q="a square", k=50, split="test"))
    assert status == 200
    expected = sorted(v for v, row in rows.items() if row[schema.SPLIT] == "test")
    assert sorted(h["video_id"] for h in body["hits"]) == expected


def test_similar_ranks_by_the_stored_vector_and_leaves_the_video_out(
    service: str, indexed: tuple
) -> None:
    rows = table_rows(indexed[0])
    video_id = "syn-000003"
    status, body = get_json(f"{service}/similar/{video_id}?k=4")
    assert status == 200
    ids = [h["video_id"] for h in body["hits"]]
    assert len(ids) == 4 and video_id not in ids
    vector = np.asarray(rows[video_id][schema.VECTOR], np.float32)
    cosines = {v: float(np.dot(vector, row[schema.VECTOR])) for v, row in rows.items()}
    del cosines[video_id]
    assert ids == sorted(cosines, key=cosines.get, reverse=True)[:4]
    for hit in body["hits"]:
        assert hit["score"] == pytest.approx(cosines[hit["video_id"]], abs=1e-4)


def test_video_serves_byte_ranges(service: str, indexed: tuple) -> None:
    uri = table_rows(indexed[0])["syn-000001"][schema.URI]
    data = Path(uri).read_bytes()
    url = f"{service}/video/syn-000001"

    status, headers, body = get(url)
    assert status == 200 and body == data
    assert headers["accept-ranges"] == "bytes" and headers["content-type"] == "video/mp4"

    status, headers, body = get(url, headers={"Range": "bytes=100-1099"})
    assert status == 206 and body == data[100:1100]
    assert headers["content-range"] == f"bytes 100-1099/{len(data)}"

    status, headers, body = get(url, headers={"Range": "bytes=-200"})  # the last 200 bytes
    assert status == 206 and body == data[-200:]

    status, headers, body = get(url, headers={"Range": "bytes=1000-"})
    assert status == 206 and body == data[1000:]

    status, headers, body = get(url, headers={"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(data)}"
    assert "outside" in json.loads(body)["error"]


def test_thumbnail_is_a_jpeg_of_the_frame_at_t(service: str, indexed: tuple) -> None:
    rows = table_rows(indexed[0])
    # A two-part video: each half's thumbnail shows that half's background colour.
    for part in ("first", "second"):
        half = rows[f"two-part-000-{part}"]
        background = re.search(r"(\w+) background", half[schema.CAPTION][0])[1]
        t = (half["half_start_s"] + half["half_end_s"]) / 2
        status, headers, body = get(f"{service}/thumbnail/two-part-000?t={t}")
        assert status == 200 and headers["content-type"] == "image/jpeg"
        image = Image.open(io.BytesIO(body))
        assert image.format == "JPEG" and image.size == (96, 96)  # the video's own size
        corner = np.asarray(image.convert("RGB"))[:6, :6].reshape(-1, 3).mean(axis=0)
        assert np.abs(corner - COLOURS[background]).max() < 30, (part, background, corner)
    status, _, body = get(f"{service}/thumbnail/syn-000002")  # no t: the middle of the clip
    assert status == 200 and Image.open(io.BytesIO(body)).size == (96, 96)


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/search?q=", 400, "empty query"),
        ("/search?q=%20%20", 400, "empty query"),
        ("/search?q=a&k=0", 400, "k: "),
        ("/search?q=a&k=lots", 400, "k: "),
        ("/similar/no-such-video", 404, "unknown video_id 'no-such-video'"),
        ("/video/no-such-video", 404, "unknown video_id"),
        ("/thumbnail/no-such-video", 404, "unknown video_id"),
        ("/thumbnail/syn-000001?t=-1", 400, "t: "),
        ("/static/../app.py", 404, ""),
        ("/search?q=a&by=scenes", 400, "by: "),
        ("/search?q=a&by=moments&hybrid=1", 400, "drop by=moments"),
        ("/mismatch/search?q=a", 409, "the table was indexed with tiny@"),
        ("/mismatch/similar/syn-000001", 409, "re-index"),
    ],
)
def test_misuse_is_a_clear_4xx(service: str, path: str, status: int, message: str) -> None:
    got, headers, body = get(f"{service}{path}")
    assert got == status
    if message:
        assert headers["content-type"] == "application/json"
        assert message in json.loads(body)["error"]


def test_a_moment_finds_its_half_of_the_video(service: str, indexed: tuple) -> None:
    """Query by example: each half, as its own clip, finds the two-part video at that half.

    (The test model is untrained, so its text tower cannot describe a half; the clip's stored
    vector stands in for a caption. bench/moments.py measures captions with a trained model.)
    """
    rows = table_rows(indexed[0])
    for i in range(TWO_PART_VIDEOS):
        whole = f"two-part-{i:03d}"
        for part in ("first", "second"):
            clip = rows[f"{whole}-{part}"]
            status, body = get_json(f"{service}/similar/{whole}-{part}?k=30")
            assert status == 200
            hit = next(h for h in body["hits"] if h["video_id"] == whole)
            middle = (hit["start_s"] + hit["end_s"]) / 2
            assert clip["half_start_s"] <= middle <= clip["half_end_s"], (whole, part, hit)


def test_ranked_by_moments_a_half_finds_its_two_part_video_first(indexed: tuple) -> None:
    """MaxSim over the segments: each half's stored vector (standing in for a caption of that
    half, as above), searched among the whole videos, ranks its two-part video first."""
    db, _ = indexed
    table = open_index(str(db), "videos")
    rows = table_rows(db)
    model_id = ModelSpec("tiny").build().model_id
    wholes = "part IS NULL OR part = 'whole'"  # the halves' own clips left out
    for i in range(TWO_PART_VIDEOS):
        whole = f"two-part-{i:03d}"
        for part in ("first", "second"):
            clip = rows[f"{whole}-{part}"]
            query = np.asarray(clip[schema.VECTOR], np.float32)[None]  # [1, D]
            [first, *_] = search_vectors(
                table, query, model_id=model_id, k=3, where=wholes, by="moments"
            )[0]
            assert first.video_id == whole, (part, first)
            middle = (first.segment_start_s + first.segment_end_s) / 2
            assert clip["half_start_s"] <= middle <= clip["half_end_s"]


def test_search_by_moments_over_http_ranks_by_the_best_segment(
    service: str, indexed: tuple
) -> None:
    """``by=moments``: hits ordered by MaxSim, which equals each row's best segment cosine as
    computed here from the stored multivector column."""
    db, _ = indexed
    rows = table_rows(db)
    query = "a red circle moving left"
    status, body = get_json(search_url(service, q=query, k=5, by="moments"))
    assert status == 200 and body["by"] == "moments"
    text = encode_queries(ModelSpec("tiny").build(), [query])[0]  # [D]
    maxsim = {
        video_id: float((np.asarray(row[schema.SEGMENT_EMBEDDINGS], np.float32) @ text).max())
        for video_id, row in rows.items()
    }
    scores = [h["segment_score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert scores == pytest.approx([maxsim[h["video_id"]] for h in body["hits"]], abs=1e-5)
    assert scores[-1] >= sorted(maxsim.values(), reverse=True)[4] - 1e-5  # the top 5
    for hit in body["hits"]:
        row = rows[hit["video_id"]]
        assert hit["start_s"] == pytest.approx(row[schema.SEGMENT_START_S][hit["segment"]])


def test_hybrid_finds_a_caption_word_the_vector_search_ranks_last(
    service: str, indexed: tuple
) -> None:
    db, target = indexed
    rows = len(table_rows(db))
    status, body = get_json(search_url(service, q=HYBRID_WORD, k=rows))
    assert status == 200
    ranked = [h["video_id"] for h in body["hits"] if h["video_id"].startswith("syn-")]
    assert ranked[-1] == target  # what the fixture picked: the vector search cannot find it

    status, body = get_json(search_url(service, q=HYBRID_WORD, k=3, hybrid=1))
    assert status == 200 and body["hybrid"] is True
    assert body["hits"][0]["video_id"] == target
    assert f"the {HYBRID_WORD} ferry" in body["hits"][0]["captions"]
    assert body["hits"][0]["fused_score"] > body["hits"][1]["fused_score"]


def test_the_page_searches_plays_and_finds_similar_videos_in_chromium(
    service: str, indexed: tuple
) -> None:
    executable = find_chromium()
    if executable is None:
        pytest.skip("no chromium on PATH: apt-get install chromium (.ci/run installs it)")
    ARTIFACTS.mkdir(exist_ok=True)
    with Browser(executable) as browser:
        browser.open(f"{service}/")
        assert browser.wait_for("document.querySelector('#status').textContent.includes('videos')")
        browser.type_into("#q", "three large white circles sliding left")
        browser.click("button[type=submit]")
        cards = browser.wait_for(
            "document.querySelectorAll('#results .card').length || 0", timeout_s=60
        )
        assert cards == 12  # the page asks for the top 12
        assert browser.wait_for(
            "[...document.querySelectorAll('#results img')]"
            ".every(i => i.complete && i.naturalWidth === 96)"
        )
        first = browser.evaluate(
            "(() => { const c = document.querySelector('#results .card');"
            " return {id: c.dataset.videoId, span: c.querySelector('.span').textContent,"
            " caption: c.querySelector('.caption').textContent}; })()"
        )
        assert re.fullmatch(r"\d+\.\ds–\d+\.\ds", first["span"])
        assert first["caption"]
        browser.screenshot(ARTIFACTS / "serve-page.png")

        browser.click("#results .card .thumb")
        assert browser.wait_for("!document.querySelector('#player').hidden")
        assert (
            browser.evaluate("document.querySelector('#player-title').textContent") == first["id"]
        )
        # The video loads through the range endpoint and plays from the segment's start.
        start = float(first["span"].split("s–")[0])
        assert browser.wait_for("document.querySelector('#video').readyState >= 1", timeout_s=60)
        assert browser.wait_for(
            f"document.querySelector('#video').currentTime >= {start} - 0.05", timeout_s=30
        )

        browser.click("#results .card .similar")
        heading = browser.wait_for(
            "document.querySelector('#message').textContent.includes('like')"
            " && document.querySelector('#message').textContent"
        )
        assert first["id"] in heading
        assert first["id"] not in browser.evaluate(
            "[...document.querySelectorAll('#results .card')].map(c => c.dataset.videoId)"
        )


def test_serve_job_refuses_a_taken_port_and_a_missing_table_before_starting(
    indexed: tuple, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    db, _ = indexed
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["--db", str(db), "--table", "videos", "--model", "tiny", "--port", str(port)]
        assert serve_job.main(argv) == 1
    assert f"--port {port}: cannot listen there" in capsys.readouterr().err
    argv = ["--db", str(tmp_path / "db"), "--table", "videos", "--model", "tiny"]
    assert serve_job.main([*argv, "--port", str(free_port())]) == 1
    assert "no table 'videos'" in capsys.readouterr().err


def test_serve_job_runs_until_sigterm_and_stops_cleanly(indexed: tuple) -> None:
    """``python -m jobs.serve`` in its own process, with its own embedded Ray."""
    db, _ = indexed
    port = free_port()
    job = subprocess.Popen(
        [sys.executable, "-m", "jobs.serve", "--db", str(db), "--table", "videos",
         "--model", "tiny", "--port", str(port), "--replica-cpus", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        assert job.stdout is not None
        for line in job.stdout:
            if line.startswith("serving videos"):
                break
            assert time.monotonic() < deadline, "the job did not start in time"
        assert f"http://127.0.0.1:{port}/" in line
        status, body = get_json(f"http://127.0.0.1:{port}/health")
        assert status == 200 and body["rows"] == 16 + 3 * TWO_PART_VIDEOS
        job.terminate()  # SIGTERM
        rest = job.communicate(timeout=120)[0]
        assert job.returncode == 0, rest
        assert "stopping the search service" in rest
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(timeout=30)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.mark.parametrize("transfer", [TRANSFER_PQ, TRANSFER_HLG], ids=["pq", "hlg"])
def test_hdr_thumbnails_show_the_sdr_frame(tmp_path: Path, transfer: int) -> None:
    """The thumbnail of an HDR clip (the search page's and the evaluation report's) is
    tone-mapped: it shows the SDR frame the clip was mastered from, scaled, within a few levels
    (JPEG's loss included), where the HDR values read as SDR are tens of levels away."""
    y, x = np.mgrid[0:64, 0:96].astype(np.float32)
    video = np.stack(
        [
            np.stack([40 + 2 * x, 30 + 3 * y, 200 - x - y + 8 * i], axis=-1).astype(np.uint8)
            for i in range(10)
        ]
    )
    uri = tmp_path / "hdr.mp4"
    write_hdr_mp4(uri, video, transfer=transfer, fps=10)

    jpeg = MediaReader().thumbnail(str(uri), 0.5, max_side=48)
    shown = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), np.float64)
    assert shown.shape == (32, 48, 3)
    expected = video[5].astype(np.float64).reshape(32, 2, 48, 2, 3).mean(axis=(1, 3))
    assert np.abs(shown - expected).mean() < 3.0, np.abs(shown - expected).mean()
    with av.open(str(uri)) as container:
        coded = next(f for f in container.decode(video=0) if f.pts is not None and f.time >= 0.5)
    read_as_sdr = coded.to_ndarray(format="rgb24").astype(np.float64)
    read_as_sdr = read_as_sdr.reshape(32, 2, 48, 2, 3).mean(axis=(1, 3))
    assert np.abs(read_as_sdr - expected).mean() > 10


@pytest.mark.parametrize("mirrored", [False, True])
def test_thumbnails_of_turned_videos_are_upright(tmp_path: Path, mirrored: bool) -> None:
    """A video tagged to be shown a quarter turn (an upright phone video) gets a portrait
    thumbnail, turned as a player shows it, and mirrored where the display matrix mirrors it
    (a front camera's)."""
    video = np.full((10, 64, 96, 3), 128, np.uint8)
    video[:, :32, :48] = (230, 20, 20)  # red top-left quarter, coded
    uri = tmp_path / "turned.mp4"
    # Shown turned clockwise: red at the top right; mirrored then: at the top left.
    write_mp4(uri, video, rotation=-90, mirrored=mirrored)

    shown = np.asarray(Image.open(io.BytesIO(MediaReader().thumbnail(str(uri), 0.5))))
    assert shown.shape == (96, 64, 3)
    redness = shown[..., 0].astype(int) - shown[..., 1]
    red, grey = (slice(0, 32), slice(32, 64)) if mirrored else (slice(32, 64), slice(0, 32))
    assert redness[:48, red].mean() > 150 and np.abs(redness[:48, grey]).mean() < 20
    assert np.abs(redness[48:]).mean() < 20


def test_thumbnails_of_anamorphic_videos_have_square_pixels(tmp_path: Path) -> None:
    """Pixels twice as wide as high (anamorphic video): the 48x64 picture is shown 96x64."""
    uri = tmp_path / "anamorphic.mp4"
    write_mp4(uri, np.full((10, 64, 48, 3), 128, np.uint8), pixel_aspect=Fraction(2))
    assert Image.open(io.BytesIO(MediaReader().thumbnail(str(uri), 0.5))).size == (96, 64)


def test_thumbnails_of_interlaced_videos_show_one_field(tmp_path: Path) -> None:
    """An interlaced frame's thumbnail is one of its fields (red), not the two woven (purple)."""
    red = np.full((10, 64, 96, 3), (200, 60, 60), np.uint8)
    blue = np.full((10, 64, 96, 3), (60, 60, 200), np.uint8)
    uri = tmp_path / "interlaced.mp4"
    write_interlaced_mp4(uri, red, blue)

    shown = Image.open(io.BytesIO(MediaReader().thumbnail(str(uri), 0.2)))
    assert shown.size == (96, 64)
    colour = np.asarray(shown, np.float64).reshape(-1, 3).mean(axis=0)
    assert np.abs(colour - (200, 60, 60)).max() < 8, colour
