"""What decoding one video costs, against its floor, per sampling policy and decoder library.

On the realistic corpus of ``bench/corpus.py`` (generated first if missing), for every profile:

* **the floor**: CPU seconds to decode exactly the frames exact sampling needs (from the keyframe
  before each sampled frame to it, skipping groups of pictures that hold none; MPEG-TS and
  MPEG-PS sought by byte position), PyAV in this process, one thread, no conversion: what no
  decoder of that library can undercut;
* **the stage**: CPU seconds of :class:`~pipelines.decode.DecodeStage` per video, its decoder
  process included, with resizing, cropping and the copy out of shared memory, for
  each policy (``uniform``, ``fast``, ``keyframe``) and library (``pyav``, ``decord``); frames
  the decoder produced (the stage's ``frames_decoded``).

Variants are measured interleaved (every variant of every video once per repeat) and the best of
``--repeats`` is kept, so the ratios hold on a busy machine. Also measured: each decoder
shortcut ``fast`` takes (skipping non-reference frames, skipping deblocking), on its own, with
its effect on the 224-px frames; three ways from a decoded frame to the thumbnail (scaling into
RGB; bilinearly in YUV, converting the small frame; today's, area-averaging, frames of more than
8 bits scaled into planar RGB), their cost and their distance from CLIP's own PIL
preprocessing, on every SDR profile; the long video's 60 clips decoded in one pass against one
full decode pass of the file; what indexing each file costs, as the stage does it and by
demuxing it whole; what opening it costs, as the stage does it (a probe that decodes nothing)
and with the probe decoding as FFmpeg's does by default; what is left of the stage's cost over
its floor once the index and the thumbnails of its frames (at today's cost per frame) are
counted with the floor; which codecs and containers each library reads; and the broken-file
cases of the tests under each library.

Headline figures (top level of ``bench/results/decode.json``): ``uniform_over_floor`` (worst
profile), ``fast_speedup`` and ``keyframe_speedup`` (uniform core-s over the policy's, worst
default-x264 profile), ``clips_one_pass_ratio``, ``scaling_speedup_worst`` (into RGB over
today's), ``scaling_speedup_over_own_format_bilinear`` and
``scaling_levels_from_clip_preprocessing``, ``fast_r1_delta`` (needs a trained model and an
evaluation of both policies: ``--r1-uniform`` / ``--r1-fast`` take the two R@1 figures).

    python -m bench.decode --quick     # the quick corpus, 3 repeats
    python -m bench.decode             # the whole corpus
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import RESULTS_DIR, now_iso, print_table, run_metadata, write_results
from bench.corpus import DEFAULT_OUT, generate

FRAMES = 12
SIZE = 224
POLICIES = ("uniform", "fast", "keyframe")
LIBRARIES = ("pyav", "decord")
FLOOR_TARGET = 1.15
SCALING_WAYS = ("rgb", "own_format_bilinear", "thumbnailer")
FAST_TARGET = 2.0
KEYFRAME_TARGET = 10.0
ONE_PASS_TARGET = 1.3


def stage_batch(uris: list[str], spans: list[tuple[float, float]] | None = None) -> dict:
    """A decode stage's input: one row per uri, clipped to ``spans`` (start, end) if given."""
    from pipelines import schema

    batch = {
        schema.VIDEO_ID: np.array([f"v{i}" for i in range(len(uris))], dtype=object),
        schema.URI: np.array(uris, dtype=object),
    }
    if spans is not None:
        batch[schema.START_S] = np.array([s for s, _ in spans])
        batch[schema.END_S] = np.array([e for _, e in spans])
    return batch


def stage_cost(stage: Any, batch: dict) -> tuple[float, dict]:
    """``(CPU seconds, output)`` of one call of ``stage``: this process's CPU time (the copy out
    of shared memory, the Python around it) plus its decoder process's (``decode_cpu_s``, the
    child's own clock: finer than the 10-ms ticks another process's CPU time is counted in)."""
    from pipelines import schema

    began = time.process_time()
    out = stage(batch)
    return time.process_time() - began + float(out[schema.DECODE_CPU_S].sum()), out


def floor_cost(path: str) -> tuple[float, int]:
    """``(CPU seconds, frames)`` to decode exactly what uniform sampling of ``path`` needs: from
    the keyframe before each sampled frame, forward, sought as the stage seeks
    (:func:`~pipelines.decode.frame_index.keyframe_packets`: MPEG-TS and MPEG-PS by byte
    position; where a seek lands a group of pictures early, its packets are read past). Files
    that cannot be sought (Ogg, timestamps that restart) are read from the start, their packets
    before each such keyframe read past (:func:`~pipelines.decode.frame_index.read_past`), and
    so are those shown before it (the leading pictures of an open group of pictures)."""
    import av

    from pipelines.decode.frame_index import index_frames, keyframe_packets, read_past
    from pipelines.decode.sampling import choose_targets

    with av.open(path) as container:
        index = index_frames(container, container.streams.video[0])
    targets = choose_targets(
        index.starts_s,
        index.duration_s,
        0,
        len(index.pts),
        FRAMES,
        sampling="uniform",
        keyframes=index.own_keyframes,
    )
    wanted = sorted({int(index.pts[t.want]) for t in targets})
    with av.open(path) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context
        codec.thread_count = 1
        fed = -math.inf  # the latest pts fed to the decoder
        shown_from = -math.inf  # reading sequentially: packets shown before this are left out

        def decode(packets: Any) -> Any:
            nonlocal fed
            for packet in packets:
                if packet.pts is not None:
                    if packet.pts < shown_from:
                        continue
                    fed = max(fed, packet.pts)
                yield from codec.decode(packet)

        began, frames, position = time.process_time(), 0, None
        packets = container.demux(stream)
        if index.timeline is not None:
            packets = index.timeline.unwrapped(packets)
        decoded = decode(packets)
        for want in wanted:
            key_at = index.key_before(int(np.searchsorted(index.pts, want)))
            key_pts = int(index.pts[key_at])
            if position is None or key_pts > position:
                try:
                    decoded = decode(keyframe_packets(container, stream, index, key_at))
                    fed = -math.inf
                except ValueError:  # no exact seek: read on, past what precedes the keyframe
                    if key_at > 0 or index.first_is_key:
                        if key_pts > fed:
                            codec.flush_buffers()
                            decoded = decode(read_past(packets, key_pts))
                        shown_from = key_pts
            for frame in decoded:
                frames += 1
                position = frame.pts
                if frame.pts is not None and frame.pts >= want:
                    break
        return time.process_time() - began, frames


def index_cost(path: str) -> dict[str, Any]:
    """CPU seconds to index ``path`` as the stage does (from the container's list of frames
    where ``frame_index.listed_frames`` takes it, else by demuxing) and by demuxing the whole
    file, and whether the list was taken."""
    import av

    from pipelines.decode.frame_index import demuxed_frames, listed_frames

    def timed(index: Any) -> tuple[float, Any]:
        with av.open(path) as container:
            stream = container.streams.video[0]
            began = time.process_time()
            found = index(container, stream)
            return time.process_time() - began, found

    listed_s, listed = timed(listed_frames)
    demuxed_s, _ = timed(demuxed_frames)
    return {
        "listed": listed is not None,
        "core_s": listed_s + (0.0 if listed is not None else demuxed_s),
        "demuxed_core_s": demuxed_s,
    }


def open_cost(path: str) -> dict[str, float]:
    """CPU seconds to open ``path`` and close it as the stage does (a 32-byte probe that decodes
    nothing), and with that probe left to decode what the headers leave out, as FFmpeg does by
    default (the first frame of H.264 or VP9): the difference is what the stage saves a file."""
    import av

    from pipelines.decode.source import _QUICK_PROBE, _open_video

    def timed(open_video: Any) -> float:
        began = time.process_time()
        container = open_video()
        container.close()
        return time.process_time() - began

    return {
        "core_s": timed(lambda: _open_video(path)[0]),
        "probe_decoding_core_s": timed(
            lambda: av.open(path, metadata_errors="ignore", options=_QUICK_PROBE)
        ),
    }


def full_pass_cost(path: str) -> tuple[float, int]:
    """``(CPU seconds, frames)`` of decoding every frame of ``path`` once, one thread."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        began = time.process_time()
        frames = sum(1 for _ in container.decode(stream))
        return time.process_time() - began, frames


def measure_profiles(corpus: dict[str, dict], repeats: int) -> dict[str, dict]:
    """Best-of-``repeats`` floor and stage costs of every profile but the long video."""
    from pipelines import schema
    from pipelines.decode import DecodeStage

    names = [name for name, entry in corpus.items() if not entry.get("clips")]
    stages = {
        (policy, library): DecodeStage(
            frames=FRAMES, image_size=SIZE, sampling=policy, decoder=library, timeout_s=600
        )
        for policy in POLICIES
        for library in LIBRARIES
    }
    results: dict[str, dict] = {
        name: {"floor": {}, "stage": {}, "index": {}, "open": {}} for name in names
    }
    try:
        for stage in stages.values():  # warm up: imports, first-call costs
            stage(stage_batch([corpus[names[0]]["path"]]))
        for repeat in range(repeats):
            for name in names:
                path = corpus[name]["path"]
                seconds, frames = floor_cost(path)
                best = results[name]["floor"]
                if repeat == 0 or seconds < best["core_s"]:
                    best.update(core_s=seconds, frames=frames)
                cost, index = index_cost(path), results[name]["index"]
                index["listed"] = cost.pop("listed")
                for label, seconds in cost.items():
                    index[label] = min(index.get(label, math.inf), seconds)
                opened = results[name]["open"]
                for label, seconds in open_cost(path).items():
                    opened[label] = min(opened.get(label, math.inf), seconds)
                for (policy, library), stage in stages.items():
                    seconds, out = stage_cost(stage, stage_batch([path]))
                    key = f"{policy}/{library}"
                    row = results[name]["stage"].setdefault(key, {"core_s": math.inf})
                    row["error"] = out[schema.ERROR][0]
                    row["frames_decoded"] = int(out[schema.FRAMES_DECODED][0])
                    row["core_s"] = min(row["core_s"], seconds)
            print(f"repeat {repeat + 1}/{repeats} done", flush=True)
    finally:
        for stage in stages.values():
            stage.close()
    return results


def measure_long_video(entry: dict, repeats: int) -> dict[str, Any]:
    """The long video's clips in one pass (one batch) against one full decode pass."""
    from pipelines import schema
    from pipelines.decode import DecodeStage

    path, rows = entry["path"], entry["clip_rows"]
    spans = [(r["start_s"], r["end_s"]) for r in rows]
    best: dict[str, float] = {}
    with DecodeStage(frames=FRAMES, image_size=SIZE, timeout_s=600) as stage:
        stage(stage_batch([path], spans[:1]))
        for _ in range(repeats):
            full_s, frames = full_pass_cost(path)
            passes = stage.passes
            seconds, out = stage_cost(stage, stage_batch([path] * len(spans), spans))
            assert stage.passes == passes + 1, "the clips took more than one pass"
            errors = [e for e in out[schema.ERROR] if e]
            best["full_pass_core_s"] = min(best.get("full_pass_core_s", math.inf), full_s)
            best["clips_core_s"] = min(best.get("clips_core_s", math.inf), seconds)
            best["frames_decoded"] = int(out[schema.FRAMES_DECODED].sum())
    return {
        "video": Path(path).name,
        "clips": len(spans),
        "frames_in_file": frames,
        "errors": errors,
        **best,
        "ratio": best["clips_core_s"] / best["full_pass_core_s"],
    }


def measure_shortcuts(paths: list[str], repeats: int) -> list[dict[str, Any]]:
    """Each decoder shortcut of ``fast`` on its own: decode CPU and its effect on the frames.

    Run in this process through the PyAV backend (no child), varying one setting at a time.
    """
    from pipelines.decode import pyav_backend
    from pipelines.decode.protocol import _Clip, _Request
    from pipelines.storage import StorageOptions

    def run(path: str, sampling: str, options: dict[str, str]) -> tuple[float, np.ndarray, int]:
        request = _Request(
            uri=path,
            clips=(_Clip(),),
            frames=FRAMES,
            image_size=SIZE,
            sampling=sampling,
            threads=1,
            storage=StorageOptions(),
            decoder="pyav",
        )
        out = np.zeros((1, FRAMES, SIZE, SIZE, 3), np.uint8)
        saved, pyav_backend.FAST_CODEC_OPTIONS = pyav_backend.FAST_CODEC_OPTIONS, options
        try:
            began = time.process_time()
            _, frames = pyav_backend.decode_file(path, request, out)
            return time.process_time() - began, out[0].astype(np.int16), frames
        finally:
            pyav_backend.FAST_CODEC_OPTIONS = saved

    variants: dict[str, tuple[str, dict[str, str]]] = {
        "exact (uniform)": ("uniform", {}),
        "skip non-reference frames": ("fast", {}),
        "+ skip deblocking": ("fast", dict(pyav_backend.FAST_CODEC_OPTIONS)),
    }
    rows = []
    for path in paths:
        best: dict[str, float] = {}
        frames: dict[str, np.ndarray] = {}
        decoded: dict[str, int] = {}
        for _ in range(repeats):
            for label, (sampling, options) in variants.items():
                seconds, pixels, count = run(path, sampling, options)
                best[label] = min(best.get(label, math.inf), seconds)
                frames[label], decoded[label] = pixels, count
        difference = np.abs(frames["+ skip deblocking"] - frames["skip non-reference frames"])
        rows.append(
            {
                "video": Path(path).name,
                "core_s": best,
                "frames_decoded": decoded,
                "deblocking_skip_mean_abs_levels": float(difference.mean()),
                "deblocking_skip_p99_levels": float(np.percentile(difference, 99)),
                "deblocking_skip_max_levels": int(difference.max()),
            }
        )
    return rows


def measure_scaling(paths: list[str], repeats: int) -> list[dict[str, Any]]:
    """Ways from a decoded frame to the ``SIZE`` px thumbnail, on ``FRAMES`` frames spread over
    each video: scaling straight into RGB (swscale's bilinear, the first decode stage's),
    scaling bilinearly in the frame's own YUV format and converting only the small result (the
    next one's), and ``thumbnails.Thumbnailer`` (today's: area averaging; frames of more than
    8 bits scaled into 8-bit planar RGB). CPU seconds per frame of each, and each one's mean
    distance (levels) from what CLIP's own preprocessing sees: the full-size RGB frame
    (converted at 16 bits) resized by PIL's bicubic filter."""
    return [_scaling_of(path, repeats) for path in paths]


def _scaling_of(path: str, repeats: int) -> dict[str, Any]:
    import av
    from av.video.reformatter import VideoReformatter
    from PIL import Image

    from pipelines.decode.frame_index import index_frames
    from pipelines.decode.source import output_size
    from pipelines.decode.thumbnails import Thumbnailer

    with av.open(path) as container:
        count = len(index_frames(container, container.streams.video[0]).pts)
    picked = {int((i + 0.5) * count / FRAMES) for i in range(FRAMES)}
    with av.open(path) as container:
        frames = [f for i, f in enumerate(container.decode(video=0)) if i in picked]
    width, height = output_size(frames[0].width, frames[0].height, SIZE)
    top, left = (height - SIZE) // 2, (width - SIZE) // 2
    full_size, direct_scaler = VideoReformatter(), VideoReformatter()
    own_scaler, own_converter = VideoReformatter(), VideoReformatter()

    def reference(frame: Any) -> np.ndarray:
        rgb = (full_size.reformat(frame, format="rgb48le").to_ndarray() >> 8).astype(np.uint8)
        small = Image.fromarray(rgb).resize((width, height), Image.BICUBIC)
        return np.asarray(small)[top : top + SIZE, left : left + SIZE].astype(np.int16)

    def direct(frame: Any) -> np.ndarray:
        rgb = direct_scaler.reformat(
            frame, width=width, height=height, format="rgb24", threads=1
        ).to_ndarray()
        return rgb[top : top + SIZE, left : left + SIZE]

    def own_format_bilinear(frame: Any) -> np.ndarray:
        small = own_scaler.reformat(
            frame, width=width, height=height, interpolation="BILINEAR", threads=1
        )
        rgb = own_converter.reformat(small, format="rgb24", threads=1).to_ndarray()
        return rgb[top : top + SIZE, left : left + SIZE]

    variants = {
        "rgb": direct,
        "own_format_bilinear": own_format_bilinear,
        "thumbnailer": Thumbnailer(SIZE, threads=1),
    }
    best: dict[str, float] = {}
    for _ in range(repeats):
        for label, thumbnail in variants.items():
            began = time.process_time()
            for frame in frames:
                thumbnail(frame)
            seconds = (time.process_time() - began) / len(frames)
            best[label] = min(best.get(label, math.inf), seconds)
    references = [reference(frame) for frame in frames]
    distance = {
        label: float(
            np.mean(
                [np.abs(thumbnail(f) - r).mean() for f, r in zip(frames, references, strict=True)]
            )
        )
        for label, thumbnail in variants.items()
    }
    return {
        "video": Path(path).name,
        "pixel_format": frames[0].format.name,
        "core_s_per_frame": best,
        "speedup": best["rgb"] / best["thumbnailer"],
        "speedup_over_own_format_bilinear": best["own_format_bilinear"] / best["thumbnailer"],
        "mean_abs_levels_from_clip_preprocessing": distance,
    }


def damaged_videos(folder: Path) -> dict[str, Path]:
    """The tests' broken files (:func:`pipelines.synthetic.write_damaged_videos`), in ``folder``."""
    from pipelines import synthetic

    good = folder / "good.mp4"
    synthetic.write_mp4(good, np.zeros((12, 64, 96, 3), np.uint8) + 90)
    return synthetic.write_damaged_videos(folder, good_video=good)


def check_robustness() -> dict[str, dict[str, bool]]:
    """Each library on the tests' broken files: does every one become the expected error?"""
    from pipelines import schema, synthetic
    from pipelines.decode import DecodeStage, error_category

    with tempfile.TemporaryDirectory() as tmp:
        damaged = damaged_videos(Path(tmp))
        results = {}
        for library in LIBRARIES:
            with DecodeStage(frames=4, image_size=32, decoder=library) as stage:
                out = stage(stage_batch(list(damaged.values())))
            results[library] = {
                case: error_category(error) == synthetic.DAMAGED_EXPECTED[case]
                for case, error in zip(damaged, out[schema.ERROR], strict=True)
            }
    return results


def _speedup(results: dict[str, dict], names: list[str], policy: str) -> dict[str, float]:
    ratios = {
        name: results[name]["stage"]["uniform/pyav"]["core_s"]
        / results[name]["stage"][f"{policy}/pyav"]["core_s"]
        for name in names
    }
    total_uniform = sum(results[n]["stage"]["uniform/pyav"]["core_s"] for n in names)
    total_policy = sum(results[n]["stage"][f"{policy}/pyav"]["core_s"] for n in names)
    return {"worst": min(ratios.values()), "total": total_uniform / total_policy, **ratios}


def _versions() -> dict[str, Any]:
    import av
    import decord

    return {
        "av": av.__version__,
        "ffmpeg_in_av": {k: ".".join(map(str, v)) for k, v in av.library_versions.items()},
        "decord": decord.__version__,
    }


def record_r1(args: argparse.Namespace) -> None:
    """Put the two R@1 figures and their difference into an existing ``decode.json``."""
    if args.r1_uniform is None or args.r1_fast is None:
        raise SystemExit("--r1-only needs --r1-uniform and --r1-fast")
    path = (args.output or RESULTS_DIR) / "decode.json"
    payload = json.loads(path.read_text())
    payload["fast_r1_delta"] = args.r1_fast - args.r1_uniform
    payload["fast_r1_note"] = {
        "r1_uniform": args.r1_uniform,
        "r1_fast": args.r1_fast,
        "source": args.r1_source,
        "recorded": now_iso(),
    }
    write_results("decode", payload, directory=path.parent)
    print(f"fast_r1_delta {payload['fast_r1_delta']:+.2f} points written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_OUT, help="corpus folder")
    parser.add_argument("--quick", action="store_true", help="the quick corpus only")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--r1-uniform", type=float, help="R@1 of the model indexed uniform")
    parser.add_argument("--r1-fast", type=float, help="R@1 of the same model indexed fast")
    parser.add_argument("--r1-source", help="how the two R@1 figures were obtained")
    parser.add_argument(
        "--r1-only",
        action="store_true",
        help="only record the R@1 figures in the existing results, measuring nothing",
    )
    parser.add_argument("--output", type=Path, help="JSON folder (default bench/results/)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.r1_only:
        record_r1(args)
        return

    corpus = generate(args.corpus, quick=args.quick)
    began = time.perf_counter()
    results = measure_profiles(corpus, args.repeats)
    long_name = next(name for name, entry in corpus.items() if entry.get("clips"))
    long_video = measure_long_video(corpus[long_name], args.repeats)
    default_x264 = [n for n in results if corpus[n].get("default_x264")]
    shortcuts = measure_shortcuts([corpus[n]["path"] for n in default_x264], args.repeats)
    # HDR profiles are left out: the reference (PIL on the untoned RGB) is not what they show.
    scaling = measure_scaling(
        [corpus[n]["path"] for n in results if not corpus[n].get("hdr_transfer")], args.repeats
    )
    robustness = check_robustness()

    thumbnail_s = {row["video"]: row["core_s_per_frame"]["thumbnailer"] for row in scaling}
    table, fixed_costs = [], []
    for name, result in results.items():
        floor = result["floor"]["core_s"]
        stage = result["stage"]
        result["uniform_over_floor"] = stage["uniform/pyav"]["core_s"] / floor
        result["decord_over_floor"] = stage["uniform/decord"]["core_s"] / floor
        per_frame = thumbnail_s.get(Path(corpus[name]["path"]).name)  # not measured on HDR
        if per_frame is not None:
            result["thumbnails_core_s"] = FRAMES * per_frame
            with_fixed = floor + result["index"]["core_s"] + result["thumbnails_core_s"]
            result["uniform_over_floor_index_thumbnails"] = (
                stage["uniform/pyav"]["core_s"] / with_fixed
            )
            fixed_costs.append(
                [
                    name,
                    f"{floor * 1000:.1f}",
                    f"{result['index']['core_s'] * 1000:.1f}",
                    f"{result['thumbnails_core_s'] * 1000:.1f}",
                    f"{stage['uniform/pyav']['core_s'] * 1000:.1f}",
                    f"{result['uniform_over_floor']:.2f}",
                    f"{result['uniform_over_floor_index_thumbnails']:.2f}",
                ]
            )
        table.append(
            [
                name,
                f"{floor:.3f} ({result['floor']['frames']})",
                *(
                    f"{stage[f'{p}/pyav']['core_s']:.3f} ({stage[f'{p}/pyav']['frames_decoded']})"
                    for p in POLICIES
                ),
                f"{stage['uniform/decord']['core_s']:.3f}",
                f"{result['uniform_over_floor']:.2f}",
                "ok" if not any(v["error"] for v in stage.values()) else "ERRORS",
            ]
        )
    print_table(
        table,
        [
            "profile",
            "floor s (frames)",
            "uniform s (frames)",
            "fast s (frames)",
            "keyframe s (frames)",
            "decord uniform s",
            "uniform/floor",
            "errors",
        ],
        title=f"decode core-seconds per video, best of {args.repeats}, {FRAMES} frames at {SIZE}",
    )
    print_table(
        [
            [
                name,
                "container's list" if result["index"]["listed"] else "demuxed",
                f"{result['index']['core_s'] * 1000:.2f}",
                f"{result['index']['demuxed_core_s'] * 1000:.2f}",
                f"{result['index']['demuxed_core_s'] / result['floor']['core_s']:.3f}",
            ]
            for name, result in results.items()
        ],
        ["profile", "stage's index", "index ms", "demuxed ms", "demuxed / floor"],
        title=f"indexing a file (which frames, which keyframes), best of {args.repeats}",
    )
    print_table(
        [
            [
                name,
                f"{result['open']['core_s'] * 1000:.2f}",
                f"{result['open']['probe_decoding_core_s'] * 1000:.2f}",
                f"{saved * 1000:.2f}",
                f"{saved / result['floor']['core_s']:.3f}",
            ]
            for name, result in results.items()
            for saved in [result["open"]["probe_decoding_core_s"] - result["open"]["core_s"]]
        ],
        ["profile", "open ms", "probe decoding ms", "saved ms", "saved / floor"],
        title=f"opening a file (and closing it), best of {args.repeats}",
    )
    print_table(
        fixed_costs,
        [
            "profile",
            "floor ms",
            "index ms",
            "thumbnails ms",
            "uniform ms",
            "uniform/floor",
            "uniform/(floor+index+thumbnails)",
        ],
        title=f"the stage's cost over its floor, with indexing and {FRAMES} thumbnails counted",
    )
    print_table(
        [
            [
                row["video"],
                row["pixel_format"],
                *(f"{row['core_s_per_frame'][k] * 1000:.2f}" for k in SCALING_WAYS),
                f"{row['speedup']:.1f}",
                f"{row['speedup_over_own_format_bilinear']:.2f}",
                *(f"{row['mean_abs_levels_from_clip_preprocessing'][k]:.2f}" for k in SCALING_WAYS),
            ]
            for row in scaling
        ],
        [
            "video",
            "format",
            "RGB ms",
            "YUV bilinear ms",
            "today ms",
            "x RGB",
            "x YUV bilinear",
            "RGB dist",
            "YUV bilinear dist",
            "today dist",
        ],
        title="frame to thumbnail, per frame, and mean levels from CLIP's PIL preprocessing",
    )
    fast = _speedup(results, default_x264, "fast")
    keyframe = _speedup(results, default_x264, "keyframe")
    r1_delta = (
        args.r1_fast - args.r1_uniform
        if args.r1_fast is not None and args.r1_uniform is not None
        else None
    )
    supported = {
        library: {
            name: not result["stage"][f"uniform/{library}"]["error"]
            for name, result in results.items()
        }
        for library in LIBRARIES
    }
    metadata = run_metadata()
    payload = {
        **metadata,
        "versions": {**metadata["versions"], **_versions()},
        "command": "python -m bench.decode" + (" --quick" if args.quick else ""),
        "frames": FRAMES,
        "image_size": SIZE,
        "repeats": args.repeats,
        "uniform_over_floor": max(r["uniform_over_floor"] for r in results.values()),
        "uniform_over_floor_index_thumbnails": max(
            r["uniform_over_floor_index_thumbnails"]
            for r in results.values()
            if "uniform_over_floor_index_thumbnails" in r
        ),
        "fast_speedup": fast["worst"],
        "keyframe_speedup": keyframe["worst"],
        "fast_r1_delta": r1_delta,
        "fast_r1_note": args.r1_source
        if r1_delta is not None
        else "not measured in this run: pass --r1-uniform/--r1-fast from jobs.evaluate of the "
        "demo's fine-tuned model indexed with --sampling uniform and fast",
        "clips_one_pass_ratio": long_video["ratio"],
        "scaling_speedup_worst": min(row["speedup"] for row in scaling),
        "scaling_speedup_over_own_format_bilinear": {
            "worst": min(row["speedup_over_own_format_bilinear"] for row in scaling),
            "best": max(row["speedup_over_own_format_bilinear"] for row in scaling),
        },
        "scaling_levels_from_clip_preprocessing": {
            label: float(
                np.mean([row["mean_abs_levels_from_clip_preprocessing"][label] for row in scaling])
            )
            for label in SCALING_WAYS
        },
        "targets": {
            "uniform_over_floor": f"<= {FLOOR_TARGET} on every profile",
            "fast_speedup": f">= {FAST_TARGET} on default-x264 profiles",
            "keyframe_speedup": f">= {KEYFRAME_TARGET} on default-x264 profiles",
            "fast_r1_delta": ">= -1 point",
            "clips_one_pass_ratio": f"<= {ONE_PASS_TARGET}",
        },
        "fast_speedup_detail": fast,
        "keyframe_speedup_detail": keyframe,
        "profiles": {name: {**corpus[name], **result} for name, result in results.items()},
        "long_video": long_video,
        "fast_shortcuts": shortcuts,
        "scaling": scaling,
        "decoder_reads": supported,
        "broken_files_become_expected_errors": robustness,
        "seconds": time.perf_counter() - began,
    }
    path = write_results("decode", payload, directory=args.output)
    print(
        json.dumps({k: payload[k] for k in list(payload)[5:17] if k != "targets"}, indent=1),
        f"\nwritten to {path}",
    )


if __name__ == "__main__":
    main()
