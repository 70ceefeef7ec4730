"""The whole loop on a CPU in minutes: generate a corpus, fine-tune, index, evaluate, search.

    python -m jobs.demo --out demo

1. ``jobs.sample``: a captioned synthetic corpus with train and test splits (DIR/corpus);
2. ``jobs.finetune``: the ``tiny`` preset trained from scratch on the train split with Ray Train
   (DIR/finetune/model.pt, curves.png);
3. ``jobs.index``: the test split indexed with the fine-tuned model (DIR/db);
4. ``jobs.evaluate``: text-to-video and video-to-text retrieval over the test split
   (DIR/eval/metrics.json);
5. ``jobs.search``: one test caption as a query;

and ends with the ``centerclip serve`` command that serves the table: a search page and an API.

Every step is the job's own command line, printed before it runs, so each can be rerun alone.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from jobs import _cli, _console


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, type=_cli.output_folder, help="folder for everything"
    )
    parser.add_argument("--videos", type=_cli.positive_int, default=1320, help="corpus size")
    parser.add_argument(
        "--test-videos", type=_cli.positive_int, default=120, help="of which held out for test"
    )
    parser.add_argument(
        "--seed",
        type=_cli.non_negative_int,
        default=0,
        help="corpus, data order, captions, frame positions",
    )
    parser.add_argument("--model", default="tiny", help="preset to fine-tune from scratch")
    training = parser.add_argument_group("fine-tuning (see jobs.finetune)")
    training.add_argument(
        "--epochs", type=_cli.positive_int, default=10, help="passes over the training split"
    )
    training.add_argument(
        "--batch-size", type=_cli.at_least(2), default=64, help="global batch, all workers"
    )
    training.add_argument(
        "--lr", type=_cli.positive_float, default=2e-3, help="learning rate (new weights)"
    )
    training.add_argument(
        "--frames", type=_cli.positive_int, default=4, help="frames per video (T)"
    )
    training.add_argument(
        "--segments", type=_cli.positive_int, default=2, help="segments per video (S)"
    )


def run(args: argparse.Namespace) -> int:
    import pyarrow.compute as pc

    from jobs import evaluate, finetune, index, sample, search
    from pipelines.manifest import read_manifest

    if args.test_videos >= args.videos:
        raise _cli.JobError(f"--test-videos {args.test_videos} must be below --videos")
    if args.videos - args.test_videos < args.batch_size:
        raise _cli.JobError(
            f"--batch-size {args.batch_size} needs at least as many training videos; --videos "
            f"{args.videos} with --test-videos {args.test_videos} leaves "
            f"{args.videos - args.test_videos}"
        )
    index.check_model(args.model, None, {"frames": args.frames, "segments": args.segments})
    out: Path = args.out
    corpus, manifest = out / "corpus", str(out / "corpus" / "manifest")
    model = str(out / "finetune" / "model.pt")
    table = ["--db", str(out / "db"), "--table", "videos"]
    steps = [
        (sample.main,
         ["--out", str(corpus), "--videos", str(args.videos), "--seed", str(args.seed),
          "--test-fraction", repr(args.test_videos / args.videos)]),
        (finetune.main,
         ["--manifest", manifest, "--model", args.model, "--out", str(out / "finetune"),
          "--frames", str(args.frames), "--segments", str(args.segments),
          "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
          "--lr", repr(args.lr), "--seed", str(args.seed)]),
        (index.main, ["--manifest", manifest, *table, "--split", "test", "--model", model]),
        (evaluate.main,
         ["--manifest", manifest, *table, "--split", "test", "--model", model,
          "--out", str(out / "eval")]),
    ]  # fmt: skip
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    for main, argv in steps:
        name = main.__module__.split(".")[-1]
        _console.say(f"\n$ centerclip {name} {' '.join(argv)}")
        started = time.perf_counter()
        if status := main(argv):
            return status
        seconds[name] = time.perf_counter() - started

    test = read_manifest(manifest)
    test = test.filter(pc.equal(test["split"], "test"))
    caption = test["caption"][0].as_py()[0]
    argv = [*table, "--model", model, "-k", "3", caption]
    _console.say(f'\n$ centerclip search {" ".join(argv[:-1])} "{caption}"')
    _console.say(f"(the caption belongs to {test['video_id'][0].as_py()})")
    started = time.perf_counter()
    if status := search.main(argv):
        return status
    seconds["search"] = time.perf_counter() - started

    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    t2v = metrics["t2v"]
    _console.say(
        f"\ndemo: text-to-video R@1 {t2v['R@1']:.1f}% R@5 {t2v['R@5']:.1f}% "
        f"R@10 {t2v['R@10']:.1f}% over {metrics['num_queries']} captions of "
        f"{metrics['num_videos']} test videos (chance: R@1 {100 / metrics['num_videos']:.1f}%)"
    )
    _console.say(
        f"demo: {time.perf_counter() - began:.0f} s in all ("
        + ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
        + ")"
    )
    _console.say(
        "\nto search it in a browser, serve the table and open http://127.0.0.1:8000/:\n"
        f"$ centerclip serve {' '.join(table)} --model {model}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return _cli.main(__name__, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
