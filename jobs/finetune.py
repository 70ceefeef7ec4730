"""Fine-tune the encoder on captioned videos with Ray Train; the result is a checkpoint file that
``jobs.index --model`` and ``jobs.evaluate --model`` take.

Trains on the manifest's train split (a random caption per video and fresh random frame positions
every epoch) with the symmetric InfoNCE loss over the global batch of all workers, validates on
the test split every epoch, and writes into --out: model.pt (the fine-tuned model), history.json
and curves.png (loss and validation recall per epoch), and train/ (Ray Train's checkpoints).
--out may be a local folder or an s3://bucket/prefix (AWS_* settings as for jobs.index).
Run it again with the same --out to resume a stopped or killed run from its last checkpoint.

    python -m jobs.finetune --manifest corpus/manifest --model tiny --out runs/tiny \\
        --epochs 10 --batch-size 64 --lr 1e-3
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jobs import _cli, _console
from jobs.index import add_decode_arguments, add_model_arguments, model_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manifest", required=True, nargs="+", help="Parquet shards, or folders of them"
    )
    parser.add_argument(
        "--out",
        required=True,
        type=_cli.output_location,
        help="output folder or s3:// prefix (model.pt, curves, checkpoints)",
    )
    parser.add_argument("--train-split", default="train", help="split to train on")
    parser.add_argument(
        "--val-split", default="test", help="split to validate on every epoch; 'none' to skip"
    )
    parser.add_argument(
        "--val-max-videos", type=_cli.positive_int, default=1000, help="validation videos"
    )
    add_model_arguments(parser)
    add_decode_arguments(parser)
    train = parser.add_argument_group("training (a resumed run must keep these)")
    train.add_argument(
        "--epochs", type=_cli.positive_int, default=5, help="passes over the training split"
    )
    train.add_argument(
        "--batch-size",
        type=_cli.at_least(2),
        default=128,
        help="global batch, all workers: the loss's negatives",
    )
    train.add_argument(
        "--lr", type=_cli.positive_float, default=1e-4, help="learning rate of new weights"
    )
    train.add_argument(
        "--pretrained-lr",
        type=_cli.non_negative_float,
        default=1e-7,
        help="learning rate of weights loaded from a trained model",
    )
    train.add_argument(
        "--weight-decay",
        type=_cli.non_negative_float,
        default=0.2,
        help="AdamW weight decay (weight matrices only)",
    )
    train.add_argument(
        "--warmup",
        type=_cli.fraction_below_one,
        default=0.1,
        help="share of steps warming up",
    )
    train.add_argument(
        "--grad-clip",
        type=_cli.non_negative_float,
        default=1.0,
        help="max gradient norm; 0 turns it off",
    )
    train.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="autocast; auto: bf16 on GPUs, fp32 on CPUs",
    )
    train.add_argument(
        "--seed",
        type=_cli.non_negative_int,
        default=0,
        help="data order, captions, frame positions",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    run.add_argument(
        "--workers", type=_cli.positive_int, help="training workers (default: GPUs, or 1)"
    )
    run.add_argument("--cpu", action="store_true", help="train on CPUs even where there are GPUs")
    run.add_argument("--torch-threads", type=_cli.positive_int, help="torch threads per worker")
    run.add_argument("--decode-workers", type=_cli.positive_int, help="decode actors")
    run.add_argument(
        "--decode-timeout", type=_cli.positive_float, default=60.0, help="seconds per video"
    )
    run.add_argument(
        "--checkpoint-every",
        type=_cli.positive_int,
        help="also checkpoint every this many steps (always at the end of an epoch)",
    )
    run.add_argument(
        "--keep-checkpoints", type=_cli.positive_int, default=2, help="checkpoints kept"
    )
    run.add_argument(
        "--stop-after-epoch",
        type=_cli.positive_int,
        help="end this run after this epoch; the same command later continues it",
    )
    run.add_argument(
        "--max-failures",
        type=_cli.non_negative_int,
        default=0,
        help="restart failed workers from the last checkpoint this many times",
    )


def run(args: argparse.Namespace) -> int:
    from centerclip import WeightsUnavailableError
    from centerclip.train import TrainConfig
    from pipelines.finetune import FinetuneConfig, run_finetune
    from pipelines.manifest import ManifestError

    _cli.check_manifest_exists(args.manifest)
    progress = _console.ProgressOnDemand("training", unit="steps", count_failures=False)

    def show_progress(step: int, total_steps: int, loss: float | None) -> None:
        progress.update(step, total_steps, note=f"loss {loss:.3f}" if loss is not None else "")

    try:
        config = FinetuneConfig(
            manifest=args.manifest,
            out=str(args.out),
            model=model_spec(args),
            train=TrainConfig(
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                pretrained_lr=args.pretrained_lr,
                weight_decay=args.weight_decay,
                warmup_fraction=args.warmup,
                grad_clip=args.grad_clip,
                precision=args.precision,
                seed=args.seed,
            ),
            train_split=args.train_split,
            val_split=None if args.val_split.lower() == "none" else args.val_split,
            val_max_videos=args.val_max_videos,
            workers=args.workers,
            use_gpus=False if args.cpu else None,
            torch_threads=args.torch_threads,
            decode_workers=args.decode_workers,
            decode_timeout_s=args.decode_timeout,
            checkpoint_every_steps=args.checkpoint_every,
            keep_checkpoints=args.keep_checkpoints,
            stop_after_epoch=args.stop_after_epoch,
            max_failures=args.max_failures,
            address=args.address,
        )
        summary = run_finetune(config, on_progress=show_progress)
    except (ManifestError, ValueError, FileNotFoundError) as err:
        raise _cli.JobError(str(err)) from err
    except WeightsUnavailableError as err:
        raise _cli.JobError(f"--weights {args.weights}: {err}") from err
    finally:
        progress.close()
    _console.say(summary.format())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return _cli.main(__name__, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
