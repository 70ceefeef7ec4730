"""The fine-tuning job on Ray Train: a captioned manifest in, a CenterCLIP checkpoint out.

::

    driver                                        Ray
    ------                                        ---
    read_manifest, train / val splits
    latest checkpoint of OUT/train (resume)
    training_schedule: every (step, video,
      caption, frame seed) still to train on
                                                  from_arrow(schedule, one block per local batch)
                                                  map_batches(DecodeStage, random)   CPU actors
                                                  streaming_split -> N TorchTrainer workers
                                                    DDP (gloo on CPU, NCCL on GPU), global
                                                    InfoNCE, AdamW, report + checkpoint every
                                                    epoch / N steps; rank 0 validates
    OUT/model.pt (save_checkpoint), history.json, curves.png

Determinism. The driver writes the whole data order down in advance: epoch ``e`` shuffles the
training videos with a generator seeded by ``(seed, e)``, gives each a caption drawn from its
captions and a seed for its frame positions (TSN-style: one random frame in each of T equal
chunks, fresh every epoch). Rows are cut into blocks of one worker's batch, in step order, and
Ray Data keeps that order, so worker ``w`` gets block ``w`` of every step. A run is therefore
reproducible, and a resumed run (the schedule starts at the checkpoint's step) continues exactly
as the run that was not stopped would have.

Resume. Checkpoints (weights as a :func:`centerclip.save_checkpoint` file, optimiser, schedule,
step, history, hyperparameters) go to Ray Train's storage, ``OUT/train``. Running the job again
with the same ``--out`` finds the latest one (``ray.train.Result.from_path``) and continues from
it; within a run, ``max_failures`` lets Ray Train restart failed workers from it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

import centerclip
from centerclip import save_checkpoint
from centerclip.metrics import chance_recall_metrics
from centerclip.train import (
    TrainConfig,
    autocast_dtype,
    build_optimizer,
    training_step,
    validation_metrics,
)
from pipelines import schema
from pipelines.decode import SAMPLING_RANDOM, DecodeStage
from pipelines.encode import ModelSpec
from pipelines.manifest import read_manifest
from pipelines.resources import TrainingPlan, plan_training
from pipelines.storage import StorageOptions

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

RUN_NAME = "train"  # Ray Train's run folder under OUT: its checkpoints and run state
MODEL_FILE = "model.pt"  # in OUT and in every checkpoint: a centerclip checkpoint file
STATE_FILE = "train_state.pt"  # in every checkpoint: optimiser, schedule, step, history
HISTORY_FILE = "history.json"
IDENTITY_FILE = "run.json"  # in every checkpoint: what the run's weights depend on
CURVES_FILE = "curves.png"
VAL_BATCH_SIZE = 32
LOG_EVERY_STEPS = 10


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


@dataclass
class FinetuneSummary:
    """What a run did, for the terminal and for tests."""

    model_path: Path
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


def format_epoch(record: dict) -> str:
    """One line per epoch record: loss, temperature, validation recall."""
    parts = [f"epoch {record['epoch']:>3}", f"step {record['step']:>6}"]
    if "loss" in record:
        parts.append(f"loss {record['loss']:.4f}")
        parts.append(f"scale {record['logit_scale']:.1f}")
    if "val" in record:
        t2v, v2t = record["val"]["t2v"], record["val"]["v2t"]
        parts.append(
            f"val t2v R@1 {t2v['R@1']:.1f} R@5 {t2v['R@5']:.1f} R@10 {t2v['R@10']:.1f} "
            f"MdR {t2v['MdR']:g} | v2t R@1 {v2t['R@1']:.1f}"
        )
    if "seconds" in record:
        parts.append(f"{record['seconds']:.1f} s")
    return "  ".join(parts)


# --------------------------------------------------------------------------------------------
# Driver side: splits, schedule, resume point


def captioned_split(manifest: pa.Table, split: str) -> pa.Table:
    """The rows of ``split`` that have at least one non-empty caption; a video without a caption
    cannot be trained or validated on."""
    for column in (schema.SPLIT, schema.CAPTION):
        if column not in manifest.column_names:
            raise ValueError(f"the manifest has no '{column}' column; fine-tuning needs both")
    rows = manifest.filter(pc.equal(manifest[schema.SPLIT], split))
    captions = [
        [c for c in (own or []) if c and c.strip()] for own in rows[schema.CAPTION].to_pylist()
    ]
    keep = pa.array([bool(own) for own in captions])
    rows = rows.set_column(
        rows.column_names.index(schema.CAPTION),
        schema.CAPTION,
        pa.array(captions, pa.list_(pa.string())),
    )
    return rows.filter(keep)


def training_schedule(
    rows: pa.Table, config: TrainConfig, *, start_step: int, stop_step: int
) -> pa.Table:
    """Every training row from ``start_step`` to ``stop_step`` (exclusive), in stream order.

    Epoch ``e`` is a permutation of ``rows`` drawn from ``(config.seed, e)``, cut to whole
    global batches (the remainder waits for a later epoch's permutation). Each row gets one of
    its captions and a frame-sampling seed from the same generator.

    Args:
        rows: the training videos (``video_id``, ``uri``, ``caption``, optional clip bounds),
            at least one global batch of them.
    Returns:
        columns ``video_id``, ``uri``, [``start_s``, ``end_s``], ``step`` (int64),
        ``train_caption`` (string) and ``sample_seed`` (int64); ``batch_size`` rows per step.
    """
    batch = config.batch_size
    steps_per_epoch = rows.num_rows // batch
    carried = [
        c
        for c in (schema.VIDEO_ID, schema.URI, schema.START_S, schema.END_S)
        if c in rows.column_names
    ]
    captions = rows[schema.CAPTION].to_pylist()
    parts = []
    for epoch in range(start_step // steps_per_epoch, -(-stop_step // steps_per_epoch)):
        rng = np.random.default_rng([config.seed, epoch])
        order = rng.permutation(rows.num_rows)[: steps_per_epoch * batch]
        chosen = [captions[i][rng.integers(len(captions[i]))] for i in order]
        seeds = rng.integers(np.iinfo(np.int64).max, size=len(order), dtype=np.int64)
        steps = epoch * steps_per_epoch + np.arange(len(order)) // batch
        part = rows.select(carried).take(order)
        part = part.append_column(schema.STEP, pa.array(steps, pa.int64()))
        part = part.append_column(schema.TRAIN_CAPTION, pa.array(chosen, pa.string()))
        part = part.append_column(schema.SAMPLE_SEED, pa.array(seeds, pa.int64()))
        wanted = (steps >= start_step) & (steps < stop_step)
        parts.append(part.filter(pa.array(wanted)))
    return pa.concat_tables(parts)


def latest_result(run_dir: Path) -> Any | None:
    """Ray Train's ``Result`` of the run in ``run_dir`` (its latest checkpoint and the metrics
    reported with it), or ``None`` when there is no checkpoint to resume from."""
    from ray.train import Result

    if not run_dir.is_dir():
        return None
    try:
        result = Result.from_path(str(run_dir))
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


def _check_resumable(previous: dict, identity: dict, run_dir: Path) -> None:
    if previous != identity:
        raise ValueError(
            f"{run_dir} holds a run of other settings or data ({previous}) than this one "
            f"({identity}); use another --out, or the same settings to resume"
        )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


# --------------------------------------------------------------------------------------------
# Worker side


@dataclass(frozen=True)
class _WorkerSetup:
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


def _train_worker(loop_config: dict) -> None:
    """The training loop of one Ray Train worker, top to bottom."""
    import ray.train
    import ray.train.torch

    setup: _WorkerSetup = loop_config["setup"]
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
        with checkpoint.as_directory() as folder:
            model.clip.load_state_dict(_load(Path(folder) / MODEL_FILE)["state_dict"])
            state = _load(Path(folder) / STATE_FILE)
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
        _report(
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


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _read_validation_set(shard: Any) -> tuple[np.ndarray, list[list[str]]]:
    """Decode the validation videos once: ``([V, T, H, W, 3]`` uint8, captions per video)."""
    frames, captions = [], []
    for batch in shard.iter_batches(batch_size=None, batch_format="numpy"):
        good = batch[schema.ERROR] == ""
        frames.append(batch[schema.FRAMES][good])
        captions += [list(own) for own in batch[schema.CAPTION][good]]
    log.info("validation set: %d videos, %d captions", len(captions), sum(map(len, captions)))
    return np.concatenate(frames), captions


def _report(rank: int, setup: _WorkerSetup, model: Any, *, progress: dict, state: dict) -> None:
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


# --------------------------------------------------------------------------------------------
# History and curves


def read_checkpoint_json(checkpoint: Any, name: str) -> Any:
    """A JSON file saved with a Ray Train checkpoint (on any storage it uses): its per-epoch
    records (``HISTORY_FILE``) or the run's identity (``IDENTITY_FILE``)."""
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{name}") as file:
        return json.loads(file.read())


def training_curves_figure(history: list[dict]) -> Figure:
    """Per epoch: training loss, validation text-to-video recall against its chance level, the
    learning rate and CLIP's logit scale (1 / temperature).

    Args:
        history: the ``history.json`` records: ``epoch``, and ``loss``, ``lr`` (of the epoch's
            last step), ``logit_scale`` for trained epochs, ``val`` (as
            :func:`centerclip.metrics.retrieval_metrics`) for validated ones (epoch 0: the base
            model).

    Returns:
        A matplotlib ``Figure`` (not attached to pyplot) with 2 x 2 axes sharing integer epochs.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, MaxNLocator

    trained = [r for r in history if "loss" in r]
    validated = [r for r in history if "val" in r]
    figure = Figure(figsize=(11, 7), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2, sharex=True)
    (loss_axis, recall_axis), (lr_axis, scale_axis) = axes
    epochs = [r["epoch"] for r in trained]

    loss_axis.plot(epochs, [r["loss"] for r in trained], marker="o")
    loss_axis.set(ylabel="symmetric InfoNCE", title="training loss")

    colours = {"R@1": "C0", "R@5": "C1", "R@10": "C2"}
    for k, colour in colours.items():
        recall_axis.plot(
            [r["epoch"] for r in validated],
            [r["val"]["t2v"][k] for r in validated],
            marker="o",
            color=colour,
            label=f"t2v {k}",
        )
    latest = validated[-1]["val"] if validated else {}
    if "num_videos" in latest and "num_queries" in latest:
        # Validation is always the same videos, so one chance level holds for every epoch.
        chance = chance_recall_metrics(
            latest["num_videos"], np.ones(latest["num_queries"], np.int64)
        )
        for k, colour in colours.items():
            recall_axis.axhline(chance[k], color=colour, linestyle=":", linewidth=1.2)
        recall_axis.plot(
            [], [], color="0.35", linestyle=":", label=f"chance ({latest['num_videos']} videos)"
        )
    # Room above 100% so that markers at 100% are not cut by the frame.
    recall_axis.set_ylim(0, 105)
    recall_axis.yaxis.set_major_locator(FixedLocator(range(0, 101, 20)))
    recall_axis.set(ylabel="%", title="validation text-to-video recall")
    if validated:
        recall_axis.legend(loc="best", fontsize=9)

    lr_axis.plot(epochs, [r.get("lr", np.nan) for r in trained], marker="o")
    lr_axis.set_ylim(bottom=0)
    lr_axis.set(ylabel="learning rate", title="learning rate (the epoch's last step)")
    lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

    scale_axis.plot(epochs, [r["logit_scale"] for r in trained], marker="o")
    scale_axis.set(ylabel="exp(logit_scale)", title="logit scale (1 / temperature)")

    for axis in axes.flat:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(True, alpha=0.3)
    for axis in axes[1]:
        axis.set_xlabel("epoch")
    return figure


def write_history(out: Path, history: list[dict]) -> None:
    """``history.json`` and ``curves.png`` (:func:`training_curves_figure`)."""
    (out / HISTORY_FILE).write_text(json.dumps(history, indent=2) + "\n")
    training_curves_figure(history).savefig(out / CURVES_FILE, dpi=100)


def _progress_callback(out: Path) -> Any:
    from ray.train.v2.api.callback import UserCallback

    class ProgressWriter(UserCallback):
        """Keeps ``history.json`` and ``curves.png`` current after every report; runs in Ray
        Train's controller, which lives on the driver's node, so ``out`` is reachable."""

        def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
            if checkpoint is not None:
                write_history(out, read_checkpoint_json(checkpoint, HISTORY_FILE))

    return ProgressWriter()


# --------------------------------------------------------------------------------------------
# The run


def _validation_rows(manifest: pa.Table, config: FinetuneConfig) -> pa.Table | None:
    if config.val_split is None:
        return None
    rows = captioned_split(manifest, config.val_split)
    if rows.num_rows == 0:
        log.warning("no captioned videos in the '%s' split: no validation", config.val_split)
        return None
    return rows.slice(0, config.val_max_videos)


def _train_dataset(
    schedule: pa.Table, setup: _WorkerSetup, model: Any, plan: TrainingPlan, config: FinetuneConfig
) -> Any:
    """Schedule rows -> random-sampled frames, one block (and decode call) per local batch."""
    import ray

    size = setup.local_batch
    blocks = [schedule.slice(start, size) for start in range(0, schedule.num_rows, size)]
    return _quiet(ray.data.from_arrow(blocks)).map_batches(
        DecodeStage,
        fn_constructor_kwargs={
            "frames": model.config.frames,
            "image_size": model.image_size,
            "sampling": SAMPLING_RANDOM,
            "decoder": config.model.decoder,
            "timeout_s": config.decode_timeout_s,
            "storage": config.storage,
        },
        batch_size=size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.decode_workers),
        num_cpus=plan.decode_cpus,
    )


def _val_dataset(rows: pa.Table, model: Any, plan: TrainingPlan, config: FinetuneConfig) -> Any:
    """Validation rows -> frames sampled as indexing will (``config.model.sampling``)."""
    import ray

    carried = [schema.VIDEO_ID, schema.URI, schema.CAPTION, schema.START_S, schema.END_S]
    rows = rows.select([c for c in carried if c in rows.column_names])
    blocks = [
        rows.slice(start, VAL_BATCH_SIZE) for start in range(0, rows.num_rows, VAL_BATCH_SIZE)
    ]
    return _quiet(ray.data.from_arrow(blocks)).map_batches(
        DecodeStage,
        fn_constructor_kwargs={
            "frames": model.config.frames,
            "image_size": model.image_size,
            "sampling": config.model.sampling,
            "decoder": config.model.decoder,
            "timeout_s": config.decode_timeout_s,
            "storage": config.storage,
        },
        batch_size=VAL_BATCH_SIZE,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.decode_workers),
        num_cpus=plan.decode_cpus,
    )


def _quiet(dataset: Any) -> Any:
    """``dataset`` without Ray Data's progress bars: they are drawn from inside the training
    workers, interleave with the training log, and the loop logs its own progress."""
    dataset.context.enable_progress_bars = False
    return dataset


def _data_config() -> Any:
    """Split only the training data over the workers (worker 0 validates on all of ``val``), and
    keep the stream's order: it is what makes worker ``w`` get block ``w`` of every step."""
    from ray.train import DataConfig

    ordered = DataConfig.default_ingest_options()
    ordered.preserve_order = True
    return DataConfig(datasets_to_split=["train"], execution_options={"train": ordered})


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
    setup: _WorkerSetup, datasets: dict, plan: TrainingPlan, config: FinetuneConfig, out: Path
) -> Any:
    """Run the workers (:func:`_train_worker`) with Ray Train; returns its ``Result``."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        _train_worker,
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
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            callbacks=[_progress_callback(out)],
        ),
        datasets=datasets,
        dataset_config=_data_config(),
    )
    return trainer.fit()


StepCallback = Callable[[int, int, float | None], None]
"""``(steps done, steps of the run, the last step's loss or None)``."""


def run_finetune(
    config: FinetuneConfig, *, on_progress: StepCallback | None = None
) -> FinetuneSummary:
    """Fine-tune ``config.model`` on the manifest's training split; see the module docstring.

    ``on_progress`` is called from a thread of this process once before training (with the step
    a resumed run starts from) and after every step.
    """
    import ray

    started = time.perf_counter()
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

    run_dir = out / RUN_NAME
    identity = run_identity(train_config, base.model_id, train_rows.num_rows)
    result = latest_result(run_dir)
    start_step = 0
    if result is not None:
        _check_resumable(read_checkpoint_json(result.checkpoint, IDENTITY_FILE), identity, run_dir)
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
        val_rows = _validation_rows(manifest, config)
        setup = _WorkerSetup(
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
        datasets = {"train": _train_dataset(schedule, setup, base, plan, config)}
        if val_rows is not None:
            datasets["val"] = _val_dataset(val_rows, base, plan, config)
        if on_progress is None:
            result = _fit(setup, datasets, plan, config, out)
        else:
            on_progress(start_step, total_steps, None)
            with _StepReports(on_progress, total_steps) as reports:
                result = _fit(replace(setup, progress=reports.queue), datasets, plan, config, out)
    else:
        log.info("%s already trained %d of %d steps", run_dir, start_step, total_steps)

    # The latest checkpoint's weights become OUT/model.pt, the file the other jobs take.
    model_path = out / MODEL_FILE
    with result.checkpoint.as_directory() as folder:
        partial = model_path.with_suffix(".tmp")
        shutil.copyfile(Path(folder) / MODEL_FILE, partial)
        partial.replace(model_path)
    history = read_checkpoint_json(result.checkpoint, HISTORY_FILE)
    write_history(out, history)
    trained = centerclip.create_model(str(model_path))
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
