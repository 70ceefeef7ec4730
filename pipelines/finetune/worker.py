"""The training loop of one Ray Train worker. Ray Train pickles :func:`train_worker` (and its
:class:`~pipelines.finetune.config.WorkerSetup`) by reference: every worker imports this module."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from centerclip.train import (
    autocast_dtype,
    build_optimizer,
    training_step,
    validation_metrics,
)
from pipelines import schema
from pipelines.finetune.checkpoints import (
    MODEL_FILE,
    STATE_FILE,
    checkpoint_folder,
    load_torch_state,
    report_checkpoint,
)
from pipelines.finetune.config import WorkerSetup
from pipelines.finetune.history import format_epoch

log = logging.getLogger(__name__)

LOG_EVERY_STEPS = 10


def train_worker(loop_config: dict) -> None:
    """The training loop of one Ray Train worker, top to bottom."""
    import ray.train
    import ray.train.torch

    setup: WorkerSetup = loop_config["setup"]
    config = setup.train
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(setup.torch_threads)
    device = ray.train.torch.get_device()

    # Every worker builds the same model (the factory seeds its random initialisation).
    model = setup.model.build(device).train()
    pretrained = {name for name, _ in model.named_parameters()} if setup.pretrained else set()
    optimizer, scheduler = build_optimizer(
        model, config, total_steps=setup.total_steps, pretrained=pretrained
    )
    dtype = autocast_dtype(config.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    # The progress of the run, saved with every checkpoint: the step, the per-epoch records, and
    # the running epoch's step losses and decode failures (a checkpoint may fall mid-epoch).
    progress = {"step": 0, "history": [], "losses": [], "failures": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint_folder(checkpoint) as folder:
            model.clip.load_state_dict(load_torch_state(folder / MODEL_FILE)["state_dict"])
            state = load_torch_state(folder / STATE_FILE)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        progress = state["progress"]
    ddp_model = ray.train.torch.prepare_model(model)  # DDP when there are several workers

    val = None
    if setup.validate and rank == 0:
        val = _read_validation_set(ray.train.get_dataset_shard("val"))
        if progress["step"] == 0:  # the base model's figures, for the curve's first point
            record = {"epoch": 0, "step": 0, "val": validation_metrics(model, *val, dtype=dtype)}
            progress["history"].append(record)
            log.info(format_epoch(record))

    epoch_started = time.perf_counter()
    batches = ray.train.get_dataset_shard("train").iter_batches(
        batch_size=setup.local_batch, batch_format="numpy", prefetch_batches=2
    )
    for batch in batches:
        step = _step_of(batch)
        if step < progress["step"]:  # a restarted worker group replays the stream from its start
            continue
        if step != progress["step"]:
            raise RuntimeError(
                f"data stream out of order: expected step {progress['step']}, got {step}"
            )
        result = training_step(
            ddp_model,
            model.preprocess(torch.from_numpy(batch[schema.FRAMES].copy())),  # writable
            model.tokenize([str(c) for c in batch[schema.TRAIN_CAPTION]]),
            torch.as_tensor(batch[schema.ERROR] == "", device=device),
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            dtype=dtype,
            grad_clip=config.grad_clip,
            max_logit_scale=config.max_logit_scale,
        )
        step = progress["step"] = step + 1
        progress["losses"].append(result.loss)
        if rank == 0 and setup.progress is not None:
            setup.progress.put_nowait((step, result.loss))
        progress["failures"] += config.batch_size - result.pairs
        if rank == 0 and step % LOG_EVERY_STEPS == 0:
            log.info(
                "step %d loss %.4f lr %.3g scale %.1f",
                step,
                result.loss,
                result.lr,
                result.logit_scale,
            )

        end_of_epoch = step % setup.steps_per_epoch == 0
        every = setup.checkpoint_every_steps
        if not (end_of_epoch or (every and step % every == 0)):
            continue
        if end_of_epoch:
            record = {
                "epoch": step // setup.steps_per_epoch,
                "step": step,
                "loss": float(np.mean(progress["losses"])),
                "lr": result.lr,
                "logit_scale": result.logit_scale,
                "decode_failures": progress["failures"],
                "seconds": time.perf_counter() - epoch_started,
            }
            if val is not None:
                record["val"] = validation_metrics(model, *val, dtype=dtype)
            progress["history"].append(record)
            progress["losses"], progress["failures"] = [], 0
            if rank == 0:
                log.info(format_epoch(record))
            epoch_started = time.perf_counter()
        report_checkpoint(
            rank,
            setup,
            model,
            progress=progress,
            state={
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
            },
        )
    if progress["step"] != setup.stop_step:
        raise RuntimeError(
            f"the data stream ended at step {progress['step']}, expected {setup.stop_step}"
        )


def _step_of(batch: dict[str, np.ndarray]) -> int:
    steps = batch[schema.STEP]
    if steps.min() != steps.max():
        raise RuntimeError(f"a batch mixes rows of steps {steps.min()} to {steps.max()}")
    return int(steps[0])


def _read_validation_set(shard: Any) -> tuple[np.ndarray, list[list[str]]]:
    """Decode the validation videos once: ``([V, T, H, W, 3]`` uint8, captions per video)."""
    frames, captions = [], []
    for batch in shard.iter_batches(batch_size=None, batch_format="numpy"):
        good = batch[schema.ERROR] == ""
        frames.append(batch[schema.FRAMES][good])
        captions += [list(own) for own in batch[schema.CAPTION][good]]
    log.info("validation set: %d videos, %d captions", len(captions), sum(map(len, captions)))
    return np.concatenate(frames), captions
