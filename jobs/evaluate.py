r"""Evaluate retrieval over a captioned split: every caption is a query for its own video.

Text-to-video and video-to-text R@1/5/10, median and mean rank (MSR-VTT protocol), by exact
search and through the table's ANN index, with the ANN's recall@10 against exact search:

    python -m jobs.evaluate --manifest corpus/manifest --db corpus/db --table videos \
        --model tiny --split test --out eval

Writes OUT/metrics.json, OUT/ranks.parquet (per caption) and OUT/recall_at_k.png, and prints a
table. The model must be the one the table was indexed with.
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

# As pipelines.evaluate.config.MIN_ANN_K; not imported from there so --help stays fast (no torch).
MIN_ANN_K = 10


def ann_k(text: str) -> int:
    value = _cli.positive_int(text)
    if value < MIN_ANN_K:
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_ANN_K} (R@10 and ann_recall@10 need it), got {text}"
        )
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.resources import EVAL_RAY_MIN_SCORES

    parser.add_argument(
        "--manifest", required=True, nargs="+", help="Parquet shards, or folders of them"
    )
    parser.add_argument("--db", required=True, type=_cli.database, help="LanceDB folder or URI")
    parser.add_argument("--table", required=True, help="embeddings table name")
    parser.add_argument("--split", help="evaluate only the manifest rows of this split")
    parser.add_argument(
        "--out", required=True, type=_cli.output_folder, help="folder for the results"
    )
    add_model_arguments(parser)
    add_decode_arguments(parser, decoder=False)
    ann = parser.add_argument_group("ANN search")
    ann.add_argument(
        "-k", type=ann_k, default=MIN_ANN_K, help="results per ANN query (at least 10)"
    )
    ann.add_argument(
        "--build-index",
        action="store_true",
        help="(re)build the table's IVF_PQ index first, whatever its size; writes to the table",
    )
    ann.add_argument("--nprobes", type=_cli.positive_int, help="IVF partitions probed per query")
    ann.add_argument(
        "--refine-factor",
        type=_cli.non_negative_int,
        default=10,
        help="re-rank k x this many candidates by exact distance (0: PQ distances only)",
    )
    resources = parser.add_argument_group("resources")
    resources.add_argument(
        "--text-batch-size", type=_cli.positive_int, default=256, help="captions per encode batch"
    )
    resources.add_argument(
        "--ray-min-captions",
        type=_cli.non_negative_int,
        default=5000,
        help="encode on a Ray actor pool when the split has more captions than this",
    )
    resources.add_argument(
        "--ray-min-scores",
        type=_cli.non_negative_int,
        default=EVAL_RAY_MIN_SCORES,
        help="compute the exact ranks as Ray tasks when captions x videos is above this",
    )
    resources.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    resources.add_argument("--actors", type=_cli.positive_int, help="text encode actors")
    resources.add_argument(
        "--gpus-per-actor",
        type=_cli.non_negative_float,
        help="GPUs per text encode actor; 0 forces CPU",
    )


def run(args: argparse.Namespace) -> int:
    from centerclip import WeightsUnavailableError
    from pipelines.evaluate import EvaluateConfig, run_evaluation
    from pipelines.manifest import ManifestError

    _cli.check_manifest_exists(args.manifest)
    config = EvaluateConfig(
        manifest=args.manifest,
        db=args.db,
        table=args.table,
        model=model_spec(args),
        out=args.out,
        split=args.split,
        k=args.k,
        build_index=args.build_index,
        nprobes=args.nprobes,
        refine_factor=args.refine_factor or None,
        text_batch_size=args.text_batch_size,
        ray_min_captions=args.ray_min_captions,
        ray_min_scores=args.ray_min_scores,
        address=args.address,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
    )
    progress = _console.ProgressOnDemand("evaluating", unit="steps", count_failures=False)

    def show_step(done: int, steps: int, running: str) -> None:
        progress.update(done, steps, note=running)

    try:
        report = run_evaluation(config, on_step=show_step)
    except (ManifestError, ValueError, FileNotFoundError) as err:
        raise _cli.JobError(str(err)) from err
    except WeightsUnavailableError as err:
        raise _cli.JobError(f"--weights {args.weights}: {err}") from err
    finally:
        progress.close()
    warn_if_random_weights(report.metrics["model_id"])
    _console.say(report.format())
    _console.say("wrote:        " + ", ".join(str(path) for path in report.files))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return _cli.main(__name__, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
