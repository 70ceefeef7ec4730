"""What a fine-tuning run is given: the job's settings, and what every training worker needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from centerclip.train import TrainConfig
from pipelines.encode import ModelSpec
from pipelines.storage import StorageOptions


@dataclass(frozen=True)
class FinetuneConfig:
    """One run of the fine-tuning job.

    ``train`` holds the hyperparameters (a resumed run must keep them); the rest says where the
    data is, where results go and how the run uses the cluster.
    """

    manifest: str | Sequence[str]
    out: str
    model: ModelSpec
    train: TrainConfig = field(default_factory=TrainConfig)
    train_split: str = "train"
    val_split: str | None = "test"
    val_max_videos: int = 1000  # validation frames stay in memory on worker 0
    workers: int | None = None  # default: one per GPU, one on a CPU cluster
    use_gpus: bool | None = None  # default: where the cluster has GPUs
    torch_threads: int | None = None
    decode_workers: int | None = None
    decode_timeout_s: float = 60.0
    checkpoint_every_steps: int | None = None  # besides the end of every epoch
    keep_checkpoints: int = 2
    stop_after_epoch: int | None = None  # end this run there; the same command continues it
    max_failures: int = 0  # worker-group restarts (from the last checkpoint) within the run
    address: str | None = None
    # Read in the driver, handed to every decode actor (see pipelines/storage.py).
    storage: StorageOptions = field(default_factory=StorageOptions.from_env)

    def __post_init__(self) -> None:
        if self.stop_after_epoch is not None and self.stop_after_epoch < 1:
            raise ValueError(f"stop_after_epoch must be at least 1, got {self.stop_after_epoch}")
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps < 1:
            raise ValueError("checkpoint_every_steps must be positive")
        if self.keep_checkpoints < 1 or self.val_max_videos < 1:
            raise ValueError("keep_checkpoints and val_max_videos must be positive")


@dataclass(frozen=True)
class WorkerSetup:
    """What every training worker needs, shipped through ``train_loop_config``."""

    model: ModelSpec
    train: TrainConfig
    identity: dict
    pretrained: bool
    steps_per_epoch: int
    total_steps: int
    stop_step: int
    local_batch: int
    checkpoint_every_steps: int | None
    torch_threads: int
    validate: bool
    progress: Any | None = None
    """A ``ray.util.queue.Queue`` to which worker 0 puts ``(step, loss)`` after every step, for
    the driver's progress report; None for no report."""
