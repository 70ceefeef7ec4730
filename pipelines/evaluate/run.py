"""The evaluation run, top to bottom: see :mod:`pipelines.evaluate`."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from centerclip.metrics import ann_recall_at_k, chance_retrieval_metrics
from pipelines import schema
from pipelines.evaluate.ann import (
    ann_text_to_video,
    ann_video_to_text,
    caption_index_note,
    gallery_filter,
    index_info,
    index_note,
)
from pipelines.evaluate.config import MIN_ANN_K, EvaluateConfig
from pipelines.evaluate.gallery import load_gallery, read_rows, split_queries
from pipelines.evaluate.plots import plot_recall_at_k, recall_at_k_figure
from pipelines.evaluate.ranks import exact_ranks
from pipelines.evaluate.results import (
    METRICS_FILE,
    PLOT_FILE,
    RANKS_FILE,
    EvaluationReport,
    ranks_table,
)
from pipelines.evaluate.text_encode import encode_captions
from pipelines.manifest import read_manifest
from pipelines.report import REPORT_FILE, worst_queries, write_report
from pipelines.search import check_model, model_filter, open_index
from pipelines.write import build_ann_index, connect, open_table

_SEGMENT_SPANS = [schema.SEGMENT_START_S, schema.SEGMENT_END_S]


EVALUATION_STEPS = ("encoding captions", "exact ranks", "ANN search", "writing results")
StepCallback = Callable[[int, int, str], None]
"""``(steps done, steps in all, the step now running)``: the stages of :data:`EVALUATION_STEPS`."""


def run_evaluation(
    config: EvaluateConfig, *, on_step: StepCallback | None = None
) -> EvaluationReport:
    """Evaluate ``config.table`` on the captions of ``config.split``; see :mod:`pipelines.evaluate`.

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
    videos, queries, skipped = split_queries(read_manifest(config.manifest), config.split)
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
    chunked = exact_ranks(
        text,
        video,
        caption_video,
        chunk_rows=config.exact_chunk_rows,
        ray_min_scores=config.ray_min_scores,
        address=config.address,
    )
    exact = chunked.ranks
    v2t_video = exact.v2t_video.numpy()
    exact_top_t2v, exact_top_v2t = chunked.t2v_top, chunked.v2t_top  # [Q, 10], [Vc, 10]
    seconds["exact"] = time.perf_counter() - t0

    step(2)
    t0 = time.perf_counter()
    where = model_filter(model_id)
    if model_rows > len(video):  # the table holds more than this split: search the split
        where = gallery_filter(table, where, config.split, gallery.rows)
    ann_t2v = ann_text_to_video(table, text, gallery, where, config)
    ann_v2t, caption_index_info = ann_video_to_text(
        text, video[v2t_video], caption_video, v2t_video, config, indexed=info is not None
    )
    seconds["ann"] = time.perf_counter() - t0

    ann_metrics: dict[str, Any] = {
        "k": config.k,
        "nprobes": config.nprobes,
        "refine_factor": config.refine_factor,
        "index": info,
        "index_built_now": built,
        "index_note": index_note(info, built),
        "v2t_index": caption_index_info,
        "v2t_index_note": caption_index_note(caption_index_info, len(text)),
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
        # Null and blank captions are no queries; listed so that none is dropped unseen.
        "skipped_captions": {
            "num_captions": skipped.num_rows,
            "captions": skipped.to_pylist(),
        },
        "seconds": seconds,
    }

    step(3)
    ranks = ranks_table(queries, gallery, exact.t2v.numpy(), ann_t2v, exact_top_t2v[:, 0])
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
