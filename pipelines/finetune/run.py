"""The fine-tuning run, driver side: see :mod:`pipelines.finetune`."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

import centerclip
from pipelines.finetune.checkpoints import (
    HISTORY_FILE,
    IDENTITY_FILE,
    MODEL_FILE,
    RUN_NAME,
    check_resumable,
    checkpoint_folder,
    latest_result,
    read_checkpoint_json,
    run_identity,
)
from pipelines.finetune.config import FinetuneConfig, WorkerSetup
from pipelines.finetune.data import (
    captioned_split,
    data_config,
    train_dataset,
    training_schedule,
    val_dataset,
    validation_rows,
)
from pipelines.finetune.history import format_epoch, progress_callback, write_history
from pipelines.finetune.worker import train_worker
from pipelines.manifest import read_manifest
from pipelines.resources import TrainingPlan, plan_training
from pipelines.storage import S3_SCHEME

log = logging.getLogger(__name__)


@dataclass
class FinetuneSummary:
    """What a run did, for the terminal and for tests."""

    model_path: Path | str  # a local path, or the s3:// URI of model.pt
    model_id: str
    base_model_id: str
    step: int
    total_steps: int
    steps_per_epoch: int
    resumed_from_step: int
    history: list[dict]
    resources: str = ""
    seconds: float = 0.0

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps

    def format(self) -> str:
        lines = [
            f"base model:   {self.base_model_id}",
            f"model:        {self.model_id}",
            f"written to:   {self.model_path}",
            f"steps:        {self.step} of {self.total_steps} ({self.steps_per_epoch} per epoch)"
            + (f", resumed at step {self.resumed_from_step}" if self.resumed_from_step else ""),
        ]
        if not self.finished:
            lines.append("              stopped early: run the same command again to continue")
        lines += [format_epoch(record) for record in self.history]
        lines.append(f"resources:    {self.resources}")
        lines.append(f"time:         {self.seconds:.1f} s")
        return "\n".join(lines)


class _StepReports:
    """Relays worker 0's ``(step, loss)`` from a Ray queue to ``on_progress`` in a thread."""

    def __init__(self, on_progress: StepCallback, total_steps: int) -> None:
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})
        self._on_progress = on_progress
        self._total_steps = total_steps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, daemon=True)

    def __enter__(self) -> _StepReports:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()
        self.queue.shutdown()

    def _relay(self) -> None:
        while not self._stop.wait(0.5):
            self._drain()

    def _drain(self) -> None:
        reports = self.queue.get_nowait_batch(self.queue.qsize())
        if reports:
            step, loss = reports[-1]
            self._on_progress(step, self._total_steps, loss)


def _fit(
    setup: WorkerSetup,
    datasets: dict,
    plan: TrainingPlan,
    config: FinetuneConfig,
    out: Path | str,
    filesystem: pafs.FileSystem | None,
) -> Any:
    """Run the workers (:func:`train_worker`) with Ray Train; returns its ``Result``."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"setup": setup},
        torch_config=TorchConfig(backend="nccl" if plan.use_gpus else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=plan.workers,
            use_gpu=plan.use_gpus,
            resources_per_worker={"CPU": plan.worker_cpus, **({"GPU": 1} if plan.use_gpus else {})},
        ),
        run_config=ray.train.RunConfig(
            name=RUN_NAME,
            storage_path=str(out),
            # Pickled with its endpoint and credentials, it reaches the workers, which write the
            # checkpoints: an endpoint set only in the driver's environment would not.
            storage_filesystem=filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            callbacks=[progress_callback(out, filesystem)],
        ),
        datasets=datasets,
        dataset_config=data_config(),
    )
    with ray_train_settings(nodes=sum(node["Alive"] for node in ray.nodes())):
        return trainer.fit()


# Ray Train's controller checks on its workers every 2 s by default, so the run's start, its end
# and each restart after a failure wait up to 2 s more than they need; at 0.5 s the checks cost
# nothing measurable (README, Fine-tuning: what the job sets).
_TRAIN_SETTINGS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
# A watcher actor per worker group that lets workers on a draining node checkpoint first: on a
# one-node cluster the run ends with the node anyway, so it only costs a process per start.
_ONE_NODE_SETTINGS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


@contextlib.contextmanager
def ray_train_settings(*, nodes: int) -> Iterator[None]:
    """Ray Train's settings for one ``fit``, each only where the user's environment sets none.

    Ray Train reads them from the driver's environment and hands them to its controller and
    workers, so they are set in ``os.environ`` for the call and removed after it.
    """
    wanted = {**_TRAIN_SETTINGS, **(_ONE_NODE_SETTINGS if nodes == 1 else {})}
    added = [name for name in wanted if name not in os.environ]
    os.environ.update({name: wanted[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


StepCallback = Callable[[int, int, float | None], None]
"""``(steps done, steps of the run, the last step's loss or None)``."""


def run_finetune(
    config: FinetuneConfig, *, on_progress: StepCallback | None = None
) -> FinetuneSummary:
    """Fine-tune ``config.model`` on the manifest's training split; see :mod:`pipelines.finetune`.

    ``on_progress`` is called from a thread of this process once before training (with the step
    a resumed run starts from) and after every step.
    """
    import ray

    started = time.perf_counter()
    out: Path | str
    filesystem: pafs.FileSystem | None = None
    if config.out.startswith(S3_SCHEME):
        filesystem, out = config.storage.filesystem(config.out)
        try:
            filesystem.create_dir(out)
        except OSError as err:
            raise ValueError(
                f"cannot write to {config.out} ({err}); check that the bucket exists and the "
                "AWS_* settings (endpoint, credentials)"
            ) from err
    else:
        out = Path(config.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
    train_config = config.train
    base = config.model.build("cpu")
    manifest = read_manifest(config.manifest, storage=config.storage)
    train_rows = captioned_split(manifest, config.train_split)
    batch = train_config.batch_size
    steps_per_epoch = train_rows.num_rows // batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"the '{config.train_split}' split has {train_rows.num_rows} captioned videos, fewer "
            f"than one batch of {batch}"
        )
    total_steps = steps_per_epoch * train_config.epochs
    stop_step = min(total_steps, (config.stop_after_epoch or train_config.epochs) * steps_per_epoch)

    run_dir = f"{out}/{RUN_NAME}" if filesystem is not None else out / RUN_NAME
    identity = run_identity(train_config, base.model_id, train_rows.num_rows)
    result = latest_result(run_dir, filesystem)
    start_step = 0
    if result is not None:
        check_resumable(read_checkpoint_json(result.checkpoint, IDENTITY_FILE), identity, run_dir)
        start_step = int(result.metrics["step"])
        log.info("resuming %s at step %d of %d", run_dir, start_step, total_steps)

    if not ray.is_initialized():
        # As the index job: no --address and no RAY_ADDRESS is an embedded local Ray, never a
        # stale or unrelated `ray start` cluster that happens to run on this machine.
        ray.init(address=config.address or os.environ.get("RAY_ADDRESS") or "local")
    cluster = ray.cluster_resources()
    plan = plan_training(
        workers=config.workers,
        use_gpus=config.use_gpus,
        decode_workers=config.decode_workers,
        torch_threads=config.torch_threads,
        cluster_cpus=cluster.get("CPU", 0.0),
        cluster_gpus=cluster.get("GPU", 0.0),
    )
    if batch % plan.workers:
        raise ValueError(f"batch size {batch} does not split evenly over {plan.workers} workers")
    log.info("resources: %s", plan.describe())

    if start_step < stop_step:
        schedule = training_schedule(
            train_rows, train_config, start_step=start_step, stop_step=stop_step
        )
        val_rows = validation_rows(manifest, config)
        setup = WorkerSetup(
            model=config.model,
            train=train_config,
            identity=identity,
            pretrained=not centerclip.has_random_weights(base.model_id),
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            stop_step=stop_step,
            local_batch=batch // plan.workers,
            checkpoint_every_steps=config.checkpoint_every_steps,
            torch_threads=plan.torch_threads,
            validate=val_rows is not None,
        )
        datasets = {"train": train_dataset(schedule, setup, base, plan, config)}
        if val_rows is not None:
            datasets["val"] = val_dataset(val_rows, base, plan, config)
        if on_progress is None:
            result = _fit(setup, datasets, plan, config, out, filesystem)
        else:
            on_progress(start_step, total_steps, None)
            with _StepReports(on_progress, total_steps) as reports:
                result = _fit(
                    replace(setup, progress=reports.queue), datasets, plan, config, out, filesystem
                )
    else:
        log.info("%s already trained %d of %d steps", run_dir, start_step, total_steps)

    # The latest checkpoint's weights become OUT/model.pt, the file the other jobs take.
    model_path: Path | str
    if filesystem is None:
        model_path = out / MODEL_FILE
        with checkpoint_folder(result.checkpoint) as folder:
            partial = model_path.with_suffix(".tmp")
            shutil.copyfile(folder / MODEL_FILE, partial)
            partial.replace(model_path)
        trained = centerclip.create_model(str(model_path))
    else:
        model_path = f"{config.out.rstrip('/')}/{MODEL_FILE}"
        with checkpoint_folder(result.checkpoint) as folder:
            # An S3 object appears whole when its upload completes: no partial file to rename.
            with filesystem.open_output_stream(f"{out}/{MODEL_FILE}") as file:
                file.write((folder / MODEL_FILE).read_bytes())
            trained = centerclip.create_model(str(folder / MODEL_FILE))
    history = read_checkpoint_json(result.checkpoint, HISTORY_FILE)
    write_history(out, history, filesystem)
    return FinetuneSummary(
        model_path=model_path,
        model_id=trained.model_id,
        base_model_id=base.model_id,
        step=int(result.metrics["step"]),
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        resumed_from_step=start_step,
        history=history,
        resources=plan.describe(),
        seconds=time.perf_counter() - started,
    )
