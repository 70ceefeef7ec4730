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

The package, one concern a module: :mod:`~pipelines.finetune.config` (the settings),
:mod:`~pipelines.finetune.data` (splits, the schedule, the decode pipelines),
:mod:`~pipelines.finetune.worker` (the Ray Train loop), :mod:`~pipelines.finetune.checkpoints`
(what a checkpoint holds, writing one, resuming), :mod:`~pipelines.finetune.history` (per-epoch
records and curves), :mod:`~pipelines.finetune.run` (the run, driver side).
"""

from pipelines.finetune.checkpoints import MODEL_FILE, RUN_NAME, STATE_FILE
from pipelines.finetune.config import FinetuneConfig
from pipelines.finetune.data import captioned_split, training_schedule
from pipelines.finetune.history import training_curves_figure, write_history
from pipelines.finetune.run import run_finetune

__all__ = [
    "MODEL_FILE",
    "RUN_NAME",
    "STATE_FILE",
    "FinetuneConfig",
    "captioned_split",
    "run_finetune",
    "training_curves_figure",
    "training_schedule",
    "write_history",
]
