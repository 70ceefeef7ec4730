"""The whole product on a CPU in a few minutes: generate a corpus, index it, search it.

    python -m jobs.demo --out demo

Generates a captioned synthetic corpus (``jobs.sample``), indexes its test split with the
``tiny`` preset on a local Ray (``jobs.index``), and searches the index with one test caption
(``jobs.search``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from jobs import _cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="folder for everything")
    parser.add_argument("--videos", type=_cli.positive_int, default=120, help="corpus size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="tiny", help="preset or checkpoint to index with")


def run(args: argparse.Namespace) -> int:
    import pyarrow.compute as pc

    from jobs import index, sample, search
    from pipelines.manifest import read_manifest

    out: Path = args.out
    corpus = out / "corpus"
    steps = [
        (sample.main,
         ["--out", str(corpus), "--videos", str(args.videos), "--seed", str(args.seed)]),
        (
            index.main,
            ["--manifest", str(corpus / "manifest"), "--db", str(out / "db"), "--table", "videos",
             "--split", "test", "--model", args.model],
        ),
    ]  # fmt: skip
    for main, argv in steps:
        print(f"$ centerclip {main.__module__.split('.')[-1]} {' '.join(argv)}", flush=True)
        if status := main(argv):
            return status
    manifest = read_manifest(str(corpus / "manifest"))
    test = manifest.filter(pc.equal(manifest["split"], "test"))
    caption = test["caption"][0].as_py()[0]
    argv = ["--db", str(out / "db"), "--table", "videos", "--model", args.model, "-k", "3", caption]
    print(f'$ centerclip search {" ".join(argv[:-1])} "{caption}"', flush=True)
    print(f"(the caption belongs to {test['video_id'][0].as_py()})")
    return search.main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return _cli.main(__name__, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
