"""What the evaluation writes and prints: the file names, the per-caption ranks table and the
terminal summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipelines import schema
from pipelines.evaluate.gallery import Gallery
from pipelines.evaluate.ranks import AnnRanks

METRICS_FILE = "metrics.json"
RANKS_FILE = "ranks.parquet"
PLOT_FILE = "recall_at_k.png"


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
        skipped = m["skipped_captions"]
        if skipped["num_captions"]:
            lines.append(
                f"skipped:      {skipped['num_captions']} null or blank captions (no queries); "
                "metrics.json lists them under skipped_captions"
            )
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


def ranks_table(
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
