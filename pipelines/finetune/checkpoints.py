"""Checkpoints: what each holds (weights, optimiser state, history, the run's identity), how a
worker reports one, and how a run finds the latest to resume from."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from centerclip import save_checkpoint
from centerclip.train import TrainConfig
from pipelines.finetune.config import WorkerSetup

log = logging.getLogger(__name__)

RUN_NAME = "train"  # Ray Train's run folder under OUT: its checkpoints and run state
MODEL_FILE = "model.pt"  # in OUT and in every checkpoint: a centerclip checkpoint file
STATE_FILE = "train_state.pt"  # in every checkpoint: optimiser, schedule, step, history
HISTORY_FILE = "history.json"
IDENTITY_FILE = "run.json"  # in every checkpoint: what the run's weights depend on


def latest_result(run_dir: Path | str, filesystem: pafs.FileSystem | None = None) -> Any | None:
    """Ray Train's ``Result`` of the run in ``run_dir`` (its latest checkpoint and the metrics
    reported with it), or ``None`` when there is no checkpoint to resume from.

    ``filesystem`` holds ``run_dir`` (an ``s3://`` run: its path in the bucket); ``None`` is the
    local filesystem."""
    from ray.train import Result

    if filesystem is None:
        if not Path(run_dir).is_dir():
            return None
    elif filesystem.get_file_info(str(run_dir)).type != pafs.FileType.Directory:
        return None
    try:
        result = Result.from_path(str(run_dir), storage_filesystem=filesystem)
    except RuntimeError as err:  # the run folder holds no run state yet: nothing to resume
        log.info("no checkpoint to resume in %s (%s)", run_dir, err)
        return None
    return result if result.checkpoint is not None else None


def run_identity(config: TrainConfig, base_model_id: str, train_videos: int) -> dict:
    """What a run's weights depend on besides the data's content: a run resumes only if its
    identity is unchanged (the schedule and the learning rates would otherwise not continue)."""
    return _jsonable(
        {
            "train_config": asdict(config),
            "base_model_id": base_model_id,
            "train_videos": train_videos,
        }
    )


def check_resumable(previous: dict, identity: dict, run_dir: Path) -> None:
    if previous != identity:
        raise ValueError(
            f"{run_dir} holds a run of other settings or data ({previous}) than this one "
            f"({identity}); use another --out, or the same settings to resume"
        )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def load_torch_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def report_checkpoint(
    rank: int, setup: WorkerSetup, model: Any, *, progress: dict, state: dict
) -> None:
    """Report metrics and a checkpoint (written by rank 0) to Ray Train; every worker calls it,
    and Ray Train keeps rank 0's metrics."""
    import ray.train

    step = progress["step"]
    history = progress["history"]
    # Small, since Ray Train logs and keeps them: the history travels in the checkpoint.
    metrics = {"step": step, "epoch": step / setup.steps_per_epoch}
    if history and "val" in history[-1]:
        metrics["val_t2v_R@1"] = history[-1]["val"]["t2v"]["R@1"]
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            save_checkpoint(
                model,
                Path(folder) / MODEL_FILE,
                step=step,
                epoch=metrics["epoch"],
                base_model_id=setup.identity["base_model_id"],
                train_config=setup.identity["train_config"],
                val=history[-1].get("val", {}) if history else {},
            )
            torch.save({"progress": progress, **state}, Path(folder) / STATE_FILE)
            (Path(folder) / HISTORY_FILE).write_text(json.dumps(history, indent=2) + "\n")
            (Path(folder) / IDENTITY_FILE).write_text(json.dumps(setup.identity) + "\n")
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(
            metrics, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint-step{step:08d}"
        )


@contextlib.contextmanager
def checkpoint_folder(checkpoint: Any) -> Iterator[Path]:
    """A local folder holding the files of a Ray Train checkpoint, to read while in the context.

    Not ``Checkpoint.as_directory``: for a checkpoint on S3, the processes of a node share its
    download folder, and one that arrives after another's download has ended downloads again
    into it, rewriting the files the other is reading (a worker then reads a corrupt state
    file). Here each caller downloads into a folder of its own.
    """
    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        yield Path(checkpoint.path)
        return
    with tempfile.TemporaryDirectory(prefix="centerclip-checkpoint-") as folder:
        checkpoint.to_directory(folder)
        yield Path(folder)


def read_checkpoint_json(checkpoint: Any, name: str) -> Any:
    """A JSON file saved with a Ray Train checkpoint (on any storage it uses): its per-epoch
    records (``HISTORY_FILE``) or the run's identity (``IDENTITY_FILE``)."""
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{name}") as file:
        return json.loads(file.read())
