"""Index videos: a Parquet manifest in, a LanceDB table of CenterCLIP embeddings out.

Incremental: only videos that are new, whose bytes changed, or that were embedded by another model
are decoded and encoded; videos gone from the manifest are deleted. Bad videos become rows of the
errors table <table>_errors; the job goes on.

One job writes a table at a time: a second index job on a table that a live job is writing exits
at once (status 1) with a line naming that job; a job that died frees the table within 30 s.

Runs on a local Ray started in-process, or on a cluster (--address, or ray job submit):

    python -m jobs.index --manifest corpus/manifest --db corpus/db --table videos --model tiny

Manifests, videos and the database may live on S3 (s3://bucket/prefix), reached with the
driver's AWS variables, which the job hands to its Ray workers: AWS_ENDPOINT_URL (MinIO, Ceph...;
AWS_ALLOW_HTTP=true for a plain-HTTP one without a scheme), AWS_REGION, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN; unset ones fall back to each node's default credentials.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs import _cli, _console

if TYPE_CHECKING:
    from pipelines.encode import ModelSpec


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--weights`` and the settings overrides, shared by every job with a model."""
    group = parser.add_argument_group(
        "model", "--frames ... --distance default to the preset's (or the checkpoint's) settings"
    )
    group.add_argument(
        "--model", required=True, help="a preset name (centerclip presets) or a checkpoint file"
    )
    group.add_argument(
        "--weights",
        default=None,
        help="'pretrained' (the preset's open_clip tag), another open_clip tag, or a weights "
        "file; default: the preset's deterministic random initialisation",
    )
    group.add_argument("--frames", type=_cli.positive_int, help="frames per video (T)")
    group.add_argument(
        "--cluster-block", type=_cli.non_negative_int, help="blocks before clustering (b)"
    )
    group.add_argument("--segments", type=_cli.positive_int, help="segments per video (S)")
    group.add_argument("--centers", type=_cli.positive_int, help="tokens kept per segment (K)")
    group.add_argument(
        "--method",
        choices=["kmedoids", "spectral", "none"],
        help="token clustering; none: every frame is a segment (CLIP4Clip meanP)",
    )
    group.add_argument(
        "--distance", choices=["euclidean", "cosine"], help="k-medoids distance between tokens"
    )


def add_decode_arguments(parser: argparse.ArgumentParser, *, decoder: bool = True) -> None:
    """``--sampling`` (part of the model's identity) and ``--decoder``, for every job whose
    vectors come from decoded frames."""
    from pipelines.decode import DECODERS, DEFAULT_DECODER, INDEX_SAMPLINGS, SAMPLING_UNIFORM

    group = parser.add_argument_group("frames")
    group.add_argument(
        "--sampling",
        choices=INDEX_SAMPLINGS,
        default=SAMPLING_UNIFORM,
        help="which frame of each of the T equal chunks of a clip's time: uniform (its centre), "
        "fast (the frame cheapest to reach near it, about 2x less decoding), keyframe (the "
        "nearest keyframe, 10x+ less, fewer distinct frames); part of the model_id, so a table "
        "indexed one way is re-indexed, evaluated and searched only that way "
        "(default: %(default)s)",
    )
    if decoder:
        group.add_argument(
            "--decoder",
            choices=DECODERS,
            default=DEFAULT_DECODER,
            help="decoding library (the same frames, scalers aside; nvdec decodes on the GPU "
            "through torchcodec, torchcodec on the CPU; both fall back to pyav where they "
            "cannot; default: %(default)s)",
        )


def check_model(
    model: str, weights: str | None = None, overrides: Mapping[str, Any] | None = None
) -> None:
    """Fail with one line (:class:`JobError`), before any work, when ``--model`` names neither
    a preset nor an existing checkpoint file, ``--weights`` a missing file or weights the preset
    does not have, or the settings flags do not fit the preset. What only loading can tell
    (pretrained weights that cannot be downloaded here) is reported when the job builds the
    model (``centerclip.WeightsUnavailableError``)."""
    from centerclip.config import get_preset, list_presets
    from centerclip.factory import _looks_like_path  # the factory's own test: a file or a preset

    presets = ", ".join(list_presets())
    if model.startswith("s3://"):
        if weights is not None:
            raise _cli.JobError(
                f"--weights {weights}: the checkpoint --model {model} carries its own weights; "
                "leave --weights out"
            )
        return
    if _looks_like_path(model):
        if not Path(model).is_file():
            raise _cli.JobError(
                f"--model {model}: no such checkpoint file; pass a model.pt that jobs.finetune "
                f"wrote, or a preset name ({presets})"
            )
        if weights is not None:
            raise _cli.JobError(
                f"--weights {weights}: the checkpoint --model {model} carries its own weights; "
                "leave --weights out"
            )
        return
    if model not in list_presets():
        close = difflib.get_close_matches(model, list_presets(), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise _cli.JobError(
            f"--model {model}: unknown preset; {hint}known presets: {presets} "
            "(or pass a checkpoint file)"
        )
    preset = get_preset(model)
    try:
        preset.settings.with_overrides(**(overrides or {}))
    except ValueError as err:
        given = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in (overrides or {}).items())
        raise _cli.JobError(f"--model {model} {given}: {err}") from None
    if weights is None:
        return
    if _looks_like_path(weights):
        if not Path(weights).is_file():
            raise _cli.JobError(
                f"--weights {weights}: no such weights file; pass an open_clip state dict or a "
                "centerclip checkpoint"
            )
    elif preset.open_clip_model is None or (weights == "pretrained" and not preset.pretrained):
        raise _cli.JobError(
            f"--weights {weights}: preset {model} has no pretrained weights; leave --weights out "
            "(random initialisation) or pass a weights file"
        )


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The model the flags name, checked first (:func:`check_model`)."""
    overrides = {
        name: getattr(args, name)
        for name in ("frames", "cluster_block", "segments", "centers", "method", "distance")
        if getattr(args, name) is not None
    }
    check_model(args.model, args.weights, overrides)
    from pipelines.decode import DEFAULT_DECODER, SAMPLING_UNIFORM
    from pipelines.encode import ModelSpec
    from pipelines.model_files import ModelFileError, local_model_file
    from pipelines.storage import StorageOptions

    storage = StorageOptions.from_env()
    try:
        # Fetched here first: a missing object is one line before any work, and the driver's
        # copy serves the processes on this machine.
        local_model_file(args.model, storage)
    except ModelFileError as err:
        raise _cli.JobError(str(err)) from err
    return ModelSpec(
        args.model,
        args.weights,
        overrides,
        sampling=getattr(args, "sampling", SAMPLING_UNIFORM),
        decoder=getattr(args, "decoder", DEFAULT_DECODER),
        storage=storage,
    )


def warn_if_random_weights(model_id: str) -> None:
    """Say so whenever the model is a preset's random initialisation: its embeddings and search
    hits look plausible but mean nothing."""
    from centerclip import has_random_weights

    if has_random_weights(model_id):
        _console.warn(
            f"{model_id} has random weights (no --weights given): its embeddings mean nothing "
            "yet; pass --weights pretrained or a weights file, or a fine-tuned model.pt as --model"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.resources import DEFAULT_COMMIT_ROWS

    parser.add_argument(
        "--manifest",
        required=True,
        nargs="+",
        help="Parquet shards, or folders of them (local or s3://)",
    )
    parser.add_argument(
        "--db", required=True, type=_cli.database, help="LanceDB folder or URI (s3://...)"
    )
    parser.add_argument("--table", required=True, help="embeddings table name")
    parser.add_argument("--split", help="index only the manifest rows of this split")
    add_model_arguments(parser)
    add_decode_arguments(parser)
    resources = parser.add_argument_group("resources (default: decided from the cluster)")
    resources.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    resources.add_argument(
        "--actors",
        type=_cli.positive_int,
        help="encode actors (default: one per GPU; on CPU, one per CPU, at most 8)",
    )
    resources.add_argument(
        "--gpus-per-actor",
        type=_cli.non_negative_float,
        help="GPUs per encode actor; 0 forces CPU encoding (default: 1 where there are GPUs)",
    )
    resources.add_argument(
        "--batch-size",
        type=_cli.positive_int,
        help="videos per encode batch (default: 32 on GPU, 8 on CPU)",
    )
    resources.add_argument("--decode-workers", type=_cli.positive_int, help="decode actors")
    resources.add_argument(
        "--decode-timeout", type=_cli.positive_float, default=60.0, help="seconds per video"
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--commit-rows",
        type=_cli.positive_int,
        default=DEFAULT_COMMIT_ROWS,
        help="rows per LanceDB commit (a commit also happens every 30 s)",
    )
    run.add_argument("--rebuild", action="store_true", help="re-encode every video")
    run.add_argument(
        "--retry-errors", action="store_true", help="retry failed videos even if unchanged"
    )
    run.add_argument(
        "--keep-deleted", action="store_true", help="keep rows of videos gone from the manifest"
    )
    run.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    run.add_argument(
        "--max-error-rate",
        type=_cli.fraction,
        default=1.0,
        help="fail the job when more than this fraction of videos fail (default 1: never)",
    )
    run.add_argument(
        "--index-min-rows",
        type=_cli.non_negative_int,
        default=5000,
        help="build the IVF_PQ index once the table has this many rows",
    )
    run.add_argument(
        "--keep-versions-days",
        type=_cli.days,
        default=None,
        help="delete table versions older than this many days after the run (default: keep all)",
    )


def run(args: argparse.Namespace) -> int:
    from centerclip import WeightsUnavailableError
    from pipelines.bottleneck import Bottleneck
    from pipelines.index import ErrorRateExceeded, IndexConfig, run_index
    from pipelines.lease import LeaseLostError, WriterBusyError
    from pipelines.manifest import ManifestError
    from pipelines.plan import IndexPlan
    from pipelines.resources import ResourceRequest

    _cli.check_manifest_exists(args.manifest)
    config = IndexConfig(
        manifest=args.manifest,
        db=args.db,
        table=args.table,
        split=args.split,
        model=model_spec(args),
        resources=ResourceRequest(
            encode_actors=args.actors,
            gpus_per_actor=args.gpus_per_actor,
            decode_workers=args.decode_workers,
            batch_size=args.batch_size,
        ),
        address=args.address,
        decode_timeout_s=args.decode_timeout,
        commit_rows=args.commit_rows,
        rebuild=args.rebuild,
        retry_errors=args.retry_errors,
        keep_deleted=args.keep_deleted,
        dry_run=args.dry_run,
        max_error_rate=args.max_error_rate,
        index_min_rows=args.index_min_rows,
        cleanup_older_than=(
            timedelta(days=args.keep_versions_days) if args.keep_versions_days is not None else None
        ),
    )
    progress = _console.ProgressOnDemand("indexing")

    def show_plan(plan: IndexPlan, model_id: str) -> None:
        _console.say(f"plan: {plan.describe()}")
        warn_if_random_weights(model_id)

    def show_progress(done: int, failed: int, planned: int) -> None:
        progress.update(done, planned, failed=failed)

    def show_bottleneck(found: Bottleneck) -> None:
        progress.say_above(f"so far: {found.describe()}")

    try:
        summary = run_index(
            config, on_plan=show_plan, on_progress=show_progress, on_bottleneck=show_bottleneck
        )
    except (ManifestError, ValueError, FileNotFoundError, WriterBusyError, LeaseLostError) as err:
        raise _cli.JobError(str(err)) from err
    except WeightsUnavailableError as err:
        raise _cli.JobError(f"--weights {args.weights}: {err}") from err
    except ErrorRateExceeded as err:
        _console.current().error(str(err))
        return 3
    finally:
        progress.close()
    if not args.dry_run:
        _console.say(summary.format())
    elif summary.active_writer:
        _console.warn(f"another index job is writing {args.table} now ({summary.active_writer})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return _cli.main(__name__, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
