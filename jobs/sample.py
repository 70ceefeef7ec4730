"""Write a synthetic, captioned sample corpus: real H.264 videos and a sharded Parquet manifest.

    python -m jobs.sample --out DIR --videos N [--seed S] [--test-fraction F] [--shards K]

Writes DIR/videos/<video_id>.mp4 and DIR/manifest/part-*.parquet (video_id, uri, caption, split).
Each video shows coloured shapes moving over a coloured background; its captions name every
visible attribute, so a model trained on the train split can retrieve the test split by caption.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import pyarrow.compute as pc

from jobs import _cli, _console
from pipelines import manifest, schema, synthetic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=_cli.output_folder, required=True, help="output folder")
    parser.add_argument("--videos", type=_cli.positive_int, required=True, help="number of videos")
    parser.add_argument(
        "--seed", type=_cli.non_negative_int, default=0, help="makes the corpus reproducible"
    )
    parser.add_argument(
        "--test-fraction", type=_cli.fraction, default=0.2, help="share of videos in 'test'"
    )
    parser.add_argument("--shards", type=_cli.positive_int, default=4, help="manifest shards")
    parser.add_argument(
        "--workers", type=_cli.positive_int, default=None, help="encoding processes (default: CPUs)"
    )


def run(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    with _console.Progress("writing", args.videos, count_failures=False) as progress:
        try:
            folder = synthetic.write_sample_corpus(
                args.out,
                videos=args.videos,
                seed=args.seed,
                test_fraction=args.test_fraction,
                shards=args.shards,
                workers=args.workers,
                on_progress=lambda done, _total: progress.update(done),
            )
        except (ValueError, OSError) as err:
            raise _cli.JobError(str(err)) from err
    seconds = time.perf_counter() - began
    table = manifest.read_manifest(folder)
    counts = pc.value_counts(table[schema.SPLIT]).to_pylist()
    shards = len(list(folder.glob("part-*.parquet")))
    _console.say(f"wrote {table.num_rows} videos to {folder.parent / 'videos'} in {seconds:.1f}s")
    _console.say(f"manifest: {folder} ({shards} shards)")
    for entry in sorted(counts, key=lambda e: e["values"]):
        _console.say(f"  {entry['values']}: {entry['counts']} videos")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return _cli.main(__name__, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
