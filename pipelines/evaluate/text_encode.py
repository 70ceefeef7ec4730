"""Captions to unit text embeddings: in-process, or on a Ray Data actor pool of text-tower
replicas when the split is large."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import torch

import centerclip
from pipelines import schema
from pipelines.encode import ModelSpec
from pipelines.evaluate.config import EvaluateConfig, connect_ray
from pipelines.evaluate.vectors import to_fixed_size_list, to_matrix
from pipelines.resources import CPU_SHARE_FOR_ACTORS, MIN_ACTOR_CPUS
from pipelines.search import encode_queries

log = logging.getLogger(__name__)


class TextEncodeStage:
    """Captions in, unit text embeddings out: one text-tower replica per Ray actor.

    A plain callable: ``TextEncodeStage(spec)(batch)`` runs without Ray too.
    """

    def __init__(
        self, spec: ModelSpec, *, batch_size: int = 256, torch_threads: int | None = None
    ) -> None:
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.model = spec.build("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        """``query`` and ``caption`` ``[B]`` in; ``query`` and ``vector`` ``[B, D]`` out."""
        vectors = encode_queries(
            self.model, batch[schema.CAPTION].to_pylist(), batch_size=self.batch_size
        )
        return pa.table(
            {
                schema.QUERY: batch[schema.QUERY],
                schema.VECTOR: to_fixed_size_list(vectors),
            }
        )


def encode_captions(
    model: centerclip.VideoCLIP, captions: list[str], config: EvaluateConfig
) -> np.ndarray:
    """Unit text embeddings ``[Q, D]`` float32 of ``captions``, in order.

    Up to ``config.ray_min_captions`` captions are encoded here with ``model``; more go through a
    Ray Data actor pool (one actor per GPU, or CPU actors), each actor building its own replica.
    """
    if len(captions) <= config.ray_min_captions:
        return encode_queries(model, captions, batch_size=config.text_batch_size)

    import ray

    connect_ray(config.address)
    actors, cpus, gpus = _text_actor_resources(config, ray.cluster_resources())
    log.info("encoding %d captions on %d actor(s)", len(captions), actors)
    rows = pa.table(
        {
            schema.QUERY: pa.array(np.arange(len(captions), dtype=np.int64)),
            schema.CAPTION: pa.array(captions, pa.string()),
        }
    )
    # Several batches per block, and blocks enough that every actor gets work.
    per_block = max(config.text_batch_size, len(captions) // (4 * actors) + 1)
    dataset = ray.data.from_arrow(
        [rows.slice(start, per_block) for start in range(0, rows.num_rows, per_block)]
    ).map_batches(
        TextEncodeStage,
        fn_constructor_args=(config.model,),
        fn_constructor_kwargs={
            "batch_size": config.text_batch_size,
            "torch_threads": max(1, round(cpus)),
        },
        batch_size=config.text_batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus,
        num_gpus=gpus,
    )
    encoded = pa.concat_tables(
        dataset.iter_batches(batch_format="pyarrow", batch_size=None)
    ).sort_by(schema.QUERY)
    return to_matrix(encoded[schema.VECTOR])


def _text_actor_resources(
    config: EvaluateConfig, cluster: dict[str, float]
) -> tuple[int, float, float]:
    """``(actors, CPUs per actor, GPUs per actor)`` for text encoding."""
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    # Leave CPU headroom: an actor pool that takes every CPU starves Ray Data's own tasks.
    budget = max(min(cpus * CPU_SHARE_FOR_ACTORS, cpus - 1), MIN_ACTOR_CPUS)
    if gpus > 0 and config.gpus_per_actor != 0:
        per_actor = config.gpus_per_actor or 1.0
        actors = config.actors or max(1, int(gpus // per_actor))
        return actors, min(1.0, budget / actors), per_actor
    actors = config.actors or 1
    return actors, budget / actors, 0.0
