"""The GPU decoder's path without a GPU: torchcodec on the CPU against PyAV, file by file.

``--decoder nvdec`` and ``--decoder torchcodec`` run one backend (``torchcodec_backend``): PyAV's
index, then torchcodec's ``get_frames_at`` on the GPU or the CPU, the same scaling and crop, the
same checks and fallbacks. On the CPU everything but NVDEC itself runs, so this script checks on
any machine where torchcodec loads (it needs a CUDA build of torch, which runs on the CPU:
``CENTERCLIP_TORCH=cuda bash scripts/setup.sh``), for every file of the quick corpus, a few
files made here (turned, mirrored, anamorphic, FLV, interlaced) and the tests' broken files:

* which decoder decoded each file (the row's ``decoder``: torchcodec, or PyAV and why);
* whether the rows agree with PyAV's: errors, frame times, and frames within a few levels
  (torchcodec's frames are scaled in RGB, PyAV's in YUV);
* what each costs: the decoder process's CPU seconds per video, best of ``--repeats``,
  interleaved, and their ratio;
* what the torchcodec path spends on the CPU besides decoding and scaling (PyAV's index and
  first frame, torchcodec's opening of the file): what stays on the host when NVDEC decodes and
  the GPU scales (CUDA's own overhead and the copies not counted).

Writes ``bench/results/torchcodec-cpu.json``; exits without writing where torchcodec cannot run.

    python -m bench.torchcodec_cpu              # the quick corpus (generated if missing)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import print_table, run_metadata, write_results
from bench.corpus import DEFAULT_OUT, generate
from bench.decode import damaged_videos, stage_batch

FRAMES = 12
SIZE = 224
# Mean level difference per frame above which torchcodec's frame is not PyAV's: a crop one pixel
# off differs by 10 to 12 levels on colourful texture (tests/test_nvdec.py).
SAME_FRAME_LEVELS = 6.0


def extra_files(folder: Path) -> dict[str, str]:
    """Files the quick corpus lacks: turned (a phone held upright), mirrored, anamorphic, FLV,
    interlaced."""
    from pipelines import synthetic

    generator = np.random.default_rng(0)
    coarse = generator.integers(0, 255, (30, 6, 10, 3)).astype(np.uint8)
    video = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)  # [30, 96, 160, 3] blocks
    files = {
        "turned_90.mp4": {"rotation": 90},
        "turned_270.mp4": {"rotation": 270},
        "turned_90_mirrored.mp4": {"rotation": 90, "mirrored": True},
        "anamorphic_16_11.mkv": {"pixel_aspect": Fraction(16, 11)},
        "h264.flv": {},
    }
    paths = {}
    for name, options in files.items():
        path = folder / name
        synthetic.write_mp4(path, video, fps=30, gop=10, **options)
        paths[name] = str(path)
    interlaced = folder / "interlaced.mp4"
    synthetic.write_interlaced_mp4(interlaced, video, np.roll(video, 8, axis=2), fps=30)
    paths[interlaced.name] = str(interlaced)
    return paths


def measure(paths: dict[str, str], repeats: int) -> dict[str, dict[str, Any]]:
    """Each file through the stage with PyAV and with torchcodec, ``repeats`` times interleaved."""
    from pipelines import schema
    from pipelines.decode import DECODER_PYAV, DECODER_TORCHCODEC, DecodeStage

    decoders = (DECODER_PYAV, DECODER_TORCHCODEC)
    rows: dict[str, dict[str, Any]] = {name: {} for name in paths}
    with (
        DecodeStage(frames=FRAMES, image_size=SIZE, decoder=DECODER_PYAV) as pyav,
        DecodeStage(frames=FRAMES, image_size=SIZE, decoder=DECODER_TORCHCODEC) as torchcodec,
    ):
        stages = {DECODER_PYAV: pyav, DECODER_TORCHCODEC: torchcodec}
        for _ in range(repeats):
            for name, path in paths.items():
                for decoder in decoders:
                    out = stages[decoder](stage_batch([path]))
                    best = rows[name].get(decoder)
                    cpu_s = float(out[schema.DECODE_CPU_S][0])
                    if best is None or cpu_s < best["cpu_s"]:
                        rows[name][decoder] = {
                            "cpu_s": cpu_s,
                            "decoder": str(out[schema.DECODER][0]),
                            "error": str(out[schema.ERROR][0]),
                            "frames_decoded": int(out[schema.FRAMES_DECODED][0]),
                            "frames": out[schema.FRAMES][0],
                            "times": out[schema.FRAME_TIMES_S][0],
                        }
    results = {}
    for name, by_decoder in rows.items():
        ours, theirs = by_decoder[DECODER_TORCHCODEC], by_decoder[DECODER_PYAV]
        levels = np.abs(ours["frames"].astype(int) - theirs["frames"].astype(int))
        per_frame = levels.mean(axis=(1, 2, 3))
        results[name] = {
            "decoded_by": ours["decoder"],
            "torchcodec_ran": ours["decoder"] == DECODER_TORCHCODEC,
            "errors_match": ours["error"] == theirs["error"],
            "error": theirs["error"],
            "times_match": bool(np.array_equal(ours["times"], theirs["times"], equal_nan=True)),
            "mean_levels_from_pyav": float(per_frame.mean()),
            "worst_frame_levels_from_pyav": float(per_frame.max()),
            "frames_decoded": {
                "torchcodec": ours["frames_decoded"],
                "pyav": theirs["frames_decoded"],
            },
            "cpu_s": {"torchcodec": ours["cpu_s"], "pyav": theirs["cpu_s"]},
            "torchcodec_over_pyav": ours["cpu_s"] / theirs["cpu_s"],
        }
    return results


def host_share(path: str, repeats: int) -> float:
    """CPU seconds the torchcodec path spends on a file besides decoding and scaling, best of
    ``repeats``: PyAV's index and first frame, and torchcodec's own opening (its scan of the
    file). With NVDEC decoding and the GPU scaling, this is what stays on the host's CPU."""
    from torchcodec.decoders import VideoDecoder

    from pipelines.decode.frame_index import index_frames
    from pipelines.decode.source import _open_video, _probe

    best = math.inf
    for _ in range(repeats):
        began = time.process_time()
        container, stream = _open_video(path)
        with container:
            index_frames(container, stream)
        _probe(path)
        VideoDecoder(path, device="cpu", seek_mode="exact", num_ffmpeg_threads=1)
        best = min(best, time.process_time() - began)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_OUT, help="corpus folder")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--output", type=Path, help="JSON file (default bench/results/)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pipelines.decode.environment import decoder_environment

    env = decoder_environment()
    if os.environ.get("LD_LIBRARY_PATH") != env.get("LD_LIBRARY_PATH"):  # once: it only adds
        # Started again as the decoder process starts, so torchcodec loads in this process too
        # (the loader reads its library path once, at start): host_share opens files with it.
        os.execve(sys.executable, [sys.executable, "-m", __spec__.name, *sys.argv[1:]], env)

    from pipelines.decode import DECODER_TORCHCODEC
    from pipelines.decode.torchcodec_backend import unavailable_reason

    reason = unavailable_reason(DECODER_TORCHCODEC)
    if reason is not None:
        raise SystemExit(f"torchcodec cannot run here ({reason}); nothing measured")
    corpus = generate(args.corpus, quick=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: entry["path"] for name, entry in corpus.items()}
        paths |= extra_files(Path(tmp))
        results = measure(paths, args.repeats)
        for name, result in results.items():
            if result["torchcodec_ran"]:
                host_s = host_share(paths[name], args.repeats)
                result["host_cpu_s_besides_decoding"] = host_s
                result["host_over_pyav"] = host_s / result["cpu_s"]["pyav"]
        broken_folder = Path(tmp) / "broken"
        broken_folder.mkdir()
        broken = measure({n: str(p) for n, p in damaged_videos(broken_folder).items()}, 1)

    decoded = {n: r for n, r in results.items() if r["torchcodec_ran"]}
    print_table(
        [
            [
                name,
                r["decoded_by"] if not r["torchcodec_ran"] else "torchcodec",
                f"{r['mean_levels_from_pyav']:.1f} / {r['worst_frame_levels_from_pyav']:.1f}",
                "yes" if r["times_match"] and r["errors_match"] else "NO",
                f"{r['cpu_s']['torchcodec'] * 1000:.0f}",
                f"{r['cpu_s']['pyav'] * 1000:.0f}",
                f"{r['torchcodec_over_pyav']:.2f}",
                f"{r['host_cpu_s_besides_decoding'] * 1000:.1f}" if r["torchcodec_ran"] else "-",
                f"{r['host_over_pyav']:.3f}" if r["torchcodec_ran"] else "-",
            ]
            for name, r in results.items()
        ],
        [
            "file",
            "decoded by",
            "levels from PyAV (mean / worst frame)",
            "rows as PyAV's",
            "torchcodec ms",
            "pyav ms",
            "ratio",
            "besides decoding ms",
            "/ pyav",
        ],
        title=f"torchcodec on the CPU against PyAV, {FRAMES} frames at {SIZE}, "
        f"best of {args.repeats}",
    )
    print_table(
        [
            [name, r["error"] or "(decodes)", "yes" if r["errors_match"] else "NO"]
            for name, r in broken.items()
        ],
        ["broken file", "PyAV's row", "torchcodec's the same"],
        title="the tests' broken files",
    )
    ratios = [r["torchcodec_over_pyav"] for r in decoded.values()]
    host = [r["host_over_pyav"] for r in decoded.values()]
    payload = {
        **run_metadata(),
        "command": "python -m bench.torchcodec_cpu",
        "frames": FRAMES,
        "image_size": SIZE,
        "repeats": args.repeats,
        "same_frame_levels": SAME_FRAME_LEVELS,
        "files_decoded_by_torchcodec": len(decoded),
        "files_handed_to_pyav": {
            n: r["decoded_by"] for n, r in results.items() if not r["torchcodec_ran"]
        },
        "rows_match_pyav": all(r["errors_match"] and r["times_match"] for r in results.values()),
        "worst_frame_levels_from_pyav": max(
            r["worst_frame_levels_from_pyav"] for r in decoded.values()
        ),
        "frames_match_pyav": all(
            r["worst_frame_levels_from_pyav"] <= SAME_FRAME_LEVELS for r in decoded.values()
        ),
        "torchcodec_over_pyav_cpu": {
            "min": min(ratios),
            "max": max(ratios),
            "median": float(np.median(ratios)),
        },
        # CPU the torchcodec path spends besides decoding and scaling, over PyAV's whole cost:
        # what NVDEC would leave on the host, CUDA's own overhead and the copies not counted.
        "host_besides_decoding_over_pyav": {
            "min": min(host),
            "max": max(host),
            "median": float(np.median(host)),
        },
        "broken_files_errors_match": all(r["errors_match"] for r in broken.values()),
        "files": results,
        "broken_files": broken,
    }
    path = write_results("torchcodec-cpu", payload, output=args.output)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
