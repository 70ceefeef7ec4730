"""A synthetic, captioned video corpus made of real H.264 mp4 files, and damaged inputs for tests.

Each video shows one to three identical shapes sliding in one direction over a flat background.
A video is a point in a small compositional grammar of visually very distinct attributes:

============  ========================================================
background    one of eight colours
object        one of the other seven colours, never a low-contrast pair
shape         square, circle, triangle, cross
size          small (19% of the frame side) or large (31%)
count         one, two or three objects
direction     left, right, up or down; a fading trail behind each
              object shows the direction in every single frame
============  ========================================================

Attribute combinations are drawn without replacement, so as long as ``videos`` is below the
number of combinations (about 3,000) no two videos share one; the captions (two or three
paraphrases per video) name every attribute, so a caption identifies its video exactly. That is
what lets a tiny CLIP trained from scratch on the ``train`` split retrieve the ``test`` split.

Videos are drawn in numpy and encoded with PyAV's libx264 (``yuv420p``, moov atom first so that
a truncated copy keeps its index). Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import decode, schema
from pipelines.display import TRANSFER_HLG, TRANSFER_PQ, mastered_hdr

SPLIT_TRAIN = "train"
SPLIT_TEST = "test"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 70, 230),
    "yellow": (245, 225, 35),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "purple": (140, 40, 190),
    "orange": (250, 135, 20),
}
SHAPES = ("square", "circle", "triangle", "cross")
SIZES = {"small": 0.19, "large": 0.31}
COUNTS = (1, 2, 3)
DIRECTIONS = ("left", "right", "up", "down")

# Pairs closer than this in RGB (red on orange, yellow on white...) are too alike once x264 and a
# 64 px resize have blurred them, so they never appear as object-on-background.
_MIN_CONTRAST = 150.0

_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_COUNT_WORDS = {1: ("a", "one"), 2: ("two", "a pair of"), 3: ("three",)}
_DIRECTION_WORDS = {
    "left": ("left", "to the left", "leftward"),
    "right": ("right", "to the right", "rightward"),
    "up": ("up", "upward", "to the top"),
    "down": ("down", "downward", "to the bottom"),
}
_TEMPLATES = (
    "{count} {size} {colour} {shape} moving {direction} on a {background} background",
    "a {background} background with {count} {size} {colour} {shape} sliding {direction}",
    "on a {background} background, {count} {colour} {shape}, {size}, drifting {direction}",
)

# Trail copies behind each object: (distance behind in object sizes, opacity).
_TRAIL = ((0.9, 0.25), (0.45, 0.5))


@dataclass(frozen=True)
class Scene:
    """The attributes of one synthetic video."""

    background: str
    colour: str
    shape: str
    size: str
    count: int
    direction: str


def scene_grammar() -> list[Scene]:
    """Every attribute combination the corpus draws from, in a fixed order."""
    pairs = [
        (bg, fg)
        for bg, fg in itertools.permutations(COLOURS, 2)
        if math.dist(COLOURS[bg], COLOURS[fg]) >= _MIN_CONTRAST
    ]
    return [
        Scene(bg, fg, shape, size, count, direction)
        for (bg, fg), shape, size, count, direction in itertools.product(
            pairs, SHAPES, SIZES, COUNTS, DIRECTIONS
        )
    ]


def captions_for(scene: Scene, rng: np.random.Generator, *, n: int) -> list[str]:
    """``n`` (at most three) paraphrases of ``scene``, each naming every attribute."""
    templates = rng.permutation(len(_TEMPLATES))[:n]
    noun = scene.shape
    if scene.count > 1:
        noun += "es" if noun.endswith("s") else "s"
    out = []
    for t in templates:
        out.append(
            _TEMPLATES[t].format(
                count=rng.choice(_COUNT_WORDS[scene.count]),
                size=rng.choice(_SIZE_WORDS[scene.size]),
                colour=scene.colour,
                shape=noun,
                direction=rng.choice(_DIRECTION_WORDS[scene.direction]),
                background=scene.background,
            )
        )
    return out


def _shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean ``[side, side]`` mask of ``shape``."""
    y, x = np.mgrid[0:side, 0:side] + 0.5
    c = side / 2
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    if shape == "circle":
        return (x - c) ** 2 + (y - c) ** 2 <= c**2
    if shape == "triangle":
        return np.abs(x - c) <= y / 2
    if shape == "cross":
        return (np.abs(x - c) <= side / 6) | (np.abs(y - c) <= side / 6)
    raise ValueError(f"unknown shape {shape!r}")


def _paste(
    frame: np.ndarray, mask: np.ndarray, top: int, left: int, colour: np.ndarray, opacity: float
) -> None:
    """Blend ``colour`` into ``frame`` [H, W, 3] where ``mask`` lands, clipped to the frame."""
    h, w = frame.shape[:2]
    side = mask.shape[0]
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + side, h), min(left + side, w)
    if y0 >= y1 or x0 >= x1:
        return
    m = mask[y0 - top : y1 - top, x0 - left : x1 - left]
    region = frame[y0:y1, x0:x1]
    region[m] = (region[m] * (1.0 - opacity) + colour * opacity).astype(np.uint8)


def render(
    scene: Scene, rng: np.random.Generator, *, frames: int, width: int, height: int
) -> np.ndarray:
    """Draw ``scene`` as ``[frames, height, width, 3]`` uint8 RGB.

    The objects cross most of the frame along the motion axis and are spread evenly across the
    other axis; start offsets and travel length vary per video.
    """
    side = max(4, round(SIZES[scene.size] * min(width, height)))
    mask = _shape_mask(scene.shape, side)
    horizontal = scene.direction in ("left", "right")
    sign = 1 if scene.direction in ("right", "down") else -1
    along, across = (width, height) if horizontal else (height, width)
    # Object centres across the motion axis: evenly spaced slots, jittered a little.
    slots = (np.arange(scene.count) + 0.5) * across / scene.count
    jitter = max(1, round(across / scene.count / 2 - side / 2))
    centres_across = slots + rng.integers(-jitter, jitter + 1, scene.count) * 0.5
    travel = rng.uniform(0.55, 0.9) * (along - side)
    start = rng.uniform(side / 2, along - side / 2 - travel)
    if sign < 0:
        start = along - start
    t = np.linspace(0.0, 1.0, frames)
    centres_along = start + sign * travel * t  # [frames]

    background = np.array(COLOURS[scene.background], dtype=np.float32)
    colour = np.array(COLOURS[scene.colour], dtype=np.float32)
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    video[:] = background.astype(np.uint8)
    for f in range(frames):
        for distance, opacity in (*_TRAIL, (0.0, 1.0)):
            a = centres_along[f] - sign * distance * side
            for c in centres_across:
                x, y = (a, c) if horizontal else (c, a)
                _paste(video[f], mask, round(y - side / 2), round(x - side / 2), colour, opacity)
    return video


def write_mp4(
    path: Path,
    video: np.ndarray,
    *,
    fps: int = 10,
    crf: int = 18,
    rotation: int = 0,
    mirrored: bool = False,
    pixel_aspect: Fraction = Fraction(1),
    times_ms: Sequence[int] | None = None,
    gop: int | None = None,
) -> None:
    """Encode ``video`` ``[T, H, W, 3]`` uint8 RGB as H.264 (libx264, yuv420p) into ``path``,
    to be shown turned ``rotation`` degrees counter-clockwise (as phones tag upright video), then
    ``mirrored`` left to right if asked, and with pixels ``pixel_aspect`` times as wide as high
    (anamorphic video). ``times_ms`` (``[T]``, ascending) gives each frame its own start in
    milliseconds, as phones and screen recorders write variable-frame-rate video; without it
    frames come at ``fps``. ``gop`` puts a keyframe every ``gop`` frames (x264's default: 250).

    ``+faststart`` puts the index (moov atom) before the frames, as web videos usually do, so a
    truncated copy still opens and fails on its missing frames. The bytes are reproducible.
    """
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width = video.shape[1:3]
        stream.pix_fmt = "yuv420p"
        # x264's SIMD kernels read the uninitialised padding of the frame buffers at some frame
        # sizes, which made the bytes vary between runs; its plain C path is deterministic and,
        # at these frame sizes, no slower overall.
        keyint = f":keyint={gop}:min-keyint={gop}" if gop else ""
        stream.options = {"preset": "veryfast", "crf": str(crf), "x264-params": f"asm=0{keyint}"}
        if rotation or mirrored:
            stream.set_display_rotation(rotation, hflip=mirrored)
        if pixel_aspect != 1:
            stream.sample_aspect_ratio = stream.codec_context.sample_aspect_ratio = pixel_aspect
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, pixels in enumerate(video):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = int(times_ms[i]), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_interlaced_mp4(path: Path, top: np.ndarray, bottom: np.ndarray, *, fps: int = 25) -> None:
    """Encode interlaced H.264 (x264, top field first) into ``path``: frame ``i`` woven from the
    even lines of ``top[i]`` and the odd lines of ``bottom[i]`` (both ``[T, H, W, 3]`` uint8 RGB),
    each field's chroma its own, as an interlaced camera records two moments a frame."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width = top.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"x264-params": "interlaced=1:tff=1:asm=0"}
        for even, odd in zip(top, bottom, strict=True):
            fields = [
                av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
                for rgb in (even, odd)
            ]
            woven = av.VideoFrame(stream.width, stream.height, "yuv420p")
            for i, plane in enumerate(woven.planes):
                rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
                for parity, field in enumerate(fields):
                    source = field.planes[i]
                    lines = np.frombuffer(source, np.uint8).reshape(source.height, -1)
                    rows[parity::2, : plane.width] = lines[parity::2, : plane.width]
            container.mux(stream.encode(woven))
        container.mux(stream.encode())


# x265's names of the HDR transfers, by FFmpeg's tag.
X265_TRANSFERS = {TRANSFER_PQ: "smpte2084", TRANSFER_HLG: "arib-std-b67"}


def cut_without_reencoding(source: Path, path: Path, *, start_s: float) -> None:
    """Copy ``source`` (MP4, one video stream) from ``start_s`` on into ``path`` without decoding
    it, as ``ffmpeg -ss START -i SOURCE -c copy`` and editors' quick trims do: the packets from
    the keyframe before ``start_s``, their timestamps moved so that ``start_s`` is 0. The MP4
    muxer writes an edit list that hides the pre-roll before it, which players decode and do not
    show."""
    with av.open(str(source)) as reader, av.open(str(path), "w") as writer:
        stream = reader.streams.video[0]
        copy = writer.add_stream_from_template(stream)
        cut = round(start_s / stream.time_base)
        reader.seek(cut, stream=stream, backward=True)
        for packet in reader.demux(stream):
            if packet.dts is None:
                continue
            packet.pts -= cut
            packet.dts -= cut
            packet.stream = copy
            writer.mux(packet)


def write_hdr_mp4(
    path: Path, video: np.ndarray, *, transfer: int, fps: int = 10, tag_gamut: bool = True
) -> None:
    """Master ``video`` ``[T, H, W, 3]`` uint8 SDR BT.709 RGB as HDR (``transfer``, BT.2020
    primaries; :func:`pipelines.display.mastered_hdr`) and encode it losslessly as 10-bit 4:4:4
    HEVC tagged with the transfer (and the primaries, if ``tag_gamut``), so a decoder returns
    exactly the HDR frames."""
    gamut = "colorprim=bt2020:" if tag_gamut else ""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx265", rate=Fraction(fps))
        stream.height, stream.width = video.shape[1:3]
        stream.pix_fmt = "yuv444p10le"
        stream.options = {
            "x265-params": f"log-level=none:lossless=1:{gamut}"
            f"transfer={X265_TRANSFERS[transfer]}:colormatrix=bt2020nc"
        }
        for frame in video:
            sdr = av.VideoFrame.from_ndarray(frame, format="rgb24")
            container.mux(stream.encode(mastered_hdr(sdr, transfer, stream.pix_fmt)))
        container.mux(stream.encode())


@dataclass(frozen=True)
class _Job:
    index: int
    scene: Scene
    path: Path
    seed: int
    width: int
    height: int
    fps: int
    seconds: tuple[float, float]


def _make_video(job: _Job) -> list[str]:
    """Render and encode one video; returns its captions."""
    rng = np.random.default_rng([job.seed, job.index])
    frames = round(rng.uniform(*job.seconds) * job.fps)
    video = render(job.scene, rng, frames=frames, width=job.width, height=job.height)
    write_mp4(job.path, video, fps=job.fps)
    return captions_for(job.scene, rng, n=int(rng.integers(2, 4)))


def _run_jobs(jobs: Sequence[_Job], workers: int) -> Iterator[list[str]]:
    if workers <= 1 or len(jobs) < 4 * workers:
        yield from map(_make_video, jobs)
        return
    # spawn, not fork: the caller may hold threads (Arrow's pool, Ray) that fork would copy locked.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_make_video, jobs, chunksize=max(1, len(jobs) // (8 * workers)))


def write_sample_corpus(
    out: Path,
    *,
    videos: int,
    seed: int = 0,
    test_fraction: float = 0.2,
    shards: int = 4,
    width: int = 96,
    height: int = 96,
    fps: int = 10,
    seconds: tuple[float, float] = (2.0, 3.0),
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``videos`` synthetic captioned videos and their sharded manifest under ``out``.

    Layout: ``out/videos/<video_id>.mp4`` and ``out/manifest/part-00000.parquet``... with the
    columns ``video_id``, ``uri`` (absolute path), ``caption`` (list of 2-3 strings) and ``split``
    (``train``/``test``; ``round(videos * test_fraction)`` test videos, at least one of each split
    when ``videos >= 2``). Old ``part-*.parquet`` shards in ``out/manifest`` are removed first.

    Args:
        out: output folder, created if needed.
        videos: number of videos.
        seed: makes the attributes, captions, pixels and split assignment reproducible.
        test_fraction: share of the videos in the ``test`` split.
        shards: number of manifest shards (capped at ``videos``).
        width, height: frame size in pixels.
        fps: frame rate; each video lasts a random ``seconds[0]..seconds[1]``.
        workers: encoding processes (default: one per CPU core).
        on_progress: called with ``(videos written, videos)`` after each video.

    Returns:
        The manifest folder ``out/manifest``.
    """
    if videos <= 0:
        raise ValueError(f"videos must be positive, got {videos}")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    if shards <= 0:
        raise ValueError(f"shards must be positive, got {shards}")
    out = Path(out).resolve()
    video_dir, manifest_dir = out / "videos", out / "manifest"
    video_dir.mkdir(parents=True, exist_ok=True)
    manifest_dir.mkdir(parents=True, exist_ok=True)
    for old in manifest_dir.glob("part-*.parquet"):
        old.unlink()

    rng = np.random.default_rng(seed)
    grammar = scene_grammar()
    # Without replacement, so combinations repeat only once the grammar is exhausted.
    order = np.concatenate(
        [rng.permutation(len(grammar)) for _ in range(-(-videos // len(grammar)))]
    )[:videos]
    n_test = round(videos * test_fraction)
    if videos >= 2 and 0.0 < test_fraction < 1.0:
        n_test = min(max(n_test, 1), videos - 1)
    is_test = np.zeros(videos, dtype=bool)
    is_test[rng.permutation(videos)[:n_test]] = True

    ids = [f"syn-{i:06d}" for i in range(videos)]
    jobs = [
        _Job(i, grammar[order[i]], video_dir / f"{ids[i]}.mp4", seed, width, height, fps, seconds)
        for i in range(videos)
    ]
    captions: list[list[str]] = []
    for video_captions in _run_jobs(jobs, workers or os.cpu_count() or 1):
        captions.append(video_captions)
        if on_progress is not None:
            on_progress(len(captions), videos)

    table = pa.table(
        {
            schema.VIDEO_ID: pa.array(ids, pa.string()),
            schema.URI: pa.array([str(j.path) for j in jobs], pa.string()),
            schema.CAPTION: pa.array(captions, pa.list_(pa.string())),
            schema.SPLIT: pa.array(np.where(is_test, SPLIT_TEST, SPLIT_TRAIN), pa.string()),
        }
    )
    shards = min(shards, videos)
    bounds = np.linspace(0, videos, shards + 1).round().astype(int)
    for k in range(shards):
        part = table.slice(bounds[k], bounds[k + 1] - bounds[k])
        pq.write_table(part, manifest_dir / f"part-{k:05d}.parquet")
    return manifest_dir


DAMAGED_EMPTY = "damaged-empty"
DAMAGED_TRUNCATED = "damaged-truncated"
DAMAGED_TEXT = "damaged-text"
DAMAGED_MISSING = "damaged-missing"
DAMAGED_AUDIO_ONLY = "damaged-audio-only"
DAMAGED_COVER_ONLY = "damaged-cover-only"
SHORT_ONE_FRAME = "short-1-frame"
SHORT_THREE_FRAMES = "short-3-frames"

DAMAGED_EXPECTED: dict[str, str] = {
    DAMAGED_EMPTY: decode.EMPTY_FILE,
    DAMAGED_TRUNCATED: decode.TRUNCATED,
    DAMAGED_TEXT: decode.NOT_A_VIDEO,
    DAMAGED_MISSING: decode.MISSING_FILE,
    DAMAGED_AUDIO_ONLY: decode.NO_VIDEO_STREAM,
    DAMAGED_COVER_ONLY: decode.NO_VIDEO_STREAM,
    SHORT_ONE_FRAME: "",
    SHORT_THREE_FRAMES: "",
}
"""Error category the decode stage gives each input of :func:`write_damaged_videos`; ``""`` means
it decodes fine (a video shorter than the frames asked for repeats frames)."""


def _write_audio_only(path: Path, *, cover: bool = False) -> None:
    """An AAC tone in MP4; with ``cover``, and its cover art: a one-picture JPEG stream marked as
    an attached picture, as music files carry it."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        if cover:
            art = container.add_stream("mjpeg", rate=1)
            art.width, art.height, art.pix_fmt = 64, 64, "yuvj420p"
            art.disposition = av.stream.Disposition.attached_pic
            picture = np.full((64, 64, 3), (200, 120, 40), np.uint8)
            for packet in art.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
            container.mux(art.encode())
        samples = 1024
        tone = np.sin(np.arange(samples) * 2 * np.pi * 440 / 16000).astype(np.float32)[None]
        for i in range(16):
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * samples
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_damaged_videos(folder: Path, *, good_video: Path) -> dict[str, str]:
    """Write one input of each kind that a decoder must survive into ``folder``.

    ``good_video`` is a valid mp4 written with the moov atom first (as :func:`write_mp4` does).

    Expected to fail (category in :data:`DAMAGED_EXPECTED`): a zero-byte file, the first 30% of
    the bytes of ``good_video``, a text file named ``.mp4``, a path that does not exist, an
    audio-only mp4, and one with cover art (a music file). Expected to decode: a 1-frame and a
    3-frame video (the frames repeat).

    Returns:
        ``video_id -> uri`` (absolute paths; the missing one does not exist).
    """
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        DAMAGED_EMPTY: folder / "empty.mp4",
        DAMAGED_TRUNCATED: folder / "truncated.mp4",
        DAMAGED_TEXT: folder / "text.mp4",
        DAMAGED_MISSING: folder / "missing.mp4",
        DAMAGED_AUDIO_ONLY: folder / "audio-only.mp4",
        DAMAGED_COVER_ONLY: folder / "audio-with-cover.m4a",
        SHORT_ONE_FRAME: folder / "one-frame.mp4",
        SHORT_THREE_FRAMES: folder / "three-frames.mp4",
    }
    paths[DAMAGED_EMPTY].write_bytes(b"")
    data = Path(good_video).read_bytes()
    paths[DAMAGED_TRUNCATED].write_bytes(data[: int(len(data) * 0.3)])
    paths[DAMAGED_TEXT].write_text("this is a text file, not a video\n" * 40)
    paths[DAMAGED_MISSING].unlink(missing_ok=True)
    _write_audio_only(paths[DAMAGED_AUDIO_ONLY])
    _write_audio_only(paths[DAMAGED_COVER_ONLY], cover=True)
    scene = Scene("blue", "yellow", "circle", "large", 1, "right")
    for key, frames in ((SHORT_ONE_FRAME, 1), (SHORT_THREE_FRAMES, 3)):
        rng = np.random.default_rng(frames)
        write_mp4(paths[key], render(scene, rng, frames=frames, width=96, height=96))
    return {key: str(path) for key, path in paths.items()}


def write_two_part_videos(
    out: Path,
    *,
    videos: int,
    seed: int = 0,
    width: int = 96,
    height: int = 96,
    fps: int = 10,
    seconds: float = 4.0,
) -> Path:
    """Videos whose content changes halfway, for moment search, and each half as its own clip.

    Video ``i`` shows one scene for its first ``seconds / 2`` and a visually unrelated one (other
    background, colour, shape and direction) for the rest. Writes ``out/videos/two-part-<i>.mp4``
    and the halves ``two-part-<i>-first.mp4`` / ``-second.mp4``, and one manifest shard
    ``out/manifest/part-00000.parquet`` with one row per file: ``video_id``, ``uri``, ``caption``
    (the two-part video's captions describe both halves), and ``part`` (``whole``, ``first`` or
    ``second``), ``of`` (the two-part video a half belongs to), ``half_start_s`` /
    ``half_end_s`` (where that half lies in it).
    """
    if videos <= 0:
        raise ValueError(f"videos must be positive, got {videos}")
    out = Path(out).resolve()
    video_dir, manifest_dir = out / "videos", out / "manifest"
    video_dir.mkdir(parents=True, exist_ok=True)
    manifest_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grammar = scene_grammar()
    frames = round(seconds * fps)
    half = frames // 2
    rows: dict[str, list] = {
        key: []
        for key in (schema.VIDEO_ID, schema.URI, schema.CAPTION, "part", "of", "half_start_s",
                    "half_end_s")
    }  # fmt: skip
    for i in range(videos):
        first = grammar[int(rng.integers(len(grammar)))]
        # The second scene shares no attribute with the first, so the halves look nothing alike.
        others = [
            s
            for s in grammar
            if s.background not in (first.background, first.colour)
            and s.colour not in (first.background, first.colour)
            and s.shape != first.shape
            and s.direction != first.direction
        ]
        second = others[int(rng.integers(len(others)))]
        parts = [render(scene, rng, frames=half, width=width, height=height)
                 for scene in (first, second)]  # fmt: skip
        captions = [captions_for(scene, rng, n=1)[0] for scene in (first, second)]
        whole_id = f"two-part-{i:03d}"
        clips = (
            ("whole", np.concatenate(parts), [f"{captions[0]}, then {captions[1]}"], 0, frames),
            ("first", parts[0], [captions[0]], 0, half),
            ("second", parts[1], [captions[1]], half, frames),
        )
        for part, video, caption, start, end in clips:
            video_id = whole_id if part == "whole" else f"{whole_id}-{part}"
            path = video_dir / f"{video_id}.mp4"
            write_mp4(path, video, fps=fps)
            rows[schema.VIDEO_ID].append(video_id)
            rows[schema.URI].append(str(path))
            rows[schema.CAPTION].append(caption)
            rows["part"].append(part)
            rows["of"].append(whole_id)
            rows["half_start_s"].append(start / fps)
            rows["half_end_s"].append(end / fps)
    table = pa.table(rows).cast(
        pa.schema(
            [
                pa.field(schema.VIDEO_ID, pa.string()),
                pa.field(schema.URI, pa.string()),
                pa.field(schema.CAPTION, pa.list_(pa.string())),
                pa.field("part", pa.string()),
                pa.field("of", pa.string()),
                pa.field("half_start_s", pa.float64()),
                pa.field("half_end_s", pa.float64()),
            ]
        )
    )
    pq.write_table(table, manifest_dir / "part-00000.parquet")
    return manifest_dir
