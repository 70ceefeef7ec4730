"""Fine-tuning: the pure-torch pieces, the schedule, and real 2-worker Ray Train runs on CPU."""

from __future__ import annotations

import itertools
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import torch
from seaweed import SeaweedServer

import centerclip
from centerclip.loss import symmetric_infonce
from centerclip.train import (
    TrainConfig,
    apply_gradients,
    build_optimizer,
    param_groups,
    validation_metrics,
    warmup_cosine,
)
from jobs import cli
from pipelines import schema
from pipelines.decode import SAMPLING_RANDOM, SAMPLING_UNIFORM, DecodeStage
from pipelines.encode import ModelSpec
from pipelines.finetune import (
    MODEL_FILE,
    RUN_NAME,
    FinetuneConfig,
    captioned_split,
    run_finetune,
    training_schedule,
)
from pipelines.finetune.run import FinetuneSummary, ray_train_settings
from pipelines.manifest import read_manifest
from pipelines.storage import StorageOptions

# A few steps on the session's 16-video corpus (13 train videos: 3 steps of 4 per epoch), two
# workers of one torch thread each.
TRAIN = TrainConfig(epochs=3, batch_size=4, lr=1e-3, warmup_fraction=0.2, seed=3)
WORKERS = 2


def _rows(count: int, captions_per_video: int = 2) -> pa.Table:
    return pa.table(
        {
            schema.VIDEO_ID: [f"v{i}" for i in range(count)],
            schema.URI: [f"/videos/v{i}.mp4" for i in range(count)],
            schema.CAPTION: [
                [f"caption {c} of v{i}" for c in range(captions_per_video)] for i in range(count)
            ],
        }
    )


# --------------------------------------------------------------------------------------------
# Pure pieces


def test_warmup_then_cosine():
    factors = [warmup_cosine(s, warmup_steps=4, total_steps=20) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0
    assert factors[12] == pytest.approx(0.5)
    assert all(a >= b for a, b in itertools.pairwise(factors[4:]))
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 16)))


def test_param_groups_split_pretrained_new_and_decay():
    model = centerclip.create_model("tiny")
    names = dict(model.named_parameters())
    token_embedding = "clip.token_embedding.weight"
    pretrained = {name for name in names if name.startswith("clip.visual.")}
    groups = param_groups(
        model, lr=1e-3, pretrained_lr=1e-6, weight_decay=0.2, pretrained=pretrained
    )

    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"pretrained", "pretrained, no decay", "new", "new, no decay"}
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each exactly once

    def group_of(name: str) -> dict:
        return next(g for g in groups if any(p is names[name] for p in g["params"]))

    assert group_of("clip.visual.conv1.weight")["lr"] == 1e-6
    assert group_of("clip.visual.conv1.weight")["weight_decay"] == 0.2
    for no_decay in (
        "clip.logit_scale",
        token_embedding,
        "clip.positional_embedding",
        "clip.visual.class_embedding",
        "clip.ln_final.weight",
        "clip.transformer.resblocks.0.mlp.c_fc.bias",
    ):
        assert group_of(no_decay)["weight_decay"] == 0.0, no_decay
    assert group_of(token_embedding)["lr"] == 1e-3
    assert group_of("clip.text_projection")["weight_decay"] == 0.2


def test_schedule_is_a_seeded_permutation_per_epoch():
    rows = _rows(10)
    config = TrainConfig(epochs=3, batch_size=4, seed=5)
    schedule = training_schedule(rows, config, start_step=0, stop_step=6)
    assert schedule.num_rows == 6 * 4  # 2 whole batches per epoch, 2 videos wait each epoch
    steps = schedule[schema.STEP].to_numpy()
    assert (steps == np.repeat(np.arange(6), 4)).all()
    ids = schedule[schema.VIDEO_ID].to_pylist()
    for epoch in range(3):
        chunk = ids[epoch * 8 : (epoch + 1) * 8]
        assert len(set(chunk)) == 8  # no video twice within an epoch
    assert ids[:8] != ids[8:16]  # a fresh order every epoch
    for video, caption in zip(ids, schedule[schema.TRAIN_CAPTION].to_pylist(), strict=True):
        assert caption.endswith(f"of {video}")
    assert len(set(schedule[schema.SAMPLE_SEED].to_pylist())) == schedule.num_rows

    assert training_schedule(rows, config, start_step=0, stop_step=6).equals(schedule)
    other_seed = training_schedule(
        rows, TrainConfig(epochs=3, batch_size=4, seed=6), start_step=0, stop_step=6
    )
    assert other_seed[schema.VIDEO_ID].to_pylist() != ids


def test_resumed_schedule_is_the_tail_of_the_full_one():
    rows = _rows(10)
    config = TrainConfig(epochs=3, batch_size=4, seed=5)
    full = training_schedule(rows, config, start_step=0, stop_step=6)
    for start in (1, 2, 3, 5):
        tail = training_schedule(rows, config, start_step=start, stop_step=6)
        assert tail.equals(full.slice(start * 4))
    assert training_schedule(rows, config, start_step=2, stop_step=4).equals(full.slice(8, 8))


def test_captioned_split_drops_videos_without_captions():
    manifest = pa.table(
        {
            schema.VIDEO_ID: ["a", "b", "c", "d"],
            schema.URI: ["a.mp4", "b.mp4", "c.mp4", "d.mp4"],
            schema.CAPTION: [["one", " "], [], None, [""]],
            schema.SPLIT: ["train", "train", "train", "test"],
        }
    )
    rows = captioned_split(manifest, "train")
    assert rows[schema.VIDEO_ID].to_pylist() == ["a"]
    assert rows[schema.CAPTION].to_pylist() == [["one"]]


def test_cli_lists_finetune():
    assert cli.SUBCOMMANDS["finetune"] == "jobs.finetune"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["finetune", "--help"])
    assert exit_info.value.code == 0


# --------------------------------------------------------------------------------------------
# Ray Train runs


def _config(corpus: Path, out: str, **overrides) -> FinetuneConfig:
    settings = {
        "manifest": str(corpus / "manifest"),
        "out": str(out),
        "model": ModelSpec("tiny"),
        "train": TRAIN,
        "workers": WORKERS,
        "torch_threads": 1,
        "use_gpus": False,
        **overrides,
    }
    return FinetuneConfig(**settings)


@dataclass(frozen=True)
class InterruptedRun:
    out: str  # the s3:// prefix on SeaweedFS, or a local folder where `weed` is missing
    storage: StorageOptions
    fs: pafs.FileSystem  # holds the run's outputs at `root`
    root: str
    stopped: FinetuneSummary  # the first run, ended after epoch 1
    model_file_after_stop: bool
    summary: FinetuneSummary  # the second run, which finished the first one
    killed: dict[str, object]  # the worker SIGKILLed during the second run
    actor_classes: list[str]  # every actor this session ran by then, dead ones included


@pytest.fixture(scope="module")
def full_run(
    ray_session,
    seaweed_or_none: SeaweedServer | None,
    sample_corpus: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> InterruptedRun:
    """The run every test here reads, interrupted both ways a run resumes from its last
    checkpoint (each Ray Train run costs about half a minute here, so one run serves all):

    1. the job ends after epoch 1 (``stop_after_epoch``, as a killed job would) and the same
       command, run again, continues from the epoch-1 checkpoint;
    2. in that second run, a training worker is SIGKILLed once the epoch-2 checkpoint exists:
       Ray Train restarts the workers from it (``max_failures``), they skip the steps the data
       stream replays, and the run goes on.

    :func:`test_two_workers_train_checkpoint_and_reload` checks that the result is the
    uninterrupted run, replayed in one process, bit for bit.

    The run writes to ``--out s3://...`` on the session's SeaweedFS server, so both resumes read
    their checkpoint back from S3; where ``weed`` is missing it writes to a local folder.
    """
    from ray._private.state import actors  # this session's actor table, no dashboard needed

    if seaweed_or_none is None:
        warnings.warn(
            "no `weed` binary (bash scripts/setup.sh installs it): the fine-tuning run writes "
            "to a local folder, so --out s3:// goes untested",
            stacklevel=1,
        )
        local = tmp_path_factory.mktemp("finetune")
        out, storage, fs, root = str(local), StorageOptions(), pafs.LocalFileSystem(), str(local)
    else:
        fs = seaweed_or_none.filesystem()
        fs.create_dir("finetune")
        out, storage, root = "s3://finetune/run", seaweed_or_none.storage(), "finetune/run"
    stopped = run_finetune(_config(sample_corpus, out, storage=storage, stop_after_epoch=1))
    model_file_after_stop = _is_file(fs, f"{root}/{MODEL_FILE}")

    second = f"{root}/{RUN_NAME}/checkpoint-step{2 * stopped.steps_per_epoch:08d}"
    last = f"{root}/{RUN_NAME}/checkpoint-step{stopped.total_steps:08d}"
    killed: dict[str, object] = {}

    def kill_a_worker() -> None:
        deadline = time.monotonic() + 600
        while not _exists(fs, second) and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = [
            actor["Pid"]
            for actor in actors(actor_state_name="ALIVE").values()
            if actor["ActorClassName"] == "RayTrainWorker"
        ]
        killed["too_late"] = _exists(fs, last)
        killed["pid"] = workers[-1]
        os.kill(workers[-1], signal.SIGKILL)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    resumed = run_finetune(_config(sample_corpus, out, storage=storage, max_failures=1))
    killer.join(timeout=60)
    classes = [actor["ActorClassName"] for actor in actors().values()]
    return InterruptedRun(
        out, storage, fs, root, stopped, model_file_after_stop, resumed, killed, classes
    )


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _is_file(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File


def _decode(rows: pa.Table, **stage: object) -> dict[str, np.ndarray]:
    batch = {name: np.asarray(rows[name].to_pylist(), dtype=object) for name in rows.column_names}
    with DecodeStage(frames=8, image_size=64, **stage) as decode:
        return decode(batch)


def test_two_workers_train_checkpoint_and_reload(
    full_run: InterruptedRun, sample_corpus: Path, tmp_path: Path
):
    fs, root, summary = full_run.fs, full_run.root, full_run.summary
    steps_per_epoch = 13 // TRAIN.batch_size
    assert summary.step == summary.total_steps == TRAIN.epochs * steps_per_epoch
    assert "2 training worker(s)" in summary.resources

    # The loss goes down, and each epoch was validated (plus the base model before training).
    epochs = [r for r in summary.history if "loss" in r]
    assert [r["epoch"] for r in summary.history] == list(range(TRAIN.epochs + 1))
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert all("val" in r for r in summary.history)
    assert fs.get_file_info(f"{root}/curves.png").size > 0
    assert _is_file(fs, f"{root}/history.json")

    # A checkpoint per epoch went through Ray Train; the last two are kept.
    listed = fs.get_file_info(pafs.FileSelector(f"{root}/{RUN_NAME}"))
    kept = sorted(i.base_name for i in listed if i.base_name.startswith("checkpoint-step"))
    last_two = (TRAIN.epochs - 1, TRAIN.epochs)
    assert kept == [f"checkpoint-step{e * steps_per_epoch:08d}" for e in last_two]
    assert _is_file(fs, f"{root}/{RUN_NAME}/{kept[-1]}/{MODEL_FILE}")

    # The final file loads as a model of its own identity.
    local_model = tmp_path / MODEL_FILE
    pafs.copy_files(f"{root}/{MODEL_FILE}", str(local_model), source_filesystem=fs)
    trained = centerclip.create_model(str(local_model))
    assert trained.model_id == summary.model_id != summary.base_model_id
    assert trained.model_id.startswith("tiny@sha256:")
    assert summary.base_model_id == centerclip.create_model("tiny").model_id

    # Loading it gives the trainer's embeddings: the validation figures worker 0 computed with
    # its in-memory model after the last step, recomputed from the file.
    manifest = read_manifest(str(sample_corpus / "manifest"))
    test = captioned_split(manifest, "test")
    frames = _decode(test.select([schema.VIDEO_ID, schema.URI]), sampling=SAMPLING_UNIFORM)
    metrics = validation_metrics(trained, frames[schema.FRAMES], test[schema.CAPTION].to_pylist())
    assert metrics == summary.history[-1]["val"]
    assert float(trained.logit_scale.detach().exp()) == pytest.approx(
        epochs[-1]["logit_scale"], rel=1e-6
    )

    # And the distributed run, stopped, resumed and hit by a killed worker, is the uninterrupted
    # single-process run on the same global batches: replay the schedule in this process with
    # the same pieces and compare the weights. The replay does the workers' arithmetic, not
    # just their mathematics: AdamW turns rounding differences of near-zero gradients into whole
    # updates, so a replay that differs from the workers in thread count or reduction order
    # drifts (embeddings ~1e-4 apart after 12 steps, which failed this test's former
    # tolerance on a loaded machine).
    replay = centerclip.create_model("tiny").train()
    optimizer, scheduler = build_optimizer(
        replay, TRAIN, total_steps=summary.total_steps, pretrained=set()
    )
    schedule = training_schedule(
        captioned_split(manifest, "train"), TRAIN, start_step=0, stop_step=summary.total_steps
    )
    decoded = _decode(schedule, sampling=SAMPLING_RANDOM)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker (`torch_threads=1`): the same kernels
    try:
        for step in range(summary.total_steps):
            rows = slice(step * TRAIN.batch_size, (step + 1) * TRAIN.batch_size)
            _replay_step(replay, {name: column[rows] for name, column in decoded.items()})
            apply_gradients(
                replay,
                loss=math.nan,
                pairs=TRAIN.batch_size,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=torch.amp.GradScaler("cpu", enabled=False),
                grad_clip=TRAIN.grad_clip,
                max_logit_scale=TRAIN.max_logit_scale,
            )
    finally:
        torch.set_num_threads(threads)
    # Same arithmetic, so the same weights, bit for bit (not merely close).
    replayed = replay.state_dict()
    differing = [
        name
        for name, value in trained.state_dict().items()
        if not torch.equal(value, replayed[name])
    ]
    assert differing == []


def _replay_step(model: centerclip.VideoCLIP, batch: dict[str, np.ndarray]) -> None:
    """Leave in ``model``'s ``.grad`` what DDP leaves there after one step of ``WORKERS``
    workers on this global batch, computed as they compute it.

    Worker ``w`` runs the forward on rows ``w`` of the batch (block ``w`` of the step, as the
    stream hands them out), the global loss over every worker's rows in rank order, and a
    backward in which the gather hands its rows ``WORKERS`` times the loss's gradient (the
    all-reduce of identical gradients); DDP then averages the workers' parameter gradients.
    """
    local = TRAIN.batch_size // WORKERS
    shares = [slice(w * local, (w + 1) * local) for w in range(WORKERS)]
    outputs = [
        model(
            model.preprocess(torch.from_numpy(batch[schema.FRAMES][share].copy())),
            model.tokenize([str(c) for c in batch[schema.TRAIN_CAPTION][share]]),
        )
        for share in shares
    ]  # per worker: ([b, D] video, [b, D] text)
    video = torch.cat([v for v, _ in outputs])  # [N, D], rank order as the gather gives
    text = torch.cat([t for _, t in outputs])
    keep = torch.as_tensor(batch[schema.ERROR] == "")
    loss = symmetric_infonce(video[keep], text[keep], model.logit_scale)
    video_grad, text_grad, scale_grad = torch.autograd.grad(
        loss, [video, text, model.logit_scale], retain_graph=True
    )
    model.zero_grad(set_to_none=True)
    for (own_video, own_text), share in zip(outputs, shares, strict=True):
        torch.autograd.backward(
            [own_video, own_text], [WORKERS * video_grad[share], WORKERS * text_grad[share]]
        )  # accumulates the sum over workers
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.grad /= WORKERS
    # Every worker gets the same dL/dlogit_scale (it is not gathered); their average is it.
    model.logit_scale.grad = scale_grad


def test_a_stopped_run_resumes_and_a_killed_worker_is_replaced(full_run: InterruptedRun):
    stopped, resumed = full_run.stopped, full_run.summary
    per_epoch = stopped.steps_per_epoch
    assert not stopped.finished
    assert stopped.step == per_epoch
    assert full_run.model_file_after_stop  # the latest weights are usable meanwhile

    assert "pid" in full_run.killed and not full_run.killed["too_late"], full_run.killed
    assert resumed.resumed_from_step == per_epoch
    assert resumed.finished and resumed.step == resumed.total_steps
    # One record per epoch: none repeated by the resume or by the workers' restart.
    assert [r["epoch"] for r in resumed.history] == list(range(TRAIN.epochs + 1))


def test_ray_train_settings_apply_to_the_run_only_and_yield_to_the_users(
    full_run: InterruptedRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On this one-node cluster no run started a preemption watcher (three worker groups ran).
    assert full_run.actor_classes.count("RayTrainWorker") >= 3 * WORKERS
    assert "PreemptionWatcher" not in full_run.actor_classes
    for name in ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"):
        assert name not in os.environ  # set for the fit only
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")
    with ray_train_settings(nodes=2):
        assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"
        assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in os.environ  # several nodes: Ray's
    with ray_train_settings(nodes=1):
        assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in os.environ


def test_a_finished_run_is_not_trained_again(full_run: InterruptedRun, sample_corpus: Path):
    out, storage, summary = full_run.out, full_run.storage, full_run.summary
    again = run_finetune(_config(sample_corpus, out, storage=storage))
    assert again.resumed_from_step == summary.step
    assert again.model_id == summary.model_id
    # Other hyperparameters would not continue the same run: refused before any work.
    with pytest.raises(ValueError, match="other settings"):
        run_finetune(_config(sample_corpus, out, storage=storage, train=replace(TRAIN, lr=2e-3)))
