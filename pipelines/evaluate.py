"""Batch retrieval evaluation: every caption of a split against an index table, exactly and
through the ANN index, so users see both how good the model is and what the index costs.

::

    read_manifest, one query per caption of the split          (driver)
    open the table, check_model; read the split's vectors       [V, D]   (model_id rows only)
    videos of the split missing from the table -> reported with the reason (errors table, ...)
    encode the captions with the text tower                     [Q, D]   (in-process, or a Ray
                                                                          Data actor pool when
                                                                          the split is large)
    exact:  sim = text @ video.T, exact_chunk_rows captions at a time [C, V], never [Q, V]
            -> t2v and v2t ranks and top 10 (MSR-VTT protocol, centerclip.metrics)
    ANN:    t2v: LanceDB top-k per caption on the table itself (its IVF_PQ index, if any)
            v2t: LanceDB top-k per video on a temporary table of the caption embeddings, indexed
                 the same way when the table is (the table indexes videos only)
    write metrics.json, ranks.parquet, recall_at_k.png, report.html

An ANN search returns only ``k`` results, so a rank beyond ``k`` is unknown: ANN R@K is exact
for ``K <= k``; the median rank is known only when the middle ranks are within ``k``, and the mean
rank only when every rank is. Otherwise each is reported as ``None`` beside its lower bound (every
unknown rank counted as ``k + 1``).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from lancedb.table import Table

import centerclip
from centerclip.metrics import (
    ChunkedRanks,
    ann_recall_at_k,
    chance_recall_at_k_curve,
    chance_retrieval_metrics,
    chunked_retrieval_ranks,
    recall_at_k_curve,
    recall_metrics,
)
from pipelines import schema
from pipelines.encode import ModelSpec
from pipelines.manifest import read_manifest
from pipelines.report import REPORT_FILE, worst_queries, write_report
from pipelines.resources import CPU_SHARE_FOR_ACTORS, MIN_ACTOR_CPUS
from pipelines.search import (
    DEFAULT_REFINE_FACTOR,
    check_model,
    encode_queries,
    model_filter,
    nearest,
    open_index,
)
from pipelines.write import build_ann_index, connect, open_table, sql_in

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
RANKS_FILE = "ranks.parquet"
PLOT_FILE = "recall_at_k.png"
# ann_recall@10 compares against the exact top 10; R@10 needs ranks up to 10.
MIN_ANN_K = 10
_SEGMENT_SPANS = [schema.SEGMENT_START_S, schema.SEGMENT_END_S]
# Video ids per SQL ``IN`` filter when reading the table: one scan per chunk.
_IDS_PER_FILTER = 2000
# Captions per exact-rank chunk: 1024 x 100k videos is 400 MB of float32 scores at most.
DEFAULT_EXACT_CHUNK_ROWS = 1024


@dataclass(frozen=True)
class EvaluateConfig:
    """One run of the evaluation job.

    Attributes:
        manifest: Parquet shards or folders; their ``caption`` column holds the queries.
        db, table: the LanceDB embeddings table the index job wrote.
        model: must be the model the table was indexed with.
        out: folder for ``metrics.json``, ``ranks.parquet`` and ``recall_at_k.png``.
        split: evaluate only the manifest rows of this split (``None``: every row).
        k: results per ANN query (at least 10).
        build_index: (re)build the table's IVF_PQ index first, even below the index job's size
            threshold. This writes the index into the table.
        nprobes, refine_factor: ANN search settings, as the search job uses them.
        text_batch_size: captions per text-tower batch.
        ray_min_captions: encode on a Ray Data actor pool when the split has more captions.
        exact_chunk_rows: captions scored against every video at once for the exact ranks.
        address, actors, gpus_per_actor: the Ray cluster and its text-encode actors.
    """

    manifest: str | Sequence[str]
    db: str
    table: str
    model: ModelSpec
    out: Path
    split: str | None = None
    k: int = MIN_ANN_K
    build_index: bool = False
    nprobes: int | None = None
    refine_factor: int | None = DEFAULT_REFINE_FACTOR
    text_batch_size: int = 256
    ray_min_captions: int = 5000
    exact_chunk_rows: int = DEFAULT_EXACT_CHUNK_ROWS
    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None


@dataclass
class EvaluationReport:
    """What :func:`run_evaluation` computed and wrote."""

    metrics: dict[str, Any]
    ranks: pa.Table
    files: list[Path] = field(default_factory=list)

    def format(self) -> str:
        """The terminal summary: counts, the metric table (exact, ANN and chance level per
        direction), the index and what was left out."""
        m = self.metrics
        ann = m["ann"]
        lines = [
            f"model:        {m['model_id']}",
            f"split:        {m['split'] or 'all rows'}: {m['num_queries']} captions of "
            f"{m['num_videos']} videos ({m['num_videos_without_captions']} without captions)",
            f"ANN index:    {ann['index_note']}",
            f"v2t ANN:      {ann['v2t_index_note']}",
            f"ANN search:   top {ann['k']}, nprobes {ann['nprobes'] or 'LanceDB default'}, "
            f"refine factor {ann['refine_factor'] or 'none (PQ distances)'}",
            "",
            f"{'':16}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'MdR':>8}{'MnR':>9}",
        ]
        for direction in ("t2v", "v2t"):
            lines.append(_metric_row(f"{direction} exact", m[direction]))
            lines.append(_metric_row(f"{direction} ANN@{ann['k']}", ann[direction]))
            lines.append(_metric_row(f"{direction} chance", m["chance"][direction]))
        lines.append(
            f"chance:       random ranking of {m['num_videos']} videos (t2v) / "
            f"{m['num_queries']} captions (v2t, a video's best caption counts)"
        )
        lines.append(
            f"ann_recall@10: {m['ann_recall@10']:.3f} (t2v), "
            f"{ann['v2t']['ann_recall@10']:.3f} (v2t)"
        )
        beyond = [ann[d]["beyond_k"] for d in ("t2v", "v2t")]
        if any(beyond):
            lines.append(
                f"ANN: {beyond[0]} t2v and {beyond[1]} v2t queries found no right answer in "
                f"their top {ann['k']}; their ranks are unknown, so ANN MdR/MnR show '>= bound' "
                "(a larger -k narrows it)"
            )
        missing = m["missing"]
        if missing["num_videos"]:
            shown = ", ".join(
                f"{v['video_id']} ({_shorten(v['reason'])})"
                for v in missing["videos"][:_SHOWN_MISSING]
            )
            more = missing["num_videos"] - _SHOWN_MISSING
            lines.append(
                f"left out:     {missing['num_captions']} captions of {missing['num_videos']} "
                f"videos not in the table: {shown}" + (f" and {more} more" if more > 0 else "")
            )
        else:
            lines.append("left out:     nothing (every video of the split is in the table)")
        return "\n".join(lines)


# The terminal names this many missing videos, each reason cut to this many characters;
# metrics.json has them all, in full.
_SHOWN_MISSING = 5
_SHOWN_REASON_CHARS = 80


def _shorten(reason: str) -> str:
    return (
        reason if len(reason) <= _SHOWN_REASON_CHARS else reason[: _SHOWN_REASON_CHARS - 3] + "..."
    )


def _metric_row(label: str, values: dict[str, Any]) -> str:
    def rank(name: str) -> str:
        if values[name] is not None:
            return f"{values[name]:.1f}"
        return f">={values[f'{name}_lower_bound']:.1f}"

    recalls = "".join(f"{values[f'R@{k}']:>7.1f}" for k in (1, 5, 10))
    return f"{label:<16}{recalls}{rank('MdR'):>8}{rank('MnR'):>9}"


def split_queries(manifest: pa.Table, split: str | None) -> tuple[pa.Table, pa.Table]:
    """The split's videos and one query per caption.

    Returns:
        ``(videos, queries)``: ``videos`` has ``video_id`` for every manifest row of the split,
        captioned or not (uncaptioned videos still compete as retrieval targets); ``queries`` has
        ``video_id``, ``caption_index`` (position in the video's caption list) and ``caption``,
        in manifest order. Null captions are skipped.

    Raises:
        ValueError: no ``caption`` column, an unknown split, or a split without captions.
    """
    if schema.CAPTION not in manifest.column_names:
        raise ValueError(f"the manifest has no '{schema.CAPTION}' column; nothing to evaluate")
    if split is not None:
        if schema.SPLIT not in manifest.column_names:
            raise ValueError(f"--split {split}: the manifest has no '{schema.SPLIT}' column")
        selected = manifest.filter(pc.equal(manifest[schema.SPLIT], split))
        if selected.num_rows == 0:
            known = sorted(v for v in pc.unique(manifest[schema.SPLIT]).to_pylist() if v)
            raise ValueError(f"--split {split}: no manifest rows; the splits are {known}")
        manifest = selected
    captions = manifest[schema.CAPTION].combine_chunks()
    parents = pc.list_parent_indices(captions)
    flat = pc.list_flatten(captions)
    starts = captions.offsets.to_numpy()[:-1]
    positions = np.arange(len(flat)) - starts[parents.to_numpy()]
    queries = pa.table(
        {
            schema.VIDEO_ID: manifest[schema.VIDEO_ID].combine_chunks().take(parents),
            schema.CAPTION_INDEX: pa.array(positions, pa.int32()),
            schema.CAPTION: flat,
        }
    ).filter(pc.is_valid(flat))
    if queries.num_rows == 0:
        raise ValueError(f"the {split or 'manifest'} rows have no captions; nothing to evaluate")
    return manifest.select([schema.VIDEO_ID]), queries


def missing_reasons(
    errors: Table | None, missing_ids: Sequence[str], other_model: dict[str, str]
) -> dict[str, str]:
    """Why each video of ``missing_ids`` has no vector of the evaluated model: its failure from
    the ``errors`` table (``<table>_errors``), the other model that indexed it (``other_model``),
    or not indexed."""
    reasons = {
        video_id: f"indexed with another model: {other_model[video_id]}"
        if video_id in other_model
        else "not indexed"
        for video_id in missing_ids
    }
    if errors is not None and missing_ids:
        failed = read_rows(errors, missing_ids, [schema.VIDEO_ID, schema.STAGE, schema.ERROR])
        for row in failed.to_pylist():
            reasons[row[schema.VIDEO_ID]] = f"failed ({row[schema.STAGE]}): {row[schema.ERROR]}"
    return reasons


def read_rows(table: Table, video_ids: Sequence[str], columns: list[str]) -> pa.Table:
    """``columns`` of the rows of ``table`` whose ``video_id`` is in ``video_ids``."""
    parts = [
        table.search()
        .where(sql_in(schema.VIDEO_ID, video_ids[start : start + _IDS_PER_FILTER]))
        .select(columns)
        .limit(None)
        .to_arrow()
        for start in range(0, len(video_ids), _IDS_PER_FILTER)
    ]
    return pa.concat_tables(parts)


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
                schema.VECTOR: _fixed_size_list(vectors),
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

    if not ray.is_initialized():
        ray.init(address=config.address, log_to_driver=True)
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
    return _vectors(encoded[schema.VECTOR])


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


def index_info(table: Table) -> dict[str, Any] | None:
    """The ANN index on ``vector``: type, distance and how many rows it covers; None if none."""
    for index in table.list_indices():
        if list(index.columns) == [schema.VECTOR]:
            stats = table.index_stats(index.name)
            return {
                "type": stats.index_type,
                "distance": stats.distance_type,
                "indexed_rows": stats.num_indexed_rows,
                "unindexed_rows": stats.num_unindexed_rows,
            }
    return None


def _index_note(info: dict[str, Any] | None, built: bool) -> str:
    if info is None:
        return (
            "none: the index job builds one only above --index-min-rows rows, so LanceDB searched "
            "every row and the ANN figures equal the exact ones (pass --build-index to see what "
            "an IVF_PQ index costs)"
        )
    total = info["indexed_rows"] + info["unindexed_rows"]
    note = (
        f"{info['type']} ({info['distance']}){' built now' if built else ''}, covering "
        f"{info['indexed_rows']} of {total} rows"
    )
    if info["unindexed_rows"]:
        why = (
            "LanceDB trains IVF_PQ only on 256+ rows"
            if info["indexed_rows"] == 0
            else "rows added since the index was built"
        )
        note += f"; the other {info['unindexed_rows']} are searched exactly ({why})"
    return note


def _caption_index_note(info: dict[str, Any] | None, captions: int) -> str:
    where = f"the {captions} caption embeddings in a temporary LanceDB table"
    if info is None:
        return f"{where}, searched exhaustively (the video table has no index)"
    note = (
        f"{where} with an {info['type']} index like the video table's, covering "
        f"{info['indexed_rows']} of {captions}"
    )
    return note + (" (IVF_PQ trains on 256+ rows only)" if info["unindexed_rows"] else "")


@dataclass(frozen=True)
class AnnRanks:
    """Ranks from a top-``k`` search: exact where the right answer came back, else unknown.

    Attributes:
        ranks: ``[N]`` 1-based rank (ties count against the query) where ``found``, else 0.
        found: ``[N]`` whether a right answer was among the ``k`` results.
        top: ``[N, k]`` result ids best first, padded with -1 where fewer came back.
    """

    ranks: np.ndarray
    found: np.ndarray
    top: np.ndarray
    k: int

    def lower_bounds(self) -> np.ndarray:
        """``[N]`` ranks with each unknown one replaced by ``k + 1``, a lower bound of it."""
        return np.where(self.found, self.ranks, self.k + 1)

    def metrics(self) -> dict[str, Any]:
        """R@1/5/10 (exact, as ``k >= 10``), MdR and MnR where they are known (else None), their
        lower bounds, and ``beyond_k``: the queries whose right answer was not returned."""
        lower = self.lower_bounds()
        result: dict[str, Any] = recall_metrics(lower)
        ordered = np.sort(lower)
        middle = ordered[[(len(ordered) - 1) // 2, len(ordered) // 2]]
        result["MdR_lower_bound"] = result["MdR"]
        result["MnR_lower_bound"] = result["MnR"]
        if middle.max() > self.k:
            result["MdR"] = None
        if not self.found.all():
            result["MnR"] = None
        result["beyond_k"] = int((~self.found).sum())
        return result


def ann_ranks(
    results: pa.Table, *, num_queries: int, item: np.ndarray, right: np.ndarray, k: int
) -> AnnRanks:
    """Rank of the best right answer among each query's top-``k`` results.

    Args:
        results: :func:`pipelines.search.nearest` rows (``query``, ``score``; best first within
            a query, at most ``k`` per query).
        num_queries: ``N``, queries searched (a query may have no results).
        item: ``[R]`` integer id of each result row (a video column, a caption row).
        right: ``[R]`` whether each result row is a right answer of its query.
        k: results asked per query.

    Returns:
        :class:`AnnRanks`. A found query's rank is the number of its results scoring at least as
        high as its best right one: the tie policy of :mod:`centerclip.metrics`, so wherever the
        ANN returns the exact top ``k`` its ranks equal the exact ranks.
    """
    query = results[schema.QUERY].to_numpy()
    score = results[schema.SCORE].to_numpy()
    best = np.full(num_queries, -np.inf, score.dtype)
    np.maximum.at(best, query[right], score[right])
    found = np.isfinite(best)
    at_least = np.bincount(query, weights=score >= best[query], minlength=num_queries)
    per_query = np.bincount(query, minlength=num_queries)
    position = np.arange(len(query)) - (np.cumsum(per_query) - per_query)[query]
    top = np.full((num_queries, k), -1, np.int64)
    top[query, position] = item
    ranks = np.where(found, at_least, 0).astype(np.int64)
    return AnnRanks(ranks=ranks, found=found, top=top, k=k)


@dataclass(frozen=True)
class Gallery:
    """The videos retrieved among: those of the split with a vector of the evaluated model.

    Attributes:
        rows: ``[V]`` ``video_id``, ``vector``, ``model_id`` and the table's ``split``, in
            manifest order.
        vectors: ``[V, D]`` unit video embeddings.
        evaluated: ``[all captions of the split]`` whether a caption's video is in the gallery.
        caption_video: ``[Q]`` the gallery column of each evaluated caption's video.
        missing: why each video of the split without a vector has none, in manifest order.
    """

    rows: pa.Table
    vectors: np.ndarray
    evaluated: pa.ChunkedArray
    caption_video: np.ndarray
    missing: dict[str, str]


def load_gallery(
    table: Table,
    errors: Table | None,
    videos: pa.Table,
    queries: pa.Table,
    *,
    model_id: str,
    split: str | None,
) -> Gallery:
    """Read the vectors of ``videos`` (see :func:`split_queries`) that ``model_id`` made, and
    say why the others have none (from ``errors``, the table's errors table, where it exists).

    Raises:
        ValueError: when no caption's video has a vector, naming the reasons.
    """
    split_ids = videos[schema.VIDEO_ID].to_pylist()
    stored = read_rows(
        table, split_ids, [schema.VIDEO_ID, schema.VECTOR, schema.MODEL_ID, schema.SPLIT]
    )
    mine = pc.equal(stored[schema.MODEL_ID], model_id)
    rows = stored.filter(mine)
    rows = rows.take(
        pc.sort_indices(pc.index_in(rows[schema.VIDEO_ID], value_set=videos[schema.VIDEO_ID]))
    )
    other = stored.filter(pc.invert(mine))
    indexed = set(rows[schema.VIDEO_ID].to_pylist())
    missing = missing_reasons(
        errors,
        [v for v in split_ids if v not in indexed],
        dict(
            zip(
                other[schema.VIDEO_ID].to_pylist(),
                other[schema.MODEL_ID].to_pylist(),
                strict=True,
            )
        ),
    )
    ids = rows[schema.VIDEO_ID].combine_chunks()
    evaluated = pc.is_in(queries[schema.VIDEO_ID], value_set=ids)
    kept = queries.filter(evaluated)
    if kept.num_rows == 0:
        raise ValueError(
            f"none of the {len(split_ids)} videos of the {split or 'manifest'} rows has a "
            f"vector of {model_id} in table {table.name!r}: "
            + "; ".join(sorted(set(missing.values())))
        )
    caption_video = pc.index_in(kept[schema.VIDEO_ID], value_set=ids).to_numpy()
    return Gallery(
        rows=rows,
        vectors=_vectors(rows[schema.VECTOR]),
        evaluated=evaluated,
        caption_video=caption_video.astype(np.int64),  # writable, for torch
        missing=missing,
    )


def exact_ranks(
    text: np.ndarray, video: np.ndarray, caption_video: np.ndarray, *, chunk_rows: int
) -> ChunkedRanks:
    """Exact ranks and top :data:`MIN_ANN_K` of ``text [Q, D]`` against ``video [V, D]`` (cosine:
    both unit norm), ``chunk_rows`` captions at a time, so memory is ``O(chunk_rows * V)`` and
    not ``O(Q * V)``; ``caption_video [Q]`` is each caption's video row."""
    texts, videos = torch.from_numpy(text), torch.from_numpy(video)

    def rows(start: int, stop: int) -> torch.Tensor:
        return texts[start:stop] @ videos.T  # [C, V]

    return chunked_retrieval_ranks(
        rows,
        caption_video,
        num_videos=len(video),
        chunk_rows=chunk_rows,
        top_k=MIN_ANN_K,
    )


EVALUATION_STEPS = ("encoding captions", "exact ranks", "ANN search", "writing results")
StepCallback = Callable[[int, int, str], None]
"""``(steps done, steps in all, the step now running)``: the stages of :data:`EVALUATION_STEPS`."""


def run_evaluation(
    config: EvaluateConfig, *, on_step: StepCallback | None = None
) -> EvaluationReport:
    """Evaluate ``config.table`` on the captions of ``config.split``; see the module docstring.

    Raises:
        ModelMismatchError: the table holds no vectors of ``config.model`` but another model's.
        ValueError: a bad manifest or split, a missing table, no video of the split indexed.
    """
    if config.k < MIN_ANN_K:
        raise ValueError(f"k must be at least {MIN_ANN_K} (R@10, ann_recall@10), got {config.k}")
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    model = config.model.build("cuda" if torch.cuda.is_available() else "cpu")
    model_id = model.model_id
    videos, queries = split_queries(read_manifest(config.manifest), config.split)
    table = open_index(config.db, config.table)
    model_rows = check_model(table, model_id)

    errors = open_table(connect(config.db), schema.errors_table_name(config.table))
    gallery = load_gallery(table, errors, videos, queries, model_id=model_id, split=config.split)
    video = gallery.vectors  # [V, D]
    caption_video = gallery.caption_video  # [Q]
    kept = queries.filter(gallery.evaluated)

    def step(done: int) -> None:
        if on_step is not None:
            name = EVALUATION_STEPS[done] if done < len(EVALUATION_STEPS) else "done"
            on_step(done, len(EVALUATION_STEPS), name)

    built = False
    if config.build_index:
        build_ann_index(table, rows=table.count_rows(), dim=model.embed_dim)
        built = True
    info = index_info(table)

    step(0)
    t0 = time.perf_counter()
    text = encode_captions(model, kept[schema.CAPTION].to_pylist(), config)  # [Q, D]
    seconds["encode text"] = time.perf_counter() - t0

    step(1)
    t0 = time.perf_counter()
    chunked = exact_ranks(text, video, caption_video, chunk_rows=config.exact_chunk_rows)
    exact = chunked.ranks
    v2t_video = exact.v2t_video.numpy()
    exact_top_t2v, exact_top_v2t = chunked.t2v_top, chunked.v2t_top  # [Q, 10], [Vc, 10]
    seconds["exact"] = time.perf_counter() - t0

    step(2)
    t0 = time.perf_counter()
    where = model_filter(model_id)
    if model_rows > len(video):  # the table holds more than this split: search the split
        where = gallery_filter(table, where, config.split, gallery.rows)
    ann_t2v = _ann_text_to_video(table, text, gallery, where, config)
    ann_v2t, caption_index_info = _ann_video_to_text(
        text, video[v2t_video], caption_video, v2t_video, config, indexed=info is not None
    )
    seconds["ann"] = time.perf_counter() - t0

    ann_metrics: dict[str, Any] = {
        "k": config.k,
        "nprobes": config.nprobes,
        "refine_factor": config.refine_factor,
        "index": info,
        "index_built_now": built,
        "index_note": _index_note(info, built),
        "v2t_index": caption_index_info,
        "v2t_index_note": _caption_index_note(caption_index_info, len(text)),
    }
    for direction, ranks, exact_top in (
        ("t2v", ann_t2v, exact_top_t2v),
        ("v2t", ann_v2t, exact_top_v2t),
    ):
        ann_metrics[direction] = {
            **ranks.metrics(),
            "ann_recall@10": ann_recall_at_k(exact_top, ranks.top[:, :MIN_ANN_K]),
        }
    # [V] evaluated captions of each gallery video (0 for an uncaptioned one): what chance
    # level depends on.
    gallery_captions = np.bincount(caption_video, minlength=len(video))
    captions_per_video = Counter(queries[schema.VIDEO_ID].to_pylist())
    missing_videos = [
        {schema.VIDEO_ID: v, "reason": reason, "num_captions": captions_per_video[v]}
        for v, reason in gallery.missing.items()
    ]
    metrics: dict[str, Any] = {
        "model_id": model_id,
        "db": config.db,
        "table": config.table,
        "split": config.split,
        **exact.metrics(),
        "chance": chance_retrieval_metrics(gallery_captions),
        "ann_recall@10": ann_metrics["t2v"]["ann_recall@10"],
        "ann": ann_metrics,
        "missing": {
            "num_captions": queries.num_rows - kept.num_rows,
            "num_videos": len(missing_videos),
            "videos": missing_videos,
        },
        "seconds": seconds,
    }

    step(3)
    ranks = _ranks_table(queries, gallery, exact.t2v.numpy(), ann_t2v, exact_top_t2v[:, 0])
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds["total"] = time.perf_counter() - started
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    pq.write_table(ranks, out / RANKS_FILE)
    curves = {
        "exact": {"t2v": exact.t2v.numpy(), "v2t": exact.v2t.numpy()},
        "ann": {"t2v": ann_t2v, "v2t": ann_v2t},
        "captions_per_video": gallery_captions,
        "title": model_id,
    }
    plot_recall_at_k(out / PLOT_FILE, **curves)
    worst = worst_queries(ranks)
    shown = sorted({*worst[schema.VIDEO_ID].to_pylist(), *worst[schema.TOP1_VIDEO_ID].to_pylist()})
    write_report(
        out / REPORT_FILE,
        metrics=metrics,
        ranks=ranks,
        figure=recall_at_k_figure(**curves),
        videos=read_rows(table, shown, [schema.VIDEO_ID, schema.URI, *_SEGMENT_SPANS]),
    )
    step(len(EVALUATION_STEPS))
    files = (METRICS_FILE, RANKS_FILE, PLOT_FILE, REPORT_FILE)
    return EvaluationReport(metrics=metrics, ranks=ranks, files=[out / f for f in files])


def gallery_filter(table: Table, model_where: str, split: str | None, gallery: pa.Table) -> str:
    """A prefilter that narrows ``model_where`` to exactly the ``gallery`` rows (``video_id`` and
    the table's ``split`` of each).

    The table's own ``split`` column when it selects the same rows: a scalar comparison costs
    LanceDB little, while an ``IN`` list of every gallery id, evaluated again for every batch of
    queries, made IVF_PQ searches about 4x slower (measured: 10k rows, 5k ids).
    """
    if split is not None:
        same_split = pc.fill_null(pc.equal(gallery[schema.SPLIT], split), False)
        by_split = f"{model_where} AND {sql_in(schema.SPLIT, [split])}"
        if pc.all(same_split).as_py() and table.count_rows(by_split) == gallery.num_rows:
            return by_split
    return f"{model_where} AND {sql_in(schema.VIDEO_ID, gallery[schema.VIDEO_ID].to_pylist())}"


def _ann_text_to_video(
    table: Table, text: np.ndarray, gallery: Gallery, where: str, config: EvaluateConfig
) -> AnnRanks:
    """Each caption ``text [Q, D]`` searches the table as a user's query would (its index, the
    prefilter ``where`` selecting the gallery); ranks of each caption's own video."""
    found = nearest(
        table,
        text,
        k=config.k,
        where=where,
        nprobes=config.nprobes,
        refine_factor=config.refine_factor,
    )
    item = pc.index_in(found[schema.VIDEO_ID], value_set=gallery.rows[schema.VIDEO_ID])
    item = item.to_numpy()
    right = item == gallery.caption_video[found[schema.QUERY].to_numpy()]
    return ann_ranks(found, num_queries=len(text), item=item, right=right, k=config.k)


def _ann_video_to_text(
    text: np.ndarray,
    queries: np.ndarray,
    caption_video: np.ndarray,
    query_video: np.ndarray,
    config: EvaluateConfig,
    *,
    indexed: bool,
) -> tuple[AnnRanks, dict[str, Any] | None]:
    """Video-to-text through LanceDB: the table indexes videos only, so the captions ``text
    [Q, D]`` go into a temporary table, given the same kind of index when ``indexed`` (the video
    table has one), and each captioned video ``queries [Vc, D]`` searches it.

    Returns:
        the ranks of each video's best own caption, and the caption index's :func:`index_info`.
    """
    with tempfile.TemporaryDirectory(prefix="centerclip-eval-") as folder:
        captions = lancedb.connect(folder).create_table(
            "captions",
            pa.table(
                {
                    schema.CAPTION_ROW: pa.array(np.arange(len(text), dtype=np.int64)),
                    schema.VECTOR: _fixed_size_list(text),
                }
            ),
        )
        if indexed:
            build_ann_index(captions, rows=len(text), dim=text.shape[1])
        found = nearest(
            captions,
            queries,
            k=config.k,
            nprobes=config.nprobes,
            refine_factor=config.refine_factor,
            columns=(schema.CAPTION_ROW,),
        )
        info = index_info(captions)
    item = found[schema.CAPTION_ROW].to_numpy()
    right = caption_video[item] == query_video[found[schema.QUERY].to_numpy()]
    return ann_ranks(found, num_queries=len(queries), item=item, right=right, k=config.k), info


def _ranks_table(
    queries: pa.Table, gallery: Gallery, t2v: np.ndarray, ann: AnnRanks, top1: torch.Tensor
) -> pa.Table:
    """One row per caption of the split: its exact and ANN text-to-video rank (null when its
    video is missing, or for ANN beyond ``k``), the exact top video, and why it is missing."""
    mask = gallery.evaluated.to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(mask)

    def spread(values: np.ndarray, valid: np.ndarray, dtype: pa.DataType) -> pa.Array:
        full = np.zeros(len(mask), values.dtype)
        full[rows] = values
        present = np.zeros(len(mask), bool)
        present[rows] = valid
        return pa.array(full, dtype, mask=~present)

    top1_ids = np.full(len(mask), None, dtype=object)
    top1_ids[rows] = np.asarray(gallery.rows[schema.VIDEO_ID].to_pylist(), dtype=object)[
        top1.numpy()
    ]
    return pa.table(
        {
            schema.QUERY: pa.array(np.arange(len(mask), dtype=np.int64)),
            schema.VIDEO_ID: queries[schema.VIDEO_ID],
            schema.CAPTION_INDEX: queries[schema.CAPTION_INDEX],
            schema.CAPTION: queries[schema.CAPTION],
            schema.T2V_RANK: spread(t2v, np.ones(len(rows), bool), pa.int32()),
            schema.ANN_T2V_RANK: spread(ann.ranks, ann.found, pa.int32()),
            schema.TOP1_VIDEO_ID: pa.array(top1_ids, pa.string()),
            schema.MISSING: pa.array(
                [gallery.missing.get(v) for v in queries[schema.VIDEO_ID].to_pylist()],
                pa.string(),
            ),
        }
    )


# Factor of empty log-axis room beyond K = 1 and the last K.
_K_MARGIN = 1.1


def k_ticks(max_k: int) -> list[int]:
    """The 1-2-5 sequence up to ``max_k`` (1, 2, 5, 10, 20, 50, ...): readable integer ticks for
    a log K axis."""
    ticks = []
    decade = 1
    while decade <= max_k:
        ticks += [step * decade for step in (1, 2, 5) if step * decade <= max_k]
        decade *= 10
    return ticks


def recall_at_k_figure(
    *,
    exact: dict[str, np.ndarray],
    ann: dict[str, AnnRanks],
    captions_per_video: np.ndarray,
    title: str,
) -> Figure:
    """Recall@K against K, one panel per direction (``t2v``, ``v2t``), over one K range.

    Each panel has the exact curve, the ANN curve (up to its ``k``, the last K its results say
    anything about) and, dotted, the chance level: the expected recall@K of a random ranking
    (:func:`centerclip.metrics.chance_recall_at_k_curve`). For text-to-video that is ``K / V``;
    for video-to-text a video counts its best-ranked caption, so chance is the mean over videos
    of ``1 - C(Q - c, K) / C(Q, K)`` with ``c`` its captions among all ``Q``.

    Args:
        exact: 1-based ranks per direction: ``t2v [Q]``, ``v2t [Vc]``.
        ann: the ANN ranks per direction.
        captions_per_video: ``[V]`` evaluated captions of each gallery video (0 if none).
        title: the figure's title (the model).

    Returns:
        A matplotlib ``Figure`` (not attached to pyplot) with two axes sharing the K range: from
        1 to the worst exact rank in either direction, and never less than the ANN's ``k``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, MultipleLocator, NullFormatter

    captions_per_video = np.asarray(captions_per_video)
    num_videos, num_captions = len(captions_per_video), int(captions_per_video.sum())
    # The chance curves' candidates and right answers per query, per direction.
    chance_inputs = {
        "t2v": (num_videos, np.ones(num_captions, np.int64)),
        "v2t": (num_captions, captions_per_video[captions_per_video > 0]),
    }
    titles = {
        "t2v": f"text-to-video: {len(exact['t2v'])} captions, each ranking {num_videos} videos",
        "v2t": f"video-to-text: {len(exact['v2t'])} videos, each ranking {num_captions} captions",
    }
    max_k = max(
        2, *(int(exact[d].max()) for d in ("t2v", "v2t")), *(ann[d].k for d in ("t2v", "v2t"))
    )
    ks = np.arange(1, max_k + 1)

    figure = Figure(figsize=(11, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharex=True, sharey=True)
    for axis, direction in zip(axes, ("t2v", "v2t"), strict=True):
        # Wider than the ANN curve, which often lies right on it (an index that loses nothing).
        axis.plot(
            ks, recall_at_k_curve(exact[direction], ks.tolist()), label="exact", linewidth=2.5
        )
        ann_ks = np.arange(1, ann[direction].k + 1)
        axis.plot(
            ann_ks,
            recall_at_k_curve(ann[direction].lower_bounds(), ann_ks.tolist()),
            label=f"ANN (top {ann[direction].k})",
            linestyle="--",
            marker="o",
            markersize=3,
        )
        candidates, right = chance_inputs[direction]
        axis.plot(
            ks,
            chance_recall_at_k_curve(candidates, right, ks.tolist()),
            label="chance (random ranking)",
            linestyle=":",
            linewidth=1.5,
            color="0.35",
            zorder=1.5,  # under the model's curves where they meet (at 100%)
        )
        axis.set_xscale("log")
        # A little room either side so that the markers at K = 1 and at the last K show whole.
        axis.set_xlim(1 / _K_MARGIN, max_k * _K_MARGIN)
        axis.xaxis.set_major_locator(FixedLocator(k_ticks(max_k)))
        axis.xaxis.set_major_formatter("{x:.0f}")
        axis.xaxis.set_minor_formatter(NullFormatter())
        # Room above 100% so that markers and lines at 100% are not cut by the frame.
        axis.set_ylim(0, 105)
        axis.yaxis.set_major_locator(FixedLocator(range(0, 101, 20)))
        axis.yaxis.set_minor_locator(MultipleLocator(10))
        axis.set_xlabel("K (log scale)")
        axis.set_title(titles[direction], fontsize=10)
        axis.grid(True, which="major", alpha=0.4)
        axis.grid(True, which="minor", alpha=0.15)
    axes[0].set_ylabel("recall@K (%)")
    axes[1].tick_params(labelleft=True)
    # One legend for both panels, outside them: inside, it hides whichever curve runs under it.
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3)
    figure.suptitle(title, fontsize=9)
    return figure


def plot_recall_at_k(
    path: Path,
    *,
    exact: dict[str, np.ndarray],
    ann: dict[str, AnnRanks],
    captions_per_video: np.ndarray,
    title: str,
) -> None:
    """Write :func:`recall_at_k_figure` to ``path`` (PNG)."""
    figure = recall_at_k_figure(
        exact=exact, ann=ann, captions_per_video=captions_per_video, title=title
    )
    figure.savefig(path, dpi=120)


def _fixed_size_list(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """``[N, D]`` float32 -> fixed_size_list<float32>[D] (searchable by LanceDB)."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def _vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """fixed_size_list<float32>[D] ``[N]`` -> ``[N, D]`` float32 (a writable copy)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.array(flat, np.float32).reshape(len(column), column.type.list_size)
