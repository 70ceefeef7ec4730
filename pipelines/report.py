"""The evaluation report: one self-contained HTML file to look at what a model gets wrong.

``report.html`` holds the metrics (exact, ANN and chance level per direction), the recall@K plot
(the figure ``recall_at_k.png`` is made of, inlined as SVG) and the worst-ranked queries: each
caption with its right video's thumbnail beside the thumbnail of the video ranked first. Images
are inlined (data URIs), so the file opens anywhere, with nothing fetched.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines import schema
from pipelines.serve.media import MediaReader
from pipelines.storage import StorageOptions

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
WORST_QUERIES = 20
_METRICS = ("R@1", "R@5", "R@10", "MdR", "MnR")


def worst_queries(ranks: pa.Table, n: int = WORST_QUERIES) -> pa.Table:
    """The ``n`` evaluated captions whose right video ranks lowest (text-to-video, exact),
    worst first; ties in caption order."""
    evaluated = ranks.filter(pc.is_valid(ranks[schema.T2V_RANK]))
    order = pc.sort_indices(
        evaluated, [(schema.T2V_RANK, "descending"), (schema.QUERY, "ascending")]
    )
    return evaluated.take(order).slice(0, n)


def _metric_cells(values: Mapping[str, Any]) -> str:
    cells = []
    for name in _METRICS:
        value = values.get(name)
        if value is None and f"{name}_lower_bound" in values:
            value = f"&ge; {values[f'{name}_lower_bound']:.3g}"
        elif isinstance(value, float):
            value = f"{value:.1f}" if name.startswith("R@") else f"{value:.3g}"
        cells.append(f"<td>{'-' if value is None else value}</td>")
    return "".join(cells)


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prologue: the SVG is inlined in HTML


def _thumbnail(media: MediaReader, uri: str | None, t: float) -> str:
    """An ``<img>`` of the frame at ``t`` (a data URI), or a note where it cannot be made."""
    if uri is None:
        return '<div class="none">not in the table</div>'
    try:
        jpeg = media.thumbnail(uri, t, max_side=240)
    except (OSError, ValueError) as err:
        log.warning("no thumbnail of %s: %s", uri, err)
        return f'<div class="none">{html.escape(str(err))}</div>'
    data = base64.b64encode(jpeg).decode()
    return f'<img src="data:image/jpeg;base64,{data}" alt="">'


def render_report(
    *,
    metrics: Mapping[str, Any],
    ranks: pa.Table,
    figure: Figure,
    videos: pa.Table,
    storage: StorageOptions | None = None,
) -> str:
    """The report's HTML.

    Args:
        metrics: ``metrics.json``'s content.
        ranks: ``ranks.parquet``'s content (one row per caption).
        figure: the recall@K figure (``pipelines.evaluate.recall_at_k_figure``).
        videos: ``video_id``, ``uri``, ``segment_start_s``, ``segment_end_s`` of the videos the
            worst queries name; thumbnails show the middle of each indexed clip.
        storage: how to reach ``s3://`` videos.
    """
    media = MediaReader(storage)
    where = {
        row[schema.VIDEO_ID]: (
            row[schema.URI],
            (min(row[schema.SEGMENT_START_S]) + max(row[schema.SEGMENT_END_S])) / 2,
        )
        for row in videos.to_pylist()
    }

    def thumb(video_id: str | None) -> str:
        uri, t = where.get(video_id, (None, 0.0))
        return _thumbnail(media, uri, t)

    ann = metrics["ann"]
    metric_rows = []
    for direction, label in (("t2v", "text → video"), ("v2t", "video → text")):
        for kind, values in (
            ("exact", metrics[direction]),
            (f"ANN (top {ann['k']})", ann[direction]),
            ("chance", metrics["chance"][direction]),
        ):
            metric_rows.append(
                f"<tr><th>{label}</th><td class='kind'>{html.escape(kind)}</td>"
                f"{_metric_cells(values)}</tr>"
            )
    worst_rows = []
    for row in worst_queries(ranks).to_pylist():
        worst_rows.append(
            "<tr>"
            f"<td class='rank'>{row[schema.T2V_RANK]}</td>"
            f"<td class='caption'>{html.escape(row[schema.CAPTION])}</td>"
            f"<td class='thumb'>{thumb(row[schema.VIDEO_ID])}"
            f"<span>{html.escape(row[schema.VIDEO_ID])}</span></td>"
            f"<td class='thumb'>{thumb(row[schema.TOP1_VIDEO_ID])}"
            f"<span>{html.escape(str(row[schema.TOP1_VIDEO_ID]))}</span></td>"
            "</tr>"
        )
    title = f"Evaluation of {metrics['model_id']}"
    where_from = html.escape(f"{metrics.get('table')} in {metrics.get('db')}")
    split = html.escape(metrics.get("split") or "all rows")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #1d2330;
       padding: 0 1rem; }}
h1 {{ font-size: 1.3rem; }} h2 {{ font-size: 1.1rem; margin-top: 2rem; }}
p.note {{ color: #6b7385; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 0.3rem 0.7rem; border-bottom: 1px solid #dde1e8; text-align: right; }}
th {{ text-align: left; }} td.kind, td.caption {{ text-align: left; }}
td.rank {{ font-weight: 600; color: #b3261e; }}
td.thumb {{ text-align: center; font-family: ui-monospace, monospace; font-size: 0.8rem; }}
td.thumb img {{ display: block; width: 160px; image-rendering: pixelated; margin: 0 auto 0.2rem; }}
td.thumb span {{ color: #6b7385; }}
div.none {{ width: 160px; color: #6b7385; margin: 0 auto; }}
svg {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="note">Table {where_from}, split {split}: {metrics["num_queries"]} captions of
{metrics["num_videos"]} videos.</p>
<h2>Metrics</h2>
<table><tr><th></th><th></th>{"".join(f"<th>{m}</th>" for m in _METRICS)}</tr>
{"".join(metric_rows)}</table>
<h2>Recall@K</h2>
{_svg(figure)}
<h2>The {WORST_QUERIES} worst-ranked queries</h2>
<p class="note">Text-to-video, exact ranks: the caption, the rank of its video, the video
(its indexed clip's middle frame) and the video ranked first instead.</p>
<table><tr><th>rank</th><th>caption</th><th>right video</th><th>ranked first</th></tr>
{"".join(worst_rows)}</table>
</body></html>
"""


def write_report(path: Path, **kwargs: Any) -> Path:
    """Write :func:`render_report` to ``path``."""
    path.write_text(render_report(**kwargs), encoding="utf-8")
    return path
