"""Search an index with text: the top videos, their scores, URIs and best-matching segment.

python -m jobs.search --db corpus/db --table videos --model tiny "a red circle moving left"

--by moments ranks videos by their best segment (MaxSim over the segment embeddings) instead of
the whole-video embedding, for a query that describes one part of a video. --hybrid also ranks
the captions by their words (the table's full-text index) and fuses both rankings, so a name in
the captions that the model never learned still finds its video.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jobs import _cli, _console
from jobs.index import (
    add_decode_arguments,
    add_model_arguments,
    model_spec,
    warn_if_random_weights,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", nargs="+", help="one or more text queries")
    parser.add_argument("--db", required=True, type=_cli.database, help="LanceDB folder or URI")
    parser.add_argument("--table", required=True, help="embeddings table name")
    parser.add_argument("-k", type=_cli.positive_int, default=10, help="results per query")
    parser.add_argument(
        "--exact", action="store_true", help="brute-force search instead of the ANN index"
    )
    parser.add_argument(
        "--hybrid",
        action="store_true",
        help="fuse the vector ranking with a full-text ranking of the captions (reciprocal "
        "rank fusion), for caption words the model does not know",
    )
    parser.add_argument(
        "--by",
        choices=("vector", "moments"),
        default="vector",
        help="rank by the whole-video embedding, or by each video's best segment (MaxSim: finds "
        "a video one part of which the query describes)",
    )
    parser.add_argument("--split", help="search only this split's videos")
    add_model_arguments(parser)
    add_decode_arguments(parser, decoder=False)


def run(args: argparse.Namespace) -> int:
    import torch

    from centerclip import WeightsUnavailableError
    from pipelines.resources import QUERY_TORCH_THREADS
    from pipelines.search import search

    if args.hybrid and args.by != "vector":
        raise _cli.JobError("--hybrid fuses the whole-video ranking; drop --by moments")
    spec = model_spec(args)
    torch.set_num_threads(QUERY_TORCH_THREADS)
    try:
        model = spec.build()
        warn_if_random_weights(model.model_id)
        results = search(
            db_uri=args.db,
            table_name=args.table,
            model=model,
            queries=args.query,
            k=args.k,
            exact=args.exact,
            hybrid=args.hybrid,
            split=args.split,
            by=args.by,
        )
    except (ValueError, FileNotFoundError) as err:
        raise _cli.JobError(str(err)) from err
    except WeightsUnavailableError as err:
        raise _cli.JobError(f"--weights {args.weights}: {err}") from err
    for query, hits in zip(args.query, results, strict=True):
        _console.say(f'query: "{query}"')
        for rank, hit in enumerate(hits, start=1):
            _console.say(
                f"  {rank:>2}. {hit.score:.3f}  {hit.video_id}  "
                f"[{hit.segment_start_s:.1f}s-{hit.segment_end_s:.1f}s]  {hit.uri}"
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return _cli.main(__name__, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
