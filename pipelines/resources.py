"""Every resource decision of the index and fine-tuning jobs, in one place.

Given what the Ray cluster offers and what the user asked for, :func:`plan_resources` decides how
many decode and encode actors run, what each one reserves, on which nodes the decode actors go,
and the batch sizes. Two measured pitfalls shape it: an actor pool that reserves every CPU starves
Ray Data's own tasks and the job hangs, so CPU reservations always leave headroom; and a GPU stage
needs an explicit batch size. :func:`plan_training` does the same for fine-tuning's Ray Train
workers and decode actors.

On a GPU cluster the decode pool is sized from the stages' costs (:class:`StageCosts`: decode
CPU-seconds per video against encode seconds per video) and placed on the cluster's CPU-only nodes
first, then on the CPUs the GPU nodes' encode actors leave: a GPU node's own CPUs cannot decode
real footage as fast as its GPU encodes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pipelines.bottleneck import decode_cpus_per_encoder


@dataclass(frozen=True)
class ResourceRequest:
    """What the user asked for; ``None`` means "decide for me"."""

    encode_actors: int | None = None
    gpus_per_actor: float | None = None
    decode_workers: int | None = None
    batch_size: int | None = None


@dataclass(frozen=True)
class NodeShape:
    """One alive node of the Ray cluster and what it offers."""

    node_id: str
    cpus: float
    gpus: float = 0.0


@dataclass(frozen=True)
class StageCosts:
    """What one video costs each stage: decode CPU-seconds (wherever it runs) and the seconds one
    encode actor spends on it."""

    decode_cpu_s_per_video: float
    encode_s_per_video: float


# Before anything is measured: real footage costs about 0.5 core-seconds per video to decode
# (today's decode stage on 480p-720p clips, see the README), and a GPU should encode ViT-B/32 at
# 12 frames in 0.5 ms per video (the 2,000 videos/s target). That is ~1,000 decode CPUs per GPU,
# so by default a GPU job decodes on every CPU the cluster offers.
DEFAULT_GPU_COSTS = StageCosts(decode_cpu_s_per_video=0.5, encode_s_per_video=1 / 2000)
# Rows per LanceDB commit. bench/scale.py at 100k rows: the one committing driver appends 20k
# rows/s in commits of 256 rows and 32k in commits of 4096 (upserts: 5k and 9k), and 8 GPUs make
# 20k rows/s, so the larger commits; a slow job still commits every ``commit_seconds``.
DEFAULT_COMMIT_ROWS = 4096
# The decode pool gets this much more than the balance point: costs vary from video to video.
DECODE_MARGIN = 1.25


@dataclass(frozen=True)
class ResourcePlan:
    """How the index job's stages use the cluster."""

    use_gpus: bool
    encode_actors: int
    encode_gpus: float
    encode_cpus: float
    encode_batch_size: int
    torch_threads: int
    decode_workers: int
    decode_cpus: float
    decode_batch_size: int
    # Each encode actor decodes its own batches; there is no decode pool (decode_workers == 0).
    decode_in_encode_actors: bool = False
    # The node of each decode actor (empty: Ray chooses), and how many of them are on nodes
    # without GPUs.
    decode_nodes: tuple[str, ...] = ()
    decode_on_cpu_nodes: int = 0

    def describe(self) -> str:
        where = f"{self.encode_gpus:g} GPU" if self.use_gpus else f"{self.encode_cpus:g} CPU"
        encoders = f"{self.encode_actors} encode actor(s) x {where}"
        if self.decode_in_encode_actors:
            return (
                f"{encoders} ({self.torch_threads} torch thread(s)), each decoding its own "
                f"videos, batch {self.encode_batch_size}"
            )
        placed = ""
        if self.decode_nodes:
            beside = sum(1 for node in self.decode_nodes if node) - self.decode_on_cpu_nodes
            placed = f" ({self.decode_on_cpu_nodes} on CPU-only nodes, {beside} beside the GPUs)"
        return (
            f"{self.decode_workers} decode actor(s) x {self.decode_cpus:g} CPU{placed}, "
            f"{encoders}, encode batch {self.encode_batch_size}"
        )

    def decode_actor_options(self) -> Callable[[], dict[str, Any]] | None:
        """For Ray Data's ``ray_remote_args_fn``: each decode actor the pool starts goes to the
        next node of :attr:`decode_nodes` (soft affinity: elsewhere if that node is gone).
        ``None`` where the plan leaves placement to Ray."""
        return _NodeCycle(self.decode_nodes) if self.decode_nodes else None


class _NodeCycle:
    """Remote options naming the planned nodes in turn (``""``: none); called in the driver
    before each decode actor starts."""

    def __init__(self, nodes: tuple[str, ...]) -> None:
        self.nodes = nodes
        self.started = 0

    def __call__(self) -> dict[str, Any]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = self.nodes[self.started % len(self.nodes)]
        self.started += 1
        if not node:
            return {}
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)}


GPU_BATCH_SIZE = 32
CPU_BATCH_SIZE = 8
DECODE_BATCH_SIZE = 4
# The actor pools reserve at most this share of the CPUs, and always leave one whole CPU free:
# Ray Data's own tasks need a full CPU each, and starve (the job hangs) without one.
CPU_SHARE_FOR_ACTORS = 0.9
MIN_ACTOR_CPUS = 0.5
MIN_CPUS_PER_ENCODE_ACTOR = 0.25
# Each CPU encode actor holds a model replica: past this many, actors get more threads instead.
MAX_CPU_ENCODE_ACTORS = 8
# Torch threads that encode search queries (jobs.search; the service's replicas likewise). A
# query runs only up to its end-of-text token (centerclip.model.encode_text_prefix): ViT-B/32,
# one query, same run on 2 cores: 26 ms on 1 thread, 26 ms on 2, while a second thread stalls
# at every OpenMP barrier when another process holds the core (1.3-2.1 s measured under load).
QUERY_TORCH_THREADS = 1
# Above this many caption-video scores (100k captions x 100k videos) the evaluation's exact
# ranks are spread over the cluster as one-CPU Ray tasks; below it one machine's threaded
# matmul is about as fast and ships nothing.
EVAL_RAY_MIN_SCORES = 10**10
# Blocks are the unit that streams from stage to stage and on to the committer.
ROWS_PER_BLOCK = 32
BLOCKS_PER_ACTOR = 8


def plan_resources(
    request: ResourceRequest,
    *,
    cluster_cpus: float,
    cluster_gpus: float,
    videos: int | None = None,
    nodes: Sequence[NodeShape] = (),
    costs: StageCosts | None = None,
    gpu_decoding: bool = False,
) -> ResourcePlan:
    """Decide actor counts, reservations and batch sizes; with ``videos``, the number of videos
    to encode, no pool gets more actors than there are blocks of them to work on (a re-index of a
    few videos starts one actor, not one per CPU), unless the request names the count.

    With GPUs: one encode actor per GPU (``gpus_per_actor`` GPUs each, 1 by default). Decode
    actors get the CPUs that keep the encoders busy, ``DECODE_MARGIN`` x the balance point of
    ``costs`` (measured, else ``DEFAULT_GPU_COSTS``, which asks for every CPU), within the CPUs
    the cluster has left. Given the cluster's ``nodes``, each decode actor is placed on a node:
    CPU-only nodes first (most free CPUs first), then the CPUs the GPU nodes' encode actors leave.
    With ``gpu_decoding`` (NVDEC) and no ``decode_workers`` named, there is no decode pool: each
    GPU actor decodes its own videos on its GPU.

    Without GPUs: CPU encode and decode actors share the CPUs; encoding gets the larger share
    because one video's encode costs more CPU than its decode, and computes with
    every CPU the decode actors do not reserve, headroom included (measured on 2 cores: 1 torch
    thread, its reservation rounded, left a core idle and halved a ViT-B/32 job's throughput).
    Those CPUs go to single-thread actors, one per CPU up to ``MAX_CPU_ENCODE_ACTORS``: a
    multi-thread actor stalls at every OpenMP barrier whenever another process (a decoder, Ray
    itself) takes one of its cores, and on 2 cores two 1-thread actors indexed ViT-B/32 23% faster
    than one 2-thread actor in the same run.

    Where every CPU gets its own single-thread encode actor and ``decode_workers`` is not named,
    there is no decode pool: each actor decodes its batch (in its decoder child) and then encodes
    it. Decoding and encoding share the CPUs either way, and this way no frame crosses Ray's
    object store and no actor process only decodes (on 2 cores, 1.13x the throughput of a decode
    pool with the ``tiny`` preset, 1.01x with ViT-B/32). A multi-thread actor keeps the decode
    pool: its threads would idle while its decoder works.

    Raises:
        ValueError: when the request cannot fit the cluster (more GPUs than it has, ...).
    """
    plan = _plan_for_cluster(request, cluster_cpus, cluster_gpus, nodes, costs, gpu_decoding)
    if videos is None:
        return plan
    blocks = max(1, math.ceil(videos / rows_per_block(plan, videos)))
    decode_workers = request.decode_workers
    if decode_workers is None and not plan.decode_in_encode_actors:
        decode_workers = min(plan.decode_workers, blocks)
    fitted = replace(
        request,
        encode_actors=request.encode_actors or min(plan.encode_actors, blocks),
        decode_workers=decode_workers,
    )
    return _plan_for_cluster(fitted, cluster_cpus, cluster_gpus, nodes, costs, gpu_decoding)


def rows_per_block(plan: ResourcePlan, videos: int) -> int:
    """Rows per block for ``videos`` rows: a whole number of decode and of encode batches (so
    that no stage re-bundles blocks, which delays results and makes short batches), at most
    ``ROWS_PER_BLOCK``, and small enough that each actor gets about ``BLOCKS_PER_ACTOR`` blocks
    and results stream to the committer even from a small corpus."""
    unit = (
        plan.encode_batch_size
        if plan.decode_in_encode_actors
        else math.lcm(plan.decode_batch_size, plan.encode_batch_size)
    )
    actors = max(plan.decode_workers, plan.encode_actors)
    wanted = min(ROWS_PER_BLOCK, videos // (BLOCKS_PER_ACTOR * actors))
    return max(unit, wanted // unit * unit)


def _plan_for_cluster(
    request: ResourceRequest,
    cluster_cpus: float,
    cluster_gpus: float,
    nodes: Sequence[NodeShape] = (),
    costs: StageCosts | None = None,
    gpu_decoding: bool = False,
) -> ResourcePlan:
    if cluster_cpus < 1:
        raise ValueError(f"the Ray cluster offers {cluster_cpus:g} CPUs; at least 1 is needed")
    if request.gpus_per_actor is not None and request.gpus_per_actor > 0 and cluster_gpus <= 0:
        raise ValueError("--gpus-per-actor was given but the Ray cluster has no GPUs")
    use_gpus = cluster_gpus > 0 and request.gpus_per_actor != 0
    budget = max(min(cluster_cpus * CPU_SHARE_FOR_ACTORS, cluster_cpus - 1), MIN_ACTOR_CPUS)

    if use_gpus:
        gpus = request.gpus_per_actor or 1.0
        most = int(cluster_gpus // gpus)
        if most < 1:
            raise ValueError(
                f"--gpus-per-actor {gpus:g} exceeds the cluster's {cluster_gpus:g} GPUs"
            )
        actors = request.encode_actors or most
        if actors * gpus > cluster_gpus:
            raise ValueError(
                f"--actors {actors} x --gpus-per-actor {gpus:g} exceeds the cluster's "
                f"{cluster_gpus:g} GPUs"
            )
        if gpu_decoding and request.decode_workers is None:
            # NVDEC in each GPU actor's decoder process: the frames never leave the node.
            return ResourcePlan(
                use_gpus=True,
                encode_actors=actors,
                encode_gpus=gpus,
                encode_cpus=min(1.0, budget / actors),
                encode_batch_size=request.batch_size or GPU_BATCH_SIZE,
                torch_threads=1,
                decode_workers=0,
                decode_cpus=0.0,
                decode_batch_size=request.batch_size or GPU_BATCH_SIZE,
                decode_in_encode_actors=True,
            )
        # A GPU actor only feeds its GPU: it gets at most half the CPU budget; the rest decodes.
        encode_cpus = min(1.0, budget / 2 / actors)
        decode_budget = budget - actors * encode_cpus
        costs = costs or DEFAULT_GPU_COSTS
        wanted = (
            actors
            * DECODE_MARGIN
            * decode_cpus_per_encoder(costs.decode_cpu_s_per_video, costs.encode_s_per_video)
        )
        decode_workers = request.decode_workers or max(
            1, min(int(decode_budget), math.ceil(wanted))
        )
        decode_cpus = min(1.0, decode_budget / decode_workers)
        decode_nodes = _place_decoders(
            nodes, decode_workers, decode_cpus, encoders=actors, gpus=gpus, cpus=encode_cpus
        )
        return ResourcePlan(
            use_gpus=True,
            encode_actors=actors,
            encode_gpus=gpus,
            encode_cpus=encode_cpus,
            encode_batch_size=request.batch_size or GPU_BATCH_SIZE,
            torch_threads=1,
            decode_workers=decode_workers,
            decode_cpus=decode_cpus,
            decode_batch_size=DECODE_BATCH_SIZE,
            decode_nodes=tuple(node for node, _ in decode_nodes),
            decode_on_cpu_nodes=sum(on_cpu_node for _, on_cpu_node in decode_nodes),
        )

    # One single-thread actor per CPU decodes its own videos; otherwise a decode pool feeds them.
    actors = request.encode_actors or min(max(1, round(cluster_cpus)), MAX_CPU_ENCODE_ACTORS)
    decode_in_encode_actors = request.decode_workers is None and round(cluster_cpus / actors) <= 1
    if decode_in_encode_actors:
        decode_workers, decode_cpus, torch_cpus = 0, 0.0, actors
        too_many = f"--actors {actors} does not fit"
    else:
        decode_workers = request.decode_workers or max(1, int(budget // 3))
        decode_cpus = min(1.0, budget / 3 / decode_workers)
        torch_cpus = max(1, round(cluster_cpus - decode_workers * decode_cpus))
        actors = request.encode_actors or min(torch_cpus, MAX_CPU_ENCODE_ACTORS)
        too_many = f"--actors {actors} and --decode-workers {decode_workers} do not fit"
    encode_cpus = (budget - decode_workers * decode_cpus) / actors
    if encode_cpus < MIN_CPUS_PER_ENCODE_ACTOR:
        raise ValueError(f"{too_many} the cluster's {cluster_cpus:g} CPUs")
    batch_size = request.batch_size or CPU_BATCH_SIZE
    return ResourcePlan(
        use_gpus=False,
        encode_actors=actors,
        encode_gpus=0.0,
        encode_cpus=encode_cpus,
        encode_batch_size=batch_size,
        torch_threads=max(1, round(torch_cpus / actors)),
        decode_workers=decode_workers,
        decode_cpus=decode_cpus,
        decode_batch_size=batch_size if decode_in_encode_actors else DECODE_BATCH_SIZE,
        decode_in_encode_actors=decode_in_encode_actors,
    )


def _place_decoders(
    nodes: Sequence[NodeShape],
    decoders: int,
    cpus_each: float,
    *,
    encoders: int,
    gpus: float,
    cpus: float,
) -> list[tuple[str, bool]]:
    """``(node id, whether it has no GPU)`` for each decode actor: CPU-only nodes first, most
    free CPUs first, then the CPUs that the GPU nodes' ``encoders`` encode actors (``gpus`` GPUs
    and ``cpus`` CPUs each) leave. Empty without ``nodes``; an actor that fits no node whole gets
    ``""`` (left to Ray)."""
    if not nodes:
        return []
    free: list[tuple[bool, float, str]] = []
    for node in sorted(nodes, key=lambda n: n.node_id):
        here = min(int(node.gpus // gpus), encoders) if node.gpus > 0 else 0
        encoders -= here
        free.append((node.gpus <= 0, node.cpus - here * cpus, node.node_id))
    placed: list[tuple[str, bool]] = []
    for cpu_only, left, node_id in sorted(free, key=lambda f: (not f[0], -f[1], f[2])):
        fits = int(left / cpus_each + 1e-9)
        placed += [(node_id, cpu_only)] * min(fits, decoders - len(placed))
    return placed + [("", False)] * (decoders - len(placed))


@dataclass(frozen=True)
class TrainingPlan:
    """How the fine-tuning job uses the cluster: Ray Train workers and the decode actors that
    feed them."""

    workers: int
    use_gpus: bool
    worker_cpus: float
    torch_threads: int
    decode_workers: int
    decode_cpus: float

    def describe(self) -> str:
        where = "1 GPU" if self.use_gpus else f"{self.worker_cpus:g} CPU"
        return (
            f"{self.workers} training worker(s) x {where} ({self.torch_threads} torch "
            f"thread(s)), {self.decode_workers} decode actor(s) x {self.decode_cpus:g} CPU"
        )


def plan_training(
    *,
    workers: int | None,
    use_gpus: bool | None,
    decode_workers: int | None,
    torch_threads: int | None,
    cluster_cpus: float,
    cluster_gpus: float,
) -> TrainingPlan:
    """Decide the training workers, the decode actors and what each reserves.

    With GPUs: one worker per GPU by default, each reserving at most one CPU beside its GPU; the
    rest of the CPU budget decodes. Without: one worker by default (data parallelism across
    processes on one CPU node only adds gradient traffic), a third of the budget decodes and the
    workers share the rest. Reservations stay within the same budget as the index job's.

    Torch threads (CPU training): a worker computes with every CPU the decode actors do not
    reserve, headroom included: in training the decode actors do the data work, so Ray Data's own
    tasks are short and rare.

    Raises:
        ValueError: when the request cannot fit the cluster.
    """
    if cluster_cpus < 1:
        raise ValueError(f"the Ray cluster offers {cluster_cpus:g} CPUs; at least 1 is needed")
    if use_gpus and cluster_gpus <= 0:
        raise ValueError("GPU training was asked for but the Ray cluster has no GPUs")
    gpus = cluster_gpus > 0 and use_gpus is not False
    budget = max(min(cluster_cpus * CPU_SHARE_FOR_ACTORS, cluster_cpus - 1), MIN_ACTOR_CPUS)
    if gpus:
        workers = workers or int(cluster_gpus)
        if workers > cluster_gpus:
            raise ValueError(f"--workers {workers} exceeds the cluster's {cluster_gpus:g} GPUs")
        worker_cpus = min(1.0, budget / 2 / workers)
        decode_budget = budget - workers * worker_cpus
    else:
        workers = workers or 1
        decode_budget = budget / 3
    decode_workers = decode_workers or max(1, int(decode_budget))
    decode_cpus = min(1.0, decode_budget / decode_workers)
    if not gpus:
        worker_cpus = (budget - decode_workers * decode_cpus) / workers
        if worker_cpus < 0.25:
            raise ValueError(
                f"--workers {workers} and --decode-workers {decode_workers} do not fit the "
                f"cluster's {cluster_cpus:g} CPUs"
            )
    if torch_threads is None:
        spare = cluster_cpus - decode_workers * decode_cpus
        torch_threads = 1 if gpus else max(1, round(spare / workers))
    return TrainingPlan(
        workers=workers,
        use_gpus=gpus,
        worker_cpus=worker_cpus,
        torch_threads=torch_threads,
        decode_workers=decode_workers,
        decode_cpus=decode_cpus,
    )
